"""The log's two keys: an offline identity key that enrols an online log key.

The **identity key** (``root.pem`` / ``root.pub``) is the log's trust anchor: auditors pin
``root.pub`` (``--trust``). It signs only key events of the log key, under
``veracity.log-key.v1`` (:mod:`veracity.ledger.possession`), and is otherwise kept
offline. The **log key** (``log.pem``) is what the coordinator holds to run: it signs
every root entry at its position, every countersignature and every checkpoint (and its
C2SP note). Verifiers derive the log key from the entries, never from a file:

* genesis enrols the first log key (``key.enrolled`` of ``coordinator``) and names the
  identity key, which signs that enrolment (``identity_key``, ``identity_signature``);
  a genesis without them (a log made before the split) is its own identity;
* :func:`rotate_log_key` records a ``key.rotated`` of ``coordinator``: the identity
  signs the new log key, the outgoing log key hands over (``outgoing_signature``) and
  signs the entry, the new key proves possession. From the next entry on only the new
  log key signs entries and checkpoints; checkpoint *notes* carry both log keys'
  signatures (the overlap), so a witness or a policy that knows either key keeps working;
* :func:`retire_log_key` records the identity's ``key.revoked`` of an old log key: the
  overlap ends, and a note or checkpoint signed by it alone is refused from then on.

A stolen log key can therefore write entries and checkpoints until it is rotated away
(as the whole root key could before), but it cannot enrol another log key, rotate or
retire one, or make a new log that verifies under the identity: each of those needs the
identity key.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from veracity.contracts.events import ROOT_ACTOR, Role
from veracity.core.fields import format_timestamp
from veracity.crypto.keys import SigningKey, VerifyKey
from veracity.errors import ConfigError, InputError
from veracity.ledger.possession import sign_enrolment, sign_identity, sign_rotation

if TYPE_CHECKING:
    from veracity.ledger.entry import Entry
    from veracity.ledger.ledger import Ledger

__all__ = [
    "LOG_KEY_NAME",
    "IDENTITY_KEY_NAME",
    "genesis_identity",
    "rotation_payload",
    "retirement_payload",
    "rotate_log_key",
    "retire_log_key",
    "recovery_payload",
    "recover_log_key",
    "log_keys_from_entries",
]

#: The key files: ``root.pem``/``root.pub`` is the identity, ``log.pem``/``log.pub`` the log key.
IDENTITY_KEY_NAME = "root"
LOG_KEY_NAME = "log"


def genesis_identity(identity: SigningKey, log_key: VerifyKey) -> dict[str, str]:
    """The fields genesis adds when ``identity`` enrols ``log_key`` (empty when they are one)."""
    if identity.public == log_key:
        return {}
    return {
        "identity_key": identity.public.pem(),
        "identity_signature": sign_identity(
            identity, log_id="", action="enrolled", key_id=log_key.key_id
        ),
    }


def rotation_payload(
    *,
    log_id: str,
    identity: SigningKey,
    outgoing: SigningKey,
    incoming: SigningKey,
    now: datetime | None = None,
    requested_by: str | None = None,
) -> dict[str, Any]:
    """The ``key.rotated`` payload moving the log from ``outgoing`` to ``incoming``."""
    if incoming.public == outgoing.public:
        raise InputError("the new log key is the current one")
    if incoming.public == identity.public:
        raise InputError("the log key must not be the identity key (that one stays offline)")
    payload: dict[str, Any] = {
        "name": ROOT_ACTOR,
        "public_key": incoming.public.pem(),
        "valid_from": format_timestamp(now),
        "proof": sign_enrolment(incoming, log_id=log_id, name=ROOT_ACTOR, role=Role.ROOT.value),
        "outgoing_signature": sign_rotation(
            outgoing, log_id=log_id, name=ROOT_ACTOR, incoming=incoming.public
        ),
        "identity_signature": sign_identity(
            identity,
            log_id=log_id,
            action="rotated",
            key_id=incoming.public.key_id,
            previous=outgoing.public.key_id,
        ),
    }
    if requested_by is not None:
        payload["requested_by"] = requested_by
    return payload


def retirement_payload(
    *, log_id: str, identity: SigningKey, key_id: str, reason: str, requested_by: str | None = None
) -> dict[str, Any]:
    """The identity's ``key.revoked`` payload retiring the old log key ``key_id``."""
    payload: dict[str, Any] = {
        "name": ROOT_ACTOR,
        "key_id": key_id,
        "reason": reason,
        "identity_signature": sign_identity(
            identity, log_id=log_id, action="retired", key_id=key_id
        ),
    }
    if requested_by is not None:
        payload["requested_by"] = requested_by
    return payload


def recovery_payload(
    *,
    log_id: str,
    identity: SigningKey,
    lost_key_id: str,
    incoming: SigningKey,
    reason: str,
    now: datetime | None = None,
    requested_by: str | None = None,
) -> dict[str, Any]:
    """The identity's ``key.recovered`` payload replacing the lost log key ``lost_key_id``."""
    if incoming.public == identity.public:
        raise InputError("the log key must not be the identity key (that one stays offline)")
    payload: dict[str, Any] = {
        "name": ROOT_ACTOR,
        "public_key": incoming.public.pem(),
        "valid_from": format_timestamp(now),
        "proof": sign_enrolment(incoming, log_id=log_id, name=ROOT_ACTOR, role=Role.ROOT.value),
        "reason": reason,
        "identity_signature": sign_identity(
            identity,
            log_id=log_id,
            action="recovered",
            key_id=incoming.public.key_id,
            previous=lost_key_id,
        ),
    }
    if requested_by is not None:
        payload["requested_by"] = requested_by
    return payload


def recover_log_key(
    ledger: Ledger,
    *,
    identity: SigningKey,
    new_key: SigningKey,
    reason: str,
    now: datetime | None = None,
    requested_by: str | None = None,
) -> Entry:
    """Replace a lost (or stolen) log key: a visible, identity-signed ``key.recovered``.

    Needs no current log key: the new key signs the entry and the identity's signature
    enrols it. Every older log key signs nothing after it (no overlap); the ledger signs
    with ``new_key`` from then on.

    Raises
    ------
    SignatureError, InputError
        If ``identity`` is not the log's identity key, or the new key was enrolled before.
    """
    current = ledger.key_at(ROOT_ACTOR)
    if current is None:  # pragma: no cover - genesis enrols the log key
        raise InputError("the ledger has no log key to recover")
    payload = recovery_payload(
        log_id=ledger.log_id,
        identity=identity,
        lost_key_id=current.key_id,
        incoming=new_key,
        reason=reason,
        now=now,
        requested_by=requested_by,
    )
    entry = ledger.append("key.recovered", ROOT_ACTOR, payload, signer=new_key, now=now)
    ledger.root_key = new_key
    ledger.overlap_keys = []
    return entry


def _log_key(ledger: Ledger) -> SigningKey:
    if ledger.root_key is None:
        raise ConfigError("changing the log key needs the current log key (log.pem)")
    return ledger.root_key


def rotate_log_key(
    ledger: Ledger,
    *,
    identity: SigningKey,
    new_key: SigningKey,
    now: datetime | None = None,
    requested_by: str | None = None,
) -> Entry:
    """Enrol ``new_key`` as the log key; the ledger signs with it from then on.

    The outgoing log key (the ledger's ``root_key``) signs the entry and stays in
    ``ledger.overlap_keys`` to sign checkpoint notes until it is retired.

    Raises
    ------
    ConfigError
        If the ledger was opened without its current log key.
    SignatureError, InputError
        If ``identity`` is not the log's identity key, or the new key was enrolled before.
    """
    outgoing = _log_key(ledger)
    payload = rotation_payload(
        log_id=ledger.log_id,
        identity=identity,
        outgoing=outgoing,
        incoming=new_key,
        now=now,
        requested_by=requested_by,
    )
    entry = ledger.append("key.rotated", ROOT_ACTOR, payload, signer=outgoing, now=now)
    ledger.root_key = new_key
    ledger.overlap_keys = [outgoing, *ledger.overlap_keys]
    return entry


def retire_log_key(
    ledger: Ledger,
    *,
    identity: SigningKey,
    key_id: str,
    reason: str = "the overlap after a log key rotation ended",
    now: datetime | None = None,
    requested_by: str | None = None,
) -> Entry:
    """End the overlap of the old log key ``key_id``: it signs nothing from then on.

    Raises
    ------
    ConfigError
        If the ledger was opened without its current log key.
    SignatureError, InputError
        If ``identity`` is not the log's identity key, or ``key_id`` is the current log key,
        was never one, or was retired before.
    """
    payload = retirement_payload(
        log_id=ledger.log_id,
        identity=identity,
        key_id=key_id,
        reason=reason,
        requested_by=requested_by,
    )
    entry = ledger.append("key.revoked", ROOT_ACTOR, payload, signer=_log_key(ledger), now=now)
    ledger.overlap_keys = [k for k in ledger.overlap_keys if k.public.key_id != key_id]
    return entry


def log_keys_from_entries(
    entries: list[str], identity: VerifyKey, *, at: int | None = None
) -> list[VerifyKey]:
    """The log keys ``identity`` enrolled, as the key events ``entries`` show them.

    With ``at``, only the log keys that may sign a checkpoint of ``at`` entries: the one in
    force for entry ``at`` and any rotated away before it and not yet retired (the overlap),
    never a key enrolled later or retired before.

    ``entries`` are entry bytes as text: genesis first, then the log key's rotations and
    retirements, in seq order; ``veracity ledger prove`` puts them beside an inclusion
    proof (``log_key_events``), so that ``verify-proof --trust root.pub`` (the identity)
    can check a checkpoint the log key signed. Every identity signature is checked; an
    entry that is not a key event of the log key is refused.

    Raises
    ------
    InputError
        If the entries are not genesis and the log key's events, or genesis names another
        identity.
    SignatureError
        If an enrolment is not signed by the identity.
    """
    from veracity.ledger.entry import parse_body
    from veracity.ledger.keyring import KeyHistory
    from veracity.ledger.merkle import leaf_hash

    if not entries:
        raise InputError("the proof carries no log key events (genesis at least)")
    bodies = [text.encode("utf-8") for text in entries]
    history = KeyHistory(log_id=leaf_hash(bodies[0]).hex())
    for position, body in enumerate(bodies):
        entry = parse_body(body)
        if (position == 0) != (entry.seq == 0) or entry.payload.get("name") != ROOT_ACTOR:
            raise InputError("the log key events are genesis and the log key's events only")
        history.apply(entry.seq, entry.kind, entry.payload)
    if history.identity != identity:
        raise InputError("genesis names an identity (root) key other than the trusted one")
    return history.log_keys() if at is None else history.log_keys_at(at)
