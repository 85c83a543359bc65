"""RFC 6962 / RFC 9162 Merkle trees: hashes, roots, inclusion and consistency proofs.

Hashing is SHA-256 with domain separation: a leaf is ``SHA-256(0x00 || data)``, an interior
node ``SHA-256(0x01 || left || right)``, the root of an empty tree ``SHA-256("")``. A tree of
``n`` leaves splits at ``k``, the largest power of two smaller than ``n``.

Two ways to hold a growing tree, both incremental (appending a leaf hashes one node on
average, never the whole tree again):

- :class:`CompactRange` — only the roots of the perfect subtrees that cover ``[0, size)`` (at
  most 64 hashes): enough for the root at the current size. The appender keeps one.
- :class:`MerkleTree` — every perfect subtree, level by level, 32 bytes each in one
  ``bytearray`` per level (about 64 bytes a leaf): the root at any earlier size and any proof
  in ``O(log² n)`` hashes. The verifier keeps one while it reads the log.

Verification follows RFC 9162 section 2.1.3.2 (inclusion) and 2.1.4.2 (consistency), plus the
subtree proofs of draft-ietf-plants-merkle-tree-certs section 4 (a subtree ``[start, end)`` is
valid when ``start`` is a multiple of ``BIT_CEIL(end - start)``). Every ``verify_*`` function
raises :class:`InvalidProof` saying why, and returns None when the proof holds. A consistency
proof from the empty tree is refused: it proves nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
_sha256 = hashlib.sha256


class InvalidProof(ValueError):
    """A proof that does not prove what it claims; the message says why."""


def leaf_hash(data: bytes) -> bytes:
    """The hash of one leaf: ``SHA-256(0x00 || data)``."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node: ``SHA-256(0x01 || left || right)``."""
    return _sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _bit_ceil(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for 0)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def root_of(leaf_hashes: Iterable[bytes]) -> bytes:
    """The root of the tree over ``leaf_hashes`` (in order)."""
    compact = CompactRange()
    for h in leaf_hashes:
        compact.append(h)
    return compact.root()


class CompactRange:
    """The roots of the perfect subtrees covering leaves ``[0, size)``, largest first.

    Their count is the number of 1 bits in ``size``; appending a leaf merges the equal-sized
    subtrees at the right end, as adding 1 carries in binary.
    """

    __slots__ = ("_nodes", "size")

    def __init__(self, size: int = 0, nodes: Sequence[bytes] = ()) -> None:
        if size < 0 or len(nodes) != size.bit_count():
            raise ValueError(f"a compact range of {size} leaves has {size.bit_count()} nodes")
        if any(len(n) != HASH_SIZE for n in nodes):
            raise ValueError("compact range nodes are 32-byte hashes")
        self.size = size
        self._nodes = list(nodes)

    @property
    def nodes(self) -> tuple[bytes, ...]:
        return tuple(self._nodes)

    def append(self, leaf: bytes) -> None:
        """Add the next leaf (its leaf hash)."""
        nodes = self._nodes
        nodes.append(leaf)
        carry = self.size
        while carry & 1:
            right = nodes.pop()
            nodes[-1] = _sha256(b"\x01" + nodes[-1] + right).digest()
            carry >>= 1
        self.size += 1

    def root(self) -> bytes:
        """The root of the tree of ``size`` leaves."""
        nodes = self._nodes
        if not nodes:
            return EMPTY_ROOT
        acc = nodes[-1]
        for left in reversed(nodes[:-1]):
            acc = _sha256(b"\x01" + left + acc).digest()
        return acc

    def copy(self) -> CompactRange:
        return CompactRange(self.size, self._nodes)


class MerkleTree:
    """Every perfect subtree of a growing tree: roots at any size and proofs, incrementally.

    Level ``l`` holds the hashes of the complete subtrees of ``2**l`` leaves, left to right.
    """

    __slots__ = ("_levels", "size")

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self.size = 0
        for h in leaf_hashes:
            self.append(h)

    def append(self, leaf: bytes) -> None:
        """Add the next leaf (its leaf hash, 32 bytes)."""
        if len(leaf) != HASH_SIZE:
            raise ValueError("a leaf hash is 32 bytes")
        levels = self._levels
        levels[0] += leaf
        self.size += 1
        carry = self.size
        level = 0
        while not carry & 1:  # a subtree of 2**(level+1) leaves just completed
            below = levels[level]
            parent = _sha256(b"\x01" + below[-64:]).digest()
            level += 1
            carry >>= 1
            if level == len(levels):
                levels.append(bytearray())
            levels[level] += parent

    def leaf(self, index: int) -> bytes:
        """The leaf hash at ``index`` (0-based)."""
        if not 0 <= index < self.size:
            raise IndexError(f"leaf {index} is outside a tree of {self.size}")
        return bytes(self._levels[0][index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def _perfect(self, level: int, index: int) -> bytes:
        start = index * HASH_SIZE
        return bytes(self._levels[level][start : start + HASH_SIZE])

    def _mth(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for an aligned range (a node of some tree over these leaves)."""
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0 and start % n == 0:
            level = n.bit_length() - 1
            return self._perfect(level, start >> level)
        k = _split(n)
        return node_hash(self._mth(start, start + k), self._mth(start + k, end))

    def root(self, size: int | None = None) -> bytes:
        """The root of the first ``size`` leaves (default: all of them)."""
        size = self.size if size is None else size
        self._check_size(size)
        return self._mth(0, size)

    def subtree_hash(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) of a valid subtree (see :func:`is_valid_subtree`)."""
        if not is_valid_subtree(start, end) or end > self.size:
            raise ValueError(f"[{start}, {end}) is not a subtree of a tree of {self.size}")
        return self._mth(start, end)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[0:size]) of RFC 9162 section 2.1.3.1."""
        size = self.size if size is None else size
        self._check_size(size)
        if not 0 <= index < size:
            raise ValueError(f"leaf {index} is outside a tree of {size}")
        return self._path(index, 0, size)

    def _path(self, index: int, start: int, end: int) -> list[bytes]:
        proof: list[bytes] = []
        while end - start > 1:
            k = _split(end - start)
            if index < start + k:
                proof.append(self._mth(start + k, end))
                end = start + k
            else:
                proof.append(self._mth(start, start + k))
                start += k
        proof.reverse()
        return proof

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """PROOF(size1, D[0:size2]) of RFC 9162 section 2.1.4.1 (0 < size1 <= size2)."""
        size2 = self.size if size2 is None else size2
        self._check_size(size2)
        if not 0 < size1 <= size2:
            raise ValueError(f"no consistency proof from {size1} to {size2}")
        return self.subtree_consistency_proof(0, size1, size2)

    def subtree_consistency_proof(self, start: int, end: int, size: int) -> list[bytes]:
        """SUBTREE_PROOF(start, end, D[0:size]) of the MTC draft, section 4.4.1."""
        self._check_size(size)
        if not is_valid_subtree(start, end) or end > size:
            raise ValueError(f"[{start}, {end}) is not a subtree of a tree of {size}")
        if start == end:
            return []
        proof: list[bytes] = []
        lo, hi, known = 0, size, True
        while not (start == lo and end == hi):
            k = _split(hi - lo)
            if end <= lo + k:
                proof.append(self._mth(lo + k, hi))
                hi = lo + k
            elif lo + k <= start:
                proof.append(self._mth(lo, lo + k))
                lo += k
            else:  # start == lo < lo + k < end: prove the right part, the left child joins
                proof.append(self._mth(lo, lo + k))
                lo += k
                start = lo
                known = False
        if not known:
            proof.append(self._mth(lo, hi))
        proof.reverse()
        return proof

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise ValueError(f"a tree of {self.size} leaves has no size {size}")


def is_valid_subtree(start: int, end: int) -> bool:
    """``[start, end)`` is a subtree: ``0 <= start <= end`` and ``start`` is a multiple of
    ``BIT_CEIL(end - start)`` (so ``[0, x)`` and ``[x, x)`` always are)."""
    return 0 <= start <= end and start % _bit_ceil(end - start) == 0


def _check_hashes(proof: Sequence[bytes]) -> None:
    for i, p in enumerate(proof):
        if len(p) != HASH_SIZE:
            raise InvalidProof(f"proof element {i} is {len(p)} bytes, not {HASH_SIZE}")


def evaluate_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` leads to from leaf ``index`` of a tree of ``size`` leaves."""
    if not 0 <= index < size:
        raise InvalidProof(f"leaf index {index} is outside a tree of {size}")
    if len(leaf) != HASH_SIZE:
        raise InvalidProof(f"the leaf hash is {len(leaf)} bytes, not {HASH_SIZE}")
    _check_hashes(proof)
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise InvalidProof("the proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = _sha256(b"\x01" + p + r).digest()
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = _sha256(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InvalidProof("the proof is shorter than the path to the root")
    return r


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Leaf hash ``leaf`` is leaf ``index`` of the tree of ``size`` leaves with ``root``."""
    if evaluate_inclusion(leaf, index, size, proof) != root:
        raise InvalidProof("the proof leads to another root")


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """The tree of ``size2`` leaves with ``root2`` extends the one of ``size1`` with ``root1``."""
    if size1 <= 0:
        raise InvalidProof("a consistency proof from an empty tree proves nothing")
    if size2 < size1:
        raise InvalidProof(f"size2 ({size2}) is smaller than size1 ({size1})")
    if size1 == size2:
        if proof:
            raise InvalidProof("a tree is consistent with itself by an empty proof only")
        if root1 != root2:
            raise InvalidProof("equal sizes with different roots")
        return
    if not proof:
        raise InvalidProof("the proof is empty")
    _check_hashes(proof)
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # the old tree is a perfect subtree: its root starts the path
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise InvalidProof("the proof is longer than needed")
        if fn & 1 or fn == sn:
            fr = _sha256(b"\x01" + c + fr).digest()
            sr = _sha256(b"\x01" + c + sr).digest()
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = _sha256(b"\x01" + sr + c).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InvalidProof("the proof is shorter than needed")
    if fr != root1:
        raise InvalidProof("the proof does not lead to the old root")
    if sr != root2:
        raise InvalidProof("the proof does not lead to the new root")


def evaluate_subtree_inclusion(
    leaf: bytes, index: int, start: int, end: int, proof: Sequence[bytes]
) -> bytes:
    """The subtree hash ``proof`` leads to from entry ``index`` of subtree ``[start, end)``."""
    if not is_valid_subtree(start, end):
        raise InvalidProof(f"[{start}, {end}) is not a valid subtree")
    if not start <= index < end:
        raise InvalidProof(f"entry {index} is outside the subtree [{start}, {end})")
    return evaluate_inclusion(leaf, index - start, end - start, proof)


def verify_subtree_inclusion(
    leaf: bytes, index: int, start: int, end: int, proof: Sequence[bytes], subtree_hash: bytes
) -> None:
    """Entry ``index`` (leaf hash ``leaf``) is in subtree ``[start, end)`` with that hash."""
    if evaluate_subtree_inclusion(leaf, index, start, end, proof) != subtree_hash:
        raise InvalidProof("the proof leads to another subtree hash")


def verify_subtree_consistency(
    start: int, end: int, size: int, proof: Sequence[bytes], subtree: bytes, root: bytes
) -> None:
    """Subtree ``[start, end)`` with hash ``subtree`` is part of the tree of ``size`` leaves
    with ``root`` (the MTC draft, section 4.4.3)."""
    if not is_valid_subtree(start, end) or end > size:
        raise InvalidProof(f"[{start}, {end}) is not a valid subtree of a tree of {size}")
    if start == end:
        if proof:
            raise InvalidProof("an empty subtree has an empty proof")
        if subtree != EMPTY_ROOT:
            raise InvalidProof("an empty subtree hashes to SHA-256 of nothing")
        return
    _check_hashes(proof)
    fn, sn, tn = start, end - 1, size - 1
    if sn == tn:
        while fn != sn:
            fn >>= 1
            sn >>= 1
            tn >>= 1
    else:
        while fn != sn and sn & 1:
            fn >>= 1
            sn >>= 1
            tn >>= 1
    rest = list(proof)
    if fn == sn:
        fr = sr = subtree
    else:
        if not rest:
            raise InvalidProof("the proof is empty")
        fr = sr = rest.pop(0)
    for c in rest:
        if tn == 0:
            raise InvalidProof("the proof is longer than needed")
        if sn & 1 or sn == tn:
            if fn < sn:
                fr = _sha256(b"\x01" + c + fr).digest()
            sr = _sha256(b"\x01" + c + sr).digest()
            while not sn & 1:
                fn >>= 1
                sn >>= 1
                tn >>= 1
        else:
            sr = _sha256(b"\x01" + sr + c).digest()
        fn >>= 1
        sn >>= 1
        tn >>= 1
    if tn != 0:
        raise InvalidProof("the proof is shorter than needed")
    if fr != subtree:
        raise InvalidProof("the proof does not lead to the subtree hash")
    if sr != root:
        raise InvalidProof("the proof does not lead to the root")
