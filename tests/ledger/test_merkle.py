"""RFC 9162 tree: roots and proofs agree with the recursive definition; tampering is refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hypothesis_examples import examples
from veracity.errors import InputError, ProofError
from veracity.ledger.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)


def mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 section 2.1.1, literally."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    split = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(mth(leaves[:split]), mth(leaves[split:]))


LEAVES = [leaf_hash(i.to_bytes(2, "big")) for i in range(70)]


def test_roots_and_proofs_match_the_definition_for_every_size_up_to_70() -> None:
    tree = MerkleTree(LEAVES)
    for size in range(0, 71):
        root = tree.root(size)
        assert root == mth(LEAVES[:size])
        for index in range(size):
            verify_inclusion(LEAVES[index], index, size, tree.inclusion_proof(index, size), root)
        for old in range(1, size + 1):
            proof = tree.consistency_proof(old, size)
            verify_consistency(old, size, proof, tree.root(old), root)


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    assert leaf_hash(b"") == bytes.fromhex(
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    assert node_hash(LEAVES[0], LEAVES[1]) != leaf_hash(LEAVES[0] + LEAVES[1])


def test_incremental_append_truncate_and_bulk_build_agree() -> None:
    one_by_one = MerkleTree()
    for leaf in LEAVES:
        one_by_one.append(leaf)
    assert one_by_one.root() == MerkleTree(LEAVES).root()
    one_by_one.truncate(37)
    assert one_by_one.root() == mth(LEAVES[:37])
    one_by_one.extend(LEAVES[37:])
    assert one_by_one.root() == mth(LEAVES)
    with pytest.raises(InputError):
        one_by_one.truncate(71)


@settings(max_examples=examples(150), deadline=None)
@given(
    size=st.integers(min_value=2, max_value=70),
    data=st.data(),
)
def test_any_changed_inclusion_proof_element_or_index_is_rejected(
    size: int, data: st.DataObject
) -> None:
    tree = MerkleTree(LEAVES[:size])
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    proof = tree.inclusion_proof(index, size)
    root = tree.root()
    position = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
    bit = data.draw(st.integers(min_value=0, max_value=255))
    flipped = bytearray(proof[position])
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ProofError):
        verify_inclusion(
            LEAVES[index],
            index,
            size,
            [*proof[:position], bytes(flipped), *proof[position + 1 :]],
            root,
        )
    other = data.draw(st.integers(min_value=0, max_value=size - 1).filter(lambda i: i != index))
    with pytest.raises(ProofError):
        verify_inclusion(LEAVES[index], other, size, proof, root)
    with pytest.raises(ProofError):
        verify_inclusion(LEAVES[index], index, size, [*proof, proof[0]], root)


@settings(max_examples=examples(150), deadline=None)
@given(size=st.integers(min_value=2, max_value=70), data=st.data())
def test_consistency_with_a_rewritten_history_is_rejected(size: int, data: st.DataObject) -> None:
    old = data.draw(st.integers(min_value=1, max_value=size - 1))
    changed = data.draw(st.integers(min_value=0, max_value=old - 1))
    forked = list(LEAVES[:size])
    forked[changed] = leaf_hash(b"rewritten")
    honest, fork = MerkleTree(LEAVES[:size]), MerkleTree(forked)
    with pytest.raises(ProofError):
        verify_consistency(
            old, size, fork.consistency_proof(old, size), honest.root(old), fork.root()
        )
