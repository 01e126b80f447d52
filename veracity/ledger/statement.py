"""Detached signatures over canonical JSON documents, with domain separation.

A signer signs ``DOMAIN || 0x00 || SHA-256(canonical_json(document))`` where DOMAIN names
what the document is (``veracity.statement.v1`` for ledger events, ``veracity.receipt.v1``
for training receipts, ...), so a signature made for one purpose can never be replayed as
another. Signatures travel as standard base64 text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

from veracity.contracts.receipts import RECEIPT_DOMAIN
from veracity.core.canonical import canonical_json
from veracity.crypto.keys import SigningKey, VerifyKey
from veracity.errors import SignatureError

__all__ = [
    "STATEMENT_DOMAIN",
    "RECEIPT_DOMAIN",
    "signing_message",
    "sign_document",
    "verify_document",
    "statement_of",
    "sign_statement",
    "verify_statement",
    "encode_signature",
    "decode_signature",
]

STATEMENT_DOMAIN = "veracity.statement.v1"


def signing_message(domain: str, document: Any) -> bytes:
    """The exact bytes an Ed25519 key signs for ``document`` under ``domain``."""
    digest = hashlib.sha256(canonical_json(document)).digest()
    return domain.encode("ascii") + b"\x00" + digest


def encode_signature(signature: bytes) -> str:
    """Standard base64 text of a signature."""
    return base64.b64encode(signature).decode("ascii")


def decode_signature(text: str) -> bytes:
    """Bytes of a base64 signature.

    Raises
    ------
    SignatureError
        If the text is not base64 of a 64-byte Ed25519 signature.
    """
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, AttributeError) as err:
        raise SignatureError("signature is not base64") from err
    if len(raw) != 64:
        raise SignatureError("an Ed25519 signature is 64 bytes")
    return raw


def sign_document(key: SigningKey, domain: str, document: Any) -> str:
    """Sign ``document`` under ``domain``; returns the base64 signature."""
    return encode_signature(key.sign(signing_message(domain, document)))


def verify_document(key: VerifyKey, domain: str, document: Any, signature: str) -> None:
    """Check a base64 ``signature`` over ``document`` under ``domain``.

    Raises
    ------
    SignatureError
        If the signature is malformed or does not verify under ``key``.
    """
    key.verify(decode_signature(signature), signing_message(domain, document))


def statement_of(kind: str, actor: str, payload: Any) -> dict[str, Any]:
    """The document an actor signs for a ledger event: what happened, not where it sits."""
    return {"kind": kind, "actor": actor, "payload": payload}


def sign_statement(key: SigningKey, kind: str, actor: str, payload: Any) -> str:
    """Sign the statement of a ledger event; returns the base64 signature."""
    return sign_document(key, STATEMENT_DOMAIN, statement_of(kind, actor, payload))


def verify_statement(key: VerifyKey, kind: str, actor: str, payload: Any, signature: str) -> None:
    """Check an event statement's signature.

    Raises
    ------
    SignatureError
        If the signature is malformed or does not verify under ``key``.
    """
    verify_document(key, STATEMENT_DOMAIN, statement_of(kind, actor, payload), signature)
