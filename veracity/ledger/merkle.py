"""RFC 9162 Merkle tree: leaf and node hashes, roots, inclusion and consistency proofs.

``leaf = SHA-256(0x00 || entry bytes)``, ``node = SHA-256(0x01 || left || right)``, and a
tree of ``n`` leaves splits at the largest power of two below ``n`` (RFC 9162 section 2.1).
:class:`MerkleTree` keeps every complete, aligned subtree hash level by level in flat byte
arrays (the in-memory equivalent of C2SP tiles), so a root or a proof for any size up to
the current one costs O(log n) hash lookups and at most O(log n) hashes.

The verifiers follow RFC 9162 sections 2.1.3.2 and 2.1.4.2 and the ``transparency-dev/merkle``
rules for the corner cases (a consistency proof from size 0 is refused). They return
``None`` and raise :class:`~veracity.errors.ProofError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from veracity.errors import InputError, ProofError

__all__ = [
    "HASH_SIZE",
    "EMPTY_ROOT",
    "leaf_hash",
    "node_hash",
    "MerkleTree",
    "root_of",
    "verify_inclusion",
    "verify_consistency",
]

HASH_SIZE = 32
#: The root of the empty tree: SHA-256 of the empty string.
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 leaf hash: SHA-256(0x00 || data)."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: SHA-256(0x01 || left || right)."""
    return _sha256(b"\x01" + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """The largest power of two strictly less than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """An append-only RFC 9162 tree with every complete aligned subtree hash kept.

    ``levels[k]`` holds, concatenated, the hashes of the subtrees of ``2**k`` leaves that
    start at multiples of ``2**k`` and are complete in the current tree. About 64 bytes
    per leaf in all.
    """

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self.extend(leaves)

    @property
    def size(self) -> int:
        """Number of leaves."""
        return len(self._levels[0]) // HASH_SIZE

    def leaf(self, index: int) -> bytes:
        """The leaf hash at ``index``."""
        return self._node(0, index)

    def leaves_blob(self) -> bytes:
        """Every leaf hash, concatenated."""
        return bytes(self._levels[0])

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash."""
        self.extend_blob(leaf)

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Add leaf hashes in order."""
        self.extend_blob(b"".join(leaves))

    def extend_blob(self, blob: bytes) -> None:
        """Add leaf hashes given as one concatenated byte string.

        Raises
        ------
        InputError
            If the blob is not a whole number of 32-byte hashes.
        """
        if len(blob) % HASH_SIZE:
            raise InputError("leaf hashes are 32 bytes each")
        if not blob:
            return
        levels = self._levels
        levels[0] += blob
        level = 0
        while True:
            below = levels[level]
            complete_above = len(below) // (2 * HASH_SIZE)
            if complete_above == 0:
                break
            if level + 1 == len(levels):
                levels.append(bytearray())
            above = levels[level + 1]
            have = len(above) // HASH_SIZE
            if have == complete_above:
                break
            view = memoryview(below)
            above += b"".join(
                _sha256(b"\x01" + view[64 * j : 64 * j + 64]).digest()
                for j in range(have, complete_above)
            )
            view.release()
            level += 1

    def truncate(self, size: int) -> None:
        """Forget every leaf from ``size`` on (used when a transaction rolls back)."""
        if size < 0 or size > self.size:
            raise InputError(f"cannot truncate a tree of {self.size} leaves to {size}")
        for level, hashes in enumerate(self._levels):
            del hashes[(size >> level) * HASH_SIZE :]
        while len(self._levels) > 1 and not self._levels[-1]:
            self._levels.pop()

    def _node(self, level: int, index: int) -> bytes:
        start = index * HASH_SIZE
        return bytes(self._levels[level][start : start + HASH_SIZE])

    def _subtree(self, start: int, end: int) -> bytes:
        """MTH of leaves ``[start, end)``; ``start`` is aligned as in every RFC 9162 split."""
        width = end - start
        if width & (width - 1) == 0:
            return self._node(width.bit_length() - 1, start // width)
        split = _largest_power_of_two_below(width)
        return node_hash(self._subtree(start, start + split), self._subtree(start + split, end))

    def _check_size(self, size: int) -> None:
        if size < 0 or size > self.size:
            raise InputError(f"tree size {size} is outside 0..{self.size}")

    def root(self, size: int | None = None) -> bytes:
        """The root hash of the first ``size`` leaves (default: all).

        Raises
        ------
        InputError
            If ``size`` exceeds the number of leaves.
        """
        n = self.size if size is None else size
        self._check_size(n)
        if n == 0:
            return EMPTY_ROOT
        return self._subtree(0, n)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 ``PATH(index, D[0:size])``.

        Raises
        ------
        InputError
            If ``index`` is not below ``size`` or ``size`` exceeds the tree.
        """
        self._check_size(size)
        if not 0 <= index < size:
            raise InputError(f"leaf {index} is not in a tree of size {size}")
        proof: list[bytes] = []
        start, end = 0, size
        while end - start > 1:
            split = _largest_power_of_two_below(end - start)
            if index < start + split:
                proof.append(self._subtree(start + split, end))
                end = start + split
            else:
                proof.append(self._subtree(start, start + split))
                start += split
        proof.reverse()
        return proof

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """RFC 9162 ``PROOF(old_size, D[0:new_size])``.

        Raises
        ------
        InputError
            If the sizes are not ``0 < old_size <= new_size <= size``.
        """
        self._check_size(new_size)
        if not 0 < old_size <= new_size:
            raise InputError(f"no consistency proof from size {old_size} to {new_size}")
        proof: list[bytes] = []
        start, end, m, complete = 0, new_size, old_size, True
        while True:
            width = end - start
            if m == width:
                if not complete:
                    proof.append(self._subtree(start, end))
                break
            split = _largest_power_of_two_below(width)
            if m <= split:
                proof.append(self._subtree(start + split, end))
                end = start + split
            else:
                proof.append(self._subtree(start, start + split))
                start += split
                m -= split
                complete = False
        proof.reverse()
        return proof


def root_of(leaves: Sequence[bytes]) -> bytes:
    """Root hash of a list of leaf hashes (convenience for tests and small trees)."""
    return MerkleTree(leaves).root()


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is not a 32-byte hash")


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf`` is leaf ``index`` of the tree of ``size`` leaves with ``root``.

    ``size`` and ``root`` must come from the same signed checkpoint: a proof checked
    against another size can pass for a different tree.

    Raises
    ------
    ProofError
        If the proof is malformed or does not lead to ``root``.
    """
    _check_hash(leaf, "leaf hash")
    _check_hash(root, "root hash")
    for item in proof:
        _check_hash(item, "proof element")
    if index < 0 or size <= 0 or index >= size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    fn, sn, r = index, size - 1, bytes(leaf)
    for item in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(item, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, item)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the tree is deep")
    if r != root:
        raise ProofError("inclusion proof does not lead to the root")


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """Check that the tree ``(new_size, new_root)`` extends ``(old_size, old_root)``.

    Raises
    ------
    ProofError
        If the proof is malformed, the sizes are impossible, or the trees diverge.
    """
    for item in proof:
        _check_hash(item, "proof element")
    if old_size < 0 or new_size < old_size:
        raise ProofError(f"no consistency proof from size {old_size} to {new_size}")
    if old_size == 0:
        raise ProofError("a consistency proof from the empty tree proves nothing")
    if old_size == new_size:
        if proof:
            raise ProofError("trees of equal size need an empty consistency proof")
        if old_root != new_root:
            raise ProofError("trees of equal size have different roots")
        return
    _check_hash(old_root, "old root hash")
    _check_hash(new_root, "new root hash")
    if not proof:
        raise ProofError("consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, bytes(old_root))
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for item in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr = node_hash(item, fr)
            sr = node_hash(item, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, item)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than the tree is deep")
    if fr != old_root:
        raise ProofError("consistency proof does not lead to the old root")
    if sr != new_root:
        raise ProofError("consistency proof does not lead to the new root")
