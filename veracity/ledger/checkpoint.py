"""Signed checkpoints (tree size, root, time, log id) and site cosignatures.

A checkpoint is signed by the root with ``sign_document(root, "veracity.checkpoint.v1",
{log_id, root_hash, timestamp, tree_size})``. A site that has checked a checkpoint against
the one it saw before cosigns ``{log_id, root_hash, tree_size}`` under
``veracity.cosignature.v1``. The log id is the genesis entry's leaf hash (hex), so a
checkpoint of one log can never be passed off as one of another, even under the same key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from veracity.core.fields import is_hex64
from veracity.crypto.keys import SigningKey, VerifyKey
from veracity.errors import InputError, SignatureError
from veracity.ledger.statement import sign_document, verify_document

__all__ = [
    "CHECKPOINT_DOMAIN",
    "COSIGNATURE_DOMAIN",
    "Checkpoint",
    "sign_checkpoint",
    "cosign_checkpoint",
    "verify_cosignature",
]

CHECKPOINT_DOMAIN = "veracity.checkpoint.v1"
COSIGNATURE_DOMAIN = "veracity.cosignature.v1"


@dataclass(frozen=True)
class Checkpoint:
    """A root-signed statement that the log ``log_id`` had ``tree_size`` leaves and root."""

    log_id: str
    tree_size: int
    root_hash: str
    timestamp: str
    signature: str

    def body(self) -> dict[str, Any]:
        """The signed document."""
        return {
            "log_id": self.log_id,
            "root_hash": self.root_hash,
            "timestamp": self.timestamp,
            "tree_size": self.tree_size,
        }

    def to_json(self) -> dict[str, Any]:
        """The checkpoint with its signature, as a JSON-ready dict."""
        return {**self.body(), "signature": self.signature}

    @classmethod
    def from_json(cls, document: Any) -> Checkpoint:
        """Parse :meth:`to_json` output.

        Raises
        ------
        InputError
            If a field is missing or malformed.
        """
        fields = {"log_id", "root_hash", "timestamp", "tree_size", "signature"}
        if not isinstance(document, dict) or set(document) != fields:
            raise InputError(f"a checkpoint is an object with exactly {', '.join(sorted(fields))}")
        size = document["tree_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InputError("checkpoint tree_size must be a non-negative integer")
        for name in ("log_id", "root_hash"):
            if not is_hex64(document[name]):
                raise InputError(f"checkpoint {name} must be 64 lowercase hex digits")
        if not isinstance(document["timestamp"], str) or not isinstance(document["signature"], str):
            raise InputError("checkpoint timestamp and signature must be strings")
        return cls(
            log_id=document["log_id"],
            tree_size=size,
            root_hash=document["root_hash"],
            timestamp=document["timestamp"],
            signature=document["signature"],
        )

    def verify(self, key: VerifyKey) -> None:
        """Check the root's signature.

        Raises
        ------
        SignatureError
            If the signature is malformed or not made by ``key`` over this checkpoint.
        """
        try:
            verify_document(key, CHECKPOINT_DOMAIN, self.body(), self.signature)
        except SignatureError as err:
            raise SignatureError(f"checkpoint of size {self.tree_size}: {err}") from err


def sign_checkpoint(
    key: SigningKey, *, log_id: str, tree_size: int, root_hash: str, timestamp: str
) -> Checkpoint:
    """Sign a checkpoint with the root key."""
    body = {
        "log_id": log_id,
        "root_hash": root_hash,
        "timestamp": timestamp,
        "tree_size": tree_size,
    }
    return Checkpoint(
        log_id=log_id,
        tree_size=tree_size,
        root_hash=root_hash,
        timestamp=timestamp,
        signature=sign_document(key, CHECKPOINT_DOMAIN, body),
    )


def _cosigned_body(log_id: str, tree_size: int, root_hash: str) -> dict[str, Any]:
    return {"log_id": log_id, "root_hash": root_hash, "tree_size": tree_size}


def cosign_checkpoint(key: SigningKey, checkpoint: Checkpoint) -> str:
    """A site's cosignature of a checkpoint it has checked (base64)."""
    return sign_document(
        key,
        COSIGNATURE_DOMAIN,
        _cosigned_body(checkpoint.log_id, checkpoint.tree_size, checkpoint.root_hash),
    )


def verify_cosignature(
    key: VerifyKey, *, log_id: str, tree_size: int, root_hash: str, signature: str
) -> None:
    """Check a site's cosignature.

    Raises
    ------
    SignatureError
        If it is malformed or not made by ``key`` over this tree head.
    """
    verify_document(
        key, COSIGNATURE_DOMAIN, _cosigned_body(log_id, tree_size, root_hash), signature
    )
