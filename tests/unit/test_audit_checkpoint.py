"""Signed checkpoints (C2SP signed-note + tlog-checkpoint), the canonical bytes they commit to,
and the in-memory audit log checked by the verifier.

(The SQL log, concurrency and tamper tests through the real command are in
tests/integration/test_audit_log.py.)
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import stat
from datetime import UTC, datetime, timedelta, timezone
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from riskguard.adapters.audit.canonical import CanonicalJSONError, canonical_json, es_number
from riskguard.adapters.audit.chain import (
    GENESIS_HASH,
    ChainBroken,
    ChainState,
    CheckpointPolicy,
    new_entry,
    record_bytes,
)
from riskguard.adapters.audit.checkpoint import (
    Checkpoint,
    InvalidNote,
    NoteSigner,
    NoteVerifier,
    key_id,
    open_checkpoint,
    open_note,
    sign_checkpoint,
    sign_note,
)
from riskguard.adapters.audit.keys import (
    AuditKeyError,
    AuditSettings,
    load_signer,
    load_verifier,
    write_new_key,
)
from riskguard.adapters.audit.log import MemoryAuditLog
from riskguard.adapters.audit.merkle import MerkleTree, leaf_hash, verify_inclusion
from riskguard.adapters.audit.verify import LogVerifier, StoredCheckpoint

# golang.org/x/mod/sumdb/note's own test key and note: ours must read and write them byte for
# byte, so any Go tool (witnesses, monitors) accepts our checkpoints
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_SIG = (
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdng"
    "otpRZb6KE6RyyBwJnAM=\n"
)
ORIGIN = "example.test/audit"


# -- signed notes and keys -----------------------------------------------------------------


def test_go_reference_key_and_note_byte_for_byte() -> None:
    signer = NoteSigner.from_skey(GO_SKEY)
    assert signer.skey == GO_SKEY
    assert signer.verifier.vkey == GO_VKEY
    assert NoteVerifier.from_vkey(GO_VKEY) == signer.verifier
    note = sign_note(GO_TEXT, signer)  # Ed25519 is deterministic
    assert note == GO_TEXT + "\n" + GO_SIG
    text, verified = open_note(note, [NoteVerifier.from_vkey(GO_VKEY)])
    assert text == GO_TEXT
    assert verified == [signer.verifier]


def test_key_id_is_sha256_of_name_newline_type_and_key() -> None:
    verifier = NoteVerifier.from_vkey(GO_VKEY)
    expected = hashlib.sha256(b"PeterNeumann\n\x01" + verifier.public_key).digest()[:4]
    assert key_id("PeterNeumann", verifier.public_key) == int.from_bytes(expected, "big")
    assert f"{verifier.key_id:08x}" == "c74f20a3"


@pytest.mark.parametrize(
    "vkey",
    [
        "",
        "PeterNeumann",
        "PeterNeumann+c74f20a3",
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong id
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # upper-case id
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # space
        "PeterNeumann+c74f20a3+AhpcQcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # bad length
        "PeterNeumann+c74f20a3+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # not Ed25519
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T!",  # not base64
    ],
)
def test_malformed_verifier_keys_are_refused(vkey: str) -> None:
    with pytest.raises(InvalidNote):
        NoteVerifier.from_vkey(vkey)


def test_every_truncation_of_the_go_key_is_refused() -> None:
    for end in range(len(GO_VKEY)):
        with pytest.raises(InvalidNote):
            NoteVerifier.from_vkey(GO_VKEY[:end])


def test_a_note_is_rejected_when_changed_or_checked_with_another_key() -> None:
    signer = NoteSigner.generate(ORIGIN)
    note = sign_note("hello\nworld\n", signer)
    open_note(note, [signer.verifier])
    with pytest.raises(InvalidNote, match="does not verify"):
        open_note(note.replace("world", "World"), [signer.verifier])
    other = NoteSigner.generate(ORIGIN)  # same name, other key: an unknown key, ignored
    with pytest.raises(InvalidNote, match="no known key"):
        open_note(note, [other.verifier])
    renamed = NoteVerifier("other.test/audit", signer.verifier.public_key)  # same key, other name
    with pytest.raises(InvalidNote, match="no known key"):
        open_note(note, [renamed])


def test_a_known_key_whose_signature_fails_rejects_the_whole_note() -> None:
    good, bad = NoteSigner.generate(ORIGIN), NoteSigner.generate("witness.test/w1")
    note = sign_note("text\n", good)
    # a second signature line from `bad`'s name and id whose signature bytes are garbage
    forged = base64.b64encode(bad.key_id.to_bytes(4, "big") + b"\x00" * 64).decode()
    with_forged = note + f"\u2014 {bad.name} {forged}\n"
    _, verified = open_note(with_forged, [good.verifier])  # bad is unknown here: ignored
    assert verified == [good.verifier]
    with pytest.raises(InvalidNote, match="does not verify"):
        open_note(with_forged, [good.verifier, bad.verifier])
    # an unknown witness's valid cosignature is ignored, not an error
    cosigned = note + sign_note("text\n", bad).split("\n\n", 1)[1]
    assert open_note(cosigned, [good.verifier])[1] == [good.verifier]
    assert set(open_note(cosigned, [good.verifier, bad.verifier])[1]) == {
        good.verifier,
        bad.verifier,
    }


@pytest.mark.parametrize(
    "note",
    [
        "text\n",  # no signatures
        "text\n\n",  # a blank line, then nothing
        "text\n\nnot a signature\n",
        "text\n\n\u2014 name\n",  # no signature
        "text\n\n\u2014 name !!!!\n",  # not base64
        "text\n\n\u2014 name AAAA\n",  # too short
        "text\n\n\u2014 na+me AAAAAAAA\n",  # a plus in the name
        "text\x01\n\n\u2014 name AAAAAAAA\n",  # a control character
        "text\n\n\u2014 name AAAAAAAA",  # no final newline
    ],
)
def test_malformed_notes_are_refused(note: str) -> None:
    signer = NoteSigner.generate("name")
    with pytest.raises(InvalidNote):
        open_note(note, [signer.verifier])


def test_note_text_rules_when_signing() -> None:
    signer = NoteSigner.generate(ORIGIN)
    for text in ("no newline", "two\n\nparagraphs\n", "bell\a\n"):
        with pytest.raises(InvalidNote):
            sign_note(text, signer)
    with pytest.raises(InvalidNote):
        NoteSigner.generate("has space")
    with pytest.raises(InvalidNote):
        NoteSigner.generate("has+plus")


def test_signer_repr_never_shows_the_private_key() -> None:
    signer = NoteSigner.from_skey(GO_SKEY)
    assert "PRIVATE" not in repr(signer)
    assert GO_SKEY.split("+")[-1] not in repr(signer)


# -- checkpoints ---------------------------------------------------------------------------


def test_checkpoint_note_format() -> None:
    signer = NoteSigner.generate(ORIGIN)
    root = hashlib.sha256(b"root").digest()
    note = sign_checkpoint(Checkpoint(ORIGIN, 20852163, root), signer)
    lines = note.split("\n")
    assert lines[:4] == [ORIGIN, "20852163", base64.b64encode(root).decode(), ""]
    assert lines[4].startswith(f"\u2014 {ORIGIN} ")
    assert lines[5] == ""
    raw = base64.b64decode(lines[4].split(" ")[2])
    assert raw[:4] == signer.key_id.to_bytes(4, "big")
    assert len(raw) == 68
    text = "\n".join(lines[:3]) + "\n"
    Ed25519PublicKey.from_public_bytes(signer.verifier.public_key).verify(raw[4:], text.encode())
    assert open_checkpoint(note, signer.verifier) == Checkpoint(ORIGIN, 20852163, root)


def test_checkpoints_are_rejected_for_wrong_key_name_or_text() -> None:
    signer = NoteSigner.generate(ORIGIN)
    root = hashlib.sha256(b"root").digest()
    note = sign_checkpoint(Checkpoint(ORIGIN, 7, root), signer)
    with pytest.raises(InvalidNote):
        open_checkpoint(note, NoteSigner.generate(ORIGIN).verifier)  # wrong key
    with pytest.raises(InvalidNote):
        open_checkpoint(note.replace("\n7\n", "\n8\n"), signer.verifier)  # modified size
    other_root = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    with pytest.raises(InvalidNote):
        open_checkpoint(note.replace(base64.b64encode(root).decode(), other_root), signer.verifier)
    # a key for another origin signing this origin's checkpoint
    with pytest.raises(InvalidNote):
        sign_checkpoint(Checkpoint(ORIGIN, 7, root), NoteSigner.generate("elsewhere.test/log"))
    elsewhere = NoteSigner.generate("elsewhere.test/log")
    foreign = sign_note(f"{ORIGIN}\n7\n{base64.b64encode(root).decode()}\n", elsewhere)
    with pytest.raises(InvalidNote, match="origin"):
        open_checkpoint(foreign, elsewhere.verifier)


@pytest.mark.parametrize(
    "text",
    [
        "origin\n007\nAAAA\n",  # leading zeros
        "origin\n-1\nAAAA\n",
        "origin\n1\n",  # no root
        "origin\n1\nAAAA\n",  # root not 32 bytes
        "origin\n1\n" + base64.b64encode(b"r" * 32).decode() + "\nextension\n",
    ],
)
def test_malformed_checkpoint_text_is_refused(text: str) -> None:
    with pytest.raises(InvalidNote):
        Checkpoint.parse(text)


# -- key files -----------------------------------------------------------------------------


def test_key_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("RISKGUARD_ENV", "RISKGUARD_AUDIT_SIGNING_KEY", "RISKGUARD_AUDIT_ORIGIN"):
        monkeypatch.delenv(name, raising=False)
    # development: the default key is generated on first use (0600), then reused
    first = load_signer(AuditSettings())
    assert stat.S_IMODE(os.stat("riskguard-audit.key").st_mode) == 0o600
    assert load_signer(AuditSettings()).verifier == first.verifier
    assert first.name == "riskguard.local/audit"
    with pytest.raises(AuditKeyError, match="exists"):
        write_new_key(tmp_path / "riskguard-audit.key", "x")
    # production: never generated, never world-readable
    monkeypatch.setenv("RISKGUARD_ENV", "production")
    with pytest.raises(AuditKeyError, match="RISKGUARD_AUDIT_SIGNING_KEY"):
        load_signer(AuditSettings())
    monkeypatch.setenv("RISKGUARD_AUDIT_SIGNING_KEY", str(tmp_path / "missing.key"))
    with pytest.raises(AuditKeyError, match="no audit signing key"):
        load_signer(AuditSettings())
    monkeypatch.setenv("RISKGUARD_AUDIT_SIGNING_KEY", "riskguard-audit.key")
    assert load_signer(AuditSettings()).verifier == first.verifier
    os.chmod("riskguard-audit.key", 0o644)
    with pytest.raises(AuditKeyError, match="readable by others"):
        load_signer(AuditSettings())
    Path("garbage.key").write_text("PRIVATE+KEY+nope\n")
    os.chmod("garbage.key", 0o600)
    monkeypatch.setenv("RISKGUARD_AUDIT_SIGNING_KEY", "garbage.key")
    with pytest.raises(AuditKeyError, match="not an audit signing key"):
        load_signer(AuditSettings())
    # verifier keys: the text, a file holding it, or the signer key file's public half
    Path("pub.vkey").write_text(first.verifier.vkey + "\n")
    assert load_verifier(first.verifier.vkey) == first.verifier
    assert load_verifier("pub.vkey") == first.verifier
    assert load_verifier("riskguard-audit.key") == first.verifier
    with pytest.raises(AuditKeyError):
        load_verifier("no-such-file")


# -- canonical JSON ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # RFC 8785 appendix-style cases
        ({"b": 1, "a": [True, False, None]}, b'{"a":[true,false,null],"b":1}'),
        # RFC 8785 section 3.2.3's sorting example: UTF-16 code units, so the emoji (a
        # surrogate pair) sorts before U+FB33
        (
            {"\u20ac": 1, "\r": 2, "\ufb33": 3, "1": 4, "\U0001f600": 5, "\u0080": 6, "\u00f6": 7},
            '{"\\r":2,"1":4,"\u0080":6,"\u00f6":7,"\u20ac":1,"\U0001f600":5,"\ufb33":3}'.encode(),
        ),
        ('\u2028\x7f\x1f"\\/', b'"\xe2\x80\xa8\x7f\\u001f\\"\\\\/"'),
        (
            [1.0, -0.0, 1e21, 1e-7, 0.000001, 123456789.125, 1e20, 5e-324],
            b"[1,0,1e+21,1e-7,0.000001,123456789.125,100000000000000000000,5e-324]",
        ),
        ({"nested": {"z": [], "y": {}}}, b'{"nested":{"y":{},"z":[]}}'),
        (
            datetime(2026, 5, 10, 12, 0, tzinfo=timezone(timedelta(hours=2))),
            b'"2026-05-10T10:00:00.000000Z"',
        ),
    ],
)
def test_canonical_json(value: Any, expected: bytes) -> None:
    assert canonical_json(value) == expected


def test_enum_members_and_str_subclasses_are_their_values() -> None:
    class Kind(StrEnum):
        PAY = "pay"

    class Level(IntEnum):
        HIGH = 3

    body = {Kind.PAY: [Kind.PAY, Level.HIGH], "a": (1, 2.5)}
    assert canonical_json(body) == b'{"a":[1,2.5],"pay":["pay",3]}'


def test_the_path_of_a_bad_value_is_named() -> None:
    with pytest.raises(CanonicalJSONError, match=r"^\$\.a\[1\]\.b: nan is not a JSON number"):
        canonical_json({"a": [1, {"b": float("nan")}]})


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        2**53,
        {1: "a"},
        {"a": b"bytes"},
        {"a": {1, 2}},
        datetime(2026, 1, 1),
        "\ud800",
        {"k\ud800": 1},
    ],
)
def test_values_without_a_canonical_form_are_refused(value: Any) -> None:
    with pytest.raises(CanonicalJSONError):
        canonical_json(value)


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_numbers_round_trip(value: float) -> None:
    text = es_number(value)
    assert float(text) == value
    assert "e" not in text or not (1e-7 < abs(value) < 1e21) or abs(value) < 1e-6


# -- records, the chain and the in-memory log ----------------------------------------------


def test_record_bytes_and_hash_are_the_documented_ones() -> None:
    data = record_bytes(
        1, "2026-05-10T12:00:00.000000Z", None, "cli", "key.created", "{}", GENESIS_HASH
    )
    assert data == (
        b'{"action":"key.created","actor":"cli","at":"2026-05-10T12:00:00.000000Z","body":{},'
        b'"prev_hash":"' + b"0" * 64 + b'","seq":1,"tenant_id":null}'
    )
    entry = new_entry(action="key.created", actor="cli", body={})
    records, state = ChainState().extend([entry], datetime(2026, 5, 10, 12, tzinfo=UTC))
    assert records[0].canonical() == data
    assert records[0].hash == hashlib.sha256(data).hexdigest() == state.head
    assert state.tree.root() == leaf_hash(data)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"action": "Bad Action", "actor": "a"}, "action"),
        ({"action": "x", "actor": ""}, "actor must be"),
        ({"action": "x", "actor": "a\x00b"}, "NUL"),
        ({"action": "x", "actor": "a", "tenant_id": ""}, "tenant_id must be"),
        ({"action": "x", "actor": "a", "body": {"n": float("nan")}}, "not a JSON number"),
        ({"action": "x", "actor": "a", "at": datetime(2026, 1, 1)}, "time zone"),
    ],
)
def test_bad_entries_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        new_entry(**kwargs)


def test_follow_checks_what_another_writer_stored() -> None:
    now = datetime(2026, 5, 10, tzinfo=UTC)
    entries = [new_entry(action="x", actor="a", body={"i": i}) for i in range(5)]
    records, state = ChainState().extend(entries, now)
    assert ChainState().follow(records).head == state.head
    assert ChainState().follow(records).tree.root() == state.tree.root()
    with pytest.raises(ChainBroken):
        ChainState().follow(records[1:])
    with pytest.raises(ChainBroken):
        ChainState().follow([records[0], records[1]._replace(body='{"i":7}'), *records[2:]])


def test_checkpoint_policy() -> None:
    policy = CheckpointPolicy(every_records=10, every_seconds=5)
    t = datetime(2026, 5, 10, tzinfo=UTC)
    assert not policy.due(3, 3, None, t)  # nothing waits
    assert policy.due(1, 0, None, t)  # never signed: sign what there is
    assert policy.due(13, 3, t, t)  # ten wait
    assert not policy.due(12, 3, t, t + timedelta(seconds=4))
    assert policy.due(12, 3, t, t + timedelta(seconds=5))
    with pytest.raises(ValueError, match="every_records"):
        CheckpointPolicy(every_records=0)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


def _memory_log(count: int, every: int = 10) -> MemoryAuditLog:
    log = MemoryAuditLog(
        NoteSigner.generate(ORIGIN), policy=CheckpointPolicy(every, 3600), clock=Clock()
    )

    async def fill() -> None:
        for i in range(count):
            await log.append_one(
                action="decision.recorded",
                actor="key_1",
                tenant_id="t_a" if i % 2 else "t_b",
                body={"i": i, "score": i / 7},
            )

    asyncio.run(fill())
    return log


def test_memory_log_appends_checkpoints_and_proves() -> None:
    log = _memory_log(35)
    report = log.verify(inclusion=[1, 20, 35])
    assert report.ok, report.problem
    assert (report.records, report.latest_checkpoint, report.unsigned) == (35, 31, 4)
    # checkpoints at 1 (the first ever), 11, 21, 31 and consistency between each pair
    assert (report.checkpoints, report.consistency_proofs) == (4, 3)
    assert [p.signed for p in report.inclusions] == [True, True, False]

    async def proofs() -> None:
        proof = await log.inclusion_proof(7)
        assert proof.tree_size == 31
        assert proof.checkpoint is not None
        verify_inclusion(proof.leaf_hash, 6, 31, proof.proof, proof.root_hash)
        checkpoint = open_checkpoint(proof.checkpoint.note, log.verifier)
        assert checkpoint.root_hash == proof.root_hash
        consistency = await log.consistency_proof(11)
        assert (consistency.size1, consistency.size2) == (11, 31)
        last = await log.checkpoint()  # signs the four waiting records
        assert last is not None
        assert last.tree_size == 35
        page = await log.list_records(tenant_id="t_a", after=10, limit=3)
        assert [r.seq for r in page] == [12, 14, 16]
        assert [r.seq for r in await log.list_records(action="nope")] == []
        with pytest.raises(LookupError):
            await log.inclusion_proof(36)
        with pytest.raises(ValueError, match="limit"):
            await log.list_records(limit=0)
        assert (await log.get(35)) is not None
        assert (await log.get(36)) is None
        assert (await log.get(1)) == (await log.list_records(limit=1))[0]
        assert page[0].to_dict()["body"] == {"i": 11, "score": 11 / 7}

    asyncio.run(proofs())
    assert log.verify().latest_checkpoint == 35


def _tampered(log: MemoryAuditLog, change: Any) -> Any:
    """Verify ``log`` after ``change`` edits its stored records (a list) in place."""
    change(log._records)
    return log.verify().problem


def test_verifier_names_the_first_bad_record() -> None:
    def edit(records: list[Any]) -> None:
        records[16] = records[16]._replace(body='{"i":999}')

    def delete(records: list[Any]) -> None:
        del records[16]

    def swap(records: list[Any]) -> None:
        a, b = records[16], records[17]
        records[16], records[17] = b._replace(seq=17), a._replace(seq=18)

    def insert(records: list[Any]) -> None:
        # a forged record 17 that chains correctly to 16, the rest renumbered
        forged, _ = ChainState(16, records[15].hash).extend(
            [new_entry(action="x", actor="mallory")], datetime(2026, 5, 10, tzinfo=UTC)
        )
        records[16:] = [forged[0]] + [r._replace(seq=r.seq + 1) for r in records[16:]]

    def rehash_from_17(records: list[Any]) -> None:
        # an attacker who knows the format: edit record 17 and recompute every hash after it
        state = ChainState(16, records[15].hash)
        tail = [
            new_entry(action=r.action, actor=r.actor, body={"forged": r.seq}) for r in records[16:]
        ]
        records[16:], _ = state.extend(tail, datetime(2026, 5, 10, tzinfo=UTC))

    assert str(_tampered(_memory_log(40), edit)) == (
        "record 17: altered: its content does not match its hash"
    )
    assert str(_tampered(_memory_log(40), delete)) == (
        "record 17: missing (the next stored record is 18)"
    )
    assert _tampered(_memory_log(40), swap).seq == 17
    problem = _tampered(_memory_log(40), insert)
    assert problem.seq == 17
    assert "inserted" in problem.reason
    problem = _tampered(_memory_log(40), rehash_from_17)
    assert (problem.seq, problem.checkpoint) == (12, 21)  # after checkpoint 11, before 21
    assert "rewritten" in problem.reason

    def truncate(records: list[Any]) -> None:
        del records[25:]

    problem = _tampered(_memory_log(40), truncate)  # checkpoint 31 exists past the end
    assert problem.seq == 26
    assert "truncated" in problem.reason
    # truncating only what no checkpoint covers yet cannot be seen
    short = _memory_log(40)
    del short._records[35:]
    assert short.verify().ok


def test_verifier_rejects_checkpoints_with_another_key_or_changed_rows() -> None:
    log = _memory_log(25)
    other = NoteSigner.generate(ORIGIN).verifier
    problem = log.verify(verifier=other).problem
    assert problem is not None
    assert problem.checkpoint == 1
    assert "not valid" in problem.reason
    checkpoints = [
        StoredCheckpoint(c.tree_size, c.root_hash.hex(), c.note) for c in log._checkpoints
    ]
    moved = [
        StoredCheckpoint(12, c.root_hash, c.note) if c.tree_size == 11 else c for c in checkpoints
    ]
    checker = LogVerifier(log.verifier, moved)
    from riskguard.adapters.audit.log import rows_of

    checker.feed(rows_of(log._records))
    problem = checker.finish().problem
    assert problem is not None
    assert problem.checkpoint == 12
    assert "differ" in problem.reason


def test_tree_and_records_agree() -> None:
    log = _memory_log(20)
    tree = MerkleTree(r.leaf_hash() for r in log._records)
    assert tree.root() == log._tree.root()


def test_rows_of_the_wrong_type_are_reported_not_crashed_on() -> None:
    log = _memory_log(3)
    from riskguard.adapters.audit.log import rows_of

    rows = list(rows_of(log._records))
    checkpoints = [
        StoredCheckpoint(c.tree_size, c.root_hash.hex(), c.note) for c in log._checkpoints
    ]
    for bad_row, reason in (
        ((rows[1][0], rows[1][1], rows[1][2], rows[1][3], rows[1][4], b"{}", *rows[1][6:]), "type"),
        (("2", *rows[1][1:]), "seq"),
    ):
        checker = LogVerifier(log.verifier, checkpoints)
        assert not checker.feed([rows[0], bad_row, rows[2]])
        problem = checker.finish().problem
        assert problem is not None
        assert problem.seq == 2
        assert reason in problem.reason
    checker = LogVerifier(log.verifier, [StoredCheckpoint("x", "y", "z")])  # type: ignore[arg-type]
    checker.feed(rows)
    problem = checker.finish().problem
    assert problem is not None
    assert "malformed" in problem.reason
