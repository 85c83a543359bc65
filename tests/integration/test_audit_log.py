"""The audit log on real SQLite files and a real PostgreSQL: appends, concurrent appenders,
checkpoints, the append-only triggers, and tampering found by ``riskguard audit verify``.

Tamper tests get past the triggers the way an attacker with the database's owner rights would
(SQLite: drop the trigger; PostgreSQL: ``session_replication_role = replica``), change the
stored log, then run the real command (``.venv/bin/riskguard audit verify``) as a subprocess:
it must exit non-zero and name the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from riskguard.adapters.audit.chain import (
    ChainBroken,
    ChainState,
    CheckpointPolicy,
    new_entry,
    record_bytes,
)
from riskguard.adapters.audit.checkpoint import NoteSigner, open_checkpoint
from riskguard.adapters.audit.merkle import verify_consistency, verify_inclusion
from riskguard.adapters.sql import migrate
from riskguard.adapters.sql.audit import SqlAuditLog, opened, verify_database
from riskguard.adapters.sql.urls import dialect_of, sqlite_path

pytestmark = pytest.mark.integration

RISKGUARD = str(Path(sys.executable).with_name("riskguard"))
ORIGIN = "test.riskguard.local/audit"
POLICY = CheckpointPolicy(every_records=10, every_seconds=3600)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest) -> str:
    """A database migrated to head: a new SQLite file or a new PostgreSQL database."""
    db_url = str(
        request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "fresh_pg_url")
    )
    migrate.upgrade(db_url)
    return db_url


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


def fill(url: str, signer: NoteSigner, count: int = 40) -> None:
    """``count`` records appended one at a time (checkpoints at 1, 11, 21, 31, then ``count``
    when the log closes)."""

    async def main() -> None:
        async with opened(url, signer, policy=POLICY) as log:
            for i in range(count):
                await log.append_one(
                    action="decision.recorded",
                    actor=f"key_{i % 3}",
                    tenant_id="t_a" if i % 2 else "t_b",
                    body={"decision_id": f"dec_{i}", "score": i / 40, "outcome": "allow"},
                )

    asyncio.run(main())


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKGUARD_")}
    env["HOME"] = str(tmp_path)
    return env


def audit_verify(
    url: str, tmp_path: Path, *args: str, key: str | None = None
) -> subprocess.CompletedProcess[str]:
    command = [RISKGUARD, "audit", "verify", "--database-url", url, *args]
    if key is not None:
        command += ["--public-key", key]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=cli_env(tmp_path),
        check=False,
    )


# -- bypassing the triggers, as an attacker with owner rights would -------------------------


@contextlib.contextmanager
def tamper_sqlite(url: str) -> Iterator[sqlite3.Connection]:
    path = sqlite_path(url)
    assert path is not None
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for name in ("audit_log_no_update", "audit_log_no_delete"):
            conn.execute(f"DROP TRIGGER IF EXISTS {name}")
        conn.execute("BEGIN")
        yield conn
        conn.execute("COMMIT")
    finally:
        conn.close()


def tamper(url: str, *statements: tuple[str, tuple[Any, ...]]) -> None:
    """Run ``statements`` (SQL with ``?`` placeholders, parameters) past the triggers."""
    if dialect_of(url) == "sqlite":
        with tamper_sqlite(url) as conn:
            for sql, params in statements:
                conn.execute(sql, params)
        return

    async def pg() -> None:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        try:
            async with conn.transaction():
                await conn.execute("SET LOCAL session_replication_role = replica")
                for sql, params in statements:
                    numbered = sql
                    for i in range(sql.count("?")):
                        numbered = numbered.replace("?", f"${i + 1}", 1)
                    await conn.execute(numbered, *params)
        finally:
            await conn.close()

    asyncio.run(pg())


def stored(url: str, seq: int) -> dict[str, Any]:
    """Record ``seq`` as stored (at in its canonical text form)."""

    async def main() -> Any:
        async with opened(url, NoteSigner.generate(ORIGIN)) as log:
            return await log.get(seq)

    record = asyncio.run(main())
    assert record is not None
    return {
        "seq": record.seq,
        "at": record.at,
        "tenant_id": record.tenant_id,
        "actor": record.actor,
        "action": record.action,
        "body": record.body,
        "prev_hash": record.prev_hash,
        "hash": record.hash,
    }


def _at_param(url: str, at: datetime) -> Any:
    if dialect_of(url) == "sqlite":
        return at.replace(tzinfo=None).isoformat(" ", "microseconds")
    return at


def edit_body(url: str) -> None:
    tamper(url, ("UPDATE audit_log SET body = ? WHERE seq = 17", ('{"decision_id":"forged"}',)))


def delete_record(url: str) -> None:
    tamper(url, ("DELETE FROM audit_log WHERE seq = 17", ()))


def swap_records(url: str) -> None:
    tamper(
        url,
        ("UPDATE audit_log SET seq = -1 WHERE seq = 17", ()),
        ("UPDATE audit_log SET seq = 17 WHERE seq = 18", ()),
        ("UPDATE audit_log SET seq = 18 WHERE seq = -1", ()),
    )


def insert_record(url: str) -> None:
    """A forged record 17 chained correctly to record 16; the rest moved up by one."""
    before = stored(url, 16)
    at = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)
    entry = new_entry(action="key.created", actor="mallory", body={"role": "admin"}, at=at)
    forged, _ = ChainState(16, before["hash"]).extend([entry], at)
    r = forged[0]
    assert r.canonical() == record_bytes(
        17, "2026-05-10T12:00:00.000000Z", None, "mallory", "key.created", r.body, before["hash"]
    )
    tamper(
        url,
        ("UPDATE audit_log SET seq = -(seq + 1) WHERE seq >= 17", ()),
        ("UPDATE audit_log SET seq = -seq WHERE seq < 0", ()),
        (
            "INSERT INTO audit_log (seq, at, tenant_id, actor, action, body, prev_hash, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (17, _at_param(url, at), None, r.actor, r.action, r.body, r.prev_hash, r.hash),
        ),
    )


def truncate_log(url: str) -> None:
    tamper(url, ("DELETE FROM audit_log WHERE seq > 25", ()))


TAMPERS: dict[str, tuple[Callable[[str], None], str]] = {
    "edit a body": (edit_body, "record 17: altered: its content does not match its hash"),
    "delete a record": (delete_record, "record 17: missing (the next stored record is 18)"),
    "swap two": (swap_records, "record 17: does not link to record 16"),
    "insert one": (insert_record, "record 17: inserted: record 18 links to record 16"),
    "truncate past a checkpoint": (truncate_log, "record 26: missing: the log ends at record 25"),
}


# -- the happy path ------------------------------------------------------------------------


def test_appends_checkpoints_and_the_command_verifies(
    url: str, signer: NoteSigner, tmp_path: Path
) -> None:
    fill(url, signer)
    done = audit_verify(
        url, tmp_path, "--inclusion", "17", "--inclusion", "40", key=signer.verifier.vkey
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(
        "audit log OK: 40 records, chain intact, 5 checkpoints verified (newest at 40), "
        "4 consistency proofs, 0 records not yet covered by a checkpoint"
    )
    assert "record 17 is included in the checkpoint of 40 records" in done.stdout
    as_json = audit_verify(url, tmp_path, "--json", "--inclusion", "3", key=signer.verifier.vkey)
    report = json.loads(as_json.stdout)
    assert as_json.returncode == 0
    assert report["ok"]
    assert report["first_bad"] is None
    assert (report["records"], report["checkpoints_verified"]) == (40, 5)
    assert report["inclusion"][0]["tree_size"] == 40
    assert report["inclusion"][0]["signed"]


def test_the_log_api_lists_and_proves(url: str, signer: NoteSigner) -> None:
    fill(url, signer, 25)

    async def main() -> None:
        async with opened(url, signer, policy=POLICY) as log:
            latest = await log.latest_checkpoint()
            assert latest is not None
            assert latest.tree_size == 25
            assert [c.tree_size for c in await log.checkpoints()] == [1, 11, 21, 25]
            checkpoint = open_checkpoint(latest.note, signer.verifier)
            proof = await log.inclusion_proof(9)
            assert proof.tree_size == 25
            assert proof.checkpoint == latest
            verify_inclusion(proof.leaf_hash, 8, 25, proof.proof, checkpoint.root_hash)
            record = await log.get(9)
            assert record is not None
            assert record.leaf_hash() == proof.leaf_hash
            consistency = await log.consistency_proof(11)
            older = open_checkpoint((await log.checkpoints())[1].note, signer.verifier)
            verify_consistency(11, 25, consistency.proof, older.root_hash, checkpoint.root_hash)
            page = await log.list_records(tenant_id="t_a", after=4, limit=3)
            assert [r.seq for r in page] == [6, 8, 10]
            assert page[0].to_dict()["body"]["decision_id"] == "dec_5"
            assert [r.seq for r in await log.list_records(action="key.created")] == []
            with pytest.raises(LookupError):
                await log.inclusion_proof(26)

    asyncio.run(main())


def test_two_appenders_in_one_process_keep_one_chain(url: str, signer: NoteSigner) -> None:
    async def main() -> tuple[int, int]:
        async with opened(url, signer, policy=POLICY) as a, opened(url, signer, policy=POLICY) as b:

            async def burst(log: SqlAuditLog, name: str) -> None:
                for i in range(15):
                    entries = [
                        new_entry(action="rule.changed", actor=name, body={"i": i, "k": k})
                        for k in range(i % 4 + 1)
                    ]
                    await log.append(entries)

            await asyncio.gather(burst(a, "a"), burst(b, "b"), burst(a, "a2"), burst(b, "b2"))
            return a.records_written, b.records_written

    written_a, written_b = asyncio.run(main())
    total = written_a + written_b
    assert written_a > 0
    assert written_b > 0
    report = verify_database(url, signer.verifier)
    assert report.ok, report.problem
    assert report.records == total == 4 * sum(i % 4 + 1 for i in range(15))


APPENDER = """
import asyncio, sys, time
from riskguard.adapters.audit.chain import CheckpointPolicy, new_entry
from riskguard.adapters.audit.checkpoint import NoteSigner
from riskguard.adapters.sql.audit import opened

url, skey, name, start = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])

async def main():
    async with opened(url, NoteSigner.from_skey(skey), policy=CheckpointPolicy(25, 3600)) as log:
        while time.time() < start:
            await asyncio.sleep(0.005)
        for i in range(60):
            body = [{"i": i, "k": k} for k in range(3)]
            await log.append([new_entry(action="alert.changed", actor=name, body=b) for b in body])
            await asyncio.sleep(0.001)

asyncio.run(main())
"""


def test_two_processes_appending_at_once_keep_one_unbroken_chain(
    url: str, signer: NoteSigner
) -> None:
    start = time.time() + 3.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", APPENDER, url, signer.skey, name, str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("proc_a", "proc_b")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    report = verify_database(url, signer.verifier)
    assert report.ok, report.problem
    assert report.records == 2 * 60 * 3

    async def actors() -> list[str]:
        async with opened(url, signer) as log:
            return [r.actor for r in await log.list_records(limit=1000)]

    order = asyncio.run(actors())
    switches = sum(1 for x, y in itertools.pairwise(order) if x != y)
    assert switches >= 2, "the two processes did not interleave"


def test_a_restarted_appender_resumes_from_its_last_checkpoint(
    url: str, signer: NoteSigner
) -> None:
    fill(url, signer, 23)  # the last checkpoint, at close, covers all 23
    fill(url, signer, 4)
    report = verify_database(url, signer.verifier)
    assert report.ok
    assert report.records == 27
    assert report.latest_checkpoint == 27


def test_the_timer_signs_a_checkpoint_in_a_quiet_period(url: str, signer: NoteSigner) -> None:
    async def main() -> list[int]:
        async with opened(url, signer, policy=CheckpointPolicy(1000, 0.3)) as log:
            await log.append_one(action="model.activated", actor="cli", body={"model": "m1"})
            await log.append_one(action="model.activated", actor="cli", body={"model": "m2"})
            await asyncio.sleep(1.0)
            sizes = [c.tree_size for c in await log.checkpoints()]
        return sizes

    sizes = asyncio.run(main())
    assert sizes[0] == 1
    assert 2 in sizes


def test_triggers_refuse_update_delete_and_truncate(url: str, signer: NoteSigner) -> None:
    fill(url, signer, 3)
    if dialect_of(url) == "sqlite":
        path = sqlite_path(url)
        assert path is not None
        with contextlib.closing(sqlite3.connect(path)) as conn:
            for sql in (
                "UPDATE audit_log SET body = '{}' WHERE seq = 1",
                "DELETE FROM audit_log WHERE seq = 3",
                "DELETE FROM audit_log",
                "UPDATE audit_checkpoints SET note = 'x'",
                "DELETE FROM audit_checkpoints",
            ):
                with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                    conn.execute(sql)
        return

    async def pg() -> None:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        try:
            for sql in (
                "UPDATE audit_log SET body = '{}' WHERE seq = 1",
                "DELETE FROM audit_log WHERE seq = 3",
                "TRUNCATE audit_log",
                "UPDATE audit_checkpoints SET note = 'x'",
                "DELETE FROM audit_checkpoints",
                "TRUNCATE audit_checkpoints",
            ):
                with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
                    await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(pg())
    assert verify_database(url, signer.verifier).records == 3


# -- tampering -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(TAMPERS))
def test_tampering_is_found_by_the_command(
    case: str, url: str, signer: NoteSigner, tmp_path: Path
) -> None:
    fill(url, signer)
    change, expected = TAMPERS[case]
    change(url)
    done = audit_verify(url, tmp_path, key=signer.verifier.vkey)
    assert done.returncode == 1, done.stdout + done.stderr
    assert expected in done.stdout
    report = json.loads(audit_verify(url, tmp_path, "--json", key=signer.verifier.vkey).stdout)
    assert report["ok"] is False
    assert report["first_bad"]["seq"] == int(expected.split()[1][:-1])


def test_a_rehashed_rewrite_is_caught_by_the_checkpoints(
    url: str, signer: NoteSigner, tmp_path: Path
) -> None:
    """An attacker who knows the format rewrites record 17 and rehashes everything after it:
    the chain holds, the signed roots do not."""
    fill(url, signer)
    before = stored(url, 16)
    rows = [stored(url, seq) for seq in range(17, 41)]
    entries = [
        new_entry(action=r["action"], actor=r["actor"], body={"forged": r["seq"]}, at=r["at"])
        for r in rows
    ]
    forged, _ = ChainState(16, before["hash"]).extend(entries, datetime.now(UTC))
    tamper(
        url,
        ("DELETE FROM audit_log WHERE seq >= 17", ()),
        *(
            (
                "INSERT INTO audit_log (seq, at, tenant_id, actor, action, body, prev_hash, hash) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    r.seq,
                    _at_param(url, r.at),
                    r.tenant_id,
                    r.actor,
                    r.action,
                    r.body,
                    r.prev_hash,
                    r.hash,
                ),
            )
            for r in forged
        ),
    )
    done = audit_verify(url, tmp_path, key=signer.verifier.vkey)
    assert done.returncode == 1
    assert (
        "record 12: checkpoint at tree size 21 signs a root that records 1..21 do not"
        in done.stdout
    )


def test_a_saved_checkpoint_catches_truncation_no_stored_checkpoint_covers(
    url: str, signer: NoteSigner, tmp_path: Path
) -> None:
    """Truncating the records and the checkpoints past them is invisible to the database alone
    — but not to an auditor who kept a checkpoint."""
    fill(url, signer)

    async def latest() -> str:
        async with opened(url, signer) as log:
            checkpoint = await log.latest_checkpoint()
            assert checkpoint is not None
            return checkpoint.note

    saved = tmp_path / "checkpoint-40.txt"
    saved.write_text(asyncio.run(latest()))
    statements: list[tuple[str, tuple[Any, ...]]] = [
        ("DELETE FROM audit_log WHERE seq > 30", ()),
        ("DELETE FROM audit_checkpoints WHERE tree_size > 30", ()),
    ]
    if dialect_of(url) == "sqlite":
        path = sqlite_path(url)
        assert path is not None
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("DROP TRIGGER audit_checkpoints_no_delete")
            conn.commit()
    tamper(url, *statements)
    alone = audit_verify(url, tmp_path, key=signer.verifier.vkey)
    assert alone.returncode == 0, alone.stdout  # nothing left in the database proves the loss
    audited = audit_verify(url, tmp_path, "--checkpoint", str(saved), key=signer.verifier.vkey)
    assert audited.returncode == 1
    assert "record 31: missing: the log ends at record 30" in audited.stdout


def test_the_appender_refuses_to_extend_a_truncated_log(url: str, signer: NoteSigner) -> None:
    fill(url, signer)
    truncate_log(url)

    async def main() -> None:
        async with opened(url, signer, policy=POLICY) as log:
            with pytest.raises(ChainBroken, match="truncated"):
                await log.append_one(action="key.created", actor="cli")

    with contextlib.suppress(ChainBroken):  # close() tries a last checkpoint too
        asyncio.run(main())


# -- the command's errors ------------------------------------------------------------------


def test_wrong_key_and_unusable_inputs(url: str, signer: NoteSigner, tmp_path: Path) -> None:
    fill(url, signer, 5)
    other = NoteSigner.generate(ORIGIN)
    wrong = audit_verify(url, tmp_path, key=other.verifier.vkey)
    assert wrong.returncode == 1
    assert "checkpoint 1: checkpoint at tree size 1: its signed note is not valid" in wrong.stdout
    renamed = NoteSigner.generate("other.test/audit")
    assert audit_verify(url, tmp_path, key=renamed.verifier.vkey).returncode == 1
    no_key = audit_verify(url, tmp_path)
    assert no_key.returncode == 2
    assert "--public-key" in no_key.stderr
    bad_key = audit_verify(url, tmp_path, key="not-a-key")
    assert bad_key.returncode == 2
    assert "Traceback" not in bad_key.stderr
    missing = audit_verify(f"sqlite:///{tmp_path / 'none.db'}", tmp_path, key=signer.verifier.vkey)
    assert missing.returncode == 2
    assert "cannot read the audit log" in missing.stderr
    assert not (tmp_path / "none.db").exists()
    bad_url = audit_verify("mysql://x/y", tmp_path, key=signer.verifier.vkey)
    assert bad_url.returncode == 2
    assert "Traceback" not in bad_url.stderr


def test_keygen_and_the_signing_key_file_as_public_key(tmp_path: Path, sqlite_url: str) -> None:
    env = cli_env(tmp_path)
    key = tmp_path / "keys" / "audit.key"
    made = subprocess.run(
        [RISKGUARD, "audit", "keygen", "--out", str(key), "--name", ORIGIN],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    signer = NoteSigner.from_skey(key.read_text())
    assert made.stdout.strip() == signer.verifier.vkey
    again = subprocess.run(
        [RISKGUARD, "audit", "keygen", "--out", str(key)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )
    assert again.returncode == 2
    assert "exists" in again.stderr
    migrate.upgrade(sqlite_url)
    fill(sqlite_url, signer, 3)
    env["RISKGUARD_AUDIT_SIGNING_KEY"] = str(key)
    done = subprocess.run(
        [RISKGUARD, "audit", "verify", "--database-url", sqlite_url],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert signer.verifier.vkey in done.stdout
