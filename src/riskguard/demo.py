"""``riskguard demo``: the service on the embedded default, fed simulated traffic, shown live;
then internal services behind the gateway, one of them moving laterally, blocked live.

The demo starts ``riskguard serve`` in-process at http://127.0.0.1:8000 on a fresh SQLite file
(``.riskguard-demo/demo.db``) with in-memory state, creates a ``demo`` tenant with an admin and
an ingest key (printed, so the API can be tried while it runs), and posts the simulator's stream
(benign behaviour with labelled attacks) to ``POST /v1/decisions`` over real HTTP, paced so the
run lasts the requested seconds. The live view shows decisions per outcome, the latest
challenged/reviewed/blocked events with their explanation, throughput and latency as the client
sees them, and how many attack episodes were caught so far. With ``--rules``, the pack file is
published to the tenant through the rules API at the start and again whenever it is saved; a bad
edit is refused by the API (shown) and the previous version keeps running.

The gateway scene follows (``riskguard.demo_gateway``): tiny internal services on loopback
ports behind ``riskguard gateway`` (in process, port 8001), each calling the others with its
own JWT; their baselines are warmed by replaying two days of simulated history through the
gatekeeper, then one service is compromised and its lateral movement is answered 403 live.
The two parts share ``--seconds`` (55/45; ``--scene`` runs one of them).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from rich.console import Console, ConsoleRenderable, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from riskguard.engine.rules import RulePackError, parse_pack_text
from riskguard.simulate import simulate

if TYPE_CHECKING:
    from riskguard.demo_gateway import GatewayDemoStats

_STYLE = {
    "allow": "green",
    "challenge": "yellow",
    "review": "dark_orange",
    "block": "bold red",
}
_OUTCOMES = ("allow", "challenge", "review", "block")
_ENTITY_FIELDS = ("account_id", "user_id", "service_id")
DEMO_DIR = Path(".riskguard-demo")
CONCURRENCY = 16


@dataclass
class DemoStats:
    """What the live view and the summary show."""

    outcomes: Counter[str] = field(default_factory=Counter)
    latest: deque[tuple[dict[str, Any], dict[str, Any]]] = field(
        default_factory=lambda: deque(maxlen=8)
    )
    latencies_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    episodes: dict[str, str] = field(default_factory=dict)  # episode -> attack type
    caught: set[str] = field(default_factory=set)
    benign: int = 0
    benign_flagged: int = 0
    errors: int = 0
    ruleset: str = "-"
    rules_error: str | None = None
    started: float = field(default_factory=time.monotonic)
    gateway: GatewayDemoStats | None = None  # the gateway scene's figures
    base_url: str = "http://127.0.0.1:8000"

    @property
    def decided(self) -> int:
        return sum(self.outcomes.values())

    @staticmethod
    def percentile(values: list[float], q: float) -> float:
        if not values:
            return 0.0
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Server:
    """uvicorn in a background thread, stopped on exit."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        import uvicorn

        config = uvicorn.Config(
            app, host=host, port=port, log_level="error", access_log=False, lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the service did not start (is the port in use?)")
            time.sleep(0.05)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _setup(database_url: str, secret: bytes) -> tuple[str, str, str]:
    """A fresh demo database with a tenant and two keys: (tenant id, admin key, ingest key)."""
    from riskguard.adapters.sql.migrate import upgrade
    from riskguard.adapters.sql.store import SqlDecisionStore
    from riskguard.wiring import provision

    upgrade(database_url)

    async def work() -> tuple[str, str, str]:
        store = SqlDecisionStore(database_url)
        await store.start()
        try:
            tenant_id, keys = await provision(store, secret, "demo")
            return tenant_id, keys["admin"], keys["ingest"]
        finally:
            await store.close()

    return asyncio.run(work())


def split_seconds(seconds: float, scene: str) -> tuple[float, float]:
    """(decision part, gateway part) of the demo's ``seconds``: both scenes share them
    (55/45), the gateway's live part lasting at least 2 s."""
    if scene == "decisions":
        return seconds, 0.0
    if scene == "gateway":
        return 0.0, max(2.0, seconds)
    decisions = max(1.0, seconds * 0.55)
    return decisions, max(2.0, seconds - decisions)


def run_demo(
    *,
    seconds: float,
    users: int,
    days: int,
    seed: int,
    rules: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    scene: str = "both",
    gateway_port: int | None = None,
) -> DemoStats:
    """Run the live demo for ``seconds`` and print a summary; returns the figures shown.
    ``scene``: ``both`` (the decision service, then the gateway), ``decisions`` or
    ``gateway``."""
    from riskguard.settings import load_settings
    from riskguard.wiring import Container, configure_logging

    console = Console()
    decision_s, gateway_s = split_seconds(seconds, scene)
    stats = DemoStats()
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    DEMO_DIR.mkdir(parents=True)
    database_url = f"sqlite+aiosqlite:///{(DEMO_DIR / 'demo.db').resolve()}"
    settings = load_settings(
        env="development",
        database_url=database_url,
        redis_url=None,
        host=host,
        port=port,
        access_log=False,
        auto_migrate=False,
        log_level="error",
    )
    configure_logging(settings, stream=open(os.devnull, "w"))  # noqa: SIM115 - process-long
    if decision_s > 0:
        console.print(f"[bold]riskguard demo[/] — simulating {days} days of {users} users ...")
        raw_events, labels = simulate(days=days, users=users, seed=seed)
        label_of = {row["event_id"]: row for row in labels}
        tenant_id, admin_key, ingest_key = _setup(database_url, settings.secret)
        base = f"http://{host}:{port}"
        console.print(
            f"service: [bold]{base}[/] (OpenAPI at {base}/docs) — tenant [bold]{tenant_id}[/]\n"
            f"admin key:  {admin_key}\ningest key: {ingest_key}\n"
            f"try: curl -H 'Authorization: Bearer {admin_key}' {base}/v1/decisions?limit=1"
        )
        from riskguard.adapters.http.app import create_app

        app = create_app(Container(settings))
        stats.episodes = {row["episode"]: row["attack"] for row in labels}
        stats.base_url = base
        with _Server(app, host, port):
            asyncio.run(
                _feed(
                    base,
                    admin_key,
                    ingest_key,
                    raw_events,
                    label_of,
                    stats,
                    decision_s,
                    rules,
                    console,
                )
            )
        console.print()
        _summary(console, stats, len(raw_events))
    if gateway_s > 0:
        from riskguard.adapters.sql.migrate import upgrade
        from riskguard.demo_gateway import gateway_settings_for_demo, run_gateway_scene, summary

        upgrade(database_url)  # already done by the decision part; a no-op then
        gateway_settings = load_settings(**gateway_settings_for_demo(database_url, host, port))
        console.print()
        stats.gateway = asyncio.run(
            run_gateway_scene(
                console,
                seconds=gateway_s,
                seed=seed,
                host=host,
                port=gateway_port if gateway_port is not None else port + 1,
                settings=gateway_settings,
                folder=DEMO_DIR / "gateway",
            )
        )
        console.print()
        summary(console, stats.gateway, DEMO_DIR / "demo.db")
    return stats


async def _publish(client: httpx.AsyncClient, path: Path, stats: DemoStats) -> None:
    try:
        document = parse_pack_text(path.read_text("utf-8"), source=path.name)
    except (OSError, UnicodeDecodeError, RulePackError) as exc:
        stats.rules_error = str(exc)
        return
    response = await client.put("/v1/rulesets/draft", json=document)
    if response.status_code != 200:
        problem = response.json()
        details = "; ".join(e["message"] for e in problem.get("errors", [])[:3])
        stats.rules_error = f"{problem.get('detail')}: {details}"
        return
    response = await client.post("/v1/rulesets", json={"comment": f"demo: {path.name}"})
    response.raise_for_status()
    stats.ruleset = response.json()["version"]
    stats.rules_error = None


async def _feed(
    base: str,
    admin_key: str,
    ingest_key: str,
    events: list[dict[str, Any]],
    label_of: dict[str, dict[str, str]],
    stats: DemoStats,
    seconds: float,
    rules: Path | None,
    console: Console,
) -> None:
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    admin = httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {admin_key}"}, timeout=10
    )
    ingest = httpx.AsyncClient(
        base_url=base,
        headers={"Authorization": f"Bearer {ingest_key}"},
        timeout=10,
        limits=limits,
    )
    watched_mtime = 0.0
    async with admin, ingest:
        if rules is not None:
            await _publish(admin, rules, stats)
            watched_mtime = rules.stat().st_mtime if rules.exists() else 0.0
        ticks = max(1, int(seconds * 4))
        per_tick = max(1, -(-len(events) // ticks))
        started = time.monotonic()
        position = 0
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=CONCURRENCY * 4)

        async def worker() -> None:
            while True:
                event = await queue.get()
                if event is None:
                    return
                t0 = time.perf_counter()
                try:
                    response = await ingest.post("/v1/decisions", json=event)
                except httpx.HTTPError:
                    stats.errors += 1
                    continue
                elapsed = (time.perf_counter() - t0) * 1000.0
                if response.status_code != 200:
                    stats.errors += 1
                    continue
                _record(stats, event, response.json(), elapsed, label_of)

        workers = [asyncio.create_task(worker()) for _ in range(CONCURRENCY)]
        with Live(_view(stats, None), console=console, refresh_per_second=4) as live:
            for tick in range(ticks):
                if time.monotonic() - started > seconds:
                    break
                chunk = events[position : position + per_tick]
                position += len(chunk)
                for event in chunk:
                    if time.monotonic() - started > seconds:
                        break
                    await queue.put(event)
                live.update(_view(stats, chunk[-1] if chunk else None))
                if rules is not None and rules.exists():
                    mtime = rules.stat().st_mtime
                    if mtime != watched_mtime:
                        watched_mtime = mtime
                        await _publish(admin, rules, stats)
                delay = started + (tick + 1) * seconds / ticks - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
            live.update(_view(stats, None))


def _record(
    stats: DemoStats,
    event: dict[str, Any],
    answer: dict[str, Any],
    elapsed_ms: float,
    label_of: dict[str, dict[str, str]],
) -> None:
    outcome = answer["outcome"]
    stats.outcomes[outcome] += 1
    stats.latencies_ms.append(elapsed_ms)
    stats.server_ms.append(float(answer.get("latency_ms", 0.0)))
    stats.ruleset = answer.get("ruleset_version", stats.ruleset)
    label = label_of.get(event["event_id"])
    flagged = outcome != "allow"
    if label is None:
        stats.benign += 1
        stats.benign_flagged += flagged
    elif flagged:
        stats.caught.add(label["episode"])
    if flagged:
        stats.latest.appendleft((event, answer))


def _entity(event: dict[str, Any]) -> str:
    data = event.get("data", {})
    for name in _ENTITY_FIELDS:
        if name in data:
            return str(data[name])
    return "-"


def _view(stats: DemoStats, last: dict[str, Any] | None) -> Group:
    clock = str(last["occurred_at"])[:16].replace("T", " ") if last is not None else "-"
    elapsed = max(1e-9, time.monotonic() - stats.started)
    head = Text.assemble(
        ("decisions ", "bold"),
        f"{stats.decided:,}   ",
        ("over HTTP ", "bold"),
        f"{stats.decided / elapsed:,.0f}/s   ",
        ("p50/p99 ", "bold"),
        f"{stats.percentile(stats.latencies_ms, 0.5):.1f}/"
        f"{stats.percentile(stats.latencies_ms, 0.99):.1f} ms   ",
        ("simulated clock ", "bold"),
        clock,
        ("   ruleset ", "bold"),
        stats.ruleset,
    )
    outcomes = Table.grid(padding=(0, 2))
    total = max(1, stats.decided)
    for outcome in _OUTCOMES:
        n = stats.outcomes[outcome]
        bar = "█" * max(0, round(40 * n / total)) if n else ""
        outcomes.add_row(
            Text(outcome, style=_STYLE[outcome]), f"{n:>8,}", Text(bar, style=_STYLE[outcome])
        )
    latest = Table(expand=True, show_lines=False)
    latest.add_column("time", no_wrap=True)
    latest.add_column("type", no_wrap=True)
    latest.add_column("entity", no_wrap=True)
    latest.add_column("outcome", no_wrap=True)
    latest.add_column("why")
    for event, answer in stats.latest:
        latest.add_row(
            str(event["occurred_at"])[5:19].replace("T", " "),
            answer["type"],
            _entity(event),
            Text(answer["outcome"], style=_STYLE[answer["outcome"]]),
            answer["explanation"],
        )
    caught = f"attack episodes caught: {len(stats.caught)} of those started so far"
    parts: list[ConsoleRenderable] = [
        Panel(head, title=f"riskguard — live decisions ({stats.base_url})"),
        Panel(outcomes, title="outcomes"),
        Panel(latest, title="latest challenged, reviewed and blocked"),
        Text(caught, style="bold"),
    ]
    if stats.rules_error is not None:
        error = f"rule pack edit rejected, previous ruleset still running:\n{stats.rules_error}"
        parts.append(Text(error, style="red"))
    return Group(*parts)


def _summary(console: Console, stats: DemoStats, total_events: int) -> None:
    table = Table(title="summary")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("events decided over HTTP", f"{stats.decided:,} of {total_events:,}")
    for outcome in _OUTCOMES:
        table.add_row(f"  {outcome}", f"{stats.outcomes[outcome]:,}")
    table.add_row("requests refused or failed", f"{stats.errors:,}")
    elapsed = max(1e-9, time.monotonic() - stats.started)
    table.add_row("throughput (client view)", f"{stats.decided / elapsed:,.0f} decisions/s")
    table.add_row(
        "round trip p50 / p99",
        f"{stats.percentile(stats.latencies_ms, 0.5):.1f} / "
        f"{stats.percentile(stats.latencies_ms, 0.99):.1f} ms",
    )
    table.add_row(
        "server decision p50 / p99",
        f"{stats.percentile(stats.server_ms, 0.5):.2f} / "
        f"{stats.percentile(stats.server_ms, 0.99):.2f} ms",
    )
    table.add_row("attack episodes caught", f"{len(stats.caught)} of {len(stats.episodes)}")
    share = stats.benign_flagged / stats.benign if stats.benign else 0.0
    table.add_row("benign events not allowed", f"{stats.benign_flagged:,} ({share:.2%})")
    table.add_row("ruleset", stats.ruleset)
    console.print(table)
