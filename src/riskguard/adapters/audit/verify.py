"""Verifying a whole audit log in one pass, and naming the first thing that is wrong.

:class:`LogVerifier` reads the records in ``seq`` order (from any store) and the checkpoints,
and checks, stopping at the first problem:

1. every checkpoint note is signed by the given key for its origin, and the stored size and
   root are the ones it signs;
2. ``seq`` runs 1, 2, 3, ... with no gap (a gap names the missing record);
3. each record's ``prev_hash`` is the previous record's ``hash`` (a record that instead links
   to the one two back names the record in between as inserted);
4. each record's ``hash`` is the SHA-256 of its canonical bytes (an edit names the record);
5. at each checkpoint's size the Merkle root of the records read so far is the signed root,
   and a consistency proof from the previous checkpoint to this one verifies — a mismatch
   with an intact chain means the records after the previous good checkpoint were rewritten
   and rehashed, and names the first of them;
6. no checkpoint is larger than the log (a truncated log names the first missing record).

Records after the newest checkpoint are checked by the chain only: nothing signed covers them
yet, so their loss at the end of the log cannot be told from their never having been written.
Memory: the verifier keeps every perfect subtree hash (about 64 bytes a record) so that it can
prove inclusion of any record and consistency between checkpoints without reading again.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from riskguard.adapters.audit.chain import GENESIS_HASH, record_bytes
from riskguard.adapters.audit.checkpoint import (
    Checkpoint,
    InvalidNote,
    NoteVerifier,
    open_checkpoint,
)
from riskguard.adapters.audit.merkle import (
    InvalidProof,
    MerkleTree,
    verify_consistency,
    verify_inclusion,
)

# (seq, at as canonical text, tenant_id, actor, action, body, prev_hash, hash)
Row = tuple[int, str, str | None, str, str, str, str, str]


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A checkpoint as stored: its size and root (hex) columns and its signed note."""

    tree_size: int
    root_hash: str
    note: str
    source: str = "stored"  # "stored" or where an auditor's saved copy came from


@dataclass(frozen=True, slots=True)
class Problem:
    """The first thing found wrong: the record it names (when it names one) and why."""

    seq: int | None
    reason: str
    checkpoint: int | None = None  # the tree size of the checkpoint concerned, if any

    def __str__(self) -> str:
        where = f"record {self.seq}" if self.seq is not None else f"checkpoint {self.checkpoint}"
        return f"{where}: {self.reason}"


@dataclass(frozen=True, slots=True)
class InclusionResult:
    """A verified inclusion proof of one record in the tree of ``tree_size`` records."""

    seq: int
    tree_size: int
    leaf_hash: bytes
    proof: list[bytes]
    root: bytes
    signed: bool  # tree_size is a verified checkpoint (else: the unsigned current tree)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "tree_size": self.tree_size,
            "leaf_hash": _b64(self.leaf_hash),
            "proof": [_b64(p) for p in self.proof],
            "root": _b64(self.root),
            "signed": self.signed,
        }


@dataclass(slots=True)
class VerifyReport:
    """What a verification found."""

    key: str  # the verifier key (vkey) checkpoints were checked with
    records: int = 0
    head: str = GENESIS_HASH
    root: bytes = b""
    checkpoints: int = 0  # verified: signature, size and root
    latest_checkpoint: int = 0  # its tree size (0: none)
    consistency_proofs: int = 0
    problem: Problem | None = None
    inclusions: list[InclusionResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def unsigned(self) -> int:
        """Records after the newest verified checkpoint."""
        return self.records - self.latest_checkpoint

    def to_dict(self) -> dict[str, Any]:
        problem = self.problem
        return {
            "ok": self.ok,
            "records": self.records,
            "head": self.head,
            "root": _b64(self.root),
            "key": self.key,
            "checkpoints_verified": self.checkpoints,
            "latest_checkpoint": self.latest_checkpoint,
            "consistency_proofs": self.consistency_proofs,
            "unsigned_records": self.unsigned,
            "first_bad": None
            if problem is None
            else {"seq": problem.seq, "checkpoint": problem.checkpoint, "reason": problem.reason},
            "inclusion": [i.to_dict() for i in self.inclusions],
        }


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


@dataclass(slots=True)
class _Expected:
    size: int
    checkpoint: Checkpoint | None
    error: str | None
    source: str


class LogVerifier:
    """Feed it the records in ``seq`` order (:meth:`feed`, as often as convenient), then call
    :meth:`finish`. ``feed`` returns False once a problem is found: stop reading then."""

    def __init__(self, verifier: NoteVerifier, checkpoints: Iterable[StoredCheckpoint]) -> None:
        self.report = VerifyReport(key=verifier.vkey)
        self._tree = MerkleTree()
        self._roots: dict[int, bytes] = {}  # verified checkpoint sizes -> roots
        self._last_good = 0
        self._expected = sorted(
            (self._open(c, verifier) for c in checkpoints), key=lambda e: (e.size, e.source)
        )
        self._next = 0  # index into _expected
        self._prev = self._prev2 = GENESIS_HASH
        self._check_due()  # a checkpoint of the empty tree

    @staticmethod
    def _open(stored: StoredCheckpoint, verifier: NoteVerifier) -> _Expected:
        if not (
            isinstance(stored.tree_size, int)
            and stored.tree_size >= 0
            and isinstance(stored.root_hash, str)
            and isinstance(stored.note, str)
        ):
            return _Expected(0, None, "the stored checkpoint row is malformed", stored.source)
        try:
            checkpoint = open_checkpoint(stored.note, verifier)
        except InvalidNote as exc:
            return _Expected(
                stored.tree_size, None, f"its signed note is not valid ({exc})", stored.source
            )
        if checkpoint.size != stored.tree_size or checkpoint.root_hash.hex() != stored.root_hash:
            return _Expected(
                stored.tree_size,
                None,
                f"the stored size/root differ from its signed note (size {checkpoint.size})",
                stored.source,
            )
        return _Expected(checkpoint.size, checkpoint, None, stored.source)

    def _fail(self, problem: Problem) -> bool:
        self.report.problem = problem
        return False

    def feed(self, rows: Iterable[Row]) -> bool:
        """Check the next records; False once a problem is found."""
        if self.report.problem is not None:
            return False
        report = self.report
        tree_append = self._tree.append
        sha256 = hashlib.sha256
        size = report.records
        prev, prev2 = self._prev, self._prev2
        due = self._expected[self._next].size if self._next < len(self._expected) else -1
        try:
            for seq, at, tenant_id, actor, action, body, prev_hash, digest in rows:
                size += 1
                if seq != size:
                    if not isinstance(seq, int):
                        return self._fail(Problem(size, f"malformed: its seq is {seq!r}"))
                    if seq > size:
                        return self._fail(
                            Problem(size, f"missing (the next stored record is {seq})")
                        )
                    return self._fail(Problem(seq, f"out of order (after record {size - 1})"))
                if prev_hash != prev:
                    if prev_hash == prev2 and size > 1:
                        return self._fail(
                            Problem(
                                size - 1,
                                f"inserted: record {size} links to record {size - 2}, not to it",
                            )
                        )
                    return self._fail(
                        Problem(size, f"does not link to record {size - 1} (prev_hash differs)")
                    )
                try:
                    data = record_bytes(seq, at, tenant_id, actor, action, body, prev_hash)
                except (TypeError, AttributeError, ValueError):  # a column of the wrong type
                    return self._fail(Problem(size, "malformed: a column has the wrong type"))
                if sha256(data).hexdigest() != digest:
                    return self._fail(Problem(size, "altered: its content does not match its hash"))
                tree_append(sha256(b"\x00" + data).digest())
                prev2, prev = prev, digest
                report.records = size
                if size == due:
                    self._prev, self._prev2 = prev, prev2
                    if not self._check_due():
                        return False
                    due = (
                        self._expected[self._next].size if self._next < len(self._expected) else -1
                    )
        finally:
            self._prev, self._prev2 = prev, prev2
        return True

    def _check_due(self) -> bool:
        """Check every checkpoint of the current size; False on a problem."""
        size = self._tree.size
        while self._next < len(self._expected) and self._expected[self._next].size == size:
            expected = self._expected[self._next]
            self._next += 1
            label = f"checkpoint at tree size {size}" + (
                f" ({expected.source})" if expected.source != "stored" else ""
            )
            if expected.checkpoint is None:
                return self._fail(Problem(None, f"{label}: {expected.error}", size))
            root = self._tree.root()
            if expected.checkpoint.root_hash != root:
                first = self._last_good + 1
                return self._fail(
                    Problem(
                        first if size else None,
                        f"{label} signs a root that records 1..{size} do not produce: "
                        f"records after {self._last_good} were rewritten and rehashed "
                        f"(the first record it could be is {first})",
                        size,
                    )
                )
            if self._last_good and size > self._last_good:
                proof = self._tree.consistency_proof(self._last_good, size)
                try:
                    verify_consistency(
                        self._last_good, size, proof, self._roots[self._last_good], root
                    )
                except InvalidProof as exc:  # cannot happen with matching roots: a bug
                    return self._fail(Problem(None, f"{label}: consistency: {exc}", size))
                self.report.consistency_proofs += 1
            self._roots[size] = root
            self._last_good = size
            self.report.checkpoints += 1
            self.report.latest_checkpoint = size
        return True

    def finish(self, inclusion: Sequence[int] = ()) -> VerifyReport:
        """Close the verification: truncation, then the inclusion proofs asked for."""
        report = self.report
        report.head = self._prev
        report.root = self._tree.root()
        if report.problem is None and self._next < len(self._expected):
            expected = self._expected[self._next]
            missing = report.records + 1
            self._fail(
                Problem(
                    missing,
                    f"missing: the log ends at record {report.records} but a checkpoint at "
                    f"tree size {expected.size} covers records up to {expected.size} "
                    "(the log was truncated)",
                    expected.size,
                )
            )
        if report.problem is None:
            for seq in inclusion:
                result = self.prove(seq)
                if isinstance(result, Problem):
                    self._fail(result)
                    break
                report.inclusions.append(result)
        return report

    def prove(self, seq: int) -> InclusionResult | Problem:
        """An inclusion proof of record ``seq`` in the newest verified checkpoint, or in the
        whole (unsigned) tree when no checkpoint covers it yet; verified before it is returned."""
        if not 1 <= seq <= self._tree.size:
            return Problem(seq, f"no such record (the log holds 1..{self._tree.size})")
        latest = self.report.latest_checkpoint
        signed = latest >= seq
        size = latest if signed else self._tree.size
        root = self._roots[size] if signed else self._tree.root()
        leaf = self._tree.leaf(seq - 1)
        proof = self._tree.inclusion_proof(seq - 1, size)
        try:
            verify_inclusion(leaf, seq - 1, size, proof, root)
        except InvalidProof as exc:
            return Problem(seq, f"inclusion proof does not verify: {exc}")
        return InclusionResult(seq, size, leaf, proof, root, signed)
