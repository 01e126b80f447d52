"""Key history: which key each enrolled name holds at each position of the ledger.

Keys change only by root-signed key events (:data:`~veracity.contracts.events.KEY_KINDS`):
``key.enrolled`` (a name's first key; genesis enrols the root itself), ``key.rotated``
(signed by the outgoing key), ``key.recovered`` (a lost or revoked key replaced, visibly)
and ``key.revoked``. A key is valid for entries *after* the entry that gives it and up to
(and including) the entry that revokes or replaces it. Validity is by position in the log,
never by wall-clock time, so it is recomputed from the entries alone.
:func:`check_key_event` holds the rules; the append path and the verifier both call it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from veracity.contracts.events import ROOT_ACTOR, Role
from veracity.crypto.keys import VerifyKey
from veracity.errors import Conflict, InputError, SignatureError
from veracity.ledger.possession import verify_enrolment, verify_identity, verify_rotation

__all__ = ["KeyRecord", "KeyHistory", "check_key_event", "check_genesis_identity"]

_NO_END = 2**63


@dataclass(frozen=True)
class KeyRecord:
    """One enrolled key of a name."""

    name: str
    role: Role
    key: VerifyKey
    #: Seq of the ``key.enrolled`` entry; the key signs entries after it.
    enrolled_seq: int

    @property
    def key_id(self) -> str:
        """SHA-256 of the raw public key, hex."""
        return self.key.key_id

    @property
    def public_key_pem(self) -> str:
        """The public key as PEM text."""
        return self.key.pem()


@dataclass
class KeyHistory:
    """Replay of every key event, answering "which key did NAME hold at seq S"."""

    #: The log id (hex) the proofs of possession bind.
    log_id: str = ""
    #: name -> (event seq, key record after the event or None when revoked), in seq order.
    _timeline: dict[str, list[tuple[int, KeyRecord | None]]] = field(default_factory=dict)
    _holders: dict[str, str] = field(default_factory=dict)
    #: Every key event applied: (seq, kind, name, key_id).
    events: list[tuple[int, str, str, str]] = field(default_factory=list)
    #: The identity key genesis names (the log key itself for a genesis without one).
    identity: VerifyKey | None = None
    #: Log key id -> seq of the identity-signed ``key.revoked`` that retired it.
    _retired: dict[str, int] = field(default_factory=dict)
    #: Log key id -> seq of the identity-signed ``key.recovered`` that replaced it (lost):
    #: it signs nothing after, overlap or not.
    _replaced: dict[str, int] = field(default_factory=dict)

    def key_at(self, name: str, seq: int) -> KeyRecord | None:
        """The key ``name`` holds for signing entry ``seq`` (``None`` when it holds none)."""
        timeline = self._timeline.get(name)
        if not timeline:
            return None
        index = bisect.bisect_left(timeline, seq, key=lambda item: item[0]) - 1
        if index < 0:
            return None
        return timeline[index][1]

    def key_span(self, name: str, seq: int) -> tuple[KeyRecord | None, int, int]:
        """:meth:`key_at` and the range of seqs its answer holds for.

        Returns ``(record, low, high)``: ``key_at(name, s)`` is ``record`` for every
        ``low < s <= high``, so a caller can reuse the answer without another search.
        """
        timeline = self._timeline.get(name)
        if not timeline:
            return None, -1, _NO_END
        index = bisect.bisect_left(timeline, seq, key=lambda item: item[0]) - 1
        low = timeline[index][0] if index >= 0 else -1
        high = timeline[index + 1][0] if index + 1 < len(timeline) else _NO_END
        return (timeline[index][1] if index >= 0 else None), low, high

    def history(self, name: str) -> list[tuple[int, KeyRecord | None]]:
        """Every change of ``name``'s key: (seq, key after it, or None once revoked)."""
        return list(self._timeline.get(name, ()))

    def log_keys(self) -> list[VerifyKey]:
        """Every log key the identity enrolled, oldest first (retired ones included)."""
        keys: list[VerifyKey] = []
        for _, record in self._timeline.get(ROOT_ACTOR, ()):
            if record is not None and record.key not in keys:
                keys.append(record.key)
        return keys

    def log_keys_at(self, seq: int) -> list[VerifyKey]:
        """The log keys that may sign a checkpoint recorded at ``seq``: current one first.

        The current log key, then each log key rotated away before ``seq`` and not yet
        retired by the identity (the overlap, when both sign checkpoint notes).
        """
        current = self.key_at(ROOT_ACTOR, seq)
        keys = [] if current is None else [current.key]
        for event_seq, record in self._timeline.get(ROOT_ACTOR, ()):
            if record is None or event_seq >= seq or record.key in keys:
                continue
            retired = self._retired.get(record.key_id)
            replaced = self._replaced.get(record.key_id)
            if (retired is None or retired >= seq) and (replaced is None or replaced >= seq):
                keys.append(record.key)
        return keys

    def recoveries(self) -> list[tuple[int, str, str]]:
        """Every ``key.recovered``: (seq, name, new key id), in seq order."""
        return [(s, name, k) for s, kind, name, k in self.events if kind == "key.recovered"]

    def retired(self, key_id: str) -> int | None:
        """The seq that retired log key ``key_id``, if the identity retired it."""
        return self._retired.get(key_id)

    def names(self) -> list[str]:
        """Every name ever enrolled."""
        return sorted(self._timeline)

    def last_record(self, name: str, seq: int) -> KeyRecord | None:
        """The last key ``name`` was given before ``seq``, even if it was revoked since."""
        for event_seq, record in reversed(self._timeline.get(name, ())):
            if event_seq < seq and record is not None:
                return record
        return None

    def apply(self, seq: int, kind: str, payload: dict[str, Any]) -> None:
        """Record the key event at ``seq`` (a validated ``key.*`` payload).

        Raises
        ------
        InputError, SignatureError
            If :func:`check_key_event` refuses the event here.
        """
        name = payload["name"]
        record = check_key_event(
            kind,
            payload,
            seq=seq,
            log_id=self.log_id,
            current=self.key_at(name, seq + 1),
            last=self.last_record(name, seq + 1),
            holder_of=self._holders.get,
            identity=self.identity,
            retired=self._retired.__contains__,
        )
        if seq == 0 and record is not None:
            identity = payload.get("identity_key")
            self.identity = record.key if identity is None else VerifyKey.from_pem(identity)
        if name == ROOT_ACTOR and kind == "key.revoked":
            self._retired[payload["key_id"]] = seq
        if name == ROOT_ACTOR and kind == "key.recovered":
            for _, earlier in self._timeline.get(name, ()):
                if earlier is not None:
                    self._replaced.setdefault(earlier.key_id, seq)
        if record is not None:
            self._holders[record.key_id] = name
            key_id = record.key_id
        else:
            key_id = payload["key_id"]
        self._timeline.setdefault(name, []).append((seq, record))
        self.events.append((seq, kind, name, key_id))


def check_key_event(
    kind: str,
    payload: dict[str, Any],
    *,
    seq: int,
    log_id: str,
    current: KeyRecord | None,
    last: KeyRecord | None,
    holder_of: Callable[[str], str | None],
    identity: VerifyKey | None = None,
    retired: Callable[[str], bool] = lambda _key_id: False,
) -> KeyRecord | None:
    """The key rules, which append and verify both apply; returns the name's key after it.

    ``current`` is the key the payload's name holds before ``seq`` (``None`` when it holds
    none), ``last`` the last key it was given (even if revoked since: ``None`` for a name
    never enrolled), ``holder_of`` the name a key id was ever enrolled for, and ``log_id``
    the log's id (hex) that proofs of possession bind.

    * ``key.enrolled``: genesis enrols the root; afterwards a name is enrolled once, never
      as root, with its key's proof of possession for this log, name and role;
    * ``key.rotated``: the name holds a key, which signs the hand-over to the new one; the
      new key proves possession for the name's unchanged role;
    * ``key.recovered``: a name enrolled before (holding a key or revoked) gets a new key
      that proves possession for the same role; its current key, if any, stops here;
    * ``key.revoked``: the name's current key, never the root's;
    * a key id is enrolled once in a log, for one name: never again after it was revoked
      or replaced;
    * the root's key is the online *log key*; ``identity`` (the offline identity key
      genesis names) alone enrols it: genesis carries the identity's signature of the
      first log key (or, written before the split, no identity: the key is its own), a
      ``key.rotated`` of the root carries the identity's signature besides the outgoing
      log key's, a ``key.recovered`` of the root (the log key was lost: no hand-over)
      the identity's signature alone, and a ``key.revoked`` of the root retires a log
      key rotated away (the end of the overlap), signed by the identity; ``retired``
      says whether a log key was retired already.

    Raises
    ------
    InputError
        If the event breaks a rule (:class:`~veracity.errors.Conflict` for a name or key
        enrolled before).
    SignatureError
        If a proof of possession or a rotation signature does not verify.
    """
    name = payload["name"]
    if name != ROOT_ACTOR and payload.get("identity_signature") is not None:
        raise InputError("only the log key's events carry an identity signature")
    if name == ROOT_ACTOR and seq > 0:
        _check_log_key_event(kind, payload, log_id, current, identity, holder_of, retired)
        if kind == "key.revoked":
            return current
    if kind == "key.revoked":
        if current is None or current.key_id != payload["key_id"]:
            raise InputError(f"key {payload['key_id'][:16]} is not {name!r}'s current key")
        return None
    if kind not in ("key.enrolled", "key.rotated", "key.recovered"):
        raise InputError(f"{kind} is not a key event")
    key = VerifyKey.from_pem(payload["public_key"])
    if kind == "key.enrolled":
        role = Role(payload["role"])
        if seq == 0:
            if name != ROOT_ACTOR or role is not Role.ROOT:
                raise InputError(f"genesis must enrol the root as {ROOT_ACTOR!r} with role root")
            check_genesis_identity(payload, key)
            return KeyRecord(name=name, role=role, key=key, enrolled_seq=seq)
        if role is Role.ROOT or name == ROOT_ACTOR:
            raise InputError("the root key is enrolled only by genesis; a new root needs a new log")
        if last is not None:
            held = "holds" if current is not None else "held"
            raise Conflict(
                f"{name!r} {held} a key as {last.role.value} already: a name is enrolled once "
                "(a new key comes by key.rotated, signed by the current key, or by a visible "
                "key.recovered; roles never change)"
            )
    else:
        if name == ROOT_ACTOR and kind not in ("key.rotated", "key.recovered"):
            raise InputError(
                "the log key is enrolled by genesis, then only by an identity-signed "
                "key.rotated (or key.recovered, when it was lost); a new identity needs a "
                "new log"
            )
        if kind == "key.rotated" and current is None:
            raise InputError(
                f"{name!r} holds no key to hand over (never enrolled, or revoked): a lost or "
                "revoked key is replaced by key.recovered"
            )
        if last is None:
            raise InputError(f"{name!r} was never enrolled: enrol it with key.enrolled")
        role = last.role
    holder = holder_of(key.key_id)
    if holder is not None:
        raise Conflict(
            f"this public key was enrolled before (for {holder!r}): a key is enrolled once, "
            "never again after it was revoked or replaced"
        )
    proof = payload.get("proof")
    if proof is None:
        raise SignatureError(f"{kind} of {name!r} lacks the new key's proof of possession")
    verify_enrolment(key, log_id=log_id, name=name, role=role.value, proof=proof)
    if kind == "key.rotated":
        if current is None:  # pragma: no cover - refused above
            raise InputError(f"{name!r} holds no key to hand over")
        verify_rotation(
            current.key,
            log_id=log_id,
            name=name,
            incoming=key,
            signature=payload["outgoing_signature"],
        )
    return KeyRecord(name=name, role=role, key=key, enrolled_seq=seq)


def check_genesis_identity(payload: dict[str, Any], key: VerifyKey) -> None:
    """Genesis's identity signature of the first log key, when genesis names an identity."""
    identity = payload.get("identity_key")
    if identity is None:
        if payload.get("identity_signature") is not None:
            raise InputError("genesis carries an identity signature but no identity key")
        return
    verify_identity(
        VerifyKey.from_pem(identity),
        log_id="",
        action="enrolled",
        key_id=key.key_id,
        signature=payload.get("identity_signature"),
    )


def _check_log_key_event(
    kind: str,
    payload: dict[str, Any],
    log_id: str,
    current: KeyRecord | None,
    identity: VerifyKey | None,
    holder_of: Callable[[str], str | None],
    retired: Callable[[str], bool],
) -> None:
    """The identity's part of a key event of the log key (after genesis).

    Raises
    ------
    InputError
        If the event is not a rotation or retirement, or retires the current log key, a key
        that was never a log key, or one retired before.
    SignatureError
        If the identity key did not sign it.
    """
    if identity is None or current is None:
        raise InputError("the log's genesis (its identity and first log key) is missing")
    signature = payload.get("identity_signature")
    if kind in ("key.rotated", "key.recovered"):
        incoming = VerifyKey.from_pem(payload["public_key"])
        verify_identity(
            identity,
            log_id=log_id,
            action="rotated" if kind == "key.rotated" else "recovered",
            key_id=incoming.key_id,
            previous=current.key_id,
            signature=signature,
        )
    elif kind == "key.revoked":
        key_id = payload["key_id"]
        if key_id == current.key_id:
            raise InputError(
                "the current log key cannot be retired: rotate to a new one first "
                "(a log always has a log key)"
            )
        if holder_of(key_id) != ROOT_ACTOR:
            raise InputError(f"key {key_id[:16]} was never this log's log key")
        if retired(key_id):
            raise Conflict(f"the log key {key_id[:16]} was retired before")
        verify_identity(
            identity, log_id=log_id, action="retired", key_id=key_id, signature=signature
        )
