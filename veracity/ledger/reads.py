"""The ledger's read queries on a session: sizes, heads, rows as entries and checkpoints."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from veracity.contracts.events import KEY_KINDS
from veracity.errors import InputError
from veracity.ledger import store
from veracity.ledger.checkpoint import Checkpoint
from veracity.ledger.entry import (
    Entry,
    parse_body,
)
from veracity.ledger.verify import KeyEvent

__all__ = [
    "entry_from_row",
    "checkpoint_from_row",
    "size_of",
    "head_of",
    "key_events",
    "stored_checkpoints",
    "newest_checkpoint",
]


def entry_from_row(row: Any) -> Entry:
    """The entry a stored row's body holds."""
    return parse_body(bytes(row.body))


def checkpoint_from_row(row: store.CheckpointRow) -> Checkpoint:
    """The checkpoint a stored checkpoint row holds."""
    return Checkpoint(
        log_id=row.log_id,
        tree_size=row.tree_size,
        root_hash=bytes(row.root_hash).hex(),
        timestamp=row.timestamp,
        signature=row.signature,
    )


def size_of(session: Session) -> int:
    """Number of entries in ``session``'s view (genesis included)."""
    top = session.scalar(select(func.max(store.EntryRow.seq)))
    return 0 if top is None else int(top) + 1


def head_of(connection: Session | Connection) -> tuple[int, bytes | None]:
    """(number of entries, hash of the last one)."""
    head = connection.execute(
        select(store.EntryRow.seq, store.EntryRow.hash).order_by(store.EntryRow.seq.desc()).limit(1)
    ).first()
    if head is None:
        return 0, None
    return int(head.seq) + 1, bytes(head.hash)


def key_events(session: Session, size: int) -> list[KeyEvent]:
    """The ``key.*`` events below ``size`` (a malformed one is skipped: verify reports it)."""
    rows = session.execute(
        select(store.EntryRow.seq, store.EntryRow.body)
        .where(store.EntryRow.kind.in_(KEY_KINDS), store.EntryRow.seq < size)
        .order_by(store.EntryRow.seq)
    )
    events: list[KeyEvent] = []
    for seq, body in rows:
        try:
            entry = parse_body(bytes(body))
        except InputError:
            continue  # the chunk check reports the malformed entry at its seq
        events.append((int(seq), entry.kind, entry.payload))
    return events


def stored_checkpoints(session: Session) -> list[Checkpoint]:
    """Every stored checkpoint, oldest first."""
    rows = session.execute(
        select(store.CheckpointRow).order_by(store.CheckpointRow.tree_size)
    ).scalars()
    return [checkpoint_from_row(row) for row in rows]


def newest_checkpoint(session: Session) -> Checkpoint | None:
    """The newest stored checkpoint, if any."""
    row = session.execute(
        select(store.CheckpointRow).order_by(store.CheckpointRow.tree_size.desc()).limit(1)
    ).scalar_one_or_none()
    return None if row is None else checkpoint_from_row(row)
