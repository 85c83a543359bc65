"""HTTP service benchmark: decisions/s and latency of ``riskguard serve`` under a C load generator.

What it measures: a real ``python -m riskguard serve`` process on a loopback port, driven by
``wrk`` (the Debian package; a C load generator, one thread by default) with
``bench/wrk/decisions.lua``, which gives every ``POST /v1/decisions`` a unique ``event_id`` (run
id + wrk thread + counter) and varies accounts, counterparties, amounts, IPs and devices. Two
backends, each in a fresh store:

(a) **SQLite + in-memory state** — the embedded default: a new SQLite file, no Redis, one
    process (in-memory state cannot be shared between processes).
(b) **PostgreSQL + Redis** — a new PostgreSQL database (created on the integration tests'
    server, dropped at the end) and a fresh Redis key prefix (its keys deleted at the end), with
    1 and 2 uvicorn worker processes (``--workers``), at ``--connections`` and at
    ``--connections-high`` connections.

Before every decision run, the same server process answers the trivial ``GET /healthz`` under the
same load (``bench/wrk/healthz.lua``): the ceiling of this server, HTTP stack and load generator on
this machine. *Ratio* = decisions/s / healthz req/s, taken within a round.

Per run: requests/s, latency p50/p90/p99/p99.9 (wrk's closed-loop latency, per request, from
its own histogram; wrk's timeout is raised to ``--timeout`` so slow answers are counted, not
dropped), statuses (any non-2xx fails the run), 2xx bodies marked ``degraded`` (decided by the
failure policy because the state store missed the budget) or ``recorded: false``; CPU in % of one
core over the run (from /proc) for the server (its process tree; per process too, to see how
uvicorn workers share the load), wrk, PostgreSQL + Redis (processes named ``postgres`` /
``redis-server``), the kernel (interrupts, softirqs: loopback networking; kernel threads) and
"other" (the rest of the machine's busy time: other users of a shared VM, named in the JSON).
After each decision run the harness waits for the server to settle and checks that the
tenant's decision rows grew by the number of 2xx answers (up to ``connections`` more: requests
wrk abandoned at the end of its run are still decided).

Every server configuration starts once per round, gets an unrecorded ``--warmup`` of decisions,
then runs healthz and decisions at each connection count. Configurations run interleaved, one
round at a time, ``--rounds`` rounds, starting from a different configuration each round; every
figure is the MEDIAN over the rounds. The 2-vCPU VM is shared and noisy: before each pair of runs
the harness waits (up to ``--max-wait`` s) until other work leaves the machine at most
``--quiet-below`` % busy, and it measures a pair again (up to ``--retries`` times) when other
processes took more than ``--max-other`` % of a core during it; the output says how much of
that was needed and which pairs stayed contended. A last round repeats the main connection
count with the access log on (``RISKGUARD_ACCESS_LOG=true``, to a file). A digest of
src/riskguard is taken at every server start: figures from changed code are flagged, not pooled
silently. Output: the machine, the tables, PASS/FAIL per target, warnings and errors found in
the server logs, then the JSON summary as the last line of stdout (progress goes to stderr).

    make bench-http                       # defaults: 8-15 minutes (longer on a busy machine)
    .venv/bin/python bench/http.py --duration 4 --rounds 1 --workers 2 --connections-high 0
    .venv/bin/python bench/http.py --only postgresql --workers 2 --json bench-http.json

Needs ``wrk`` (``apt-get install wrk``), and for (b) PostgreSQL and Redis (``make services``).
"""

# ruff: noqa: E402

from __future__ import annotations

import sys
from pathlib import Path

# This file is named http.py and bench/ is sys.path[0] when it runs: that would shadow the
# standard library's ``http`` package for every import below (httpx, prometheus_client, ...).
# Take bench/ off the front and put it at the end, where _machine is still found.
BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR] + [str(BENCH_DIR)]

import argparse
import asyncio
import hashlib
import itertools
import json
import math
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import httpx
from rich.console import Console
from rich.table import Table

from _machine import describe_machine, load_average
from _services import PG_HOST, PG_PORT, PG_USER, REDIS_URL, pg_admin
from riskguard.adapters.sql.migrate import upgrade
from riskguard.adapters.sql.store import SqlDecisionStore
from riskguard.adapters.sql.urls import redact
from riskguard.settings import load_settings
from riskguard.wiring import configure_logging, provision

ROOT: Final = BENCH_DIR.parent
WRK_DIR: Final = BENCH_DIR / "wrk"
TARGET_DECISIONS_PER_S: Final = 2_000.0  # (b), on this 2-core machine, load generator included
TARGET_P99_MS: Final = 50.0
TARGET_RATIO: Final = 0.35  # decisions/s over the same server's /healthz req/s
TARGET_AFTER_RATIO: Final = 0.8  # sustained decisions/s with the outbox + audit on, over off
AFTER_LABELS: Final = {
    "in-process": "dispatcher in the service",
    "worker": "riskguard worker",
    "worker-nice": "riskguard worker, niced",
    "deferred": "riskguard worker, stopped during the load",
}
WORKER_MODES: Final = frozenset({"worker", "worker-nice", "deferred"})
DRAIN_TIMEOUT_S: Final = 180.0
# the drain is timed to this step (a LIMIT 1 probe each time; 0.25 s overstated it by ~0.1 s)
DRAIN_PROBE_S: Final = 0.05
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
CPUS: Final = os.cpu_count() or 1
DEPENDENCY_PROCESSES: Final = frozenset({"postgres", "redis-server"})

out = Console()
err = Console(stderr=True)


# --------------------------------------------------------------------------------------------
# CPU accounting from /proc


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(comm, ppid, utime + stime in ticks) of one process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    return comm, int(fields[1]), int(fields[11]) + int(fields[12])


def _all_processes() -> dict[int, tuple[str, int, int]]:
    procs = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None:
                procs[int(entry.name)] = stat
    return procs


def _machine_ticks() -> tuple[int, int, int, int]:
    """(busy, steal, total, irq + softirq) ticks of all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return (
        user + nice + system + irq + softirq,
        steal,
        user + nice + system + idle + iowait + irq + softirq + steal,
        irq + softirq,
    )


def wait_for_quiet(cpus: int, below: float, max_wait: float) -> tuple[float, float]:
    """The machine's busy CPU (% of one core) over a second, after waiting (up to ``max_wait``
    seconds) for it to drop to ``below``: on a shared VM, do not start a run on top of someone
    else's. Returns (busy %, seconds waited)."""
    waited = 0.0
    while True:
        a = _machine_ticks()
        time.sleep(1.0)
        b = _machine_ticks()
        busy = 100.0 * cpus * (b[0] - a[0]) / max(1, b[2] - a[2])
        if busy <= below or waited >= max_wait:
            if waited:
                err.log(f"  waited {waited:.0f} s for other work to finish (now {busy:.0f}% busy)")
            return busy, waited
        if not waited:
            err.log(f"  the machine is {busy:.0f}% busy (other work): waiting up to {max_wait:g} s")
        time.sleep(2.0)
        waited += 3.0


def _kernel_thread(comm: str) -> bool:
    return comm.startswith(("ksoftirqd", "kworker", "rcu_"))


@dataclass(frozen=True, slots=True)
class CpuSample:
    wall: float
    processes: dict[int, tuple[str, int]]  # pid -> (comm, utime + stime ticks), every process
    server: frozenset[int]  # the server's process tree
    machine: tuple[int, int, int, int]
    children: float  # this process's reaped children (wrk), user + system seconds

    @classmethod
    def take(cls, server_pid: int, extra: Sequence[int] = ()) -> CpuSample:
        procs = _all_processes()
        tree = {server_pid, *extra}
        grew = True
        while grew:  # the server, its workers, and theirs
            grew = False
            for pid, (_comm, ppid, _ticks) in procs.items():
                if ppid in tree and pid not in tree:
                    tree.add(pid)
                    grew = True
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cls(
            wall=time.monotonic(),
            processes={pid: (comm, ticks) for pid, (comm, _ppid, ticks) in procs.items()},
            server=frozenset(tree),
            machine=_machine_ticks(),
            children=usage.ru_utime + usage.ru_stime,
        )


@dataclass(frozen=True, slots=True)
class CpuUse:
    """CPU over one run, in % of one core (200% = both cores of a 2-CPU machine)."""

    server: float
    wrk: float
    dependencies: float  # processes named postgres or redis-server
    kernel: float  # interrupts and softirqs (loopback networking), kernel worker threads
    machine: float  # all busy time (not idle, iowait or steal)
    steal: float  # time the hypervisor gave to other VMs
    server_processes: int
    server_split: tuple[float, ...]  # per server process, busiest first (uvicorn workers)
    top_other: tuple[tuple[str, float], ...]  # the busiest other processes: (comm, %)

    def lopsided(self, workers: int) -> bool:
        """One of several uvicorn workers did (nearly) all the work: the kernel handed it every
        connection, and keep-alive connections stay where they were accepted."""
        busiest = self.server_split[:workers]
        return workers > 1 and len(busiest) == workers and busiest[-1] < 0.1 * busiest[0]

    @property
    def other(self) -> float:
        """Whatever else ran on the machine meanwhile (other users of a shared VM)."""
        return max(0.0, self.machine - self.server - self.wrk - self.dependencies - self.kernel)

    @classmethod
    def between(cls, a: CpuSample, b: CpuSample, cpus: int) -> CpuUse:
        seconds = b.wall - a.wall
        total = max(1, b.machine[2] - a.machine[2])
        per_tick = 100.0 / CLK_TCK / seconds
        dependencies = kernel_threads = 0.0
        split: list[float] = []
        others: Counter[str] = Counter()
        me = os.getpid()
        for pid, (comm, ticks) in b.processes.items():
            used = (ticks - a.processes.get(pid, (comm, 0))[1]) * per_tick
            if pid in b.server or pid in a.server:
                split.append(used)
            elif comm in DEPENDENCY_PROCESSES:
                dependencies += used
            elif _kernel_thread(comm):
                kernel_threads += used
            elif pid != me and used > 0:
                others[f"{comm}[{pid}]"] += used
        return cls(
            server=sum(split),
            wrk=100.0 * (b.children - a.children) / seconds,
            dependencies=dependencies,
            kernel=kernel_threads + 100.0 * cpus * (b.machine[3] - a.machine[3]) / total,
            machine=100.0 * cpus * (b.machine[0] - a.machine[0]) / total,
            steal=100.0 * cpus * (b.machine[1] - a.machine[1]) / total,
            server_processes=len(b.server),
            server_split=tuple(round(x, 1) for x in sorted(split, reverse=True)),
            top_other=tuple((name, round(pct, 1)) for name, pct in others.most_common(3)),
        )


# --------------------------------------------------------------------------------------------
# Backends and the server


@dataclass
class Backend:
    key: str  # "sqlite" | "postgresql"
    label: str
    database_url: str
    redis_url: str | None = None
    redis_prefix: str = "rg"
    tenant_id: str = ""
    ingest_key: str = ""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    backend: str
    workers: int
    access_log: bool
    connections: tuple[int, ...]
    # What follows a decision (issue 6's ratio): "" off; "in-process": the outbox, its
    # dispatcher in the service process and the audit log on; "worker": the same with the
    # dispatcher in a separate `riskguard worker` process (RISKGUARD_DISPATCHER=false).
    after: str = ""
    # The events wrk sends (bench/wrk/decisions.lua): "default", every row's, or "mixed", the
    # after-decision comparison's stated risk mix (--after-workload).
    workload: str = "default"

    @property
    def name(self) -> str:
        log = ", access log" if self.access_log else ""
        after = f", outbox+audit ({AFTER_LABELS[self.after]})" if self.after else ""
        mixed = ", mixed risk" if self.workload == "mixed" else ""
        return f"{self.backend} w{self.workers}{log}{after}{mixed}"


def source_digest() -> str:
    """A digest of the service's source as a server would load it now: the code may change
    between rounds while people work, and figures from different code must not be pooled."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "src" / "riskguard").rglob("*")):
        if path.suffix in (".py", ".lua", ".yaml", ".yml", ".toml") and path.is_file():
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        return False
    return True


def _terminate(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM a child that is still running, then SIGKILL it after 20 s."""
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Server:
    """``python -m riskguard serve`` as a child process, its output in ``log_path``."""

    def __init__(
        self,
        backend: Backend,
        config: ServerConfig,
        secret: str,
        log_path: Path,
        worker_nice: int = 0,
    ) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("RISKGUARD_")}
        env.update(
            RISKGUARD_DATABASE_URL=backend.database_url,
            RISKGUARD_SECRET_KEY=secret,
            RISKGUARD_REDIS_PREFIX=backend.redis_prefix,
            RISKGUARD_ACCESS_LOG="true" if config.access_log else "false",
            RISKGUARD_LOG_LEVEL="info",  # the default; the access log is written at info
            RISKGUARD_WORKERS=str(config.workers),
            # The decision path alone (what the targets are set for); --after-decision adds a
            # configuration with what follows a decision (outbox, dispatcher, audit) on.
            RISKGUARD_OUTBOX="true" if config.after else "false",
            RISKGUARD_AUDIT="true" if config.after else "false",
            RISKGUARD_DISPATCHER="false" if config.after in WORKER_MODES else "true",
            RISKGUARD_AUDIT_SIGNING_KEY=str(log_path.parent / "audit.key"),
        )
        if backend.redis_url is not None:
            env["RISKGUARD_REDIS_URL"] = backend.redis_url
            # the event streams under the run's prefix too, so that they go with its keys at
            # the end (unprefixed, a run left up to RISKGUARD_STREAM_MAXLEN events behind)
            env["RISKGUARD_STREAM_PREFIX"] = f"{backend.redis_prefix}:"
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.with_worker = config.after in WORKER_MODES
        self.workload = config.workload
        # "worker-nice": the worker as a background job (the service's requests go first when
        # both want a CPU), as bench/gateway.py runs it by default
        self.worker_nice = worker_nice if config.after == "worker-nice" else 0
        self.worker: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "riskguard", "serve", "--port", str(self.port)],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if self.with_worker:
            self.start_worker()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(
                    f"the server exited with {self.process.returncode}; see {self.log_path}"
                )
            if self.worker is not None and self.worker.poll() is not None:
                self.stop()
                raise RuntimeError(
                    f"the worker exited with {self.worker.returncode}; see {self.log_path}"
                )
            with suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server was not ready in {timeout:g} s; see {self.log_path}")

    def start_worker(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            return
        nice = ["nice", "-n", str(self.worker_nice)] if self.worker_nice else []
        with open(self.log_path, "ab") as log:
            self.worker = subprocess.Popen(
                [*nice, sys.executable, "-m", "riskguard", "worker"],
                env=self.env | {"RISKGUARD_AUTO_MIGRATE": "false"},
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop_worker(self) -> None:
        """("deferred") the worker stopped for the load run; the backlog waits for it."""
        _terminate(self.worker)
        self.worker = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def extra_pids(self) -> tuple[int, ...]:
        """Processes counted with the server's CPU: its `riskguard worker`."""
        return (self.worker.pid,) if self.worker is not None else ()

    def alive(self) -> bool:
        procs = [self.process, self.worker] if self.worker is not None else [self.process]
        return all(p is not None and p.poll() is None for p in procs)

    def stop(self) -> None:
        for process in (self.process, self.worker):
            _terminate(process)


class Stores:
    """Reads the tenant's decision count through ``SqlDecisionStore`` (one event loop)."""

    def __init__(self) -> None:
        self._runner = asyncio.Runner()
        self._stores: dict[str, SqlDecisionStore] = {}

    def count(self, url: str, tenant_id: str) -> int:
        return self._runner.run(self._count(url, tenant_id))

    async def _store(self, url: str) -> SqlDecisionStore:
        store = self._stores.get(url)
        if store is None:
            store = self._stores[url] = SqlDecisionStore(url)
            await store.start()
        return store

    async def _count(self, url: str, tenant_id: str) -> int:
        return await (await self._store(url)).count(tenant_id)

    def pending(self, url: str, tenant_id: str) -> int:
        """Outbox messages of the tenant not yet dispatched (alerts, audit, streams to do)."""
        return self._runner.run(self._pending(url, tenant_id, count=True))

    async def _pending(self, url: str, tenant_id: str, *, count: bool) -> int:
        """The backlog (``count``), or 1 / 0: whether any is left — the cheap probe polled
        while the dispatcher drains, whose CPU would otherwise be taken from it (a count of
        a large backlog, or of the tenant's decisions, costs milliseconds a poll)."""
        import sqlalchemy as sa

        query = (
            "SELECT count(*) FROM outbox_messages WHERE tenant_id = :t AND dispatched_at IS NULL"
            if count
            else "SELECT count(*) FROM (SELECT 1 FROM outbox_messages "
            "WHERE tenant_id = :t AND dispatched_at IS NULL LIMIT 1) AS any_left"
        )
        async with (await self._store(url)).engine.connect() as conn:
            result = await conn.execute(sa.text(query), {"t": tenant_id})
            return int(result.scalar_one())

    def drain(
        self, url: str, tenant_id: str, since: tuple[float, int] | None = None
    ) -> tuple[int, float]:
        """(backlog, seconds until the dispatcher had done all of it): from now, or from
        ``since`` = (monotonic time, backlog then), e.g. the end of a load run."""
        started, backlog = since or (time.monotonic(), self.pending(url, tenant_id))

        def left() -> int:
            return self._runner.run(self._pending(url, tenant_id, count=False))

        remaining = left() if backlog else 0
        while remaining and time.monotonic() - started < DRAIN_TIMEOUT_S:
            time.sleep(DRAIN_PROBE_S)
            remaining = left()
        return backlog, (time.monotonic() - started if backlog else 0.0) + (
            math.inf if remaining else 0.0
        )

    def settled_count(self, url: str, tenant_id: str, timeout: float = 10.0) -> int:
        """The count once it stops moving (requests wrk abandoned are still being decided)."""
        last = self.count(url, tenant_id)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.3)
            now = self.count(url, tenant_id)
            if now == last:
                return now
            last = now
        return last

    def close(self) -> None:
        async def close_all() -> None:
            for store in self._stores.values():
                await store.close()

        self._runner.run(close_all())
        self._runner.close()


def provision_backend(backend: Backend, secret: str) -> None:
    """Migrate the database and create the benchmark's tenant and its ingest key."""
    upgrade(backend.database_url)
    settings = load_settings(database_url=backend.database_url, secret_key=secret)

    async def work() -> tuple[str, dict[str, str]]:
        store = SqlDecisionStore(backend.database_url)
        await store.start()
        try:
            return await provision(
                store, settings.secret, f"bench-http-{uuid.uuid4().hex[:8]}", ("ingest",)
            )
        finally:
            await store.close()

    backend.tenant_id, keys = asyncio.run(work())
    backend.ingest_key = keys["ingest"]


def _delete_redis_prefix(url: str, prefix: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(client.delete(*batch))
                batch.clear()
        if batch:
            deleted += int(client.delete(*batch))
    finally:
        client.close()
    return deleted


# --------------------------------------------------------------------------------------------
# One wrk run


@dataclass(slots=True)
class Run:
    """One wrk run against one endpoint."""

    endpoint: str  # "healthz" | "decisions"
    connections: int
    requests: int
    seconds: float
    per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    non_2xx: int  # answers that are not 2xx (healthz: wrk's count of statuses >= 400)
    socket_errors: int  # connect, read, write and timeout errors
    statuses: dict[str, int]
    degraded: int
    not_recorded: int
    replayed: int
    cpu: CpuUse
    rows_added: int | None = None  # decision rows the tenant gained over this run
    ok_2xx: int | None = None
    backlog: int = 0  # outbox messages still to dispatch when the run ended
    drain_s: float = 0.0  # how long the dispatcher then took to finish them
    outcomes: dict[str, int] = field(default_factory=dict)  # 2xx answers per outcome

    @property
    def alerting(self) -> float:
        """The share of decided answers whose outcome opens or joins an alert (review, block:
        the default alert policy)."""
        total = sum(self.outcomes.values())
        return (
            (self.outcomes.get("review", 0) + self.outcomes.get("block", 0)) / total
            if total
            else 0.0
        )

    @property
    def sustained_per_s(self) -> float:
        """Decisions per second with what follows them done too: over the run plus the time
        the dispatcher needed afterwards to catch up."""
        return (self.ok_2xx or 0) / (self.seconds + self.drain_s)

    @property
    def rows_ok(self) -> bool | None:
        """Rows grew by the 2xx answers, plus at most one abandoned request per connection."""
        if self.rows_added is None or self.ok_2xx is None:
            return None
        return 0 <= self.rows_added - self.ok_2xx <= self.connections


class WrkMissing(RuntimeError):
    pass


def find_wrk() -> str:
    path = shutil.which("wrk") or ("/usr/bin/wrk" if os.access("/usr/bin/wrk", os.X_OK) else None)
    if path is None:
        raise WrkMissing
    return path


def run_wrk(
    wrk: str,
    server: Server,
    endpoint: str,
    *,
    connections: int,
    duration: int,
    threads: int,
    timeout: int,
    cpus: int,
    key: str = "",
    workload_args: Sequence[str] = (),
) -> Run:
    script = WRK_DIR / ("decisions.lua" if endpoint == "decisions" else "healthz.lua")
    path = "/v1/decisions" if endpoint == "decisions" else "/healthz"
    cmd = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        f"--timeout={timeout}s",
        "-s",
        str(script),
        server.url + path,
    ]
    if endpoint == "decisions":
        cmd += ["--", f"r{uuid.uuid4().hex[:12]}", key, *workload_args]
    before = CpuSample.take(server.pid, server.extra_pids)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    after = CpuSample.take(server.pid, server.extra_pids)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RGBENCH ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}")
    report = json.loads(line.removeprefix("RGBENCH "))
    errors = report["errors"]
    statuses = {k: int(v) for k, v in report["tallies"].items() if k.isdigit()}
    requests = int(report["requests"])
    if statuses:  # decisions.lua tallies every status
        ok_2xx = sum(v for k, v in statuses.items() if 200 <= int(k) < 300)
        non_2xx = sum(statuses.values()) - ok_2xx
    else:  # healthz.lua tallies nothing: wrk's own count of statuses >= 400
        non_2xx = int(errors["status"])
        ok_2xx = requests - non_2xx
    pct = report["latency_us"]["percentiles"]
    seconds = report["duration_us"] / 1e6
    return Run(
        endpoint=endpoint,
        connections=connections,
        requests=requests,
        seconds=seconds,
        per_s=requests / seconds,
        p50_ms=pct["50"] / 1e3,
        p90_ms=pct["90"] / 1e3,
        p99_ms=pct["99"] / 1e3,
        p999_ms=pct["99.9"] / 1e3,
        max_ms=report["latency_us"]["max"] / 1e3,
        non_2xx=non_2xx,
        socket_errors=sum(int(errors[k]) for k in ("connect", "read", "write", "timeout")),
        statuses=statuses,
        degraded=int(report["tallies"].get("degraded", 0)),
        not_recorded=int(report["tallies"].get("not_recorded", 0)),
        replayed=int(report["tallies"].get("replayed", 0)),
        cpu=CpuUse.between(before, after, cpus),
        ok_2xx=ok_2xx,
        outcomes={
            k.removeprefix("outcome_"): int(v)
            for k, v in report["tallies"].items()
            if k.startswith("outcome_")
        },
    )


# --------------------------------------------------------------------------------------------
# Server logs


_LEVEL = re.compile(r'"level":"(\w+)"')
_EVENT = re.compile(r'"event":"([^"]*)"')


@dataclass
class LogFindings:
    """Warnings and errors in the servers' output. Info lines (the access log) are skipped;
    a line that is not one whole JSON object (two records run together, a traceback, uvicorn's
    own text) is counted as such, and scanned for the levels of the records inside it."""

    events: Counter[str] = field(default_factory=Counter)  # "level event - config" -> count
    examples: dict[str, str] = field(default_factory=dict)
    not_json: Counter[str] = field(default_factory=Counter)  # config -> lines
    not_json_examples: dict[str, str] = field(default_factory=dict)

    def scan(self, path: Path, config: str) -> None:
        if not path.exists():
            return
        with path.open(encoding="utf-8", errors="replace") as lines:
            for raw in lines:
                line = raw.rstrip("\n")
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if isinstance(record, dict):
                    found = [(str(record.get("level", "?")), str(record.get("event", "?")))]
                else:
                    self.not_json[config] += 1
                    self.not_json_examples.setdefault(config, line[:400])
                    found = list(zip(_LEVEL.findall(line), _EVENT.findall(line), strict=False))
                for level, event in found:
                    if level in ("info", "debug"):
                        continue
                    key = f"{level} {event} - {config}"
                    self.events[key] += 1
                    self.examples.setdefault(key, line[:400])

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": dict(self.events),
            "examples": self.examples,
            "lines_not_one_json_object": dict(self.not_json),
            "not_json_examples": self.not_json_examples,
        }


# --------------------------------------------------------------------------------------------
# Aggregation


def _med(values: Sequence[float]) -> float:
    return statistics.median(values)


@dataclass(slots=True)
class Row:
    """The median over rounds of one (configuration, connections) cell."""

    config: ServerConfig
    connections: int
    rounds: int
    healthz_per_s: float
    per_s: float
    per_s_min: float
    per_s_max: float
    ratio: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    healthz_p99_ms: float
    non_2xx: int  # summed over the rounds
    socket_errors: int
    degraded: int
    not_recorded: int
    replayed: int
    rows_ok: bool
    rows_added: int
    ok_2xx: int
    server_cpu: float
    busiest_process_cpu: float  # the busiest server process (a uvicorn worker)
    wrk_cpu: float
    dependency_cpu: float
    machine_cpu: float
    kernel_cpu: float
    other_cpu: float
    healthz_other_cpu: float
    steal: float
    healthz_server_cpu: float
    healthz_wrk_cpu: float
    # CPU time per answer, in µs (steadier than rates on a VM whose speed drifts)
    healthz_server_us: float
    server_us: float  # per decision, the server's processes
    dependency_us: float  # per decision, PostgreSQL + Redis
    total_us: float  # per decision: server + pg/redis + wrk + kernel
    statuses: dict[str, int]
    backlog: float  # outbox messages left at the end of a run (median; after-decision rows)
    drain_s: float  # seconds the dispatcher needed to finish them (median)
    sustained_per_s: float  # 2xx / (run + drain), median

    @property
    def judged(self) -> bool:
        return (
            self.config.backend == "postgresql"
            and not self.config.after
            and self.config.workload == "default"
        )

    def verdicts(self) -> dict[str, bool]:
        v: dict[str, bool] = {}
        if self.judged:
            v["throughput"] = self.per_s >= TARGET_DECISIONS_PER_S
            v["p99"] = self.p99_ms <= TARGET_P99_MS
        v["ratio"] = self.ratio >= TARGET_RATIO
        v["no_errors"] = (
            self.non_2xx == 0
            and self.socket_errors == 0
            and self.rows_ok
            and self.replayed == 0  # every event_id is new: a replay means a repeated id
            and self.not_recorded == 0
        )
        return v

    def to_dict(self) -> dict[str, Any]:
        data = {
            k: (round(v, 3) if math.isfinite(v) else None) if isinstance(v, float) else v
            for k, v in ((f, getattr(self, f)) for f in self.__slots__)
            if k != "config"
        }
        data["cpu_bound_per_s"] = round(_cpu_bound(self), 1)
        data["config"] = asdict(self.config) | {"name": self.config.name}
        data["verdicts"] = self.verdicts()
        return data


def _us(pct: float, run: Run) -> float:
    """µs of CPU per answer, from a CPU share (% of one core) and the answer rate."""
    return pct / 100.0 * 1e6 / run.per_s if run.per_s else math.inf


def summarise(config: ServerConfig, connections: int, pairs: list[tuple[Run, Run]]) -> Row:
    health = [h for h, _ in pairs]
    runs = [d for _, d in pairs]
    statuses: Counter[str] = Counter()
    for r in runs:
        statuses.update(r.statuses)
    return Row(
        config=config,
        connections=connections,
        rounds=len(pairs),
        healthz_per_s=_med([h.per_s for h in health]),
        per_s=_med([r.per_s for r in runs]),
        per_s_min=min(r.per_s for r in runs),
        per_s_max=max(r.per_s for r in runs),
        ratio=_med([d.per_s / h.per_s for h, d in pairs]),
        p50_ms=_med([r.p50_ms for r in runs]),
        p90_ms=_med([r.p90_ms for r in runs]),
        p99_ms=_med([r.p99_ms for r in runs]),
        p999_ms=_med([r.p999_ms for r in runs]),
        healthz_p99_ms=_med([h.p99_ms for h in health]),
        non_2xx=sum(r.non_2xx for r in runs) + sum(h.non_2xx for h in health),
        socket_errors=sum(r.socket_errors for r in runs) + sum(h.socket_errors for h in health),
        degraded=sum(r.degraded for r in runs),
        not_recorded=sum(r.not_recorded for r in runs),
        replayed=sum(r.replayed for r in runs),
        rows_ok=all(r.rows_ok is True for r in runs),
        rows_added=sum(r.rows_added or 0 for r in runs),
        ok_2xx=sum(r.ok_2xx or 0 for r in runs),
        server_cpu=_med([r.cpu.server for r in runs]),
        busiest_process_cpu=_med([max(r.cpu.server_split, default=0.0) for r in runs]),
        wrk_cpu=_med([r.cpu.wrk for r in runs]),
        dependency_cpu=_med([r.cpu.dependencies for r in runs]),
        machine_cpu=_med([r.cpu.machine for r in runs]),
        kernel_cpu=_med([r.cpu.kernel for r in runs]),
        other_cpu=_med([r.cpu.other for r in runs]),
        healthz_other_cpu=_med([h.cpu.other for h in health]),
        steal=_med([r.cpu.steal for r in runs]),
        healthz_server_cpu=_med([h.cpu.server for h in health]),
        healthz_wrk_cpu=_med([h.cpu.wrk for h in health]),
        healthz_server_us=_med([_us(h.cpu.server, h) for h in health]),
        server_us=_med([_us(r.cpu.server, r) for r in runs]),
        dependency_us=_med([_us(r.cpu.dependencies, r) for r in runs]),
        total_us=_med(
            [_us(r.cpu.server + r.cpu.dependencies + r.cpu.wrk + r.cpu.kernel, r) for r in runs]
        ),
        statuses=dict(statuses),
        backlog=_med([r.backlog for r in runs]),
        drain_s=_med([r.drain_s for r in runs]),
        sustained_per_s=_med([r.sustained_per_s for r in runs]),
    )


def _verdict(ok: bool) -> str:
    return "[green]PASS[/]" if ok else "[red]FAIL[/]"


def _run_dict(run: Run) -> dict[str, Any]:
    data: dict[str, Any] = {
        k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(run).items()
    }
    cpu = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in asdict(run.cpu).items()}
    data["cpu"] = cpu | {"other": round(run.cpu.other, 1)}
    data["rows_ok"] = run.rows_ok
    return data


# --------------------------------------------------------------------------------------------
# The benchmark


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (whole)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument(
        "--connections-high",
        type=int,
        default=64,
        help="(b) is also measured at this many connections (0: skip)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="uvicorn processes for (b)"
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--warmup", type=int, default=3, help="unrecorded seconds per server (0: none)"
    )
    parser.add_argument("--timeout", type=int, default=10, help="wrk's request timeout (whole s)")
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=30.0,
        help="before starting each server, wait until the machine is at most this busy "
        "(%% of one core, over 1 s)",
    )
    parser.add_argument(
        "--max-wait", type=float, default=120.0, help="longest such wait, in seconds (0: never)"
    )
    parser.add_argument(
        "--max-other",
        type=float,
        default=40.0,
        help="measure a healthz + decisions pair again when other work took more than this "
        "(%% of one core) during it",
    )
    parser.add_argument("--retries", type=int, default=2, help="at most this many times")
    parser.add_argument("--only", choices=("sqlite", "postgresql"), default=None)
    parser.add_argument(
        "--no-access-log-round", action="store_true", help="skip the round with the access log"
    )
    parser.add_argument(
        "--after-decision",
        action="store_true",
        help="also run (b) with 1 worker and the outbox and audit log on, the dispatcher in the "
        "service and in a `riskguard worker` process (the other rows run with them off); "
        "prints their sustained throughput as a ratio to the run with them off",
    )
    parser.add_argument(
        "--after-modes",
        nargs="+",
        choices=tuple(AFTER_LABELS),
        default=["in-process", "worker", "worker-nice"],
        help="--after-decision: the layouts to run (worker-nice: the worker under nice; "
        "deferred, a diagnostic: the worker stopped during the load and started for the drain, "
        "which shows the service's own cost of the outbox apart from the worker's competition)",
    )
    parser.add_argument(
        "--worker-nice",
        type=int,
        default=10,
        help="the worker's nice value in the worker-nice layout",
    )
    parser.add_argument(
        "--after-workload",
        choices=("mixed", "default"),
        default="mixed",
        help="--after-decision: the events of the comparison (both sides). mixed: "
        "--risky-per-mille of the events from 50 accounts in a velocity burst (review/block, "
        "alerts), the rest from --mixed-accounts accounts paying once each (allowed), run "
        "against its own off row; default: the other rows' events, where nearly every decision "
        "alerts once the velocity state has warmed up (the worst case), against the (b) row",
    )
    parser.add_argument(
        "--after-only",
        action="store_true",
        help="--after-decision with mixed events: run only the comparison's rows (its off row "
        "and the layouts), not the decision-path rows (a third less time a round)",
    )
    parser.add_argument(
        "--after-paired",
        action="store_true",
        help="with --after-only: start the comparison's servers once, all side by side, and "
        "run each round's decisions runs back to back in ABBA order (no restart, healthz once "
        "per server): each pair is seconds apart instead of minutes, which a drifting shared "
        "machine needs",
    )
    parser.add_argument(
        "--risky-per-mille",
        type=int,
        default=50,
        help="mixed workload: risky events per 1000 (default 50: 5%%)",
    )
    parser.add_argument(
        "--mixed-accounts",
        type=int,
        default=1_000_000,
        help="mixed workload: the pool of ordinary accounts",
    )
    parser.add_argument("--log-dir", type=Path, default=None, help="keep the server logs here")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args(argv)
    if min(args.duration, args.rounds, args.connections, args.threads, args.timeout) < 1:
        parser.error("--duration, --rounds, --connections, --threads, --timeout must be >= 1")
    if args.warmup < 0 or args.connections_high < 0 or args.retries < 0:
        parser.error("--warmup, --connections-high and --retries cannot be negative")
    if args.threads > args.connections:
        parser.error("--threads cannot exceed --connections")
    if not 0 <= args.risky_per_mille <= 1000 or args.mixed_accounts < 1_000:
        parser.error("--risky-per-mille must be 0..1000 and --mixed-accounts at least 1000")
    if args.after_only and not (args.after_decision and args.after_workload == "mixed"):
        parser.error("--after-only needs --after-decision with --after-workload mixed")
    if args.after_paired and not args.after_only:
        parser.error("--after-paired needs --after-only")
    if args.after_paired and "in-process" in args.after_modes and len(args.after_modes) > 1:
        parser.error(
            "--after-paired: the in-process dispatcher cannot be stopped while another layout "
            "runs; run it alone"
        )
    if args.after_paired and args.connections_high:
        parser.error("--after-paired runs at --connections only: add --connections-high 0")
    if args.after_only and args.only == "sqlite":
        parser.error("--after-only runs on PostgreSQL: drop --only sqlite")
    return args


@contextmanager
def backends(args: argparse.Namespace, tmp: Path, secret: str) -> Iterator[dict[str, Backend]]:
    """The fresh stores of the run; dropped / deleted on the way out."""
    found: dict[str, Backend] = {}
    pg_name: str | None = None
    prefix: str | None = None
    try:
        if args.only in (None, "sqlite") and not args.after_only:
            found["sqlite"] = Backend(
                "sqlite", "(a) SQLite + in-memory", f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
            )
        if args.only in (None, "postgresql"):
            pg_name = f"riskguard_bench_http_{uuid.uuid4().hex[:8]}"
            asyncio.run(pg_admin(f'CREATE DATABASE "{pg_name}"'))
            prefix = f"bh{uuid.uuid4().hex[:8]}"
            found["postgresql"] = Backend(
                "postgresql",
                "(b) PostgreSQL + Redis",
                f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{pg_name}",
                redis_url=REDIS_URL,
                redis_prefix=prefix,
            )
        for backend in found.values():
            err.log(f"provisioning {backend.label}: {redact(backend.database_url)}")
            provision_backend(backend, secret)
        yield found
    finally:
        if pg_name is not None:
            with suppress(Exception):
                asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)'))
        if prefix is not None:
            try:
                n = _delete_redis_prefix(REDIS_URL, prefix)
                err.log(f"deleted {n:,} Redis keys under {prefix}:")
            except Exception as exc:  # report, do not mask the run's own outcome
                err.log(f"could not delete Redis keys under {prefix}: ({type(exc).__name__})")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (and SIGINT, which a background job ignores) unwind through the finally blocks:
    # the servers stop, the PostgreSQL database is dropped and the Redis keys deleted.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        wrk = find_wrk()
    except WrkMissing:
        print(
            "bench/http.py needs wrk, the HTTP load generator: install it with "
            "`apt-get install wrk` (Debian/Ubuntu), then run again.",
            file=sys.stderr,
        )
        return 2
    needs_services = args.only in (None, "postgresql")
    redis_host = httpx.URL(REDIS_URL)
    if needs_services and not (
        _reachable(PG_HOST, PG_PORT)
        and _reachable(redis_host.host or "127.0.0.1", redis_host.port or 6379)
    ):
        print(
            f"bench/http.py needs PostgreSQL ({PG_HOST}:{PG_PORT}) and Redis ({REDIS_URL}) for "
            "(b): run `make services` (or pass --only sqlite).",
            file=sys.stderr,
        )
        return 2

    started = time.perf_counter()
    machine = describe_machine()
    load_start = load_average()
    cpus = machine.logical_cpus
    if not out.is_terminal:
        out.width = 160
    out.rule("[bold]riskguard HTTP service benchmark")
    out.print(f"Machine: {machine.summary()}")
    wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    wrk_line = (wrk_version.stdout or wrk_version.stderr).splitlines()[0].strip()
    out.print(
        f"Load generator: {wrk_line}, {args.threads} thread(s), on the same machine. "
        f"{args.duration:g} s per run, {args.rounds} interleaved rounds; figures are medians."
    )

    high = args.connections_high
    configs: list[ServerConfig] = []
    if args.only in (None, "sqlite") and not args.after_only:
        configs.append(ServerConfig("sqlite", 1, False, (args.connections,)))
    if args.only in (None, "postgresql"):
        conns = (args.connections,) + ((high,) if high and high != args.connections else ())
        if not args.after_only:
            configs += [ServerConfig("postgresql", w, False, conns) for w in args.workers]
        if args.after_decision:
            workload = args.after_workload
            if workload != "default":  # the comparison's own off row
                configs.append(
                    ServerConfig("postgresql", 1, False, (args.connections,), workload=workload)
                )
            configs += [
                ServerConfig(
                    "postgresql", 1, False, (args.connections,), after=mode, workload=workload
                )
                for mode in args.after_modes
            ]
    log_configs = [
        ServerConfig(c.backend, c.workers, True, (args.connections,))
        for c in configs
        if not c.after and c.workload == "default"
    ]

    secret = secrets.token_urlsafe(32)
    configure_logging(load_settings(log_level="warning"), stream=sys.stderr)  # provisioning
    findings = LogFindings()
    runs: dict[tuple[ServerConfig, int], list[tuple[Run, Run]]] = {}
    crashed: list[str] = []
    tmp_holder = tempfile.TemporaryDirectory(prefix="rg-bench-http-")
    tmp = Path(tmp_holder.name)
    log_dir = args.log_dir or tmp
    log_dir.mkdir(parents=True, exist_ok=True)
    stores = Stores()

    background: list[dict[str, Any]] = []  # the machine before each measured pair of runs

    mixed_runs = itertools.count()

    def workload_args(server: Server, endpoint: str) -> tuple[str, ...]:
        if endpoint != "decisions" or server.workload != "mixed":
            return ()
        # each run starts 150,001 accounts on: no account pays twice within minutes
        first = next(mixed_runs) * 150_001 % args.mixed_accounts
        return (str(args.mixed_accounts), str(args.risky_per_mille), str(first))

    def go(server: Server, endpoint: str, conns: int, seconds: int, key: str = "") -> Run:
        return run_wrk(
            wrk,
            server,
            endpoint,
            connections=conns,
            duration=seconds,
            threads=args.threads,
            timeout=args.timeout,
            cpus=cpus,
            key=key,
            workload_args=workload_args(server, endpoint),
        )

    lopsided: list[str] = []

    def new_server(config: ServerConfig, backend: Backend, label: str) -> Server:
        name = f"server-{config.backend}-w{config.workers}"
        suffix = ("-accesslog" if config.access_log else "") + ("-after" if config.after else "")
        log_path = log_dir / f"{name}{suffix}-{label}.log"
        return Server(backend, config, secret, log_path, worker_nice=args.worker_nice)

    def start(server: Server, config: ServerConfig, backend: Backend, label: str) -> None:
        wait_for_quiet(cpus, args.quiet_below, args.max_wait)
        err.log(f"{label}: starting {config.name} (source {source_digest()})")
        server.start()
        if args.warmup > 0:
            go(server, "decisions", max(config.connections), args.warmup, backend.ingest_key)

    def one_server(config: ServerConfig, backend: Backend, label: str) -> None:
        server = new_server(config, backend, label)
        try:
            start(server, config, backend, label)
            for conns in config.connections:
                measure(server, config, backend, conns, label)
            if not server.alive():
                crashed.append(f"{config.name} ({label})")
        finally:
            server.stop()
            findings.scan(server.log_path, config.name)

    def measure(
        server: Server,
        config: ServerConfig,
        backend: Backend,
        conns: int,
        label: str,
        health: Run | None = None,
    ) -> None:
        """One healthz + decisions pair (the healthz run given: --after-paired measures it
        once per server), measured again while other work took over --max-other."""
        source = source_digest()
        given = health
        for attempt in range(1, args.retries + 2):
            if config.after:  # start with nothing left to dispatch (warm-up, retries)
                server.start_worker()
                stores.drain(backend.database_url, backend.tenant_id)
            if config.after == "deferred":
                server.stop_worker()
            busy, waited = wait_for_quiet(cpus, args.quiet_below, args.max_wait)
            health = given or go(server, "healthz", conns, args.duration)
            before = stores.settled_count(backend.database_url, backend.tenant_id)
            decided = go(server, "decisions", conns, args.duration, backend.ingest_key)
            # the backlog the moment the load stops; its drain is timed from then
            ended = (
                (time.monotonic(), stores.pending(backend.database_url, backend.tenant_id))
                if config.after
                else None
            )
            if config.after == "deferred":
                server.start_worker()
            if ended is not None:  # first: the counts below would compete with it
                decided.backlog, decided.drain_s = stores.drain(
                    backend.database_url, backend.tenant_id, since=ended
                )
            after = stores.settled_count(backend.database_url, backend.tenant_id)
            decided.rows_added = after - before
            other = decided.cpu.other if given else max(health.cpu.other, decided.cpu.other)
            err.log(
                f"  {config.name}, {conns} conns: healthz {health.per_s:,.0f}/s, "
                f"decisions {decided.per_s:,.0f}/s p50 {decided.p50_ms:.1f} ms p99 "
                f"{decided.p99_ms:.1f} ms, non-2xx {decided.non_2xx}, degraded "
                f"{decided.degraded}, rows +{decided.rows_added:,} for "
                f"{decided.ok_2xx:,} 2xx; CPU server {decided.cpu.server:.0f}% wrk "
                f"{decided.cpu.wrk:.0f}% pg+redis {decided.cpu.dependencies:.0f}% "
                f"kernel {decided.cpu.kernel:.0f}% other {other:.0f}%"
                + (
                    f"; per server process {list(decided.cpu.server_split)}"
                    if config.workers > 1 or config.after in WORKER_MODES
                    else ""
                )
                + (
                    f"; outbox backlog {decided.backlog:,} done in "
                    f"{decided.drain_s:.1f} s: sustained "
                    f"{decided.sustained_per_s:,.0f} decisions/s"
                    if config.after
                    else ""
                )
            )
            if other <= args.max_other or attempt > args.retries:
                break
            busiest = decided.cpu.top_other + ([] if given else health.cpu.top_other)
            err.log(
                f"  other work used {other:.0f}% of a core meanwhile (busiest: "
                f"{', '.join(f'{n} {p:.0f}%' for n, p in busiest[:3])}): measuring again"
            )
        runs.setdefault((config, conns), []).append((health, decided))
        if decided.cpu.lopsided(config.workers):
            lopsided.append(
                f"{config.name}, {conns} connections, {label}: {decided.per_s:,.0f} "
                f"decisions/s, CPU per server process {list(decided.cpu.server_split)}"
            )
        background.append(
            {
                "server": config.name,
                "connections": conns,
                "label": label,
                "busy_before_pct": round(busy, 1),
                "waited_s": waited,
                "attempts": attempt,
                "other_pct": round(other, 1),
                "contended": other > args.max_other,
                "source": source,
            }
        )

    def paired(backend: Backend) -> None:
        """--after-paired: the comparison's servers all up at once, each warmed up and its
        healthz measured once; then per round one decisions run of each, back to back, in
        ABBA order (reversed every other round), so that a pair is measured within seconds
        of each other and the machine's drift over minutes falls on both sides alike."""
        conns = args.connections
        servers: dict[ServerConfig, Server] = {}
        health: dict[ServerConfig, Run] = {}
        try:
            for config in configs:
                servers[config] = new_server(config, backend, "paired")
                start(servers[config], config, backend, "paired")
            for config, server in servers.items():
                wait_for_quiet(cpus, args.quiet_below, args.max_wait)
                health[config] = go(server, "healthz", conns, args.duration)
            for r in range(args.rounds):
                t0 = time.perf_counter()
                order = configs if r % 2 == 0 else configs[::-1]
                for config in order:
                    for other in servers.values():
                        # one dispatcher at a time on the outbox; an idle one, on a drained
                        # outbox, stays up during the off runs
                        if config.after and other is not servers[config]:
                            other.stop_worker()
                    measure(
                        servers[config], config, backend, conns, f"round{r + 1}", health[config]
                    )
                err.log(f"round {r + 1}/{args.rounds} in {time.perf_counter() - t0:.0f} s")
            for config, server in servers.items():
                if not server.alive():
                    crashed.append(f"{config.name} (paired)")
        finally:
            for config, server in servers.items():
                server.stop()
                findings.scan(server.log_path, config.name)

    try:
        with backends(args, tmp, secret) as found:
            try:
                if args.after_paired:
                    paired(found["postgresql"])
                for r in range(0 if args.after_paired else args.rounds):
                    t0 = time.perf_counter()
                    order = configs[r % len(configs) :] + configs[: r % len(configs)]
                    for config in order:
                        one_server(config, found[config.backend], f"round{r + 1}")
                    err.log(f"round {r + 1}/{args.rounds} in {time.perf_counter() - t0:.0f} s")
                if not args.no_access_log_round:
                    for config in log_configs:
                        one_server(config, found[config.backend], "accesslog")
            finally:
                stores.close()  # before the database is dropped
    finally:
        tmp_holder.cleanup()  # the SQLite file (and the logs, unless --log-dir)

    rows = [summarise(c, n, runs[(c, n)]) for c in configs for n in c.connections]
    log_rows = [
        summarise(c, n, runs[(c, n)]) for c in log_configs for n in c.connections if (c, n) in runs
    ]
    print_results(args, rows, log_rows)
    headline = print_targets(args, rows)
    after_decision = print_after_decision(args, runs) if args.after_decision else None
    print_findings(findings, crashed)
    if lopsided:
        out.print(
            "[yellow]Decision runs where one of the uvicorn workers did nearly all the work[/] "
            "(it accepted every connection; wrk's keep-alive connections never move):"
        )
        for line in lopsided:
            out.print(f"  {line}", markup=False, highlight=False)
    sources = sorted({b["source"] for b in background})
    if len(sources) > 1:
        out.print(
            f"[red]The service's source changed during the run[/] ({len(sources)} versions: "
            f"{', '.join(sources)}): these figures mix code versions; run again on fixed code."
        )
    else:
        out.print(f"Service source digest (src/riskguard): {sources[0]}, the same for every run.")
    contended = [b for b in background if b["contended"]]
    out.print(
        f"Shared machine: waited {sum(b['waited_s'] for b in background):.0f} s in all for "
        f"other work to drop below {args.quiet_below:g}% of a core before runs; "
        f"{sum(b['attempts'] - 1 for b in background)} pair(s) measured again because other "
        f"work took over {args.max_other:g}% during them; {len(contended)} of "
        f"{len(background)} kept pairs still contended"
        + (
            ": " + ", ".join(f"{b['server']} {b['connections']}c" for b in contended) + "."
            if contended
            else "."
        )
    )

    summary: dict[str, Any] = {
        "benchmark": "http",
        "machine": machine.to_dict(),
        "load_generator": {"wrk": wrk_line, "threads": args.threads, "timeout_s": args.timeout},
        "config": {
            "duration_s": args.duration,
            "connections": args.connections,
            "connections_high": high,
            "rounds": args.rounds,
            "workers": args.workers,
            "warmup_s": args.warmup,
            "quiet_below_pct": args.quiet_below,
            "after_modes": args.after_modes if args.after_decision else [],
            "after_workload": args.after_workload if args.after_decision else None,
            "risky_per_mille": args.risky_per_mille if args.after_decision else None,
            "mixed_accounts": args.mixed_accounts if args.after_decision else None,
            "worker_nice": args.worker_nice,
            "max_wait_s": args.max_wait,
            "max_other_pct": args.max_other,
            "retries": args.retries,
            "server_env": {
                "RISKGUARD_LOG_LEVEL": "info",
                "PYTHONUNBUFFERED": os.environ.get("PYTHONUNBUFFERED"),
            },
            "event": "transaction, unique event_id per request (bench/wrk/decisions.lua)",
            "statistic": "median over rounds; ratio = decisions/s / healthz req/s within a round",
        },
        "targets": {
            "decisions_per_s": TARGET_DECISIONS_PER_S,
            "p99_ms": TARGET_P99_MS,
            "ratio": TARGET_RATIO,
            "judged_on": "(b) PostgreSQL + Redis at --connections, the worker count with the "
            "most decisions/s",
            "headline": headline,
        },
        "results": [row.to_dict() for row in rows],
        "after_decision": after_decision,
        "access_log_round": [row.to_dict() for row in log_rows],
        "runs": [
            {
                "config": c.name,
                "connections": n,
                "round": i + 1,
                "healthz": _run_dict(h),
                "decisions": _run_dict(d),
            }
            for (c, n), pairs in runs.items()
            for i, (h, d) in enumerate(pairs)
        ],
        "source_digests": sources,
        "git_head": _git_head(),
        "pairs": background,
        "server_logs": findings.to_dict(),
        "servers_died": crashed,
        "lopsided_worker_runs": lopsided,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "load_average": {"start": load_start, "end": load_average()},
    }
    out.print(
        f"Total time {summary['elapsed_s']} s. Load average (1/5/15 min) at the start "
        f"{load_start}, at the end {summary['load_average']['end']} on {cpus} CPUs (server, "
        "wrk, PostgreSQL and Redis all share them)."
    )
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary))
    return 0


def _git_head() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True, text=True
        )
    except OSError:
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + (" + uncommitted changes in src/" if dirty.stdout.strip() else "")


def _backend(config: ServerConfig) -> str:
    return "(a) sqlite+mem" if config.backend == "sqlite" else "(b) pg+redis"


def _cpu_bound(row: Row) -> float:
    """Decisions/s if CPU were the only limit: all CPUs at the measured cost per decision, and
    the server's processes at most one core each."""
    if not (row.total_us > 0 and row.server_us > 0 and math.isfinite(row.total_us)):
        return 0.0
    machine = CPUS * 1e6 / row.total_us
    server = min(row.config.workers, CPUS) * 1e6 / row.server_us
    return min(machine, server)


def print_results(args: argparse.Namespace, rows: list[Row], log_rows: list[Row]) -> None:
    table = Table(
        title=f"POST /v1/decisions vs GET /healthz of the same server: median of {args.rounds} "
        f"rounds of {args.duration:g} s",
        title_justify="left",
    )
    table.add_column("backend", no_wrap=True)
    for column in (
        "w", "conns", "healthz/s", "decisions/s", "min-max", "ratio", "p50 ms", "p90 ms",
        "p99 ms", "p99.9 ms", "non-2xx", "degraded", "rows",
    ):  # fmt: skip
        table.add_column(column, justify="right")
    for row in rows:
        errors = row.non_2xx + row.socket_errors
        table.add_row(
            _backend(row.config),
            str(row.config.workers),
            str(row.connections),
            f"{row.healthz_per_s:,.0f}",
            f"{row.per_s:,.0f}",
            f"{row.per_s_min:,.0f}-{row.per_s_max:,.0f}",
            f"{100 * row.ratio:.0f}%",
            f"{row.p50_ms:.1f}",
            f"{row.p90_ms:.1f}",
            f"{row.p99_ms:.1f}",
            f"{row.p999_ms:.1f}",
            f"[red]{errors:,}[/]" if errors else "0",
            f"[yellow]{row.degraded:,}[/]" if row.degraded else "0",
            "ok" if row.rows_ok else "[red]NO[/]",
        )
    out.print(table)
    out.print(
        "w: uvicorn worker processes. ratio: decisions/s over /healthz req/s of the same server "
        "process at the same connections, measured right before (median of per-round ratios). "
        "Latency: wrk's, closed loop (a connection sends its next request when the answer "
        "arrives). non-2xx: non-2xx answers and socket errors summed over the rounds, healthz "
        "included. degraded: 2xx decisions taken by the failure policy (state store over budget), "
        "summed. rows: each round the tenant's decision rows grew by the 2xx answers (plus at "
        "most one request per connection wrk abandoned at its end)."
    )
    cost = Table(
        title="Where the CPU goes during the decision runs (medians)", title_justify="left"
    )
    cost.add_column("backend", no_wrap=True)
    for column in (
        "w", "conns", "% server", "% wrk", "% pg+redis", "% kernel", "% other",
        "µs: healthz server", "decision server", "pg+redis", "all", "x healthz", "CPU-bound /s",
    ):  # fmt: skip
        cost.add_column(column, justify="right")
    for row in rows:
        cost.add_row(
            _backend(row.config),
            str(row.config.workers),
            str(row.connections),
            f"{row.server_cpu:.0f}",
            f"{row.wrk_cpu:.0f}",
            f"{row.dependency_cpu:.0f}",
            f"{row.kernel_cpu:.0f}",
            f"{row.other_cpu:.0f}",
            f"{row.healthz_server_us:,.0f}",
            f"{row.server_us:,.0f}",
            f"{row.dependency_us:,.0f}",
            f"{row.total_us:,.0f}",
            f"{row.server_us / row.healthz_server_us:.1f}" if row.healthz_server_us else "-",
            f"{_cpu_bound(row):,.0f}",
        )
    out.print(cost)
    out.print(
        f"%: CPU in % of one core ({CPUS} CPUs: {100 * CPUS}% is the whole machine). kernel: "
        "interrupts, softirqs (loopback networking), kernel threads; other: the rest of the "
        "machine's busy time (other work on a shared VM). µs: CPU time per answer — the "
        "server's per /healthz answer, then per decision: the server's, PostgreSQL + Redis's, "
        "and all (server + pg/redis + wrk + kernel). x healthz: server CPU per decision over "
        "per healthz answer. CPU-bound /s: decisions/s if CPU were the only limit (all CPUs at "
        "'all' µs each, the server's processes at most one core each)."
    )
    if not log_rows:
        return
    base = {(r.config.backend, r.config.workers, r.connections): r for r in rows}
    table = Table(title="The same with the access log on (one round)", title_justify="left")
    table.add_column("backend", no_wrap=True)
    for column in ("w", "conns"):
        table.add_column(column, justify="right")
    for column in (
        "healthz/s", "decisions/s", "vs log off", "p50 ms", "p99 ms", "non-2xx", "degraded",
        "rows", "CPU: server", "other",
    ):  # fmt: skip
        table.add_column(column, justify="right")
    for row in log_rows:
        ref = base.get((row.config.backend, row.config.workers, row.connections))
        errors = row.non_2xx + row.socket_errors
        table.add_row(
            _backend(row.config),
            str(row.config.workers),
            str(row.connections),
            f"{row.healthz_per_s:,.0f}",
            f"{row.per_s:,.0f}",
            f"{100 * row.per_s / ref.per_s:.0f}%" if ref else "-",
            f"{row.p50_ms:.1f}",
            f"{row.p99_ms:.1f}",
            f"[red]{errors:,}[/]" if errors else "0",
            f"[yellow]{row.degraded:,}[/]" if row.degraded else "0",
            "ok" if row.rows_ok else "[red]NO[/]",
            f"{row.server_cpu:.0f}%",
            f"{row.other_cpu:.0f}%",
        )
    out.print(table)
    out.print(
        "vs log off: decisions/s against the median with the access log off (one round against "
        "the median of several: a rough figure on a noisy machine)."
    )


def print_targets(args: argparse.Namespace, rows: list[Row]) -> dict[str, Any] | None:
    table = Table(
        title="Targets per row: throughput and p99 are set for (b); the ratio and errors are "
        "judged everywhere",
        title_justify="left",
    )
    table.add_column("backend", no_wrap=True)
    for column in ("w", "conns"):
        table.add_column(column, justify="right")
    for column in (
        f">= {TARGET_DECISIONS_PER_S:,.0f}/s",
        f"p99 <= {TARGET_P99_MS:g} ms",
        f"ratio >= {100 * TARGET_RATIO:.0f}%",
        "no errors",
    ):
        table.add_column(column, justify="center")
    table.add_column("degraded (info)", justify="right")
    for row in rows:
        v = row.verdicts()
        table.add_row(
            _backend(row.config),
            str(row.config.workers),
            str(row.connections),
            _verdict(v["throughput"]) if "throughput" in v else "-",
            _verdict(v["p99"]) if "p99" in v else "-",
            _verdict(v["ratio"]),
            _verdict(v["no_errors"]),
            f"{row.degraded:,}",
        )
    out.print(table)
    judged = [r for r in rows if r.judged and r.connections == args.connections]
    if not judged:
        out.print("(b) was not run: no headline verdict.")
        return None
    # The setting to deploy: the fastest one that meets every target, else the fastest.
    meeting = [r for r in judged if all(r.verdicts().values())]
    best = max(meeting or judged, key=lambda r: r.per_s)
    v = best.verdicts()
    passed = all(v.values())
    why = "the faster setting meeting every target" if meeting else "the faster setting"
    out.print(
        f"Headline — (b) PostgreSQL + Redis, {best.config.workers} worker(s) ({why}), "
        f"{best.connections} connections: {best.per_s:,.0f} decisions/s "
        f"{_verdict(v['throughput'])}, p99 {best.p99_ms:.1f} ms {_verdict(v['p99'])}, "
        f"{100 * best.ratio:.0f}% of /healthz {_verdict(v['ratio'])}, errors "
        f"{_verdict(v['no_errors'])} — overall {_verdict(passed)}. Degraded decisions over "
        f"the rounds: {best.degraded:,} of {best.ok_2xx:,}."
    )
    return {
        "workers": best.config.workers,
        "connections": best.connections,
        "decisions_per_s": round(best.per_s, 1),
        "p99_ms": round(best.p99_ms, 2),
        "ratio": round(best.ratio, 3),
        "verdicts": v,
        "pass": passed,
        "degraded": best.degraded,
    }


def print_after_decision(
    args: argparse.Namespace, runs: dict[tuple[ServerConfig, int], list[tuple[Run, Run]]]
) -> dict[str, Any] | None:
    """Issue 6's ratio: decisions/s with the outbox and audit log on over the same 1-worker
    server with them off, round by round (the pair ran back to back), then the median."""
    conns = args.connections
    workload = args.after_workload
    off = runs.get((ServerConfig("postgresql", 1, False, (conns,), workload=workload), conns))
    if off is None:
        return None
    events = (
        f"mixed events: {args.risky_per_mille / 10:g}% from accounts in a velocity burst"
        if workload == "mixed"
        else "the default events: nearly every decision alerts"
    )
    table = Table(
        title=f"What follows a decision: (b) 1 worker, {conns} connections, the outbox + audit "
        f"log on vs off, {events} (medians of per-round ratios)",
        title_justify="left",
    )
    for column in (
        "dispatcher",
        "decisions/s",
        "p99 ms",
        "review+block",
        "backlog at end",
        "drained in s",
    ):
        table.add_column(column, justify="right" if column != "dispatcher" else "left")
    for column in ("sustained/s", "ratio (rate)", f"ratio (sustained) >= {TARGET_AFTER_RATIO}"):
        table.add_column(column, justify="right")
    off_rate = _med([d.per_s for _, d in off])
    off_alerting = _med([d.alerting for _, d in off])
    table.add_row(
        "off",
        f"{off_rate:,.0f}",
        f"{_med([d.p99_ms for _, d in off]):.1f}",
        f"{off_alerting:.1%}",
        "-",
        "-",
        "-",
        "-",
        "-",
    )
    results: dict[str, Any] = {
        "workload": workload,
        "risky_per_mille": args.risky_per_mille if workload == "mixed" else None,
        "mixed_accounts": args.mixed_accounts if workload == "mixed" else None,
        "off_decisions_per_s": round(off_rate, 1),
        "off_review_block_share": round(off_alerting, 4),
        "modes": {},
    }
    for mode, label in AFTER_LABELS.items():
        if mode == "worker-nice":
            label = f"riskguard worker, nice {args.worker_nice}"
        config = ServerConfig("postgresql", 1, False, (conns,), after=mode, workload=workload)
        pairs = runs.get((config, conns))
        if not pairs:
            continue
        n = min(len(pairs), len(off))
        rate_ratio = _med([pairs[i][1].per_s / off[i][1].per_s for i in range(n)])
        sustained_ratio = _med([pairs[i][1].sustained_per_s / off[i][1].per_s for i in range(n)])
        ok = sustained_ratio >= TARGET_AFTER_RATIO
        decided = [d for _, d in pairs]
        table.add_row(
            label,
            f"{_med([d.per_s for d in decided]):,.0f}",
            f"{_med([d.p99_ms for d in decided]):.1f}",
            f"{_med([d.alerting for d in decided]):.1%}",
            f"{_med([d.backlog for d in decided]):,.0f}",
            f"{_med([d.drain_s for d in decided]):.1f}",
            f"{_med([d.sustained_per_s for d in decided]):,.0f}",
            f"{rate_ratio:.2f}",
            f"{sustained_ratio:.2f} {_verdict(ok)}",
        )
        results["modes"][mode] = {
            "dispatcher": label,
            "decisions_per_s": round(_med([d.per_s for d in decided]), 1),
            "p99_ms": round(_med([d.p99_ms for d in decided]), 2),
            "review_block_share": round(_med([d.alerting for d in decided]), 4),
            "backlog": _med([d.backlog for d in decided]),
            "drain_s": round(_med([d.drain_s for d in decided]), 2),
            "sustained_per_s": round(_med([d.sustained_per_s for d in decided]), 1),
            "ratio_rate": round(rate_ratio, 3),
            "ratio_sustained": round(sustained_ratio, 3),
            "round_ratios_sustained": [
                round(pairs[i][1].sustained_per_s / off[i][1].per_s, 3) for i in range(n)
            ],
            "pass": ok,
        }
    out.print(table)
    out.print(
        "review+block: the share of decisions whose outcome opens or joins an alert. "
        "backlog: outbox messages (alerts, audit records, stream events still to do) left when "
        "the run ended; sustained = 2xx answers / (run + the time the dispatcher then needed to "
        "finish them) — the rate at which decisions AND what follows them are done. The ratio "
        "judged is the sustained one, per round against the run with them off, then the median."
    )
    return results


def print_findings(findings: LogFindings, crashed: list[str]) -> None:
    if crashed:
        out.print(f"[red]Servers that died during a run:[/] {', '.join(crashed)}")
    if not findings.events and not findings.not_json:
        out.print("Server logs: no warnings or errors, every line one JSON object.")
        return
    out.print("[yellow]Server logs[/]: warnings and errors (count, level, event - configuration)")
    for key, n in findings.events.most_common():
        out.print(f"  {n:>7,}  {key}", markup=False, highlight=False)
        out.print(
            f"           e.g. {findings.examples[key]}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    for config, n in findings.not_json.most_common():
        out.print(
            f"  {n:>7,}  lines that are not one JSON object - {config}; e.g.",
            markup=False,
            highlight=False,
        )
        out.print(
            f"           {findings.not_json_examples[config]}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


if __name__ == "__main__":
    sys.exit(main())
