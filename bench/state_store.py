"""State store benchmark: the in-memory store against Redis on the default pack.

What it measures, in one Python thread and one asyncio loop:

1. **One event at a time.** ``--events`` simulated events (``riskguard.simulate``, parsed and
   planned up front) go through ``SharedStateStore.apply`` with an idempotency claim, as the
   service calls it, awaiting each call before the next: per-event latency (p50 / p99 / p99.9,
   timed with ``perf_counter_ns`` around the ``await``), events/s and the Redis/memory ratio. For
   Redis every call is one ``EVALSHA`` round trip, so this is latency-bound.
2. **Concurrent Redis.** The same stream with ``--concurrency`` calls in flight (the way one
   server process handles many requests at once): events/s, and the latency each call saw.
3. **Server cost.** Redis CPU per event, from ``INFO commandstats`` (``usec_per_call`` of
   ``evalsha``, as the difference of the counters around each pass — a Redis shared with other
   clients running scripts at the same time would blur it), and the bytes of state per key by
   feature kind (``MEMORY USAGE`` of a sample of keys) after a pass.

Every pass starts from empty state (a fresh key prefix, deleted afterwards); passes run
interleaved, one round at a time, ``--repeat`` rounds, and every figure is the MEDIAN over the
rounds. Output: the machine, the tables, then the JSON summary as the last line of stdout.

    .venv/bin/python bench/state_store.py                  # 20,000 events, 5 rounds
    .venv/bin/python bench/state_store.py --quick          # smoke run
    .venv/bin/python bench/state_store.py --redis-url redis://127.0.0.1:6379/0 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import math
import os
import pathlib
import statistics
import sys
import time
import uuid
from array import array
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis
from rich.console import Console
from rich.table import Table

from _machine import describe_machine, load_average
from riskguard.adapters.memory import MemoryStateStore
from riskguard.adapters.redis.state import RedisStateStore
from riskguard.engine.decide import Engine
from riskguard.engine.events import EVENT_TYPES, parse_event
from riskguard.engine.features import Env, FeatureOp
from riskguard.ports import Claim, SharedStateStore
from riskguard.rulefile import load_pack_file
from riskguard.simulate import simulate

out = Console()
err = Console(stderr=True)
TENANT = "bench"


@dataclass(frozen=True, slots=True)
class Item:
    event_type: str
    ts: float
    fields: Env
    ops: list[FeatureOp]
    claim: Claim


@dataclass
class Pass:
    latencies_ns: array[int]
    wall_s: float
    evalsha_usec: float | None = None  # server µs per EVALSHA during the pass
    evalsha_calls: int = 0

    @property
    def per_s(self) -> float:
        return len(self.latencies_ns) / self.wall_s


@dataclass
class Figures:
    p50_us: float
    p99_us: float
    p999_us: float
    mean_us: float
    per_s: float
    per_s_min: float
    per_s_max: float
    server_us_per_event: float | None


def percentile(sorted_ns: Sequence[int], q: float) -> float:
    """Nearest-rank percentile of sorted nanosecond values, in µs."""
    index = min(len(sorted_ns) - 1, max(0, math.ceil(q * len(sorted_ns)) - 1))
    return sorted_ns[index] / 1e3


def summarise(passes: Sequence[Pass]) -> Figures:
    def med(values: Sequence[float]) -> float:
        return statistics.median(values)

    ordered = [sorted(p.latencies_ns) for p in passes]
    server = [p.evalsha_usec for p in passes if p.evalsha_usec is not None]
    rates = [p.per_s for p in passes]
    return Figures(
        p50_us=med([percentile(o, 0.50) for o in ordered]),
        p99_us=med([percentile(o, 0.99) for o in ordered]),
        p999_us=med([percentile(o, 0.999) for o in ordered]),
        mean_us=med([sum(o) / len(o) / 1e3 for o in ordered]),
        per_s=med(rates),
        per_s_min=min(rates),
        per_s_max=max(rates),
        server_us_per_event=med(server) if server else None,
    )


# --------------------------------------------------------------------------------------------


def make_stream(n: int, seed: int, days: int) -> tuple[list[Item], int]:
    """The first ``n`` simulated events, parsed and planned (users scaled so ``n`` are made)."""
    engine = Engine(load_pack_file(None))
    users = max(10, round(0.52 * n / (days * 9.0)))
    for _ in range(6):
        raw, _labels = simulate(days=days, users=users, seed=seed)
        if len(raw) >= n:
            break
        users = max(users + 10, math.ceil(users * 1.2 * n / max(len(raw), 1)))
    else:
        raise SystemExit(f"the simulator produced only {len(raw)} events; ask for fewer")
    items = []
    for row in raw[:n]:
        event = parse_event(row)
        ts = event.occurred_at.timestamp()
        fields = event.fields(ts)
        body = hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()
        ops = engine.plan(fields["type"], fields)
        items.append(Item(fields["type"], ts, fields, ops, Claim(event.event_id, body)))
    return items, users


async def commandstats(client: aioredis.Redis) -> tuple[int, int]:
    """(calls, usec) of EVALSHA plus EVAL so far."""
    stats = await client.info("commandstats")
    calls = usec = 0
    for name in ("cmdstat_evalsha", "cmdstat_eval"):
        entry = stats.get(name)
        if entry:
            calls += int(entry["calls"])
            usec += int(entry["usec"])
    return calls, usec


async def sequential(store: SharedStateStore, items: Sequence[Item]) -> Pass:
    clock = time.perf_counter_ns
    envs = [dict(item.fields) for item in items]
    lat = array("q", bytes(8 * len(items)))
    apply = store.apply
    gc.collect()
    start = clock()
    for i, item in enumerate(items):
        env = envs[i]
        t0 = clock()
        await apply(TENANT, item.ops, item.ts, env, env, item.claim)
        lat[i] = clock() - t0
    return Pass(lat, (clock() - start) / 1e9)


async def concurrent(store: SharedStateStore, items: Sequence[Item], width: int) -> Pass:
    clock = time.perf_counter_ns
    envs = [dict(item.fields) for item in items]
    lat = array("q", bytes(8 * len(items)))
    apply = store.apply
    feed = iter(range(len(items)))

    async def worker() -> None:
        for i in feed:
            item, env = items[i], envs[i]
            t0 = clock()
            await apply(TENANT, item.ops, item.ts, env, env, item.claim)
            lat[i] = clock() - t0

    gc.collect()
    start = clock()
    await asyncio.gather(*(worker() for _ in range(width)))
    return Pass(lat, (clock() - start) / 1e9)


async def drop_prefix(client: aioredis.Redis, prefix: str) -> int:
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=2000)]
    for i in range(0, len(keys), 1000):
        await client.delete(*keys[i : i + 1000])
    return len(keys)


async def key_sizes(client: aioredis.Redis, prefix: str, kinds: dict[str, str]) -> dict[str, Any]:
    """Keys after a pass, and MEMORY USAGE / STRLEN of a sample of them by feature kind."""
    usage: defaultdict[str, list[int]] = defaultdict(list)
    length: defaultdict[str, list[int]] = defaultdict(list)
    count: Counter[str] = Counter()
    keys = [k.decode() async for k in client.scan_iter(match=f"{prefix}:*", count=2000)]
    for key in keys:
        name = key.rsplit(":", 1)[1].split("@", 1)[0]
        count[kinds.get(name, "claim")] += 1
    sample = keys[:: max(1, len(keys) // 3000)]
    async with client.pipeline(transaction=False) as pipe:
        for key in sample:
            pipe.memory_usage(key)
            pipe.strlen(key)
        replies = await pipe.execute()
    for i, key in enumerate(sample):
        kind = kinds.get(key.rsplit(":", 1)[1].split("@", 1)[0], "claim")
        if replies[2 * i] is not None:
            usage[kind].append(int(replies[2 * i]))
            length[kind].append(int(replies[2 * i + 1]))
    return {
        kind: {
            "keys": count[kind],
            "value_bytes_median": statistics.median(length[kind]),
            "value_bytes_max": max(length[kind]),
            "memory_usage_median": statistics.median(usage[kind]),
        }
        for kind in sorted(count)
        if length[kind]
    }


async def run_rounds(args: argparse.Namespace, items: list[Item]) -> dict[str, Any]:
    admin = aioredis.Redis.from_url(args.redis_url)
    await admin.ping()
    kinds = {f.name: f.spec.kind for f in Engine(load_pack_file(None)).ruleset.features.features}
    passes: dict[str, list[Pass]] = defaultdict(list)
    sizes: dict[str, Any] = {}
    try:
        # Warm-up (untimed): load the script, open connections, fill caches.
        prefix = f"rgbench{uuid.uuid4().hex[:8]}"
        store = RedisStateStore(args.redis_url, prefix=prefix, timeout_s=5.0)
        await sequential(store, items[: min(len(items), 2000)])
        await store.close()
        await drop_prefix(admin, prefix)
        await sequential(MemoryStateStore(), items[: min(len(items), 2000)])
        for r in range(args.repeat):
            err.log(f"round {r + 1}/{args.repeat}")
            passes["memory"].append(await sequential(MemoryStateStore(), items))
            for job in ("redis", "redis_concurrent"):
                prefix = f"rgbench{uuid.uuid4().hex[:8]}"
                store = RedisStateStore(
                    args.redis_url, prefix=prefix, timeout_s=5.0, max_connections=args.concurrency
                )
                calls0, usec0 = await commandstats(admin)
                if job == "redis":
                    run = await sequential(store, items)
                else:
                    run = await concurrent(store, items, args.concurrency)
                calls1, usec1 = await commandstats(admin)
                run.evalsha_calls = calls1 - calls0
                run.evalsha_usec = (usec1 - usec0) / max(calls1 - calls0, 1)
                passes[job].append(run)
                await store.close()
                if job == "redis" and r == 0:
                    sizes = await key_sizes(admin, prefix, kinds)
                await drop_prefix(admin, prefix)
        info = await admin.info("server")
    finally:
        await admin.aclose()
    return {"passes": passes, "sizes": sizes, "redis_version": info.get("redis_version")}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=None, help="events (20,000; quick: 3,000)")
    parser.add_argument("--repeat", type=int, default=None, help="rounds (5; quick: 2)")
    parser.add_argument("--days", type=int, default=None, help="simulated days (7; quick: 1)")
    parser.add_argument("--seed", type=int, default=7, help="simulator seed")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight (pass 2)")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("RISKGUARD_REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="Redis to use (keys under a fresh rgbench<hex> prefix, deleted afterwards)",
    )
    parser.add_argument("--json", type=pathlib.Path, default=None, help="also write the summary")
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    args = parser.parse_args(argv)
    args.events = args.events or (3_000 if args.quick else 20_000)
    args.repeat = args.repeat or (2 if args.quick else 5)
    args.days = args.days or (1 if args.quick else 7)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    machine = describe_machine()
    load_start = load_average()
    if not out.is_terminal:
        out.width = 120
    out.rule("[bold]riskguard state store benchmark")
    out.print(f"Machine: {machine.summary()}")
    err.log(f"generating {args.events:,} events")
    items, users = make_stream(args.events, args.seed, args.days)
    types = Counter(item.event_type for item in items)
    ops = sum(len(item.ops) for item in items) / len(items)
    mix = ", ".join(f"{t} {types[t] / len(items):.0%}" for t in EVENT_TYPES)
    out.print(
        f"Stream: {len(items):,} simulated events (seed {args.seed}, {args.days} days, {users} "
        f"users), default pack, {ops:.1f} feature ops an event, claims on: {mix}."
    )
    result = asyncio.run(run_rounds(args, items))
    passes: dict[str, list[Pass]] = result["passes"]
    figures = {job: summarise(runs) for job, runs in passes.items()}
    # Within each round: the store's wall time over memory's, then the median over rounds.
    ratios = {
        job: statistics.median(
            passes[job][r].wall_s / passes["memory"][r].wall_s for r in range(args.repeat)
        )
        for job in passes
    }

    table = Table(
        title=f"Per event, median of {args.repeat} rounds (Redis {result['redis_version']}, "
        f"{args.redis_url.rsplit('@', 1)[-1]})",
        title_justify="left",
    )
    for column in (
        "store",
        "events/s (min-max)",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "mean µs",
        "vs memory",
        "Redis CPU µs/event",
    ):
        table.add_column(column, justify="left" if column == "store" else "right")
    labels = {
        "memory": "memory, one at a time",
        "redis": "redis, one at a time",
        "redis_concurrent": f"redis, {args.concurrency} in flight",
    }
    for job, label in labels.items():
        f = figures[job]
        vs = "1" if job == "memory" else f"{ratios[job]:.1f}x"
        table.add_row(
            label,
            f"{f.per_s:,.0f} ({f.per_s_min:,.0f}-{f.per_s_max:,.0f})",
            f"{f.p50_us:,.1f}",
            f"{f.p99_us:,.1f}",
            f"{f.p999_us:,.1f}",
            f"{f.mean_us:,.1f}",
            vs,
            "-" if f.server_us_per_event is None else f"{f.server_us_per_event:.1f}",
        )
    out.print(table)
    out.print(
        "vs memory: the pass's wall time over the memory pass's in the same round. Redis CPU: "
        "usec_per_call of EVALSHA in INFO commandstats over the pass (the script's own time, "
        "without network and parsing)."
    )

    sizes: dict[str, Any] = result["sizes"]
    if sizes:
        size_table = Table(title="Redis keys after one pass", title_justify="left")
        for column in ("kind", "keys", "value bytes (median)", "value bytes (max)", "MEMORY USAGE"):
            size_table.add_column(column, justify="left" if column == "kind" else "right")
        for kind, row in sizes.items():
            size_table.add_row(
                kind,
                f"{row['keys']:,}",
                f"{row['value_bytes_median']:,.0f}",
                f"{row['value_bytes_max']:,}",
                f"{row['memory_usage_median']:,.0f}",
            )
        out.print(size_table)

    summary = {
        "benchmark": "state_store",
        "machine": machine.to_dict(),
        "redis_version": result["redis_version"],
        "events": len(items),
        "rounds": args.repeat,
        "concurrency": args.concurrency,
        "ops_per_event": round(ops, 2),
        "stores": {job: asdict(f) for job, f in figures.items()},
        "ratio_redis_over_memory": {
            "one_at_a_time": round(ratios["redis"], 2),
            "concurrent": round(ratios["redis_concurrent"], 2),
        },
        "evalsha_usec_per_call": figures["redis"].server_us_per_event,
        "keys": sizes,
        "load_average": {"start": load_start, "end": load_average()},
    }
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
