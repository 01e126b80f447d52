"""What every readable log answers: the database ledger and a verified bundle.

:class:`~veracity.ledger.ledger.Ledger` and :class:`~veracity.ledger.bundle_view.BundleLedger`
both implement :meth:`EntryReader.iter_entries` and :meth:`EntryReader.latest_checkpoint`
and inherit :meth:`EntryReader.entries`; readers such as
:func:`~veracity.ledger.provenance.build_provenance` take either.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from veracity.ledger.checkpoint import Checkpoint
from veracity.ledger.entry import Entry

__all__ = ["EntryReader"]


class EntryReader(Protocol):
    """A log's entries in seq order and its newest signed checkpoint."""

    def iter_entries(
        self,
        *,
        since: int = 0,
        kind: str | None = None,
        actor: str | None = None,
        limit: int | None = None,
    ) -> Iterator[Entry]:
        """Entries with ``seq >= since`` in order, optionally of one kind or actor, streaming."""
        ...

    def entries(
        self,
        *,
        since: int = 0,
        kind: str | None = None,
        actor: str | None = None,
        limit: int | None = None,
    ) -> list[Entry]:
        """Like :meth:`iter_entries`, as a list."""
        return list(self.iter_entries(since=since, kind=kind, actor=actor, limit=limit))

    def latest_checkpoint(self) -> Checkpoint | None:
        """The newest signed checkpoint, if any."""
        ...
