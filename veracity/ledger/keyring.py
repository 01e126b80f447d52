"""Key history: which key each enrolled name holds at each position of the ledger.

Keys are enrolled and revoked by root-signed ``key.enrolled`` / ``key.revoked`` entries; the
genesis entry enrols the root itself. A key is valid for entries *after* the entry that
enrols it and up to (and including) the entry that revokes it or enrols a replacement for
the same name (a rotation). Validity is by position in the log, never by wall-clock time,
so it is recomputed from the entries alone.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from veracity.contracts.events import ROOT_ACTOR, Role
from veracity.crypto.keys import VerifyKey
from veracity.errors import InputError

__all__ = ["KeyRecord", "KeyHistory"]

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

    #: name -> (event seq, key record after the event or None when revoked), in seq order.
    _timeline: dict[str, list[tuple[int, KeyRecord | None]]] = field(default_factory=dict)
    _holders: dict[str, str] = field(default_factory=dict)
    #: Every key event applied: (seq, kind, name, key_id).
    events: list[tuple[int, str, str, str]] = field(default_factory=list)

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

    def names(self) -> list[str]:
        """Every name ever enrolled."""
        return sorted(self._timeline)

    def apply(self, seq: int, kind: str, payload: dict[str, Any]) -> None:
        """Record the key event at ``seq`` (a validated ``key.*`` payload).

        Raises
        ------
        InputError
            If the event is not allowed here: a second root, a root role outside genesis,
            a key already held by another name, a role change on rotation, or revoking a
            key the name does not hold.
        """
        name = payload["name"]
        current = self.key_at(name, seq + 1)
        if kind == "key.enrolled":
            role = Role(payload["role"])
            key = VerifyKey.from_pem(payload["public_key"])
            if seq == 0:
                if name != ROOT_ACTOR or role is not Role.ROOT:
                    raise InputError(
                        f"genesis must enrol the root as {ROOT_ACTOR!r} with role root"
                    )
            elif role is Role.ROOT or name == ROOT_ACTOR:
                raise InputError(
                    "the root key is enrolled only by genesis; a new root needs a new log"
                )
            holder = self._holders.get(key.key_id)
            if holder is not None and holder != name:
                raise InputError(f"this public key is already enrolled for {holder!r}")
            if current is not None and current.role is not role:
                raise InputError(
                    f"{name!r} is enrolled as {current.role.value}; roles do not change"
                )
            record: KeyRecord | None = KeyRecord(name=name, role=role, key=key, enrolled_seq=seq)
            self._holders[key.key_id] = name
            key_id = key.key_id
        elif kind == "key.revoked":
            if name == ROOT_ACTOR:
                raise InputError("the root key cannot be revoked inside its own log")
            if current is None or current.key_id != payload["key_id"]:
                raise InputError(f"key {payload['key_id'][:16]} is not {name!r}'s current key")
            record = None
            key_id = payload["key_id"]
        else:
            raise InputError(f"{kind} is not a key event")
        self._timeline.setdefault(name, []).append((seq, record))
        self.events.append((seq, kind, name, key_id))
