"""Audit records: what one holds, its canonical bytes, its hash, and the chain they form.

A record is ``seq`` (1, 2, 3, ... with no gap), ``at`` (UTC, microseconds), ``tenant_id``
(None for actions outside any tenant), ``actor`` (who: a key id, ``cli``, ``system``),
``action`` (what, e.g. ``decision.recorded``), ``body`` (canonical JSON, see
:mod:`.canonical`), ``prev_hash`` (the previous record's ``hash``; 64 zeros before the first)
and ``hash``.

Its canonical bytes are the RFC 8785 JSON object of every field but ``hash``, keys sorted::

    {"action":"…","actor":"…","at":"2026-05-10T12:00:00.000000Z","body":{…},
     "prev_hash":"<64 hex>","seq":1,"tenant_id":"…" | null}

``hash`` is the lower-case hex SHA-256 of those bytes, so each record commits to the one
before it; the Merkle leaf of the record is the same bytes (leaf hash ``SHA-256(0x00 ||
bytes)``). The body is stored as its canonical text and spliced in as it is: the bytes a
verifier rebuilds from the stored columns are the bytes that were hashed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson

from riskguard.adapters.audit.canonical import (
    CanonicalJSONError,
    canonical_json,
    canonical_json_of_json,
    format_time,
)
from riskguard.adapters.audit.merkle import CompactRange

GENESIS_HASH = "0" * 64
ACTION_PATTERN = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
MAX_NAME_CHARS = 256
MAX_BODY_BYTES = 1 << 20

# The actions the service records. Others are accepted when they match ACTION_PATTERN.
DECISION_RECORDED = "decision.recorded"
RULESET_PUBLISHED = "ruleset.published"
RULE_CHANGED = "rule.changed"
TENANT_CREATED = "tenant.created"
KEY_CREATED = "key.created"
KEY_REVOKED = "key.revoked"
ALERT_CHANGED = "alert.changed"
MODEL_ACTIVATED = "model.activated"

_sha256 = hashlib.sha256
_dumps = orjson.dumps


class AuditError(Exception):
    """The audit log cannot do what was asked; the message says why."""


class ChainBroken(AuditError):
    """The stored log does not chain where the appender expected it to: it will not extend
    (or sign) a log it cannot follow. ``riskguard audit verify`` names the record."""


def record_bytes(
    seq: int,
    at: str,
    tenant_id: str | None,
    actor: str,
    action: str,
    body: str,
    prev_hash: str,
) -> bytes:
    """The canonical bytes of a record (``at`` already in its canonical text form)."""
    return (
        b'{"action":%b,"actor":%b,"at":"%b","body":%b,"prev_hash":"%b","seq":%d,"tenant_id":%b}'
        % (
            _dumps(action),
            _dumps(actor),
            at.encode(),
            body.encode(),
            prev_hash.encode(),
            seq,
            b"null" if tenant_id is None else _dumps(tenant_id),
        )
    )


class AuditEntry(NamedTuple):
    """What a caller asks the log to record (build it with :func:`new_entry`).

    This and :class:`AuditRecord` are immutable named tuples rather than frozen dataclasses:
    one of each is made per record on the worker's hot path, and a frozen dataclass's
    ``__init__`` (an ``object.__setattr__`` per field) cost several times a tuple's there."""

    action: str
    actor: str
    body: str  # canonical JSON text
    tenant_id: str | None = None
    at: datetime | None = None  # None: the time the log writes it


def new_entry(
    *,
    action: str,
    actor: str,
    body: Any = None,
    tenant_id: str | None = None,
    at: datetime | None = None,
    body_from_json: bool = False,
) -> AuditEntry:
    """A checked entry, its body canonicalised. Raises ValueError saying what is wrong.

    ``body_from_json``: the body holds only values decoded from JSON (e.g. an outbox
    payload), which lets canonicalisation take its fast path (``canonical_json_of_json``)."""
    if not isinstance(action, str) or not ACTION_PATTERN.match(action):
        raise ValueError(f"action {action!r} must match {ACTION_PATTERN.pattern}")
    for name, value in (("actor", actor), ("tenant_id", tenant_id)):
        if value is None and name == "tenant_id":
            continue
        if not isinstance(value, str) or not value or len(value) > MAX_NAME_CHARS:
            raise ValueError(f"{name} must be a non-empty string of at most {MAX_NAME_CHARS}")
        if "\x00" in value:
            raise ValueError(f"{name} must not contain NUL characters")
    try:
        text = (canonical_json_of_json if body_from_json else canonical_json)(
            {} if body is None else body
        )
        if at is not None:
            format_time(at)
    except CanonicalJSONError as exc:
        raise ValueError(f"audit body: {exc}") from None
    if len(text) > MAX_BODY_BYTES:
        raise ValueError(f"audit body is larger than {MAX_BODY_BYTES} bytes")
    return AuditEntry(
        action=action,
        actor=actor,
        body=text.decode(),
        tenant_id=tenant_id,
        at=None if at is None else at.astimezone(UTC),
    )


class AuditRecord(NamedTuple):
    """One stored record of the log (an immutable named tuple: see :class:`AuditEntry`)."""

    seq: int
    at: datetime  # aware, UTC
    tenant_id: str | None
    actor: str
    action: str
    body: str  # canonical JSON text
    prev_hash: str
    hash: str

    def canonical(self) -> bytes:
        return record_bytes(
            self.seq,
            format_time(self.at),
            self.tenant_id,
            self.actor,
            self.action,
            self.body,
            self.prev_hash,
        )

    def leaf_hash(self) -> bytes:
        return _sha256(b"\x00" + self.canonical()).digest()

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data (body parsed), e.g. for ``GET /v1/audit``."""
        return {
            "seq": self.seq,
            "at": format_time(self.at),
            "tenant_id": self.tenant_id,
            "actor": self.actor,
            "action": self.action,
            "body": orjson.loads(self.body),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(slots=True)
class ChainState:
    """The end of the log as an appender sees it: its size, the last hash and the Merkle
    compact range (enough for the root at this size)."""

    size: int = 0
    head: str = GENESIS_HASH
    tree: CompactRange = field(default_factory=CompactRange)

    def extend(
        self, entries: Sequence[AuditEntry], now: datetime
    ) -> tuple[list[AuditRecord], ChainState]:
        """The records ``entries`` become when appended now, and the state after them (this
        state is unchanged: the caller adopts the new one once the records are stored)."""
        tree = self.tree.copy()
        head, seq = self.head, self.size
        records: list[AuditRecord] = []
        default_at = now.astimezone(UTC)
        default_text = format_time(default_at)  # most entries take the batch's time
        for entry in entries:
            seq += 1
            at = entry.at or default_at
            data = record_bytes(
                seq,
                default_text if at is default_at else format_time(at),
                entry.tenant_id,
                entry.actor,
                entry.action,
                entry.body,
                head,
            )
            digest = _sha256(data).hexdigest()
            tree.append(_sha256(b"\x00" + data).digest())
            records.append(
                AuditRecord(
                    seq, at, entry.tenant_id, entry.actor, entry.action, entry.body, head, digest
                )
            )
            head = digest
        return records, ChainState(seq, head, tree)

    def follow(self, records: Iterable[AuditRecord]) -> ChainState:
        """The state after records another writer stored (checked as they are taken)."""
        tree = self.tree.copy()
        head, size = self.head, self.size
        for record in records:
            data = record.canonical()
            if record.seq != size + 1 or record.prev_hash != head:
                raise ChainBroken(f"record {record.seq} does not follow record {size}")
            if _sha256(data).hexdigest() != record.hash:
                raise ChainBroken(f"record {record.seq} does not match its hash")
            tree.append(_sha256(b"\x00" + data).digest())
            head, size = record.hash, record.seq
        return ChainState(size, head, tree)


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    """When the log signs a checkpoint: once ``every_records`` records wait unsigned, or once
    ``every_seconds`` have passed since the last checkpoint while any record waits."""

    every_records: int = 1000
    every_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.every_records < 1 or self.every_seconds <= 0:
            raise ValueError("checkpoints need every_records >= 1 and every_seconds > 0")

    def due(self, size: int, last_size: int, last_at: datetime | None, now: datetime) -> bool:
        if size <= last_size:
            return False
        if size - last_size >= self.every_records:
            return True
        return last_at is None or now - last_at >= timedelta(seconds=self.every_seconds)
