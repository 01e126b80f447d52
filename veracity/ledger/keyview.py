"""Key lookups while appending: the stored key index plus the batch's own key events."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from veracity.contracts.events import ROOT_ACTOR, Role
from veracity.crypto.keys import VerifyKey
from veracity.ledger import store
from veracity.ledger.entry import parse_body
from veracity.ledger.keyring import KeyRecord

__all__ = ["KeyView"]


class KeyView:
    """Key lookups while appending: the key index plus the batch's own key events."""

    def __init__(self, session: Session, *, head: int | None = None) -> None:
        self._session = session
        self._pending: dict[str, list[tuple[int, KeyRecord | None]]] = {}
        self._pending_holders: dict[str, str] = {}
        self._pending_retired: set[str] = set()
        #: Stored key state per name for seqs after ``head`` (fixed while the lock is held).
        self._head = head
        self._stored: dict[str, KeyRecord | None] = {}

    def key_at(self, name: str, seq: int) -> KeyRecord | None:
        """The key ``name`` holds for signing entry ``seq`` (``None``: none, or revoked)."""
        for event_seq, record in reversed(self._pending.get(name, [])):
            if event_seq < seq:
                return record
        if self._head is not None and seq > self._head:
            if name not in self._stored:
                self._stored[name] = self._lookup(name, seq)
            return self._stored[name]
        return self._lookup(name, seq)

    def _lookup(self, name: str, seq: int, *, granted_only: bool = False) -> KeyRecord | None:
        query = select(store.KeyEventRow).where(
            store.KeyEventRow.name == name, store.KeyEventRow.seq < seq
        )
        if granted_only:
            query = query.where(store.KeyEventRow.action != "revoked")
        row = self._session.execute(
            query.order_by(store.KeyEventRow.seq.desc()).limit(1)
        ).scalar_one_or_none()
        if row is None or row.action == "revoked" or row.public_key is None or row.role is None:
            return None
        return KeyRecord(
            name=row.name,
            role=Role(row.role),
            key=VerifyKey.from_pem(row.public_key),
            enrolled_seq=row.seq,
        )

    def last_record(self, name: str, seq: int) -> KeyRecord | None:
        """The last key ``name`` was given before ``seq``, even if revoked since."""
        for event_seq, record in reversed(self._pending.get(name, [])):
            if event_seq < seq and record is not None:
                return record
        return self._lookup(name, seq, granted_only=True)

    def holder_of(self, key_id: str) -> str | None:
        """The name that holds (or held, unrevoked) the key ``key_id``, if any."""
        if key_id in self._pending_holders:
            return self._pending_holders[key_id]
        return self._session.execute(
            select(store.KeyEventRow.name)
            .where(store.KeyEventRow.key_id == key_id, store.KeyEventRow.action != "revoked")
            .limit(1)
        ).scalar_one_or_none()

    def retired(self, key_id: str) -> bool:
        """Whether the identity retired the log key ``key_id`` (stored or in this batch)."""
        if key_id in self._pending_retired:
            return True
        return (
            self._session.execute(
                select(store.KeyEventRow.seq)
                .where(
                    store.KeyEventRow.name == ROOT_ACTOR,
                    store.KeyEventRow.action == "retired",
                    store.KeyEventRow.key_id == key_id,
                )
                .limit(1)
            ).first()
            is not None
        )

    def retire(self, key_id: str) -> None:
        """Note a retirement of the log key ``key_id`` in this batch."""
        self._pending_retired.add(key_id)

    def identity(self) -> VerifyKey | None:
        """The identity key genesis names (its log key for a genesis without one)."""
        body = self._session.execute(
            select(store.EntryRow.body).where(store.EntryRow.seq == 0)
        ).scalar_one_or_none()
        if body is None:
            return None
        payload = parse_body(bytes(body)).payload
        return VerifyKey.from_pem(payload.get("identity_key", payload["public_key"]))

    def record(self, seq: int, name: str, record: KeyRecord | None) -> None:
        """Note a key event of this batch (``record`` ``None``: a revocation)."""
        self._pending.setdefault(name, []).append((seq, record))
        if record is not None:
            self._pending_holders[record.key_id] = name
