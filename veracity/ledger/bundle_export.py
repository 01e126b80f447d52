"""Export: the whole ledger written into one offline-verifiable bundle (see :mod:`.bundle`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from veracity.ledger import reads, store
from veracity.ledger.bundle import write_bundle

__all__ = ["export_bundle"]


def export_bundle(
    engine: Engine, path: Path, *, log_id: str, notes: Callable[[Sequence[int]], list[str]]
) -> dict[str, Any]:
    """Write every entry, checkpoint and key event into one offline-verifiable file.

    The file appears atomically (written beside it, then renamed). ``notes(sizes)`` renders
    the signed notes of the checkpoints of these sizes it carries.

    Returns
    -------
    dict
        ``{"path", "entries", "checkpoints", "bytes", "sha256"}``.
    """
    with store.read_session(engine) as session:
        size = reads.size_of(session)
        events = reads.key_events(session, size)
        listed = reads.stored_checkpoints(session)
        bodies = (
            bytes(body)
            for body in session.execute(
                select(store.EntryRow.body)
                .where(store.EntryRow.seq < size)
                .order_by(store.EntryRow.seq)
                .execution_options(yield_per=4096)
            ).scalars()
        )
        return write_bundle(
            Path(os.fspath(path)),
            log_id=log_id,
            size=size,
            bodies=bodies,
            checkpoints=listed,
            key_events=events,
            notes=notes([c.tree_size for c in listed]),
        )
