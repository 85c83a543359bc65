"""RFC 6962 Merkle trees: every conformance vector, and proofs we generate checked both ways."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from riskguard.adapters.audit.merkle import (
    EMPTY_ROOT,
    CompactRange,
    InvalidProof,
    MerkleTree,
    is_valid_subtree,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
    verify_subtree_consistency,
    verify_subtree_inclusion,
)

VECTORS = Path(__file__).resolve().parents[1] / "data" / "merkle"


def _vectors(kind: str) -> list[Any]:
    files = sorted((VECTORS / kind).rglob("*.json"))
    return [pytest.param(f, id=str(f.relative_to(VECTORS / kind))) for f in files]


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _b(value: str) -> bytes:
    return base64.b64decode(value)


def _proof(data: dict[str, Any]) -> list[bytes]:
    return [_b(p) for p in data["proof"] or []]


def _outcome(check: Any) -> bool:
    """True when ``check()`` rejects the proof."""
    try:
        check()
    except InvalidProof:
        return True
    return False


def test_the_vector_set_is_complete() -> None:
    counts = {kind: len(_vectors(kind)) for kind in ("inclusion", "consistency")}
    counts |= {kind: len(_vectors(kind)) for kind in ("subtreeinclusion", "subtreeconsistency")}
    assert counts == {
        "inclusion": 98,
        "consistency": 98,
        "subtreeinclusion": 204,
        "subtreeconsistency": 118,
    }


@pytest.mark.parametrize("path", _vectors("inclusion"))
def test_inclusion_vector(path: Path) -> None:
    d = _load(path)
    rejected = _outcome(
        lambda: verify_inclusion(
            _b(d["leafHash"]), d["leafIdx"], d["treeSize"], _proof(d), _b(d["root"])
        )
    )
    assert rejected is d["wantErr"], d["desc"]


@pytest.mark.parametrize("path", _vectors("consistency"))
def test_consistency_vector(path: Path) -> None:
    d = _load(path)
    rejected = _outcome(
        lambda: verify_consistency(
            d["size1"], d["size2"], _proof(d), _b(d["root1"]), _b(d["root2"])
        )
    )
    assert rejected is d["wantErr"], d["desc"]


@pytest.mark.parametrize("path", _vectors("subtreeinclusion"))
def test_subtree_inclusion_vector(path: Path) -> None:
    d = _load(path)
    rejected = _outcome(
        lambda: verify_subtree_inclusion(
            _b(d["leafHash"]), d["leafIdx"], d["start"], d["end"], _proof(d), _b(d["root"])
        )
    )
    assert rejected is d["wantErr"], d["desc"]


@pytest.mark.parametrize("path", _vectors("subtreeconsistency"))
def test_subtree_consistency_vector(path: Path) -> None:
    d = _load(path)
    rejected = _outcome(
        lambda: verify_subtree_consistency(
            d["start"], d["end"], d["size"], _proof(d), _b(d["root1"]), _b(d["root2"])
        )
    )
    assert rejected is d["wantErr"], d["desc"]


# -- hashing and roots ---------------------------------------------------------------------

# RFC 6962's reference tree: the leaves of its test data, and the roots of its prefixes
RFC_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]
RFC_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def test_empty_tree_and_hash_prefixes() -> None:
    assert root_of([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert (
        node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    )


@pytest.mark.parametrize("size", range(1, 9))
def test_roots_match_rfc6962_reference(size: int) -> None:
    leaves = [leaf_hash(d) for d in RFC_LEAVES[:size]]
    assert root_of(leaves).hex() == RFC_ROOTS[size - 1]
    tree = MerkleTree(leaves)
    assert tree.root().hex() == RFC_ROOTS[size - 1]
    full = MerkleTree(leaf_hash(d) for d in RFC_LEAVES)
    assert full.root(size).hex() == RFC_ROOTS[size - 1]


def _reference_root(leaves: list[bytes]) -> bytes:
    """MTH straight from the definition (recursive, slow, obviously right)."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(_reference_root(leaves[:k]), _reference_root(leaves[k:]))


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def test_compact_range_and_tree_agree_with_the_definition_at_every_size() -> None:
    leaves = _leaves(70)
    compact = CompactRange()
    tree = MerkleTree()
    for n in range(71):
        expected = _reference_root(leaves[:n])
        assert compact.root() == expected
        assert tree.root() == expected
        assert len(compact.nodes) == n.bit_count()
        if n < 70:
            compact.append(leaves[n])
            tree.append(leaves[n])
    restored = CompactRange(compact.size, compact.nodes)
    assert restored.root() == compact.root()
    with pytest.raises(ValueError, match="has 2 nodes"):
        CompactRange(5, compact.nodes)


def test_generated_proofs_verify_for_every_pair_up_to_40() -> None:
    leaves = _leaves(40)
    tree = MerkleTree(leaves)
    for size in range(1, 41):
        root = tree.root(size)
        for index in range(size):
            verify_inclusion(leaves[index], index, size, tree.inclusion_proof(index, size), root)
        for size1 in range(1, size + 1):
            proof = tree.consistency_proof(size1, size)
            verify_consistency(size1, size, proof, tree.root(size1), root)


def test_generated_subtree_proofs_verify() -> None:
    leaves = _leaves(33)
    tree = MerkleTree(leaves)
    checked = 0
    for size in range(1, 34):
        root = tree.root(size)
        for start in range(size + 1):
            for end in range(start, size + 1):
                if not is_valid_subtree(start, end):
                    continue
                sub = tree.subtree_hash(start, end)
                proof = tree.subtree_consistency_proof(start, end, size)
                verify_subtree_consistency(start, end, size, proof, sub, root)
                for index in range(start, end):
                    path = MerkleTree(leaves[start:end]).inclusion_proof(index - start)
                    verify_subtree_inclusion(leaves[index], index, start, end, path, sub)
                checked += 1
    assert checked > 500


def test_the_mtc_draft_examples() -> None:
    tree = MerkleTree(_leaves(14))
    # [4, 8) in a tree of 14: MTH(D[0:4]) and MTH(D[8:14])
    assert tree.subtree_consistency_proof(4, 8, 14) == [tree._mth(0, 4), tree._mth(8, 14)]
    # [8, 13) in a tree of 14: d[12], d[13], MTH(D[8:12]), MTH(D[0:8])
    assert tree.subtree_consistency_proof(8, 13, 14) == [
        tree.leaf(12),
        tree.leaf(13),
        tree._mth(8, 12),
        tree._mth(0, 8),
    ]
    assert not is_valid_subtree(2, 5)
    assert is_valid_subtree(8, 13)
    assert is_valid_subtree(0, 7)
    assert is_valid_subtree(3, 3)


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=300),
    data=st.data(),
)
def test_a_changed_proof_element_or_leaf_is_rejected(size: int, data: st.DataObject) -> None:
    leaves = _leaves(size)
    tree = MerkleTree(leaves)
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    proof = tree.inclusion_proof(index)
    root = tree.root()
    verify_inclusion(leaves[index], index, size, proof, root)
    with pytest.raises(InvalidProof):
        verify_inclusion(leaf_hash(b"forged"), index, size, proof, root)
    if proof:
        at = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        bad = list(proof)
        bad[at] = bytes([bad[at][0] ^ 1]) + bad[at][1:]
        with pytest.raises(InvalidProof):
            verify_inclusion(leaves[index], index, size, bad, root)
    size1 = data.draw(st.integers(min_value=1, max_value=size))
    if size1 < size:
        consistency = tree.consistency_proof(size1)
        verify_consistency(size1, size, consistency, tree.root(size1), root)
        with pytest.raises(InvalidProof):
            verify_consistency(size1, size, consistency, leaf_hash(b"other"), root)
        with pytest.raises(InvalidProof):
            verify_consistency(size1, size, consistency[:-1], tree.root(size1), root)


def test_bad_arguments_are_refused() -> None:
    tree = MerkleTree(_leaves(5))
    with pytest.raises(ValueError, match="outside"):
        tree.inclusion_proof(5)
    with pytest.raises(ValueError, match="has no size 6"):
        tree.root(6)
    with pytest.raises(ValueError, match="no consistency proof"):
        tree.consistency_proof(0, 5)
    with pytest.raises(ValueError, match="not a subtree"):
        tree.subtree_hash(2, 5)
    with pytest.raises(ValueError, match="32 bytes"):
        tree.append(b"short")
    with pytest.raises(IndexError):
        tree.leaf(5)
