"""Proofs that a key event was made with the keys it names.

Two detached signatures (:mod:`veracity.ledger.statement`, each under its own domain)
travel inside the root-signed key events:

* **proof of possession** (``proof``, domain ``veracity.enrolment.v1``): the *new* key
  signs ``{log_id, name, role, key_id}``. Whoever enrols, rotates to or recovers with a key
  holds its private half, for this log, this name and this role only: the root cannot enrol
  a key it found somewhere (another site's, another log's) as if it were a name's own;
* **rotation signature** (``outgoing_signature``, domain ``veracity.rotation.v1``): the
  *outgoing* key signs ``{log_id, name, key_id, new_key_id}``. A ``key.rotated`` is the
  name's own decision; without its current key a name's key only changes through a
  ``key.revoked`` or a visible ``key.recovered``.

Both documents bind the log id (the genesis leaf hash, hex), so a proof made for one log
is refused by every other, and a key id is enrolled at most once per log
(:mod:`veracity.ledger.keyring`), so neither proof can be replayed within a log.
"""

from __future__ import annotations

from veracity.crypto.keys import SigningKey, VerifyKey
from veracity.errors import SignatureError
from veracity.ledger.statement import sign_document, verify_document

__all__ = [
    "ENROLMENT_DOMAIN",
    "ROTATION_DOMAIN",
    "enrolment_document",
    "sign_enrolment",
    "verify_enrolment",
    "rotation_document",
    "sign_rotation",
    "verify_rotation",
    "IDENTITY_DOMAIN",
    "identity_document",
    "sign_identity",
    "verify_identity",
]

ENROLMENT_DOMAIN = "veracity.enrolment.v1"
ROTATION_DOMAIN = "veracity.rotation.v1"


def enrolment_document(*, log_id: str, name: str, role: str, key: VerifyKey) -> dict[str, str]:
    """What a key signs to prove that it holds itself for ``name`` as ``role`` in ``log_id``."""
    return {"log_id": log_id, "name": name, "role": role, "key_id": key.key_id}


def sign_enrolment(key: SigningKey, *, log_id: str, name: str, role: str) -> str:
    """The proof of possession of ``key`` (base64), for a key event of ``name`` as ``role``."""
    document = enrolment_document(log_id=log_id, name=name, role=role, key=key.public)
    return sign_document(key, ENROLMENT_DOMAIN, document)


def verify_enrolment(key: VerifyKey, *, log_id: str, name: str, role: str, proof: str) -> None:
    """Check a proof of possession.

    Raises
    ------
    SignatureError
        If ``proof`` is not ``key``'s signature for this log, name and role.
    """
    document = enrolment_document(log_id=log_id, name=name, role=role, key=key)
    try:
        verify_document(key, ENROLMENT_DOMAIN, document, proof)
    except SignatureError as err:
        raise SignatureError(
            f"the proof of possession is not the new key's signature for {name!r} as {role} "
            "in this log"
        ) from err


def rotation_document(
    *, log_id: str, name: str, outgoing: VerifyKey, incoming: VerifyKey
) -> dict[str, str]:
    """What the outgoing key signs to hand ``name`` over to the incoming key."""
    return {
        "log_id": log_id,
        "name": name,
        "key_id": outgoing.key_id,
        "new_key_id": incoming.key_id,
    }


def sign_rotation(outgoing: SigningKey, *, log_id: str, name: str, incoming: VerifyKey) -> str:
    """The outgoing key's signature (base64) handing ``name`` over to ``incoming``."""
    document = rotation_document(
        log_id=log_id, name=name, outgoing=outgoing.public, incoming=incoming
    )
    return sign_document(outgoing, ROTATION_DOMAIN, document)


def verify_rotation(
    outgoing: VerifyKey, *, log_id: str, name: str, incoming: VerifyKey, signature: str
) -> None:
    """Check a rotation signature.

    Raises
    ------
    SignatureError
        If ``signature`` is not the outgoing key's hand-over of ``name`` to ``incoming``.
    """
    document = rotation_document(log_id=log_id, name=name, outgoing=outgoing, incoming=incoming)
    try:
        verify_document(outgoing, ROTATION_DOMAIN, document, signature)
    except SignatureError as err:
        raise SignatureError(
            f"the rotation is not signed by {name!r}'s outgoing key for this log and new key"
        ) from err


# --------------------------------------------------------------- identity / log key split
#: The identity key's domain: it enrols, rotates to and retires the online log key.
IDENTITY_DOMAIN = "veracity.log-key.v1"


def identity_document(*, log_id: str, action: str, key_id: str, previous: str) -> dict[str, str]:
    """What the identity key signs about the log key ``key_id``.

    ``action`` is ``enrolled`` (genesis: ``log_id`` and ``previous`` are empty, the log id
    being the genesis entry's own hash), ``rotated`` (``previous`` is the outgoing log
    key's id) or ``retired`` (``key_id`` stops signing anything; ``previous`` is empty).
    """
    return {"action": action, "key_id": key_id, "log_id": log_id, "previous": previous}


def sign_identity(
    identity: SigningKey, *, log_id: str, action: str, key_id: str, previous: str = ""
) -> str:
    """The identity key's signature (base64) of one log-key event."""
    document = identity_document(log_id=log_id, action=action, key_id=key_id, previous=previous)
    return sign_document(identity, IDENTITY_DOMAIN, document)


def verify_identity(
    identity: VerifyKey,
    *,
    log_id: str,
    action: str,
    key_id: str,
    previous: str = "",
    signature: str | None,
) -> None:
    """Check the identity key's signature of one log-key event.

    Raises
    ------
    SignatureError
        If it is absent, malformed or not the identity key's for this event of this log.
    """
    if signature is None:
        raise SignatureError(
            f"a log key is {action} only by the identity key: the identity signature is missing"
        )
    document = identity_document(log_id=log_id, action=action, key_id=key_id, previous=previous)
    try:
        verify_document(identity, IDENTITY_DOMAIN, document, signature)
    except SignatureError as err:
        raise SignatureError(
            f"the log key {key_id[:16]} is not {action} by this log's identity key"
        ) from err
