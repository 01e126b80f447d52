"""Inclusion and consistency proofs (RFC 9162) as the ledger serves them and auditors check them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from veracity.crypto.keys import VerifyKey
from veracity.errors import (
    InputError,
    ProofError,
)
from veracity.ledger.checkpoint import Checkpoint
from veracity.ledger.entry import parse_body
from veracity.ledger.merkle import leaf_hash, verify_consistency, verify_inclusion

__all__ = ["InclusionProof", "ConsistencyProof"]


@dataclass(frozen=True)
class InclusionProof:
    """RFC 9162 inclusion proof of entry ``seq`` in the tree of ``tree_size`` leaves."""

    log_id: str
    seq: int
    tree_size: int
    entry: bytes
    proof: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (hashes in hex, the entry bytes as UTF-8 text)."""
        return {
            "type": "inclusion",
            "log_id": self.log_id,
            "seq": self.seq,
            "tree_size": self.tree_size,
            "leaf_hash": leaf_hash(self.entry).hex(),
            "entry": self.entry.decode("utf-8"),
            "proof": [item.hex() for item in self.proof],
        }

    @classmethod
    def from_json(cls, document: Any) -> InclusionProof:
        """Parse :meth:`to_json` output.

        Raises
        ------
        InputError
            If the document is not an inclusion proof.
        """
        try:
            if document["type"] != "inclusion":
                raise InputError("not an inclusion proof")
            proof = cls(
                log_id=str(document["log_id"]),
                seq=int(document["seq"]),
                tree_size=int(document["tree_size"]),
                entry=str(document["entry"]).encode("utf-8"),
                proof=tuple(bytes.fromhex(item) for item in document["proof"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"malformed inclusion proof: {err}") from err
        if document.get("leaf_hash") not in (None, leaf_hash(proof.entry).hex()):
            raise InputError("inclusion proof's leaf_hash is not the hash of its entry")
        return proof

    def verify(self, checkpoint: Checkpoint, trusted_root: VerifyKey) -> None:
        """Check the proof against a checkpoint signed by ``trusted_root``.

        The tree size comes from the signed checkpoint, never from the proof alone.

        Raises
        ------
        SignatureError
            If the checkpoint is not signed by ``trusted_root``.
        ProofError
            If the proof is for another log or size, or does not lead to the root.
        """
        checkpoint.verify(trusted_root)
        if checkpoint.log_id != self.log_id:
            raise ProofError("the proof and the checkpoint belong to different logs")
        if checkpoint.tree_size != self.tree_size:
            raise ProofError(
                f"the proof is for tree size {self.tree_size} but the checkpoint is for "
                f"{checkpoint.tree_size}"
            )
        try:
            entry = parse_body(self.entry)
        except InputError as err:
            raise ProofError(f"the proved entry is malformed: {err}") from err
        if entry.seq != self.seq:
            raise ProofError(f"the proved entry is seq {entry.seq}, not {self.seq}")
        verify_inclusion(
            leaf_hash(self.entry),
            self.seq,
            self.tree_size,
            list(self.proof),
            bytes.fromhex(checkpoint.root_hash),
        )


@dataclass(frozen=True)
class ConsistencyProof:
    """RFC 9162 consistency proof that the tree of ``new_size`` extends ``old_size``."""

    log_id: str
    old_size: int
    new_size: int
    proof: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (hashes in hex)."""
        return {
            "type": "consistency",
            "log_id": self.log_id,
            "old_size": self.old_size,
            "new_size": self.new_size,
            "proof": [item.hex() for item in self.proof],
        }

    def verify(self, old: Checkpoint, new: Checkpoint, trusted_root: VerifyKey) -> None:
        """Check the proof between two checkpoints signed by ``trusted_root``.

        Raises
        ------
        SignatureError
            If either checkpoint is not signed by ``trusted_root``.
        ProofError
            If the sizes or logs do not match or the trees diverge.
        """
        old.verify(trusted_root)
        new.verify(trusted_root)
        if {old.log_id, new.log_id} != {self.log_id}:
            raise ProofError("the proof and the checkpoints belong to different logs")
        if (old.tree_size, new.tree_size) != (self.old_size, self.new_size):
            raise ProofError("the proof is for other tree sizes than the checkpoints")
        verify_consistency(
            self.old_size,
            self.new_size,
            list(self.proof),
            bytes.fromhex(old.root_hash),
            bytes.fromhex(new.root_hash),
        )
