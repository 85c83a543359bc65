"""Gateway benchmark: the latency ``riskguard gateway`` adds, and its throughput, next to NGINX.

One upstream — NGINX serving a fixed 11-byte JSON answer (``return 200``, one worker, access log
off) — is called three ways on loopback, with the same requests:

(a) **direct**: wrk → upstream;
(b) **NGINX proxy**: wrk → NGINX (one worker, ``proxy_pass`` with upstream keep-alive) →
    upstream — the reference a Python proxy is compared with;
(c) **riskguard gateway**: wrk → ``python -m riskguard gateway`` (one process; JWT verified,
    GCRA rate limit, risk decision by the default pack with in-memory feature state, every
    decision recorded with its outbox message in a fresh SQLite file, or with ``--store
    postgresql`` a fresh PostgreSQL database; the outbox dispatcher — alerts, audit log — runs
    in the gateway process as it does by default, in a ``riskguard worker`` process beside it
    with ``--dispatcher worker``, or not at all with ``--dispatcher off``) → upstream.

Requests: ``GET /v1/r<k>/items/<n>`` with ``Authorization: Bearer <ES256 JWT>`` of one of
``--services`` calling services (so the gateway sees many (service, route) pairs: verification
cache, rate-limit keys, feature state and route templates all vary) and 20 routes. Each target
runs, per round:

- **fixed rate** (``--rate``, 1,000 req/s): wrk with ``bench/wrk/gateway_paced.lua`` — one
  connection per wrk thread (``--paced-threads``), each sending on its own schedule, latency
  measured without coordinated omission (see the script). wrk2 is not available; this is wrk
  with pacing done in Lua.
- **maximum rate**: wrk closed-loop with ``--connections`` connections,
  ``bench/wrk/gateway_max.lua``.

*Added latency* = the gateway's (or NGINX's) percentile minus direct's, at the fixed rate.
Targets: added p50 ≤ 1 ms and p99 ≤ 3 ms at 1,000 req/s; maximum gateway throughput ≥ 2,500
req/s; the ratio to NGINX's maximum is reported. Targets run interleaved, one round at a time,
``--rounds`` rounds, each round starting from another target; every figure is the MEDIAN over the
rounds. Before each run the harness waits (up to ``--max-wait`` s) for the shared machine to be
at most ``--quiet-below`` % busy; the CPU taken by the proxy under test, wrk, and everything
else during each run is reported. Non-2xx answers, wrk errors and any decision not recorded
are reported (the gateway's decisions are counted in its database at the end). Output: the
machine, the tables, PASS/FAIL per target, then the JSON summary as the last line of stdout.

    .venv/bin/python bench/gateway.py                       # about 5 minutes
    .venv/bin/python bench/gateway.py --rounds 1 --duration 8 --json bench-gateway.json

Needs ``wrk`` and ``nginx`` (Debian packages).
"""

# ruff: noqa: E402

from __future__ import annotations

import sys
from pathlib import Path

# bench/ is sys.path[0] when this runs, and bench/http.py there would shadow the standard
# library's ``http`` package for httpx: put bench/ last, where _machine is still found.
BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR] + [str(BENCH_DIR)]

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
from joserfc import jwt
from joserfc.jwk import ECKey
from rich.console import Console
from rich.table import Table

from _machine import describe_machine, load_average
from _services import PG_HOST, PG_PORT, PG_USER, REDIS_URL, pg_admin

ROOT: Final = BENCH_DIR.parent
WRK_DIR: Final = BENCH_DIR / "wrk"
NGINX: Final = Path("/usr/sbin/nginx")
ISSUER: Final = "https://idp.bench.internal"
AUDIENCE: Final = "riskguard-gateway"
TARGET_ADDED_P50_MS: Final = 1.0
TARGET_ADDED_P99_MS: Final = 3.0
TARGET_MAX_RPS: Final = 2_500.0
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
CPUS: Final = os.cpu_count() or 1
TARGETS: Final = ("direct", "nginx", "gateway")
LABELS: Final = {
    "direct": "direct (upstream)",
    "nginx": "NGINX proxy",
    "gateway": "riskguard gateway",
}

out = Console(width=150)
err = Console(stderr=True)

UPSTREAM_CONF = """
worker_processes 1;
pid {tmp}/upstream.pid;
error_log {tmp}/upstream-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/u-body; proxy_temp_path {tmp}/u-proxy;
    fastcgi_temp_path {tmp}/u-fcgi; uwsgi_temp_path {tmp}/u-uwsgi; scgi_temp_path {tmp}/u-scgi;
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 1000000;
        location / {{ default_type application/json; return 200 '{{"ok":true}}'; }}
    }}
}}
"""

PROXY_CONF = """
worker_processes 1;
pid {tmp}/proxy.pid;
error_log {tmp}/proxy-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/p-body; proxy_temp_path {tmp}/p-proxy;
    fastcgi_temp_path {tmp}/p-fcgi; uwsgi_temp_path {tmp}/p-uwsgi; scgi_temp_path {tmp}/p-scgi;
    upstream up {{ server 127.0.0.1:{upstream}; keepalive 64; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------------
# CPU accounting from /proc


def _ticks(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def _tree(root: int) -> list[int]:
    """``root`` and its descendants (NGINX's workers)."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                text = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(text[text.rindex(")") + 2 :].split()[1])
    tree = {root}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return sorted(tree)


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) ticks of all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def wait_for_quiet(below: float, max_wait: float) -> float:
    """Wait (up to ``max_wait`` s) until the machine is at most ``below`` % busy (of one core)
    over a second; returns the seconds waited."""
    waited = 0.0
    while True:
        a = _machine_ticks()
        time.sleep(1.0)
        b = _machine_ticks()
        busy = 100.0 * CPUS * (b[0] - a[0]) / max(1, b[1] - a[1])
        if busy <= below or waited >= max_wait:
            if waited:
                err.log(f"  waited {waited:.0f} s for other work (now {busy:.0f}% busy)")
            return waited
        time.sleep(2.0)
        waited += 3.0


@dataclass
class CpuWindow:
    """CPU over one run: the proxy under test, the upstream, wrk, and the whole machine."""

    proxy: list[int]
    upstream: list[int]
    start: tuple[float, int, int, tuple[int, int], float] | None = None

    def begin(self) -> None:
        children = os.times()
        self.start = (
            time.monotonic(),
            sum(_ticks(p) for p in self.proxy),
            sum(_ticks(p) for p in self.upstream),
            _machine_ticks(),
            children.children_user + children.children_system,
        )

    def end(self) -> dict[str, float]:
        assert self.start is not None
        wall0, proxy0, upstream0, machine0, wrk0 = self.start
        wall = time.monotonic() - wall0
        children = os.times()
        machine1 = _machine_ticks()
        busy = 100.0 * CPUS * (machine1[0] - machine0[0]) / max(1, machine1[1] - machine0[1])
        proxy = 100.0 * (sum(_ticks(p) for p in self.proxy) - proxy0) / CLK_TCK / wall
        upstream = 100.0 * (sum(_ticks(p) for p in self.upstream) - upstream0) / CLK_TCK / wall
        wrk = 100.0 * (children.children_user + children.children_system - wrk0) / wall
        return {
            "proxy_cpu_pct": round(proxy, 1),
            "upstream_cpu_pct": round(upstream, 1),
            "wrk_cpu_pct": round(wrk, 1),
            "machine_busy_pct": round(busy, 1),
            "other_cpu_pct": round(max(0.0, busy - proxy - upstream - wrk), 1),
        }


# --------------------------------------------------------------------------------------------
# Processes


@dataclass
class Processes:
    """Every process the benchmark started, stopped at the end whatever happens."""

    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    pg_database: str | None = None  # created for the run (--store postgresql), dropped at the end
    redis_prefix: str | None = None  # the run's keys (--gateway-workers > 1), deleted at the end

    def start(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> Any:
        with open(log, "ab") as out_file:
            process = subprocess.Popen(
                args, stdout=out_file, stderr=subprocess.STDOUT, env=env, cwd=ROOT
            )
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.started):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.redis_prefix is not None:
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            try:
                keys = list(client.scan_iter(match=f"{self.redis_prefix}:*", count=1000))
                for at in range(0, len(keys), 1000):
                    client.delete(*keys[at : at + 1000])
            finally:
                client.close()
            self.redis_prefix = None
        if self.pg_database is not None:
            asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{self.pg_database}" WITH (FORCE)'))
            self.pg_database = None


def wait_http(url: str, process: Any, what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode} (see its log)")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"{what} did not answer at {url} in {timeout:g} s")


def make_tokens(folder: Path, services: int) -> tuple[Path, Path]:
    """A JWKS file with one ES256 key, and a file of tokens, one per calling service."""
    key = ECKey.generate_key("P-256", private=True)
    public = key.as_dict(private=False) | {"kid": "bench", "use": "sig", "alg": "ES256"}
    jwks = folder / "jwks.json"
    jwks.write_text(json.dumps({"keys": [public]}))
    now = int(time.time())
    tokens = folder / "tokens.txt"
    with tokens.open("w") as f:
        for i in range(services):
            claims = {
                "iss": ISSUER,
                "aud": AUDIENCE,
                "sub": f"svc-bench-{i:04d}",
                "iat": now,
                "exp": now + 6 * 3600,
                "deployment": "rel-1",
            }
            f.write(jwt.encode({"alg": "ES256", "kid": "bench"}, claims, key) + "\n")
    return jwks, tokens


@contextmanager
def stack(folder: Path, args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """The upstream, the NGINX proxy and the gateway, running; their URLs and processes."""
    procs = Processes()
    try:
        up_port, proxy_port, gw_port = free_port(), free_port(), free_port()
        (folder / "upstream.conf").write_text(UPSTREAM_CONF.format(tmp=folder, port=up_port))
        (folder / "proxy.conf").write_text(
            PROXY_CONF.format(tmp=folder, port=proxy_port, upstream=up_port)
        )
        nginx_args = ["-p", str(folder), "-e", str(folder / "nginx-start.log"), "-g", "daemon off;"]
        upstream = procs.start(
            [str(NGINX), *nginx_args, "-c", str(folder / "upstream.conf")], folder / "up.out"
        )
        proxy = procs.start(
            [str(NGINX), *nginx_args, "-c", str(folder / "proxy.conf")], folder / "proxy.out"
        )
        jwks, tokens = make_tokens(folder, args.services)
        config = {
            "listen": {"host": "127.0.0.1", "port": gw_port},
            "upstreams": {"bench": {"url": f"http://127.0.0.1:{up_port}", "max_idle": 256}},
            "routes": [{"prefix": "/", "upstream": "bench"}],
            "risk": {"tenant": "bench-gateway"},
        }
        (folder / "gateway.yaml").write_text(json.dumps(config))
        if args.store == "postgresql":  # a fresh database, dropped on the way out
            pg_name = f"riskguard_bench_gw_{os.getpid()}_{int(time.time())}"
            asyncio.run(pg_admin(f'CREATE DATABASE "{pg_name}"'))
            procs.pg_database = pg_name
            database_url = f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{pg_name}"
        else:
            database_url = f"sqlite+aiosqlite:///{folder / 'riskguard.db'}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RISKGUARD_")}
        if args.gateway_workers > 1:  # shared feature state and rate limits
            procs.redis_prefix = f"bgw{os.getpid()}x{int(time.time())}"
            env.update(
                RISKGUARD_REDIS_URL=REDIS_URL,
                RISKGUARD_REDIS_PREFIX=procs.redis_prefix,
                # its event streams go with its keys at the end (matched by the prefix)
                RISKGUARD_STREAM_PREFIX=f"{procs.redis_prefix}:",
            )
        env.update(
            RISKGUARD_DATABASE_URL=database_url,
            RISKGUARD_JWT_KEYS_FILE=str(jwks),
            RISKGUARD_JWT_ISSUER=ISSUER,
            RISKGUARD_JWT_AUDIENCE=AUDIENCE,
            RISKGUARD_JWT_ALGORITHMS="ES256",
            RISKGUARD_ACCESS_LOG="false",
            RISKGUARD_LOG_LEVEL="warning",
            RISKGUARD_DISPATCHER="true" if args.dispatcher == "on" else "false",
            RISKGUARD_AUDIT_SIGNING_KEY=str(folder / "audit.key"),
        )
        gateway = procs.start(
            [
                sys.executable,
                "-m",
                "riskguard",
                "gateway",
                "--config",
                str(folder / "gateway.yaml"),
                "--workers",
                str(args.gateway_workers),
            ],
            folder / "gateway.log",
            env,
        )
        worker = None
        if args.dispatcher == "worker":  # the production layout: delivery in its own process
            worker = procs.start(
                ["nice", "-n", str(args.worker_nice), sys.executable, "-m", "riskguard", "worker"],
                folder / "worker.log",
                env | {"RISKGUARD_AUTO_MIGRATE": "false"},
            )
        wait_http(f"http://127.0.0.1:{up_port}/", upstream, "the upstream NGINX")
        wait_http(f"http://127.0.0.1:{proxy_port}/", proxy, "the proxy NGINX")
        wait_http(f"http://127.0.0.1:{gw_port}/_riskguard/healthz", gateway, "the gateway")
        yield {
            "urls": {
                "direct": f"http://127.0.0.1:{up_port}",
                "nginx": f"http://127.0.0.1:{proxy_port}",
                "gateway": f"http://127.0.0.1:{gw_port}",
            },
            "upstream_pids": _tree(upstream.pid),
            "proxy_pids": {
                "direct": [],
                "nginx": _tree(proxy.pid),
                "gateway": _tree(gateway.pid) + ([worker.pid] if worker is not None else []),
            },
            "tokens": tokens,
            "database": database_url,
            "gateway_log": folder / "gateway.log",
        }
    finally:
        procs.stop_all()


# --------------------------------------------------------------------------------------------
# Runs


def run_wrk(args: list[str], timeout: float) -> dict[str, Any]:
    result = subprocess.run(
        ["wrk", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    for line in result.stdout.splitlines():
        if line.startswith("RGBENCH "):
            return dict(json.loads(line[len("RGBENCH ") :]))
    raise SystemExit(f"wrk printed no result:\n{result.stdout}\n{result.stderr}")


def paced(url: str, tokens: Path, rate: float, threads: int, duration: float) -> dict[str, Any]:
    raw = run_wrk(
        [
            f"-t{threads}",
            f"-c{threads}",
            f"-d{duration:g}s",
            "--timeout=10s",
            "-s",
            str(WRK_DIR / "gateway_paced.lua"),
            url,
            "--",
            str(tokens),
            f"{rate:g}",
            str(threads),
        ],
        duration + 60,
    )
    seconds = raw["duration_us"] / 1e6
    pct = raw["latency_us"]["percentiles"]
    return {
        "rate": round(raw["answered"] / seconds, 1),
        "p50_ms": pct["50"] / 1000,
        "p90_ms": pct["90"] / 1000,
        "p99_ms": pct["99"] / 1000,
        "p999_ms": pct["99.9"] / 1000,
        "max_ms": raw["latency_us"]["max"] / 1000,
        "wrk_p99_ms": raw["latency_us"]["wrk_p99"] / 1000,
        "statuses": raw["tallies"],
        "errors": sum(raw["errors"].values()),
    }


def flat_out(url: str, tokens: Path, connections: int, duration: float) -> dict[str, Any]:
    raw = run_wrk(
        [
            "-t1",
            f"-c{connections}",
            f"-d{duration:g}s",
            "--timeout=10s",
            "-s",
            str(WRK_DIR / "gateway_max.lua"),
            url,
            "--",
            str(tokens),
        ],
        duration + 60,
    )
    pct = raw["latency_us"]["percentiles"]
    return {
        "rps": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        "p50_ms": pct["50"] / 1000,
        "p99_ms": pct["99"] / 1000,
        "statuses": raw.get("tallies", {}),
        "errors": sum(raw["errors"].values()),
    }


def count_decisions(database_url: str) -> int:
    from riskguard.adapters.sql.store import SqlDecisionStore

    async def work() -> int:
        store = SqlDecisionStore(database_url)
        await store.start()
        try:
            return await store.count()
        finally:
            await store.close()

    return asyncio.run(work())


def non_2xx(statuses: dict[str, int]) -> int:
    return sum(v for k, v in statuses.items() if not k.startswith("2"))


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per run")
    parser.add_argument("--rate", type=float, default=1000.0, help="fixed rate, req/s")
    parser.add_argument("--paced-threads", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32, help="maximum-rate runs")
    parser.add_argument("--services", type=int, default=200, help="calling services (tokens)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds, per target")
    parser.add_argument("--quiet-below", type=float, default=40.0)
    parser.add_argument("--max-wait", type=float, default=60.0)
    parser.add_argument(
        "--dispatcher",
        choices=("on", "worker", "off"),
        default="on",
        help="on: the outbox dispatcher (alerts, audit, streams) inside the gateway process, as "
        "by default; worker: in a `riskguard worker` process beside it (the production layout; "
        "its CPU is counted with the gateway's); off: outbox rows are still written, nobody "
        "delivers them during the run",
    )
    parser.add_argument(
        "--gateway-workers",
        type=int,
        default=1,
        help="gateway processes (more than 1: feature state and rate limits in Redis, "
        "RISKGUARD_TEST_REDIS_URL or redis://127.0.0.1:6379/0, under a prefix of the run)",
    )
    parser.add_argument(
        "--worker-nice",
        type=int,
        default=10,
        help="--dispatcher worker: the worker's nice value (a background job: the gateway's "
        "requests go first when both want a CPU; 0: same priority)",
    )
    parser.add_argument(
        "--store",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="where the gateway records its decisions (and the outbox, audit log, alerts): "
        "a fresh SQLite file, the embedded default; or a fresh PostgreSQL database on "
        "127.0.0.1:5432 (RISKGUARD_TEST_PG_* override), feature state staying in memory",
    )
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()
    for tool, where in (("wrk", shutil.which("wrk")), ("nginx", NGINX if NGINX.exists() else None)):
        if where is None:
            err.print(f"bench/gateway.py needs {tool} (apt-get install {tool})")
            return 2

    machine = describe_machine()
    load_start = load_average()
    runs: dict[str, list[dict[str, Any]]] = {
        f"{t}/{m}": [] for t in TARGETS for m in ("paced", "max")
    }
    waited = 0.0
    with tempfile.TemporaryDirectory(prefix="rg-bench-gw-") as tmp, stack(Path(tmp), args) as s:
        urls, tokens = s["urls"], s["tokens"]
        warm_2xx = 0
        for target in TARGETS:  # warm every path (the gateway's verification cache included)
            err.log(f"warm-up: {target}")
            warm = flat_out(urls[target], tokens, 8, args.warmup)
            if target == "gateway":
                warm_2xx = sum(v for k, v in warm["statuses"].items() if k.startswith("2"))
        for round_no in range(args.rounds):
            order = TARGETS[round_no % len(TARGETS) :] + TARGETS[: round_no % len(TARGETS)]
            for target in order:
                cpu = CpuWindow(s["proxy_pids"][target], s["upstream_pids"])
                waited += wait_for_quiet(args.quiet_below, args.max_wait)
                cpu.begin()
                result = paced(urls[target], tokens, args.rate, args.paced_threads, args.duration)
                result.update(cpu.end())
                runs[f"{target}/paced"].append(result)
                err.log(
                    f"round {round_no + 1} {target:8s} {args.rate:g}/s: p50 "
                    f"{result['p50_ms']:.2f} ms p99 {result['p99_ms']:.2f} ms "
                    f"(achieved {result['rate']:.0f}/s, non-2xx {non_2xx(result['statuses'])})"
                )
                waited += wait_for_quiet(args.quiet_below, args.max_wait)
                cpu.begin()
                result = flat_out(urls[target], tokens, args.connections, args.duration)
                result.update(cpu.end())
                runs[f"{target}/max"].append(result)
                err.log(
                    f"round {round_no + 1} {target:8s} max: {result['rps']:.0f} req/s "
                    f"(non-2xx {non_2xx(result['statuses'])}, proxy CPU "
                    f"{result['proxy_cpu_pct']:.0f}%)"
                )
        time.sleep(2.0)  # write-behind records land
        decisions = count_decisions(s["database"])
        answered_2xx = warm_2xx + sum(
            sum(v for k, v in r["statuses"].items() if k.startswith("2"))
            for m in ("paced", "max")
            for r in runs[f"gateway/{m}"]
        )
        gateway_log = s["gateway_log"].read_text(errors="replace")
        problems = [
            ln for ln in gateway_log.splitlines() if '"level":"error"' in ln or "Traceback" in ln
        ]

    summary: dict[str, Any] = {"targets": {}}
    for target in TARGETS:
        p, m = runs[f"{target}/paced"], runs[f"{target}/max"]
        summary["targets"][target] = {
            "paced": {
                k: median([r[k] for r in p])
                for k in (
                    "rate",
                    "p50_ms",
                    "p90_ms",
                    "p99_ms",
                    "p999_ms",
                    "max_ms",
                    "wrk_p99_ms",
                    "proxy_cpu_pct",
                    "upstream_cpu_pct",
                    "wrk_cpu_pct",
                    "other_cpu_pct",
                )
            },
            "max": {
                k: median([r[k] for r in m])
                for k in (
                    "rps",
                    "p50_ms",
                    "p99_ms",
                    "proxy_cpu_pct",
                    "upstream_cpu_pct",
                    "wrk_cpu_pct",
                    "other_cpu_pct",
                )
            },
            "non_2xx": sum(non_2xx(r["statuses"]) for r in p + m),
            "errors": sum(r["errors"] for r in p + m),
        }
    t = summary["targets"]
    added = {
        name: {
            "p50_ms": round(t[name]["paced"]["p50_ms"] - t["direct"]["paced"]["p50_ms"], 3),
            "p99_ms": round(t[name]["paced"]["p99_ms"] - t["direct"]["paced"]["p99_ms"], 3),
        }
        for name in ("nginx", "gateway")
    }
    gateway_max = t["gateway"]["max"]["rps"]
    checks = {
        "added_p50": added["gateway"]["p50_ms"] <= TARGET_ADDED_P50_MS,
        "added_p99": added["gateway"]["p99_ms"] <= TARGET_ADDED_P99_MS,
        "max_rps": gateway_max >= TARGET_MAX_RPS,
    }
    summary.update(
        added_latency_at_fixed_rate=added,
        gateway_over_nginx_max_rps=round(gateway_max / t["nginx"]["max"]["rps"], 3),
        targets_met=checks,
        decisions_recorded=decisions,
        gateway_2xx_answers=answered_2xx,
        gateway_log_problems=problems[:10],
        settings={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        seconds_waited_for_quiet=waited,
        machine=machine.to_dict(),
        load_average={"start": load_start, "end": load_average()},
        upstream="NGINX 1 worker, return 200 with an 11-byte JSON body",
        load_generator="wrk (Lua-paced fixed rate, one connection per thread; closed loop max)",
    )

    out.print(f"[bold]machine[/bold]: {machine.summary()}")
    out.print(f"load average: {load_start} → {load_average()}")
    table = Table(title=f"fixed rate {args.rate:g} req/s (median of {args.rounds} rounds)")
    for col in (
        "target",
        "achieved/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "added p50",
        "added p99",
        "proxy CPU %",
        "other CPU %",
        "non-2xx",
    ):
        table.add_column(col, justify="right")
    for target in TARGETS:
        r = t[target]["paced"]
        a = added.get(target, {"p50_ms": 0.0, "p99_ms": 0.0})
        table.add_row(
            LABELS[target],
            f"{r['rate']:.0f}",
            f"{r['p50_ms']:.3f}",
            f"{r['p90_ms']:.3f}",
            f"{r['p99_ms']:.3f}",
            f"{r['p999_ms']:.3f}",
            f"{a['p50_ms']:+.3f}",
            f"{a['p99_ms']:+.3f}",
            f"{r['proxy_cpu_pct']:.0f}",
            f"{r['other_cpu_pct']:.0f}",
            str(t[target]["non_2xx"]),
        )
    out.print(table)
    table = Table(title=f"maximum rate, {args.connections} connections (median)")
    for col in (
        "target",
        "req/s",
        "vs NGINX",
        "p50 ms",
        "p99 ms",
        "proxy CPU %",
        "upstream %",
        "wrk %",
        "other %",
    ):
        table.add_column(col, justify="right")
    for target in TARGETS:
        r = t[target]["max"]
        table.add_row(
            LABELS[target],
            f"{r['rps']:.0f}",
            f"{r['rps'] / t['nginx']['max']['rps']:.2f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['proxy_cpu_pct']:.0f}",
            f"{r['upstream_cpu_pct']:.0f}",
            f"{r['wrk_cpu_pct']:.0f}",
            f"{r['other_cpu_pct']:.0f}",
        )
    out.print(table)
    for name, ok in checks.items():
        out.print(f"{'PASS' if ok else 'FAIL'} {name}")
    out.print(
        f"gateway decisions recorded: {decisions} for {answered_2xx} 2xx answers (warm-up "
        "included; requests wrk abandons at the end of a run are decided too); "
        f"gateway log problems: {len(problems)}"
    )
    text = json.dumps(summary)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
