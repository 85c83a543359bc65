"""The gateway scene of ``riskguard demo``: internal services calling each other through
``riskguard gateway``, one of them compromised and moving laterally, blocked live.

1. **The services.** The simulator's gateway scene (:func:`riskguard.simulate.simulate_gateway`:
   5 services, their usual routes, releases) gives the world. Each service is a tiny HTTP/1.1
   upstream on a loopback port (the gateway's own server code answering JSON), declaring its
   routes — business and admin — in the gateway's configuration.
2. **The gateway**, in process, in front of them: the real ``Gateway`` (JWT verification, rate
   limits, the risk engine, decisions recorded in the demo's SQLite file under tenant
   ``gateway``), trusting an ES256 key made at start (``.riskguard-demo/gateway/jwks.json``).
   Every service calls with its own token (``sub`` = its id, ``deployment`` = its release).
3. **Warm-up.** Two days of the scene's history (at 40 % of its traffic, no attack) with past
   timestamps are replayed through the gateway's gatekeeper and risk engine — the same path
   as a request, with the recorded time (``riskguard.gateway_scene``) — so each service's
   routes, rates and hours are learned before the first live call, in about a second.
4. **Live.** The services active at this hour call their usual routes over real HTTP through
   the gateway, at a pace their history makes normal (at most 6 calls per route and 24 per
   service while the scene lasts: the burst rules compare with the daily average). From a third
   of the way in, one long-running service is compromised: with its own identity it reaches for
   admin, key and export routes of other services it never called. Each attempt is answered
   403 with a decision id whose explanation is shown, while normal calls keep flowing.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich import box
from rich.console import Console, ConsoleRenderable, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from riskguard.adapters.gateway.server import Request, Server
from riskguard.gateway_scene import SceneGateway, SigningKeys
from riskguard.settings import Settings
from riskguard.simulate import SENSITIVE_ROUTES, GatewayScene, SceneService, simulate_gateway

HISTORY_DAYS = 2  # a day of learning and a day of history (the scene's attacks start later)
HISTORY_RATE_SCALE = 0.4  # 40 % of the scene's traffic: enough history, a quick warm-up
SERVICES = 5
HISTORY_GAP = timedelta(minutes=10)  # the history ends this long before the live part
MAX_CALLS_PER_ROUTE = 6  # live, per path template: under the burst rule's 8 calls in 5 minutes
MAX_CALLS_PER_SERVICE = (
    24  # live, per service: with the attack, under the service burst rule's 40 a minute
)
ATTACK_FROM = 0.3  # the compromise starts this far into the live part
_OFFICE_HOURS_CET = range(7, 20)


@dataclass
class Call:
    at: float  # seconds into the live part
    service: SceneService
    target: str
    method: str
    template: str
    lateral: bool = False


@dataclass
class GatewayDemoStats:
    """What the gateway scene's view and summary show."""

    gateway_url: str = ""
    history_calls: int = 0
    history_seconds: float = 0.0
    history_refused: int = 0
    compromised: str | None = None
    started: float = 0.0
    per_service: dict[str, Counter[str]] = field(default_factory=dict)
    normal: Counter[str] = field(default_factory=Counter)
    lateral: Counter[str] = field(default_factory=Counter)
    lateral_first_blocked: int | None = None
    lateral_done: int = 0
    refused: deque[tuple[str, Call, int, str, str]] = field(default_factory=lambda: deque(maxlen=4))
    allowed: deque[tuple[str, Call, int]] = field(default_factory=lambda: deque(maxlen=4))
    latencies_ms: list[float] = field(default_factory=list)
    decisions_recorded: int = 0
    errors: int = 0

    @property
    def calls(self) -> int:
        return sum(self.normal.values()) + sum(self.lateral.values())


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port(host: str, preferred: int) -> int:
    """``preferred`` when it is free on ``host``, else any free port."""
    try:
        with socket.socket() as s:
            s.bind((host, preferred))
        return preferred
    except OSError:
        return free_port(host)


def _upstream(name: str) -> Server:
    """A tiny internal service: answers every request with JSON naming itself and its caller
    (the verified subject the gateway passes in ``X-Riskguard-Subject``)."""

    async def handle(req: Request) -> None:
        while await req.body() is not None:  # read the body, if any
            pass
        caller = next((v for n, v in req.headers if n == b"x-riskguard-subject"), b"")
        body = orjson.dumps({"service": name, "path": req.path, "caller": caller.decode()})
        req.respond(200, [(b"content-type", b"application/json")], body)

    return Server(handle)


def _concrete(rng: random.Random, template: str) -> str:
    return "/".join(
        str(rng.randint(1_000, 9_999_999)) if s.startswith("{") else s for s in template.split("/")
    )


def _active(service: SceneService, now: datetime) -> bool:
    """Whether the service works at this hour (office-hours services rest at night)."""
    cet = now + timedelta(hours=1)
    return not service.office_hours or (cet.weekday() < 5 and cet.hour in _OFFICE_HOURS_CET)


def plan_live(
    scene: GatewayScene,
    now: datetime,
    seconds: float,
    rng: random.Random,
    usual: set[tuple[str, str, str, str]],
    history: set[tuple[str, str, str, str]],
) -> tuple[list[Call], SceneService | None]:
    """The live calls (normal and lateral) and the compromised service. ``usual``: the
    (service, target, method, template) routes the history called with success last time —
    the routes each service keeps calling; ``history``: every route the history called."""
    active = [s for s in scene.services if _active(s, now)]
    calls: list[Call] = []
    for service in active:
        routes = [r for r in service.calls if (service.service_id, *r) in usual]
        # the rate features count per (service, path template): routes sharing a template
        # (GET and PATCH of one path, or one path on two targets) share its budget
        sharing = Counter(template for _, _, template in routes)
        for target, method, template in routes:
            per_route = max(
                1,
                min(
                    MAX_CALLS_PER_ROUTE // sharing[template],
                    MAX_CALLS_PER_SERVICE // max(1, len(routes)),
                    round(seconds),
                ),
            )
            for _ in range(per_route):
                calls.append(Call(rng.uniform(0, seconds), service, target, method, template))
    around = [s for s in active if not s.office_hours] or active
    if not around:
        return sorted(calls, key=lambda c: c.at), None
    oldest = min(around, key=lambda s: s.deployed_at or datetime.min.replace(tzinfo=UTC))
    long_running = [  # running its deployment for a day (else the longest-running one)
        s for s in around if s.deployed_at is None or s.deployed_at <= now - timedelta(days=1)
    ] or [oldest]
    victim = rng.choice(long_running)
    targets = [
        (s.service_id, *route.split(" ", 1))
        for s in scene.services
        if s is not victim
        for route in s.declared
        if tuple(route.split(" ", 1)) in SENSITIVE_ROUTES
    ]
    targets = [t for t in targets if (victim.service_id, *t) not in history]  # never called
    chosen = rng.sample(targets, min(4, len(targets)))
    if chosen:
        count = max(4, min(10, round(seconds * 1.5)))
        begin, end = ATTACK_FROM * seconds, 0.95 * seconds
        for i in range(count):
            target, method, template = chosen[i % len(chosen)]
            at = begin + (end - begin) * i / max(1, count - 1)
            calls.append(Call(at, victim, target, method, template, lateral=True))
    return sorted(calls, key=lambda c: c.at), victim


async def run_gateway_scene(
    console: Console,
    *,
    seconds: float,
    seed: int,
    host: str,
    port: int,
    settings: Settings,
    folder: Path,
) -> GatewayDemoStats:
    """The gateway scene (module docstring) for ``seconds`` of live traffic."""
    stats = GatewayDemoStats()
    rng = random.Random(f"riskguard-demo-gateway/{seed}")
    now = datetime.now(UTC)
    scene = simulate_gateway(
        days=HISTORY_DAYS,
        seed=seed,
        services=SERVICES,
        start=now - timedelta(days=HISTORY_DAYS) - HISTORY_GAP,
        rate_scale=HISTORY_RATE_SCALE,
    )
    upstreams: dict[str, tuple[Server, int]] = {}
    for service in scene.services:
        server = _upstream(service.service_id)
        upstream_port = free_port(host)
        await server.listen(host, upstream_port)
        upstreams[service.service_id] = (server, upstream_port)
    gateway_port = _port(host, port)
    config = scene.gateway_config({sid: f"http://{host}:{p}" for sid, (_, p) in upstreams.items()})
    config["listen"] = {"host": host, "port": gateway_port}
    stats.gateway_url = f"http://{host}:{gateway_port}"
    keys = SigningKeys(folder)
    front: Server | None = None
    try:
        async with SceneGateway(config, folder, keys=keys, settings=settings) as gateway:
            console.print(
                f"[bold]gateway scene[/] — {len(scene.services)} internal services behind "
                f"riskguard gateway at [bold]{stats.gateway_url}[/]; replaying "
                f"{HISTORY_DAYS} days of their history ({len(scene.events):,} calls) to warm "
                "up baselines ..."
            )
            t0 = time.perf_counter()
            last: dict[tuple[str, str, str, str], bool] = {}
            for i, event in enumerate(scene.events):
                verdict = await gateway.call(event)
                stats.history_refused += verdict.status != 200
                data = event["data"]
                route = (data["service_id"], data["target"], data["method"], verdict.template)
                last[route] = verdict.status == 200
                if i % 256 == 255:
                    await asyncio.sleep(0)
            stats.history_calls = len(scene.events)
            stats.history_seconds = time.perf_counter() - t0
            front = Server(gateway.gateway.handle)
            await front.listen(host, gateway_port)
            usual = {route for route, ok in last.items() if ok}
            calls, victim = plan_live(scene, datetime.now(UTC), seconds, rng, usual, set(last))
            stats.compromised = victim.service_id if victim is not None else None
            await _live(console, gateway, keys, calls, stats, seconds)
            risk = gateway.gateway.risk
            assert risk is not None
            await risk.drain()
            tenant = await risk.ready()
            stats.decisions_recorded = await gateway.gateway.container.store.count(tenant)
            await front.stop()
            front = None
    finally:
        if front is not None:
            await front.stop()
        for server, _ in upstreams.values():
            await server.stop()
    return stats


async def _live(
    console: Console,
    gateway: SceneGateway,
    keys: SigningKeys,
    calls: list[Call],
    stats: GatewayDemoStats,
    seconds: float,
) -> None:
    clients: dict[str, httpx.AsyncClient] = {}
    for call in calls:
        service = call.service
        if service.service_id not in clients:
            clients[service.service_id] = httpx.AsyncClient(
                base_url=stats.gateway_url,
                headers={
                    "Authorization": f"Bearer {keys.token(service.service_id, service.deployment)}",
                    "User-Agent": service.user_agent,
                },
                timeout=10,
            )
        stats.per_service.setdefault(service.service_id, Counter())
    risk = gateway.gateway.risk
    assert risk is not None
    tenant = await risk.ready()
    store = gateway.gateway.container.store
    rng = random.Random(len(calls))
    tasks: set[asyncio.Task[None]] = set()

    async def one(call: Call) -> None:
        path = f"/{call.target}{_concrete(rng, call.template)}"
        body = b'{"demo":true}' if call.method in ("POST", "PUT", "PATCH") else None
        client = clients[call.service.service_id]
        t0 = time.perf_counter()
        try:
            response = await client.request(call.method, path, content=body)
        except httpx.HTTPError:
            stats.errors += 1
            return
        stats.latencies_ms.append((time.perf_counter() - t0) * 1000.0)
        clock = datetime.now(UTC).strftime("%H:%M:%S")
        status = response.status_code
        counter = stats.lateral if call.lateral else stats.normal
        outcome = "allowed" if status == 200 else f"refused_{status}"
        counter[outcome] += 1
        stats.per_service[call.service.service_id][outcome] += 1
        if call.lateral:
            stats.lateral_done += 1
            if status == 403 and stats.lateral_first_blocked is None:
                stats.lateral_first_blocked = stats.lateral_done
        if status == 200:
            stats.allowed.appendleft((clock, call, status))
            return
        decision_id, why = "-", response.text[:120]
        if response.headers.get("content-type", "").startswith("application/problem+json"):
            problem = response.json()
            decision_id = str(problem.get("decision_id") or "-")
            why = str(problem.get("detail") or why)
        if decision_id != "-":
            record = await store.get(tenant, decision_id)  # recorded before the 403 was sent
            if record is not None:
                why = record.explanation
        stats.refused.appendleft((clock, call, status, decision_id, why))

    stats.started = time.monotonic()
    try:
        with Live(_view(stats), console=console, refresh_per_second=4) as live:
            for call in calls:
                delay = stats.started + call.at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(one(call))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                live.update(_view(stats))
            while tasks:
                await asyncio.gather(*list(tasks))
            rest = stats.started + seconds - time.monotonic()
            if rest > 0:
                await asyncio.sleep(rest)
            live.update(_view(stats))
    finally:
        for client in clients.values():
            await client.aclose()


def _route(call: Call) -> str:
    return f"{call.service.service_id} → {call.target} {call.method} {call.template}"


def _view(stats: GatewayDemoStats) -> Group:
    elapsed = max(1e-9, time.monotonic() - stats.started)
    latencies = sorted(stats.latencies_ms)
    p50 = latencies[len(latencies) // 2] if latencies else 0.0
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else 0.0
    refused = stats.calls - stats.normal["allowed"] - stats.lateral["allowed"]
    head = Text.assemble(
        ("calls ", "bold"),
        f"{stats.calls:,}   ",
        ("allowed ", "bold"),
        f"{stats.normal['allowed'] + stats.lateral['allowed']:,}   ",
        ("refused ", "bold"),
        f"{refused:,}   ",
        ("rate ", "bold"),
        f"{stats.calls / elapsed:,.0f}/s   ",
        ("p50/p99 ", "bold"),
        f"{p50:.1f}/{p99:.1f} ms\n",
        ("warm-up ", "bold"),
        f"{stats.history_calls:,} calls of {HISTORY_DAYS} days replayed through the gatekeeper "
        f"in {stats.history_seconds:.1f} s",
    )
    services = Table(expand=True, box=box.SIMPLE_HEAD, padding=(0, 1))
    services.add_column("service", no_wrap=True)
    services.add_column("calls", justify="right")
    services.add_column("allowed", justify="right")
    services.add_column("refused", justify="right")
    services.add_column("state")
    for name, counter in sorted(stats.per_service.items()):
        total = sum(counter.values())
        compromised = name == stats.compromised and stats.lateral_done > 0
        state = (
            Text("COMPROMISED: moving laterally", style="bold red")
            if compromised
            else Text("normal", style="green")
        )
        services.add_row(
            name, f"{total:,}", f"{counter['allowed']:,}", f"{total - counter['allowed']:,}", state
        )
    blocked = Table.grid(padding=(0, 2))
    blocked.add_column(no_wrap=True)
    blocked.add_column()
    for clock, call, status, decision_id, why in stats.refused:
        line = Text()
        line.append("403 BLOCKED" if status == 403 else f"{status} REFUSED", style="bold red")
        line.append(f"  {_route(call)}\n{decision_id}: {why}")
        blocked.add_row(clock, line)
    if not stats.refused:
        blocked.add_row("", "nothing refused yet")
    flowing = Table.grid(padding=(0, 2))
    flowing.add_column(no_wrap=True)
    flowing.add_column()
    for clock, call, status in stats.allowed:
        line = Text()
        line.append(f"{status} allowed", style="green")
        line.append(f"  {_route(call)}")
        flowing.add_row(clock, line)
    parts: list[ConsoleRenderable] = [
        Panel(head, title=f"riskguard gateway — internal services ({stats.gateway_url})"),
        Panel(services, title="services (each calls with its own JWT)"),
        Panel(blocked, title="blocked live (403, decision id, explanation)"),
        Panel(flowing, title="normal calls flowing"),
    ]
    return Group(*parts)


def summary(console: Console, stats: GatewayDemoStats, database: Path) -> None:
    table = Table(title="gateway summary")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row(
        "history replayed (warm-up)",
        f"{stats.history_calls:,} calls in {stats.history_seconds:.1f} s "
        f"({stats.history_refused:,} refused while the gateway was learning)",
    )
    normal = sum(stats.normal.values())
    share = stats.normal["allowed"] / normal if normal else 0.0
    table.add_row(
        "normal calls allowed", f"{stats.normal['allowed']:,} of {normal:,} ({share:.1%})"
    )
    lateral = sum(stats.lateral.values())
    blocked = stats.lateral["refused_403"]
    first = "-" if stats.lateral_first_blocked is None else f"#{stats.lateral_first_blocked}"
    table.add_row(
        f"lateral movement by {stats.compromised or '-'}",
        f"{blocked} of {lateral} calls blocked (403), first at call {first}",
    )
    table.add_row("calls failed", f"{stats.errors:,}")
    table.add_row("gateway decisions recorded", f"{stats.decisions_recorded:,} (tenant gateway)")
    table.add_row("records", str(database))
    console.print(table)
    console.print(
        f"normal calls allowed: {stats.normal['allowed']} of {normal}; "
        f"lateral movement calls blocked: {blocked} of {lateral}"
    )


def gateway_settings_for_demo(database_url: str, host: str, port: int) -> dict[str, Any]:
    """Service settings of the gateway part (the demo's SQLite file, in-memory state)."""
    return {
        "env": "development",
        "database_url": database_url,
        "redis_url": None,
        "host": host,
        "port": port,
        "access_log": False,
        "auto_migrate": False,
        "log_level": "error",
        "dispatcher": False,
        "gc_tuning": False,
    }
