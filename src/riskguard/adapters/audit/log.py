"""The audit log's interface for the service layer, the values it returns, and an in-memory log.

:class:`AuditLog` is what use cases call: ``append`` (a batch, one transaction) or
``append_one``; reads and proofs for ``GET /v1/audit``. Two implementations:
:class:`MemoryAuditLog` here (tests, the in-memory embedded mode) and
:class:`riskguard.adapters.sql.audit.SqlAuditLog` (SQLite or PostgreSQL). Both chain, hash and
checkpoint identically, so a log verifies the same whichever wrote it.

Errors: ``ValueError`` for a bad entry or argument, ``LookupError`` for a record or tree size
that does not exist, :class:`~riskguard.adapters.audit.chain.ChainBroken` when the stored log
does not chain where the appender expects it to, and (SQL)
:class:`~riskguard.ports.DependencyUnavailable` when the database cannot be reached.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from riskguard.adapters.audit.canonical import format_time
from riskguard.adapters.audit.chain import (
    AuditEntry,
    AuditRecord,
    ChainState,
    CheckpointPolicy,
    new_entry,
)
from riskguard.adapters.audit.checkpoint import (
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    sign_checkpoint,
)
from riskguard.adapters.audit.merkle import MerkleTree
from riskguard.adapters.audit.verify import LogVerifier, Row, StoredCheckpoint, VerifyReport

Clock = Callable[[], datetime]
MAX_LIST = 1000


def utcnow() -> datetime:
    return datetime.now(UTC)


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """A checkpoint the log signed: its size, root, when, and the signed note itself."""

    tree_size: int
    root_hash: bytes
    created_at: datetime
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "tree_size": self.tree_size,
            "root_hash": _b64(self.root_hash),
            "created_at": format_time(self.created_at),
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """Record ``seq`` is leaf ``seq - 1`` of the tree of ``tree_size`` records."""

    seq: int
    tree_size: int
    leaf_hash: bytes
    proof: list[bytes]
    root_hash: bytes
    checkpoint: SignedCheckpoint | None  # the signed checkpoint of tree_size, if there is one

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "leaf_index": self.seq - 1,
            "tree_size": self.tree_size,
            "leaf_hash": _b64(self.leaf_hash),
            "proof": [_b64(p) for p in self.proof],
            "root_hash": _b64(self.root_hash),
            "checkpoint": None if self.checkpoint is None else self.checkpoint.note,
        }


@dataclass(frozen=True, slots=True)
class ConsistencyProof:
    """The tree of ``size2`` records extends the tree of ``size1``."""

    size1: int
    size2: int
    proof: list[bytes]
    root1: bytes
    root2: bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "size1": self.size1,
            "size2": self.size2,
            "proof": [_b64(p) for p in self.proof],
            "root1": _b64(self.root1),
            "root2": _b64(self.root2),
        }


class AuditLog(Protocol):
    """The append-only, hash-chained audit log with signed checkpoints."""

    verifier: NoteVerifier  # the public key of its checkpoints

    async def start(self) -> None: ...

    async def close(self) -> None:
        """Write what is queued, sign a last checkpoint if records wait unsigned, stop."""
        ...

    async def append(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        """Store ``entries`` in order, together (one transaction), and return their records."""
        ...

    async def append_one(
        self,
        *,
        action: str,
        actor: str,
        body: Any = None,
        tenant_id: str | None = None,
        at: datetime | None = None,
    ) -> AuditRecord: ...

    async def checkpoint(self) -> SignedCheckpoint | None:
        """Sign a checkpoint now if records wait unsigned; the newest checkpoint either way."""
        ...

    async def latest_checkpoint(self) -> SignedCheckpoint | None: ...

    async def get(self, seq: int) -> AuditRecord | None: ...

    async def list_records(
        self,
        *,
        tenant_id: str | None = None,
        action: str | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """Records with ``seq > after`` in ``seq`` order (one tenant's, one action's)."""
        ...

    async def inclusion_proof(self, seq: int, tree_size: int | None = None) -> InclusionProof:
        """Prove record ``seq`` in the tree of ``tree_size`` (default: the newest checkpoint)."""
        ...

    async def consistency_proof(self, size1: int, size2: int | None = None) -> ConsistencyProof:
        """Prove the tree of ``size2`` (default: the newest checkpoint) extends ``size1``."""
        ...


def _check_list_args(after: int, limit: int) -> None:
    if after < 0 or not 1 <= limit <= MAX_LIST:
        raise ValueError(f"after must be >= 0 and limit in 1..{MAX_LIST}")


def prove_inclusion(
    tree: MerkleTree,
    seq: int,
    tree_size: int | None,
    checkpoints: Sequence[SignedCheckpoint],
) -> InclusionProof:
    """The inclusion proof of ``seq`` from a tree holding (at least) the records it needs."""
    size = _default_size(tree_size, checkpoints)
    if not 1 <= seq <= size:
        raise LookupError(f"record {seq} is not in the tree of {size} records")
    if size > tree.size:
        raise LookupError(f"the log has {tree.size} records, not {size}")
    proof = tree.inclusion_proof(seq - 1, size)
    signed = next((c for c in checkpoints if c.tree_size == size), None)
    return InclusionProof(seq, size, tree.leaf(seq - 1), proof, tree.root(size), signed)


def prove_consistency(
    tree: MerkleTree, size1: int, size2: int | None, checkpoints: Sequence[SignedCheckpoint]
) -> ConsistencyProof:
    size = _default_size(size2, checkpoints)
    if not 1 <= size1 <= size:
        raise ValueError(f"no consistency proof from {size1} to {size}")
    if size > tree.size:
        raise LookupError(f"the log has {tree.size} records, not {size}")
    proof = tree.consistency_proof(size1, size)
    return ConsistencyProof(size1, size, proof, tree.root(size1), tree.root(size))


def _default_size(size: int | None, checkpoints: Sequence[SignedCheckpoint]) -> int:
    if size is not None:
        return size
    if not checkpoints:
        raise LookupError("the log has no checkpoint yet")
    return max(c.tree_size for c in checkpoints)


def rows_of(records: Sequence[AuditRecord]) -> Iterator[Row]:
    """The verifier's rows of stored records."""
    for r in records:
        yield (
            r.seq,
            format_time(r.at),
            r.tenant_id,
            r.actor,
            r.action,
            r.body,
            r.prev_hash,
            r.hash,
        )


def signed_checkpoint(signer: NoteSigner, state: ChainState, now: datetime) -> SignedCheckpoint:
    """The checkpoint of ``state``, signed."""
    root = state.tree.root()
    note = sign_checkpoint(Checkpoint(signer.name, state.size, root), signer)
    return SignedCheckpoint(state.size, root, now, note)


class MemoryAuditLog:
    """The audit log in memory: the same records, hashes and checkpoints as the SQL log, and
    the same checks, but nothing survives the process. For tests and the in-memory mode."""

    def __init__(
        self,
        signer: NoteSigner,
        *,
        policy: CheckpointPolicy | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self._signer = signer
        self.verifier = signer.verifier
        self._policy = policy or CheckpointPolicy()
        self._clock = clock
        self._state = ChainState()
        self._records: list[AuditRecord] = []
        self._tree = MerkleTree()
        self._checkpoints: list[SignedCheckpoint] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self.checkpoint()

    async def append(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        now = self._clock()
        records, self._state = self._state.extend(entries, now)
        self._records.extend(records)
        for record in records:
            self._tree.append(record.leaf_hash())
        last = self._checkpoints[-1] if self._checkpoints else None
        if self._policy.due(
            self._state.size, last.tree_size if last else 0, last.created_at if last else None, now
        ):
            self._sign(now)
        return records

    async def append_one(
        self,
        *,
        action: str,
        actor: str,
        body: Any = None,
        tenant_id: str | None = None,
        at: datetime | None = None,
    ) -> AuditRecord:
        entry = new_entry(action=action, actor=actor, body=body, tenant_id=tenant_id, at=at)
        return (await self.append([entry]))[0]

    def _sign(self, now: datetime) -> SignedCheckpoint:
        checkpoint = signed_checkpoint(self._signer, self._state, now)
        self._checkpoints.append(checkpoint)
        return checkpoint

    async def checkpoint(self) -> SignedCheckpoint | None:
        last = self._checkpoints[-1] if self._checkpoints else None
        if self._state.size > (last.tree_size if last else 0):
            return self._sign(self._clock())
        return last

    async def latest_checkpoint(self) -> SignedCheckpoint | None:
        return self._checkpoints[-1] if self._checkpoints else None

    async def get(self, seq: int) -> AuditRecord | None:
        return self._records[seq - 1] if 1 <= seq <= len(self._records) else None

    async def list_records(
        self,
        *,
        tenant_id: str | None = None,
        action: str | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> list[AuditRecord]:
        _check_list_args(after, limit)
        out: list[AuditRecord] = []
        for record in self._records[after:]:
            if tenant_id is not None and record.tenant_id != tenant_id:
                continue
            if action is not None and record.action != action:
                continue
            out.append(record)
            if len(out) == limit:
                break
        return out

    async def inclusion_proof(self, seq: int, tree_size: int | None = None) -> InclusionProof:
        return prove_inclusion(self._tree, seq, tree_size, self._checkpoints)

    async def consistency_proof(self, size1: int, size2: int | None = None) -> ConsistencyProof:
        return prove_consistency(self._tree, size1, size2, self._checkpoints)

    def verify(
        self, verifier: NoteVerifier | None = None, inclusion: Sequence[int] = ()
    ) -> VerifyReport:
        """Verify everything held (with this log's own key unless another is given)."""
        checker = LogVerifier(
            verifier or self.verifier,
            [StoredCheckpoint(c.tree_size, c.root_hash.hex(), c.note) for c in self._checkpoints],
        )
        checker.feed(rows_of(self._records))
        return checker.finish(inclusion)
