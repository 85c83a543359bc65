"""Describe the machine a benchmark ran on, so every published figure names its hardware.

``describe_machine()`` reads Linux's ``/proc`` and ``/sys`` where they exist and falls back to
the :mod:`platform` module elsewhere; nothing here needs root or extra packages. Benchmarks print
``Machine.summary()`` beside their tables and put ``Machine.to_dict()`` in their JSON summary.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Machine:
    """The hardware and software a benchmark ran on."""

    cpu_model: str
    cpu_mhz: float | None  # as /proc/cpuinfo reports it (may be a nominal figure in a VM)
    logical_cpus: int  # CPUs the kernel reports
    usable_cpus: int  # CPUs this process may run on (affinity mask)
    cpu_quota: float | None  # cgroup CPU limit in cores, None when unlimited or unknown
    memory_gb: float | None
    python: str
    platform: str
    virtualized: bool | None  # the CPU reports the "hypervisor" flag

    def summary(self) -> str:
        """One line: CPU, cores, memory, Python and OS."""
        cpus = f"{self.logical_cpus} logical CPUs"
        if self.usable_cpus != self.logical_cpus:
            cpus += f" ({self.usable_cpus} usable)"
        if self.cpu_quota is not None:
            cpus += f", cgroup quota {self.cpu_quota:g} cores"
        mhz = f" @ {self.cpu_mhz:.0f} MHz" if self.cpu_mhz else ""
        vm = ", virtual machine" if self.virtualized else ""
        memory = f", {self.memory_gb:.1f} GB RAM" if self.memory_gb is not None else ""
        return f"{self.cpu_model}{mhz}, {cpus}{memory}{vm}; {self.python}; {self.platform}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _cpuinfo() -> tuple[str | None, float | None, bool | None]:
    text = _read("/proc/cpuinfo")
    if text is None:
        return None, None, None
    model: str | None = None
    mhz: float | None = None
    virtualized: bool | None = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if model is None and key in ("model name", "Model", "cpu model", "Hardware"):
            model = value
        elif mhz is None and key == "cpu MHz":
            try:
                mhz = float(value)
            except ValueError:
                mhz = None
        elif virtualized is None and key == "flags":
            virtualized = "hypervisor" in value.split()
    return model, mhz, virtualized


def _memory_gb() -> float | None:
    text = _read("/proc/meminfo")
    if text is not None:
        for line in text.splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1024 * 1024)  # kB -> GiB
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        page_size = os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * page_size / 1024**3


def _cpu_quota() -> float | None:
    text = _read("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"
    if text is not None:
        parts = text.split()
        if len(parts) == 2 and parts[0] != "max":
            return int(parts[0]) / int(parts[1])
        return None
    quota = _read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")  # cgroup v1
    period = _read("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
    if quota is not None and period is not None and int(quota) > 0:
        return int(quota) / int(period)
    return None


def _usable_cpus(logical: int) -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return logical


def describe_machine() -> Machine:
    """Describe this machine (best effort; unknown figures are None)."""
    model, mhz, virtualized = _cpuinfo()
    logical = os.cpu_count() or 1
    return Machine(
        cpu_model=model or platform.processor() or platform.machine() or "unknown CPU",
        cpu_mhz=mhz,
        logical_cpus=logical,
        usable_cpus=_usable_cpus(logical),
        cpu_quota=_cpu_quota(),
        memory_gb=_memory_gb(),
        python=f"{platform.python_implementation()} {platform.python_version()}"
        + (" (debug build)" if hasattr(sys, "gettotalrefcount") else ""),
        platform=platform.platform(),
        virtualized=virtualized,
    )


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none): a benchmark notes them
    at its start and end, since on a shared machine they explain noisy figures."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


if __name__ == "__main__":
    print(describe_machine().summary())
    print(f"load average: {load_average()}")
