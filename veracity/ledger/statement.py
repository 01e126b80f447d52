"""Detached signatures over canonical JSON documents, with domain separation.

A signer signs ``DOMAIN || 0x00 || SHA-256(canonical_json(document))`` where DOMAIN names
what the document is (``veracity.checkpoint.v1``, ``veracity.enrolment.v1``, ...), so a
signature made for one purpose can never be replayed as another.

A *site* signature (its ledger statements under ``veracity.statement.v2``, its training
receipts under ``veracity.receipt.v2``, its analysis and explanation receipts under
``veracity.analysis-receipt.v2``) is also bound to one log:
``DOMAIN || 0x00 || log_id (32 bytes) || SHA-256(canonical_json(document))``
(:func:`bound_message`), where the log id is the leaf hash of the log's genesis entry (the
``<log id>`` of its checkpoint origin ``<name>/veracity/<log id>``). A statement a site signed
for one log therefore never verifies in another, whoever countersigns it there. A site that
does not know its log yet signs for :data:`NO_LOG_ID` (32 zero bytes), which no ledger
accepts: it re-signs once it learns the log (:meth:`veracity.client.site.Site.bind_log`).
Signatures travel as standard base64 text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from typing import Any

from veracity.contracts.base import STATEMENT_DOMAIN
from veracity.contracts.receipts import RECEIPT_DOMAIN
from veracity.core.canonical import canonical_json
from veracity.crypto.keys import SigningKey, VerifyKey
from veracity.errors import InputError, SignatureError

__all__ = [
    "STATEMENT_DOMAIN",
    "RECEIPT_DOMAIN",
    "NO_LOG_ID",
    "log_id_bytes",
    "signing_message",
    "bound_message",
    "sign_document",
    "verify_document",
    "sign_bound",
    "verify_bound",
    "unbound_reason",
    "statement_of",
    "sign_statement",
    "verify_statement",
    "encode_signature",
    "decode_signature",
]

#: The log id of a site signature made before the site knew its log (no ledger accepts it).
NO_LOG_ID = bytes(32)


def log_id_bytes(log_id: bytes | str) -> bytes:
    """The 32 bytes of a log id given as bytes or as 64 lowercase hex characters.

    Raises
    ------
    InputError
        If it is neither.
    """
    if isinstance(log_id, str):
        if len(log_id) != 64 or log_id != log_id.lower():
            raise InputError(f"a log id is 64 lowercase hex characters, not {log_id!r}")
        try:
            return bytes.fromhex(log_id)
        except ValueError as err:
            raise InputError(f"a log id is 64 lowercase hex characters, not {log_id!r}") from err
    if len(log_id) != 32:
        raise InputError(f"a log id is 32 bytes, not {len(log_id)}")
    return bytes(log_id)


def signing_message(domain: str, document: Any) -> bytes:
    """The exact bytes an Ed25519 key signs for ``document`` under ``domain`` (no log)."""
    digest = hashlib.sha256(canonical_json(document)).digest()
    return domain.encode("ascii") + b"\x00" + digest


def bound_message(domain: str, log_id: bytes | str, document: Any) -> bytes:
    """The exact bytes a site signs for ``document`` under ``domain`` in the log ``log_id``.

    Raises
    ------
    InputError
        If ``log_id`` is not 32 bytes (or 64 hex characters).
    """
    digest = hashlib.sha256(canonical_json(document)).digest()
    return domain.encode("ascii") + b"\x00" + log_id_bytes(log_id) + digest


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
    """Sign ``document`` under ``domain`` (bound to no log); returns the base64 signature."""
    return encode_signature(key.sign(signing_message(domain, document)))


def verify_document(key: VerifyKey, domain: str, document: Any, signature: str) -> None:
    """Check a base64 ``signature`` over ``document`` under ``domain`` (bound to no log).

    Raises
    ------
    SignatureError
        If the signature is malformed or does not verify under ``key``.
    """
    key.verify(decode_signature(signature), signing_message(domain, document))


def sign_bound(key: SigningKey, domain: str, log_id: bytes | str, document: Any) -> str:
    """Sign ``document`` under ``domain`` for the log ``log_id``; returns base64.

    Raises
    ------
    InputError
        If ``log_id`` is not a log id.
    """
    return encode_signature(key.sign(bound_message(domain, log_id, document)))


def unbound_reason(
    key: VerifyKey,
    raw: bytes,
    message_for: Callable[[bytes], bytes],
    log_id: bytes,
    *,
    what: str,
) -> str:
    """Why ``raw`` (which does not verify for ``log_id``) fails: signed for no log, or not.

    ``message_for(log_id)`` gives the signed bytes for a log id; the reason names the log.
    """
    if log_id != NO_LOG_ID:
        try:
            key.verify(raw, message_for(NO_LOG_ID))
        except SignatureError:
            pass
        else:
            return (
                f"{what}: the signature is for no log (made before the site knew its log id), "
                f"not for this log {log_id.hex()}; the site must re-sign it"
            )
    return (
        f"{what}: the signature does not verify under the signer's key for this log "
        f"{log_id.hex()} (forged, or signed for another log)"
    )


def verify_bound(
    key: VerifyKey, domain: str, log_id: bytes | str, document: Any, signature: str, *, what: str
) -> None:
    """Check a site's base64 ``signature`` over ``document`` under ``domain`` for ``log_id``.

    Raises
    ------
    SignatureError
        If the signature is malformed, or does not verify under ``key`` for this log (the
        message says whether it was signed for no log or for another log, or forged).
    InputError
        If ``log_id`` is not a log id.
    """
    try:
        raw = decode_signature(signature)
    except SignatureError as err:
        raise SignatureError(f"{what}: {err}") from err
    log = log_id_bytes(log_id)
    digest = hashlib.sha256(canonical_json(document)).digest()
    prefix = domain.encode("ascii") + b"\x00"
    try:
        key.verify(raw, prefix + log + digest)
    except SignatureError as err:
        raise SignatureError(
            unbound_reason(key, raw, lambda other: prefix + other + digest, log, what=what)
        ) from err


def statement_of(kind: str, actor: str, payload: Any) -> dict[str, Any]:
    """The document an actor signs for a ledger event: what happened, not where it sits."""
    return {"kind": kind, "actor": actor, "payload": payload}


def sign_statement(
    key: SigningKey, kind: str, actor: str, payload: Any, *, log_id: bytes | str
) -> str:
    """Sign the statement of a ledger event for the log ``log_id``; returns base64.

    Raises
    ------
    InputError
        If ``log_id`` is not a log id.
    """
    return sign_bound(key, STATEMENT_DOMAIN, log_id, statement_of(kind, actor, payload))


def verify_statement(
    key: VerifyKey, kind: str, actor: str, payload: Any, signature: str, *, log_id: bytes | str
) -> None:
    """Check an event statement's signature for the log ``log_id``.

    Raises
    ------
    SignatureError
        If the signature is malformed or does not verify under ``key`` for this log.
    """
    verify_bound(
        key,
        STATEMENT_DOMAIN,
        log_id,
        statement_of(kind, actor, payload),
        signature,
        what=f"{actor}'s {kind} statement",
    )
