"""Decision-store benchmark: records/s through ``SqlDecisionStore.record()``, SQLite and PostgreSQL.

What it measures: W concurrent writers (coroutines in one event loop, W = 1, 16, 64, 256), each
recording one decision at a time and awaiting its durable commit before the next — the way
concurrent requests of the service use the store. Each cell runs for ``--seconds``; reported are
records/s (records committed / wall time), the p50 / p99 latency of one ``record()`` call, and
the mean group-commit batch (records per commit). One more row per database runs 64 writers
with ``batch_max=1`` (one commit per record), so the effect of group commit is measured, not
assumed.

Records are realistic in size (about 2 KB a row): a payment event body (~0.6 KB of JSON), a
20-entry feature snapshot, three reasons and an explanation. They are copies of one template with
a fresh time-ordered decision id, a random event id and new timestamps, so the benchmark's own
CPU cost stays small and the store serialises every record in full as it would in the service.

- SQLite: a new file in ``--sqlite-dir`` (default: a temporary directory), WAL mode,
  ``synchronous=FULL`` — every commit is fsynced, so the figure depends on the disk.
- PostgreSQL: a new database on the server of the integration tests (``RISKGUARD_TEST_PG_*``
  environment variables, default postgres@127.0.0.1:5432), dropped at the end; or ``--pg-url``
  (an existing, migrated-here database — its ``decisions`` table grows).

The cells run interleaved, one round at a time, ``--repeat`` rounds; every figure is the MEDIAN
over the rounds (a shared machine is noisy). Output: the machine, one table, then the JSON
summary as the last line of stdout (progress goes to stderr).

    .venv/bin/python bench/sql_store.py                  # full run, about 2 minutes
    .venv/bin/python bench/sql_store.py --quick          # smoke run, about 20 seconds
    .venv/bin/python bench/sql_store.py --only sqlite --json bench-sql.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.table import Table

from _machine import describe_machine, load_average
from riskguard.adapters.sql.migrate import upgrade
from riskguard.adapters.sql.store import SqlDecisionStore
from riskguard.adapters.sql.urls import redact
from riskguard.ports import DecisionRecord

WRITERS = (1, 16, 64, 256)
UNBATCHED_WRITERS = 64

out = Console()
err = Console(stderr=True)


@dataclass(slots=True)
class Cell:
    database: str
    writers: int
    batch_max: int
    records_per_s: float
    p50_ms: float
    p99_ms: float
    mean_batch: float
    records: int


def template_record(tenant: str) -> DecisionRecord:
    """One realistic decision; the timed loop stamps fresh ids and times on copies of it."""
    now = datetime.now(UTC)
    return DecisionRecord(
        decision_id="dec_template",
        tenant_id=tenant,
        event_id="ev-template",
        event_type="payment",
        body_hash=uuid.uuid4().hex * 2,
        entity="acct_1234",
        occurred_at=now - timedelta(milliseconds=5),
        received_at=now,
        outcome="allow",
        score=0.353142,
        ruleset_version="rs-0123456789abcdef",
        model_version="iforest-2025-03",
        latency_ms=1.234,
        degraded=False,
        event={
            "event_id": "ev-template",
            "type": "payment",
            "occurred_at": now.isoformat(),
            "account_id": "acct_1234",
            "user_id": "user_5678",
            "amount": 129.99,
            "currency": "EUR",
            "payment_method": {"type": "card", "fingerprint": "fp_9f8e7d6c5b4a", "bin": "424242"},
            "merchant_id": "m_1234",
            "merchant_category": "5732",
            "channel": "web",
            "ip": "203.0.113.42",
            "device_id": "dev_0a1b2c3d4e5f",
            "country": "DE",
            "billing_country": "DE",
            "user_agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0",
        },
        features={f"feature_{i}.value": i * 1.5 for i in range(20)},
        reasons=[
            {
                "code": "HIGH_AMOUNT_FOR_ACCOUNT",
                "source": "rule",
                "message": "Amount is 4.2x the account's 30-day median.",
                "value": 4.2,
                "contribution": 0.18,
            },
            {
                "code": "NEW_DEVICE",
                "source": "rule",
                "message": "First payment from this device.",
                "value": True,
                "contribution": 0.12,
            },
            {
                "code": "MODEL_ANOMALY",
                "source": "model",
                "message": "Anomaly score 0.71.",
                "value": 0.71,
                "contribution": 0.05,
            },
        ],
        shadow_reasons=[],
        explanation="Allowed: risk score 0.35 below the challenge threshold 0.5.",
    )


_OUTCOMES = ("allow", "allow", "allow", "challenge", "review", "block")


def make_record(template: DecisionRecord, n: int) -> DecisionRecord:
    """A copy of ``template`` with a fresh, time-ordered decision id and a random event id."""
    now = datetime.now(UTC)
    return replace(
        template,
        decision_id=f"dec_{time.time_ns():020d}{n:08d}",
        event_id=uuid.uuid4().hex,
        occurred_at=now,
        received_at=now,
        entity=f"acct_{n % 5000}",
        outcome=_OUTCOMES[n % 6],
    )


async def run_cell(url: str, database: str, writers: int, batch_max: int, seconds: float) -> Cell:
    store = SqlDecisionStore(url, batch_max=batch_max)
    await store.start()
    template = template_record(f"t_bench{writers}")
    counter = 0
    latencies: list[float] = []
    try:
        await store.record(make_record(template, 0))  # connect and warm up outside the timing
        batches0, written0 = store.batches, store.records_written
        deadline = time.perf_counter() + seconds

        async def writer() -> None:
            nonlocal counter
            while time.perf_counter() < deadline:
                counter += 1
                record = make_record(template, counter)
                started = time.perf_counter()
                inserted = await store.record(record)
                latencies.append(time.perf_counter() - started)
                assert inserted

        started = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(writers)))
        elapsed = time.perf_counter() - started
        records = store.records_written - written0
        batches = store.batches - batches0
    finally:
        await store.close()
    latencies.sort()
    return Cell(
        database=database,
        writers=writers,
        batch_max=batch_max,
        records_per_s=records / elapsed,
        p50_ms=1000 * latencies[len(latencies) // 2],
        p99_ms=1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        mean_batch=records / max(1, batches),
        records=records,
    )


def median_cell(cells: Sequence[Cell]) -> Cell:
    first = cells[0]
    return Cell(
        database=first.database,
        writers=first.writers,
        batch_max=first.batch_max,
        records_per_s=statistics.median(c.records_per_s for c in cells),
        p50_ms=statistics.median(c.p50_ms for c in cells),
        p99_ms=statistics.median(c.p99_ms for c in cells),
        mean_batch=statistics.median(c.mean_batch for c in cells),
        records=int(statistics.median(c.records for c in cells)),
    )


async def _pg_admin(sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(
        host=os.environ.get("RISKGUARD_TEST_PG_HOST", "127.0.0.1"),
        port=int(os.environ.get("RISKGUARD_TEST_PG_PORT", "5432")),
        user=os.environ.get("RISKGUARD_TEST_PG_USER", "postgres"),
        database=os.environ.get("RISKGUARD_TEST_PG_DB", "test"),
        timeout=10,
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short cells, 2 rounds")
    parser.add_argument("--seconds", type=float, default=None, help="per cell (3; quick: 0.75)")
    parser.add_argument("--repeat", type=int, default=None, help="rounds (5; quick: 2)")
    parser.add_argument("--batch-max", type=int, default=512, help="the store's batch_max")
    parser.add_argument(
        "--writers",
        default=",".join(map(str, WRITERS)),
        help="comma-separated concurrent writer counts",
    )
    parser.add_argument("--only", choices=("sqlite", "postgresql"), default=None)
    parser.add_argument("--sqlite-dir", type=pathlib.Path, default=None)
    parser.add_argument("--pg-url", default=None, help="use this PostgreSQL database")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="also write the summary")
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (0.75 if args.quick else 3.0)
    args.repeat = args.repeat or (2 if args.quick else 5)
    args.writers = [int(w) for w in args.writers.split(",")]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    machine = describe_machine()
    load_start = load_average()
    if not out.is_terminal:
        out.width = 120
    out.rule("[bold]riskguard decision store benchmark")
    out.print(f"Machine: {machine.summary()}")

    databases: dict[str, str] = {}
    cleanup: list[str] = []
    tmp = tempfile.TemporaryDirectory(prefix="rg-bench-")
    if args.only in (None, "sqlite"):
        directory = args.sqlite_dir or pathlib.Path(tmp.name)
        directory.mkdir(parents=True, exist_ok=True)
        databases["sqlite"] = f"sqlite:///{directory / f'bench-{uuid.uuid4().hex[:8]}.db'}"
    if args.only in (None, "postgresql"):
        if args.pg_url:
            databases["postgresql"] = args.pg_url
        else:
            name = f"riskguard_bench_{uuid.uuid4().hex[:8]}"
            asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
            cleanup.append(name)
            host = os.environ.get("RISKGUARD_TEST_PG_HOST", "127.0.0.1")
            port = os.environ.get("RISKGUARD_TEST_PG_PORT", "5432")
            user = os.environ.get("RISKGUARD_TEST_PG_USER", "postgres")
            databases["postgresql"] = f"postgresql://{user}@{host}:{port}/{name}"

    cells: list[tuple[str, int, int]] = []
    for database in databases:
        cells += [(database, w, args.batch_max) for w in args.writers]
        cells.append((database, UNBATCHED_WRITERS, 1))
    results: dict[tuple[str, int, int], list[Cell]] = {cell: [] for cell in cells}
    try:
        for database, url in databases.items():
            err.log(f"migrating {database}: {redact(url)}")
            upgrade(url)
        for round_no in range(1, args.repeat + 1):
            for database, writers, batch_max in cells:
                err.log(
                    f"round {round_no}/{args.repeat}: {database}, {writers} writers, "
                    f"batch_max {batch_max}"
                )
                cell = asyncio.run(
                    run_cell(databases[database], database, writers, batch_max, args.seconds)
                )
                results[(database, writers, batch_max)].append(cell)
    finally:
        for name in cleanup:
            asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        tmp.cleanup()

    medians = [median_cell(results[cell]) for cell in cells]
    table = Table(
        title=f"record() throughput, median of {args.repeat} rounds of {args.seconds:g} s",
        title_justify="left",
    )
    for column in ("database", "writers", "batch_max", "records/s", "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "database" else "right")
    table.add_column("records/commit", justify="right")
    for m in medians:
        table.add_row(
            m.database,
            str(m.writers),
            str(m.batch_max),
            f"{m.records_per_s:,.0f}",
            f"{m.p50_ms:.2f}",
            f"{m.p99_ms:.2f}",
            f"{m.mean_batch:.1f}",
        )
    out.print(table)
    out.print(
        "Every record() returns after its commit (SQLite: WAL + synchronous=FULL, an fsync per "
        "commit; PostgreSQL: synchronous_commit as the server is configured). batch_max=1 rows "
        "commit every record alone: the difference is what group commit buys."
    )
    summary: dict[str, Any] = {
        "benchmark": "sql_store",
        "machine": machine.to_dict(),
        "config": {
            "seconds_per_cell": args.seconds,
            "repeat": args.repeat,
            "batch_max": args.batch_max,
            "writers": args.writers,
            "databases": {db: redact(url) for db, url in databases.items()},
            "statistic": "median over rounds",
            "quick": args.quick,
        },
        "results": [
            {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(m).items()}
            for m in medians
        ],
        "elapsed_s": round(time.perf_counter() - started, 1),
        "load_average": {"start": load_start, "end": load_average()},
    }
    out.print(
        f"Total time {summary['elapsed_s']} s. Load average (1/5/15 min) at the start "
        f"{load_start}, at the end {summary['load_average']['end']} on "
        f"{machine.usable_cpus} CPUs (the benchmark and the database share them)."
    )
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
