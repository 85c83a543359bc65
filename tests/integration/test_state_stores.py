"""The shared state stores: Redis gives exactly the in-memory values, claims, keys, failures.

The in-memory store (``adapters.memory``, wrapping ``engine.state.InMemoryStateStore``) is the
reference: every differential test feeds one event stream through it and through
``RedisStateStore`` and compares the environments event by event — same keys in the same order,
same types, same floats to the last bit (``repr``). pytest-asyncio is not used: each test drives
its coroutines with ``asyncio.run`` and opens/closes its Redis stores inside that loop.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from riskguard.adapters.memory import MemoryStateStore
from riskguard.adapters.redis import state as redis_state
from riskguard.adapters.redis.state import RedisStateStore, canonical_bytes, value_digest
from riskguard.engine.decide import Engine
from riskguard.engine.events import parse_event
from riskguard.engine.expr import default_functions
from riskguard.engine.features import FeatureSet, FeatureSpec, build_features
from riskguard.ports import Claim, DependencyUnavailable
from riskguard.rulefile import load_pack_file
from riskguard.simulate import simulate

from .conftest import free_port

pytestmark = pytest.mark.integration

T = TypeVar("T")
T0 = 1_790_000_000.0
DEFAULT_ENGINE = Engine(load_pack_file(None))


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


@pytest.fixture(scope="module")
def prefix(redis_prefix: str) -> str:
    """A key prefix of this module's own (deleted with the session's: conftest)."""
    return f"{redis_prefix}.ss"


def tenant() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def snapshot(env: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Keys in order, types and exact values (repr tells every float apart, -0.0 included)."""
    return [(k, type(v).__name__, repr(v)) for k, v in env.items()]


Event = tuple[str, float, dict[str, Any]]  # (event type, ts, flat fields)


async def differential(
    url: str,
    prefix: str,
    plan: Callable[[str, dict[str, Any]], Sequence[Any]],
    events: Sequence[Event],
    *,
    clients: int = 1,
) -> int:
    """Feed ``events`` through the memory store and ``clients`` Redis stores (taking turns),
    each event with its own claim as the service sends it; assert identical environments event
    by event. Returns how many outputs were compared."""
    memory = MemoryStateStore()
    stores = [RedisStateStore(url, prefix=prefix, timeout_s=2.0) for _ in range(clients)]
    who = tenant()
    compared = 0
    try:
        for i, (event_type, ts, fields) in enumerate(events):
            env_m = {"type": event_type, **fields}
            env_r = dict(env_m)
            ops = plan(event_type, env_m)
            claim = Claim(f"event-{i}", "body")
            assert await memory.apply(who, ops, ts, env_m, env_m, claim) is None
            store = stores[i % clients]
            assert await store.apply(who, ops, ts, env_r, env_r, claim) is None
            if snapshot(env_m) != snapshot(env_r):
                diff = {
                    k: (env_m.get(k, "<absent>"), env_r.get(k, "<absent>"))
                    for k in env_m.keys() | env_r.keys()
                    if repr(env_m.get(k, "<absent>")) != repr(env_r.get(k, "<absent>"))
                }
                pytest.fail(f"event {i} ({event_type} at {ts!r}) differs: {diff}")
            compared += sum(1 for k in env_m if k.startswith("features."))
    finally:
        for store in stores:
            await store.close()
    return compared


def parsed(rows: Sequence[dict[str, Any]]) -> list[Event]:
    out = []
    for row in rows:
        event = parse_event(row)
        ts = event.occurred_at.timestamp()
        fields = event.fields(ts)
        out.append((fields.pop("type"), ts, fields))
    return out


def default_plan(event_type: str, env: dict[str, Any]) -> Sequence[Any]:
    return DEFAULT_ENGINE.plan(event_type, env)


# --------------------------------------------------------------------------------------------
# Differential: the default pack


def test_default_pack_on_simulated_traffic(redis_url: str, prefix: str) -> None:
    rows, _ = simulate(days=4, users=40, seed=7)
    events = parsed(rows[:4000])
    assert {e[0] for e in events} == {"transaction", "login", "session", "api_call"}
    compared = run(differential(redis_url, prefix, default_plan, events))
    assert compared > 50_000


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def random_rows(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """Events of all four types over few entities, with late events, long gaps, huge and tiny
    amounts, missing optional fields."""
    users = [f"u{i}" for i in range(4)]
    ips = ["10.0.0.1", "10.0.0.2", "192.0.2.7", "2001:db8::1"]
    devices = ["d1", "d2", "d3", "d4", "d5"]
    countries = [("DE", 52.5, 13.4), ("FR", 48.9, 2.35), ("US", 40, -74), ("JP", 35.7, 139.7)]
    ts = T0 + rng.random() * 86_400
    rows = []
    for i in range(n):
        r = rng.random()
        if r < 0.7:
            ts += rng.expovariate(1 / 40)
        elif r < 0.85:
            ts -= rng.random() * 3_000  # late: sometimes inside the windows, sometimes not
        elif r < 0.97:
            ts += rng.random() * 7_200
        else:
            ts += rng.random() * 10 * 86_400
        context: dict[str, Any] = {}
        if rng.random() < 0.9:
            context["ip"] = rng.choice(ips)
        if rng.random() < 0.9:
            context["device_id"] = rng.choice(devices)
        if rng.random() < 0.5:
            context["user_agent"] = rng.choice(["UA/1", "UA/2"])
        if rng.random() < 0.8:
            country, lat, lon = rng.choice(countries)
            geo: dict[str, Any] = {}
            if rng.random() < 0.9:
                geo["country"] = country
            if rng.random() < 0.9:
                geo["lat"] = lat + rng.uniform(-0.1, 0.1)
                geo["lon"] = lon + rng.uniform(-0.1, 0.1)
            context["geo"] = geo
        kind = rng.choice(["transaction", "login", "session", "api_call"])
        user = rng.choice(users)
        amount = rng.choice(
            [
                round(rng.uniform(0.01, 5), 2),
                round(rng.lognormvariate(4, 2), 2),
                rng.choice([1e12, 9e14, 0.01, 0.1, 0.3, 9999.99, 8500.0]),
                rng.uniform(1e-9, 1e-3),
            ]
        )
        data: dict[str, Any]
        if kind == "transaction":
            data = {
                "account_id": user,
                "counterparty_id": f"c{rng.randrange(24)}",
                "amount": amount,
                "currency": "EUR",
            }
        elif kind == "login":
            data = {"user_id": user, "success": rng.random() < 0.7}
        elif kind == "session":
            data = {
                "user_id": user,
                "session_id": f"s{rng.randrange(3)}",
                "action": rng.choice(["view", "payout", "change_email", "add_payee"]),
            }
            if rng.random() < 0.6:
                data["amount"] = amount
        else:
            data = {
                "service_id": f"svc{rng.randrange(2)}",
                "target": f"svc{rng.randrange(4)}",
                "method": rng.choice(["GET", "POST"]),
                "path": rng.choice(["/a", "/b", "/c/1"]),
            }
            if rng.random() < 0.8:
                data["request_bytes"] = rng.choice([0, 1, 512, 2**20, 2**53, rng.randrange(9000)])
        rows.append(
            {
                "event_id": f"e{i}",
                "type": kind,
                "occurred_at": _iso(ts),
                "context": context,
                "data": data,
            }
        )
    return rows


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_default_pack_on_random_streams(redis_url: str, prefix: str, seed: int) -> None:
    events = parsed(random_rows(random.Random(seed), 1500))
    run(differential(redis_url, prefix, default_plan, events))


# --------------------------------------------------------------------------------------------
# Differential: every kind, edge cases


def feature_set(*specs: dict[str, Any]) -> FeatureSet:
    return build_features([FeatureSpec.model_validate(s) for s in specs], default_functions())


EDGE_SPECS: list[dict[str, Any]] = [
    {
        "name": "vel",
        "kind": "velocity",
        "events": ["transaction"],
        "entity": ["data.account_id"],
        "windows": ["7s", "1m", "13m", "1h"],  # widths 7/12 s and 65 s: not exact binary
        "sum": "data.amount",
        "distinct": "data.counterparty_id",
        "capacity": 3,
    },
    {
        "name": "vel_when",
        "kind": "velocity",
        "events": ["transaction"],
        "entity": ["data.account_id", "data.currency"],
        "when": "data.amount <= 5",
        "windows": ["5m", "1d"],
        "distinct": "hour",
    },
    {
        "name": "vel_plain",
        "kind": "velocity",
        "events": ["transaction"],
        "entity": ["data.currency"],
        "windows": ["90s"],
    },
    {
        "name": "base",
        "kind": "baseline",
        "events": ["transaction"],
        "entity": ["data.account_id"],
        "value": "data.amount",
        "min_count": 1,
        "max_count": 4,
    },
    {
        "name": "base_log",
        "kind": "baseline",
        "events": ["transaction"],
        "entity": ["data.account_id"],
        "value": "data.amount",
        "transform": "log",
        "min_count": 3,
        "when": "data.currency != 'XXX'",
    },
    {
        "name": "hours",
        "kind": "hour_profile",
        "events": ["transaction"],
        "entity": ["data.currency"],
        "when": "data.amount > 0.5",
    },
    {
        "name": "nov",
        "kind": "novelty",
        "events": ["transaction"],
        "entity": ["data.account_id"],
        "value": "data.counterparty_id",
        "capacity": 2,
        "when": "data.amount < 1000",
    },
    {
        "name": "nov_composite",
        "kind": "novelty",
        "events": ["transaction"],
        "entity": ["data.account_id"],
        "value": ["data.counterparty_id", "data.amount", "hour"],
        "capacity": 5,
    },
    {
        "name": "nov_number",
        "kind": "novelty",
        "events": ["transaction"],
        "entity": ["data.currency"],
        "value": "data.amount",
        "capacity": 3,
    },
    {
        "name": "geo",
        "kind": "geo_velocity",
        "events": ["transaction"],
        "entity": ["data.account_id"],
        "when": "data.amount != 3",
    },
    {
        "name": "cont",
        "kind": "continuity",
        "events": ["transaction"],
        "entity": ["data.account_id", "data.currency"],
        "attributes": ["context.ip", "data.amount", "hour", "context.geo.country"],
        "when": "data.amount != 2",
    },
    {
        "name": "last",
        "kind": "last_seen",
        "events": ["transaction"],
        "entity": ["data.account_id"],
        "when": "data.amount > 1",
    },
]


def edge_events(rng: random.Random, n: int) -> list[Event]:
    """Flat transaction fields (no model validation: ints where floats are usual, lat/lon as
    ints, numbers as counterparties, NaN-free), with late events and long gaps."""
    ts = T0
    out: list[Event] = []
    for _ in range(n):
        r = rng.random()
        if r < 0.55:
            ts += rng.choice([0.0, 0.001, 0.5, 1.0, 3.0, 7 / 12, rng.random() * 20])
        elif r < 0.7:
            ts -= rng.choice([0.25, 5.0, 60.0, 400.0, rng.random() * 4000])
        elif r < 0.95:
            ts += rng.random() * 900
        else:
            ts += rng.choice([3_600.0, 7_300.0, 86_400.0, 2 * 86_400 + 0.1])
        ts = round(ts, rng.choice([0, 3, 6]))
        fields: dict[str, Any] = {
            "event_id": "x",
            "hour": int(ts // 3600) % 24,
            "data.account_id": rng.choice(["a", "b"]),
            "data.currency": rng.choice(["EUR", "USD", "XXX"]),
        }
        fields["data.amount"] = rng.choice(
            [
                1,
                2,
                3,
                1.0,
                0.1,
                0.2,
                0.3,
                4.99,
                1e15,
                1e-7,
                3e-10,
                123456.789,
                rng.lognormvariate(3, 3),
                rng.uniform(0, 10),
            ]
        )
        if rng.random() < 0.85:
            fields["data.counterparty_id"] = rng.choice(["p", "q", "r", "s", "1", "2"])
        if rng.random() < 0.8:
            fields["context.ip"] = rng.choice(["1.1.1.1", "2.2.2.2"])
        if rng.random() < 0.7:
            lat = rng.choice([0, 45, -33.9, 51.5, 90, -90, 1e-300])
            lon = rng.choice([0, 180, -180, 151.2, -0.13, 2])
            fields["context.geo.lat"] = lat
            fields["context.geo.lon"] = lon
        if rng.random() < 0.6:
            fields["context.geo.country"] = rng.choice(["GB", "AU", "FR"])
        out.append(("transaction", ts, fields))
    return out


def test_every_kind_on_edge_cases(redis_url: str, prefix: str) -> None:
    fs = feature_set(*EDGE_SPECS)
    events = edge_events(random.Random(11), 3000)
    compared = run(differential(redis_url, prefix, fs.plan, events))
    assert compared > 30_000


def test_hour_profile_halving_and_late_folds(redis_url: str, prefix: str) -> None:
    """More than 2,000 folded events (counts halve), pending hours and late events."""
    fs = feature_set(
        {
            "name": "hours",
            "kind": "hour_profile",
            "events": ["login"],
            "entity": ["data.user_id"],
        }
    )
    rng = random.Random(5)
    ts = T0
    events: list[Event] = []
    for _ in range(2600):
        ts += rng.choice([60.0, 600.0, 1800.0, 3600.0, 5000.0, -7200.0, -3 * 3600.0])
        events.append(("login", ts, {"data.user_id": "u"}))
    run(differential(redis_url, prefix, fs.plan, events))


def test_velocity_sums_keep_precision_when_large_amounts_expire(
    redis_url: str, prefix: str
) -> None:
    fs = feature_set(
        {
            "name": "v",
            "kind": "velocity",
            "events": ["transaction"],
            "entity": ["data.account_id"],
            "windows": ["1m", "10m"],
            "sum": "data.amount",
        }
    )
    events: list[Event] = []
    ts = T0
    for i in range(400):
        ts += 4.5 if i % 50 else 70.0
        amount = 1e15 if i % 17 == 0 else [0.1, 0.2, 0.3, 1e-7, 0.7][i % 5]
        events.append(("transaction", ts, {"data.account_id": "a", "data.amount": amount}))
    run(differential(redis_url, prefix, fs.plan, events))


def cpython312_sum(values: Any, start: int = 0) -> Any:
    """builtins.sum of floats as CPython 3.12+ computes it (Python/bltinmodule.c): the int start
    plus the first item, then Neumaier's compensated summation of the rest."""
    it = iter(values)
    first = next(it, None)
    if first is None:
        return start
    f = float(start + first)
    c = 0.0
    for x in it:
        t = f + x
        if abs(f) >= abs(x):
            c += (f - t) + x
        else:
            c += (x - t) + f
        f = t
    if c and math.isfinite(c):
        f += c
    return f


def test_velocity_sums_under_compensated_summation(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From Python 3.12 sum() compensates; the script's other path must then match. This runs
    the in-memory reference with 3.12's sum() and the store told so, whatever runs the test."""
    from riskguard.engine import features as features_module

    assert cpython312_sum([0.1] * 10) == 1.0 != sum([0.1] * 10) or sys.version_info >= (3, 12)
    monkeypatch.setattr(features_module, "sum", cpython312_sum, raising=False)
    monkeypatch.setattr(redis_state, "_COMPENSATED_SUM", True)
    test_velocity_sums_keep_precision_when_large_amounts_expire(redis_url, prefix)
    fs = feature_set(*EDGE_SPECS)
    run(differential(redis_url, prefix, fs.plan, edge_events(random.Random(12), 1500)))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    steps=st.lists(
        st.tuples(
            st.floats(min_value=-5_000, max_value=100_000, allow_nan=False),
            st.sampled_from(["a", "b"]),
            st.one_of(
                st.floats(min_value=0, max_value=1e15, allow_nan=False),
                st.integers(min_value=0, max_value=2**53),
            ),
            st.sampled_from(["p", "q", "r", "s", "t"]),
            st.booleans(),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_every_kind_hypothesis(
    redis_url: str, prefix: str, steps: list[tuple[float, str, float, str, bool]]
) -> None:
    fs = feature_set(*EDGE_SPECS)
    ts = T0
    events: list[Event] = []
    for dt, account, amount, counterparty, located in steps:
        ts = max(ts + dt, 0.0)
        fields: dict[str, Any] = {
            "hour": int(ts // 3600) % 24,
            "data.account_id": account,
            "data.currency": "EUR",
            "data.amount": amount,
            "data.counterparty_id": counterparty,
        }
        if located:
            fields["context.geo.lat"] = (amount % 180) - 90
            fields["context.geo.lon"] = (amount % 360) - 180
        events.append(("transaction", ts, fields))
    run(differential(redis_url, prefix, fs.plan, events))


def test_two_clients_taking_turns_match_one(redis_url: str, prefix: str) -> None:
    """Two stores (two connection pools: think two server processes) alternating on a stream
    give the reference values, as one does."""
    rows, _ = simulate(days=3, users=20, seed=3)
    events = parsed(rows[:1500]) + parsed(random_rows(random.Random(9), 500))
    run(differential(redis_url, prefix, default_plan, events, clients=2))
    fs = feature_set(*EDGE_SPECS)
    run(differential(redis_url, prefix, fs.plan, edge_events(random.Random(4), 800), clients=3))


def test_digests_and_canonical_values() -> None:
    assert value_digest("1") == value_digest(1)  # the in-memory rule: repr of non-strings
    assert value_digest(1) != value_digest(1.0)
    assert len(value_digest("x" * 1000)) == 8
    assert canonical_bytes(1) == canonical_bytes(1.0) == canonical_bytes(True)
    assert canonical_bytes(-0.0) == canonical_bytes(0)
    assert canonical_bytes("1") != canonical_bytes(1)
    assert canonical_bytes(2**60 + 1) != canonical_bytes(float(2**60 + 1))
    assert canonical_bytes(10**400) != canonical_bytes(10**400 + 1)


# --------------------------------------------------------------------------------------------
# Claims

PROBE = feature_set(
    {
        "name": "v",
        "kind": "velocity",
        "events": ["transaction"],
        "entity": ["data.account_id"],
        "windows": ["1h"],
        "when": "data.amount > 0",  # amount 0: a probe that reads without counting
    }
)


def probe_fields(amount: float) -> dict[str, Any]:
    return {"type": "transaction", "data.account_id": "a", "data.amount": amount}


def make_store(kind: str, url: str, prefix: str, **kwargs: Any) -> Any:
    if kind == "memory":
        return MemoryStateStore(**kwargs)
    return RedisStateStore(url, prefix=prefix, **kwargs)


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_claims(kind: str, redis_url: str, prefix: str) -> None:
    who = tenant()

    async def main() -> None:
        store = make_store(kind, redis_url, prefix, claim_ttl_s=600)
        try:

            async def send(amount: float, claim: Claim | None) -> tuple[str | None, dict[str, Any]]:
                env = probe_fields(amount)
                ops = PROBE.plan("transaction", env)
                result = await store.apply(who, ops, T0, env, env, claim)
                return result, env

            claim = Claim("evt-1", "hash-a")
            results = await asyncio.gather(*(send(5.0, claim) for _ in range(50)))
            winners = [env for result, env in results if result is None]
            assert len(winners) == 1
            assert winners[0]["features.v.count_1h"] == 1.0
            losers = [(result, env) for result, env in results if result is not None]
            assert {result for result, _ in losers} == {"hash-a"}
            assert all("features.v.count_1h" not in env for _, env in losers)
            _, env = await send(0, None)
            assert env["features.v.count_1h"] == 1.0
            # Another body under the same id: the stored hash comes back, nothing is counted.
            result, env = await send(5.0, Claim("evt-1", "hash-b"))
            assert result == "hash-a"
            assert "features.v.count_1h" not in env
            # A claim on another event id, and in another tenant, is independent.
            assert (await send(5.0, Claim("evt-2", "hash-a")))[0] is None
            other = await store.apply(tenant(), [], T0, {}, {}, Claim("evt-1", "hash-c"))
            assert other is None
            # Released: the id can be claimed (and counted) afresh.
            await store.release(who, "evt-1")
            result, env = await send(5.0, Claim("evt-1", "hash-b"))
            assert result is None
            assert env["features.v.count_1h"] == 3.0
            assert (await send(5.0, Claim("evt-1", "hash-a")))[0] == "hash-b"
            if kind == "redis":
                client = store._client
                ttl = await client.ttl(store.claim_key(who, "evt-1"))
                assert 590 <= ttl <= 600
            else:
                ttl = store.claim_ttl(who, "evt-1")
                assert ttl is not None
                assert 590 <= ttl <= 600
        finally:
            await store.close()

    run(main())


def test_memory_claims_expire_and_are_bounded() -> None:
    now = [1000.0]
    store = MemoryStateStore(claim_ttl_s=10, max_claims=3, clock=lambda: now[0])

    async def main() -> None:
        assert await store.apply("t", [], T0, {}, {}, Claim("a", "1")) is None
        assert await store.apply("t", [], T0, {}, {}, Claim("a", "2")) == "1"
        now[0] += 10.0
        assert await store.apply("t", [], T0, {}, {}, Claim("a", "2")) is None  # expired
        for event_id in "bcd":
            assert await store.apply("t", [], T0, {}, {}, Claim(event_id, "x")) is None
        assert store.claim_count("t") == 3
        assert await store.apply("t", [], T0, {}, {}, Claim("a", "3")) is None  # dropped
        assert await store.apply("t", [], T0, {}, {}, Claim("d", "y")) == "x"
        await store.release("t", "d")
        await store.release("nobody", "d")
        assert await store.apply("t", [], T0, {}, {}, Claim("d", "y")) is None
        await store.ping()

    run(main())


# --------------------------------------------------------------------------------------------
# Keys, expiry, tenants

KEY = re.compile(
    r"^(?P<prefix>[^:]+):\{(?P<tenant>t[0-9a-f]{10}):(?P<entity>.+)\}"
    r":(?P<feature>[a-z0-9_]+)@[0-9a-f]{8}$"
)


def test_keys_carry_the_hash_tag_and_expire(redis_url: str, prefix: str) -> None:
    who = tenant()
    rows, _ = simulate(days=3, users=10, seed=2)
    events = parsed(rows[:300]) + parsed(random_rows(random.Random(1), 300))
    by_name = {f.name: f for f in DEFAULT_ENGINE.ruleset.features.features}

    async def main() -> None:
        store = RedisStateStore(redis_url, prefix=prefix)
        client = store._client
        try:
            for event_type, ts, fields in events:
                env = {"type": event_type, **fields}
                await store.apply(who, DEFAULT_ENGINE.plan(event_type, env), ts, env, env, None)
            keys = [
                k.decode() async for k in client.scan_iter(match=f"{prefix}:{{{who}:*", count=500)
            ]
            assert len(keys) > 50
            kinds_seen = set()
            for key in keys:
                match = KEY.match(key)
                assert match is not None, key
                assert match["prefix"] == prefix
                feature = by_name[match["feature"]]
                kinds_seen.add(feature.spec.kind)
                ttl = await client.ttl(key)
                assert ttl > 0, key
                if feature.spec.kind == "velocity":
                    longest = max(feature.kind.spans)  # type: ignore[attr-defined]
                    assert ttl <= math.ceil(longest * 13 / 12)
                elif feature.spec.kind == "continuity":
                    assert 7 * 86_400 - 5 <= ttl <= 7 * 86_400
                else:
                    assert 90 * 86_400 - 5 <= ttl <= 90 * 86_400
            assert kinds_seen == {
                "velocity",
                "baseline",
                "hour_profile",
                "novelty",
                "geo_velocity",
                "continuity",
                "last_seen",
            }
        finally:
            await store.close()

    run(main())


def test_tenants_are_isolated(redis_url: str, prefix: str) -> None:
    first, second = tenant(), tenant()

    async def main() -> None:
        store = RedisStateStore(redis_url, prefix=prefix)
        try:
            counts = {}
            for who, n in ((first, 3), (second, 1), (first, 1)):
                for _ in range(n):
                    env = probe_fields(5.0)
                    await store.apply(who, PROBE.plan("transaction", env), T0, env, env, None)
                    counts[who] = env["features.v.count_1h"]
            assert counts == {first: 4.0, second: 1.0}
        finally:
            await store.close()

    run(main())


def test_a_state_of_the_wrong_shape_reads_as_fresh(redis_url: str, prefix: str) -> None:
    """A value that does not fit its kind's layout (corrupt, or another encoding) is not
    misread: the feature starts afresh, as for a missing key."""
    fs = feature_set(*EDGE_SPECS)
    who = tenant()

    async def main() -> None:
        store = RedisStateStore(redis_url, prefix=prefix)
        memory = MemoryStateStore()
        try:
            env_m = {"data.account_id": "a", "data.currency": "EUR", "data.amount": 7.0}
            env_m |= {"data.counterparty_id": "p", "hour": 3, "context.geo.lat": 1.0}
            env_m |= {"context.geo.lon": 2.0, "context.ip": "1.1.1.1"}
            env_r = dict(env_m)
            ops = fs.plan("transaction", env_m)
            for key, _, _ in ops:
                await store._client.set(store.state_key(who, key), b"\x00" * 7, ex=60)
            await memory.apply(who, ops, T0, env_m, env_m, None)
            await store.apply(who, ops, T0, env_r, env_r, None)
            assert snapshot(env_r) == snapshot(env_m)
        finally:
            await store.close()

    run(main())


# --------------------------------------------------------------------------------------------
# Failures and recovery


def test_unreachable_redis_fails_fast(redis_url: str) -> None:
    port = free_port()  # nothing listens there

    async def main() -> None:
        store = RedisStateStore(f"redis://:s3cret-pw@127.0.0.1:{port}/0", timeout_s=0.25)
        try:
            for call in (
                lambda: store.apply(
                    "t",
                    PROBE.plan("transaction", probe_fields(1)),
                    T0,
                    probe_fields(1),
                    {},
                    Claim("e", "h"),
                ),
                store.ping,
                lambda: store.release("t", "e"),
            ):
                started = time.monotonic()
                with pytest.raises(DependencyUnavailable) as info:
                    await call()
                assert time.monotonic() - started < 1.0
                assert str(info.value).startswith("redis: ")
                assert "s3cret" not in str(info.value)
        finally:
            await store.close()

    run(main())


def test_silent_server_times_out(redis_url: str) -> None:
    """A server that accepts connections but never answers: a timeout, not a hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]

    async def main() -> None:
        store = RedisStateStore(f"redis://127.0.0.1:{port}/0", timeout_s=0.2)
        try:
            for call in (
                lambda: store.apply("t", [], T0, {}, {}, Claim("e", "h")),
                store.ping,
            ):
                started = time.monotonic()
                with pytest.raises(DependencyUnavailable):
                    await call()
                assert time.monotonic() - started < 0.2 * 3 + 0.5
        finally:
            await store.close()

    try:
        run(main())
    finally:
        listener.close()


class Proxy:
    """A TCP proxy to Redis that can go down and come back on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        self.writers.clear()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def test_recovers_when_redis_comes_back_and_reloads_the_script(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from urllib.parse import urlsplit

    target = urlsplit(redis_url).port or 6379
    who = tenant()

    async def main() -> None:
        proxy = Proxy(target)
        await proxy.start()
        store = RedisStateStore(f"redis://127.0.0.1:{proxy.port}/0", prefix=prefix, timeout_s=1)

        async def count() -> float:
            env = probe_fields(5.0)
            await store.apply(who, PROBE.plan("transaction", env), T0, env, env, None)
            return float(env["features.v.count_1h"])

        try:
            assert await count() == 1.0
            await proxy.stop()
            with pytest.raises(DependencyUnavailable):
                await count()
            with pytest.raises(DependencyUnavailable):
                await store.ping()
            await proxy.start()
            await store.ping()
            assert await count() == 2.0
            # A Redis that lost its scripts (restarted empty) answers NOSCRIPT: EVAL takes over.
            monkeypatch.setattr(redis_state, "SCRIPT_SHA", "0" * 40)
            assert await count() == 3.0
        finally:
            await store.close()
            await proxy.stop()

    run(main())


def test_every_connection_returns_to_the_pool(redis_url: str, prefix: str) -> None:
    """Many concurrent events over a small pool: none fails, none waits past the timeout."""
    who = tenant()

    async def main() -> None:
        store = RedisStateStore(redis_url, prefix=prefix, max_connections=4, timeout_s=2)
        try:

            async def one(i: int) -> float:
                env = probe_fields(5.0)
                claim = Claim(f"e{i}", "h")
                await store.apply(who, PROBE.plan("transaction", env), T0, env, env, claim)
                return float(env["features.v.count_1h"])

            counts = await asyncio.gather(*(one(i) for i in range(200)))
            assert sorted(counts) == [float(i) for i in range(1, 201)]
        finally:
            await store.close()

    run(main())


# --------------------------------------------------------------------------------------------
# The hot path's own RESP client (adapters/redis/resp.py): cancellation, reconnection, AUTH and
# SELECT from the URL, error replies, TLS left to redis-py.


class DelayProxy(Proxy):
    """A proxy whose replies (Redis to client) are held back ``delay`` seconds."""

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self.delay = 0.0
        self.accepted = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, slow: bool) -> None:
            try:
                while data := await src.read(65536):
                    if slow and self.delay:
                        await asyncio.sleep(self.delay)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))


def test_a_cancelled_call_drops_its_connection(redis_url: str, prefix: str) -> None:
    """The caller's latency budget cancels a call whose reply is late: the connection (with the
    reply still pending on it) is closed, and the next call gets its own reply on a new one."""
    from urllib.parse import urlsplit

    who = tenant()

    async def main() -> None:
        proxy = DelayProxy(urlsplit(redis_url).port or 6379)
        await proxy.start()
        store = RedisStateStore(f"redis://127.0.0.1:{proxy.port}/0", prefix=prefix, timeout_s=5)

        async def count() -> float:
            env = probe_fields(5.0)
            await store.apply(who, PROBE.plan("transaction", env), T0, env, env, None)
            return float(env["features.v.count_1h"])

        try:
            assert await count() == 1.0
            assert proxy.accepted == 1
            assert len(store._idle) == 1
            proxy.delay = 0.3
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await count()  # sent, so it counts; its reply comes too late
            assert store._idle == []  # not given back: its reply is still on the way
            assert not store._live
            proxy.delay = 0.0
            await asyncio.sleep(0.4)  # the late reply reaches the dropped connection, if any
            assert await count() == 3.0  # its own reply, not the previous call's (2.0)
            assert proxy.accepted == 2
        finally:
            await store.close()
            await proxy.stop()

    run(main())


def test_its_own_timeout_drops_the_connection_too(redis_url: str, prefix: str) -> None:
    from urllib.parse import urlsplit

    who = tenant()

    async def main() -> None:
        proxy = DelayProxy(urlsplit(redis_url).port or 6379)
        await proxy.start()
        store = RedisStateStore(f"redis://127.0.0.1:{proxy.port}/0", prefix=prefix, timeout_s=0.1)
        try:
            env = probe_fields(5.0)
            ops = PROBE.plan("transaction", env)
            await store.apply(who, ops, T0, env, env, None)
            proxy.delay = 0.3
            with pytest.raises(DependencyUnavailable, match="TimeoutError"):
                await store.apply(who, ops, T0, env, env, None)
            assert store._idle == []
            proxy.delay = 0.0
            await asyncio.sleep(0.4)
            env = probe_fields(5.0)
            await store.apply(who, ops, T0, env, env, None)
            assert env["features.v.count_1h"] == 3.0
        finally:
            await store.close()
            await proxy.stop()

    run(main())


def test_idle_connections_closed_by_the_server_are_replaced(redis_url: str, prefix: str) -> None:
    """Connections the server closed while idle (a restart, a proxy, CLIENT KILL) are noticed and
    replaced: the next call does not fail."""
    from urllib.parse import urlsplit

    who = tenant()

    async def main() -> None:
        proxy = Proxy(urlsplit(redis_url).port or 6379)
        await proxy.start()
        store = RedisStateStore(f"redis://127.0.0.1:{proxy.port}/0", prefix=prefix, timeout_s=1)

        async def count() -> float:
            env = probe_fields(5.0)
            await store.apply(who, PROBE.plan("transaction", env), T0, env, env, None)
            return float(env["features.v.count_1h"])

        try:
            await asyncio.gather(count(), count(), count())  # three connections, then idle
            assert len(store._idle) == 3
            await proxy.stop()
            await proxy.start()
            await asyncio.sleep(0.05)
            assert await count() == 4.0
            assert await count() == 5.0
        finally:
            await store.close()
            await proxy.stop()

    run(main())


def test_error_replies_surface_and_the_store_recovers(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error reply (not NOSCRIPT) is a DependencyUnavailable naming Redis's message."""
    who = tenant()
    broken = f"return redis.error_reply('riskguard test {uuid.uuid4().hex}')"

    async def main() -> None:
        store = RedisStateStore(redis_url, prefix=prefix, timeout_s=2)
        env = probe_fields(5.0)
        ops = PROBE.plan("transaction", env)
        try:
            with monkeypatch.context() as patch:
                patch.setattr(redis_state, "SCRIPT", broken)
                patch.setattr(redis_state, "SCRIPT_SHA", "0" * 40)  # NOSCRIPT, then EVAL
                with pytest.raises(DependencyUnavailable, match="riskguard test"):
                    await store.apply(who, ops, T0, env, env, None)
            await store.apply(who, ops, T0, env, env, None)
            assert env["features.v.count_1h"] == 1.0
        finally:
            await store.close()

    run(main())


class OwnRedis:
    """A redis-server of the test's own (the shared one is never reconfigured)."""

    def __init__(self, directory: Any, *args: str) -> None:
        import shutil

        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (the Debian package redis-server)")
        self.port = free_port()
        self.socket = f"{directory}/redis.sock"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(directory), "--unixsocket", self.socket,
             "--unixsocketperm", "700", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        pytest.fail("redis-server did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def own_redis(tmp_path: Any) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path, "--requirepass", "s3cret-pw")
    try:
        yield server
    finally:
        server.stop()


def test_password_user_and_database_come_from_the_url(own_redis: OwnRedis) -> None:
    """AUTH (password alone, or an ACL user and password) and SELECT as the URL says, over TCP
    and a Unix socket; a wrong password fails without showing it."""
    port = own_redis.port

    async def main() -> None:
        admin = aioredis.Redis(port=port, password="s3cret-pw")
        await admin.execute_command("ACL", "SETUSER", "rg-user", "on", ">p@ss:w/rd", "~*", "+@all")
        try:
            for url, db in (
                (f"redis://:s3cret-pw@127.0.0.1:{port}/3", 3),
                (f"redis://rg-user:p%40ss%3Aw%2Frd@127.0.0.1:{port}/5", 5),
                (f"unix://:s3cret-pw@{own_redis.socket}?db=7", 7),
                (f"redis://:s3cret-pw@127.0.0.1:{port}", 0),
            ):
                store = RedisStateStore(url, prefix="rgown", timeout_s=2)
                assert store._endpoint is not None  # the hot path's own client
                try:
                    for expected in (1.0, 2.0):
                        env = probe_fields(5.0)
                        claim = Claim(f"e-{expected}", "h")
                        ops = PROBE.plan("transaction", env)
                        assert await store.apply("t", ops, T0, env, env, claim) is None
                        assert env["features.v.count_1h"] == expected
                    await store.ping()
                finally:
                    await store.close()
                selected = aioredis.Redis(port=port, password="s3cret-pw", db=db)
                try:
                    keys = sorted([k.decode() async for k in selected.scan_iter(match="rgown:*")])
                    assert len(keys) == 3, (url, keys)  # two claims and the state
                    await selected.delete(*keys)
                finally:
                    await selected.aclose()
            for url in (
                f"redis://:wrong-pw@127.0.0.1:{port}/0",
                f"redis://rg-user:wrong-pw@127.0.0.1:{port}/0",
                f"redis://127.0.0.1:{port}/0",  # no password at all
            ):
                store = RedisStateStore(url, prefix="rgown", timeout_s=2)
                try:
                    env = probe_fields(5.0)
                    with pytest.raises(DependencyUnavailable) as info:
                        await store.apply("t", PROBE.plan("transaction", env), T0, env, env, None)
                    assert "wrong-pw" not in str(info.value)
                    assert str(info.value).startswith("redis: ")
                finally:
                    await store.close()
        finally:
            await admin.aclose()

    run(main())


def test_tls_urls_stay_with_redis_py(redis_url: str) -> None:
    """``rediss://`` is not spoken by the hot path's client: the store keeps redis-py's TLS
    connections for it (here against a plain server, so the handshake fails, cleanly)."""
    from urllib.parse import urlsplit

    port = urlsplit(redis_url).port or 6379

    async def main() -> None:
        store = RedisStateStore(f"rediss://:tls-s3cret@127.0.0.1:{port}/0", timeout_s=0.5)
        assert store._endpoint is None
        try:
            env = probe_fields(5.0)
            with pytest.raises(DependencyUnavailable) as info:
                await store.apply("t", PROBE.plan("transaction", env), T0, env, env, None)
            assert "tls-s3cret" not in str(info.value)
        finally:
            await store.close()

    run(main())


def test_calls_waiting_for_a_connection_can_be_cancelled(redis_url: str, prefix: str) -> None:
    """With every connection busy, calls queue; one cancelled while queued gives up its turn,
    and every slot is free again at the end."""
    from urllib.parse import urlsplit

    who = tenant()

    async def main() -> None:
        proxy = DelayProxy(urlsplit(redis_url).port or 6379)
        await proxy.start()
        store = RedisStateStore(
            f"redis://127.0.0.1:{proxy.port}/0", prefix=prefix, timeout_s=5, max_connections=1
        )

        async def count() -> float:
            env = probe_fields(5.0)
            await store.apply(who, PROBE.plan("transaction", env), T0, env, env, None)
            return float(env["features.v.count_1h"])

        try:
            proxy.delay = 0.1
            first = asyncio.create_task(count())
            await asyncio.sleep(0.02)
            second, third = asyncio.create_task(count()), asyncio.create_task(count())
            await asyncio.sleep(0.02)
            assert len(store._waiting) == 2
            second.cancel()
            assert await first == 1.0
            assert await third == 2.0
            assert second.cancelled()
            assert (store._free, len(store._waiting), proxy.accepted) == (1, 0, 1)
        finally:
            await store.close()
            await proxy.stop()

    run(main())
