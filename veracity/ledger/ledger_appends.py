"""The ledger's append path: one event or a batch, in the ledger's transaction or the caller's.

Appends are linear under concurrent writers and processes: each runs in a transaction that
holds the store's write lock (``BEGIN IMMEDIATE`` / ``pg_advisory_xact_lock``) while it
reads the head, and the schema itself refuses a fork. :mod:`.appending` prepares, checks and
writes the rows; :class:`LedgerAppends` takes the lock, remembers what this process signed
and starts the automatic checkpoint when one is due.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from veracity.core.fields import format_timestamp
from veracity.crypto.keys import SigningKey
from veracity.ledger import store
from veracity.ledger.appending import EventRequest, Prepared, append_rows, prepare
from veracity.ledger.entry import Entry
from veracity.ledger.ledger_checkpoints import LedgerCheckpoints

__all__ = ["LedgerAppends"]


class LedgerAppends(LedgerCheckpoints):
    """A ledger's appends (``transaction``, ``append``, ``append_batch``)."""

    def transaction(self) -> AbstractContextManager[Session]:
        """A session holding the write lock; pass it as ``session=`` to append.

        The caller's own rows and the ledger entries commit together when the block ends
        and roll back together when it raises.
        """
        return store.write_session(self.engine)

    def append(
        self,
        kind: str,
        actor: str,
        payload: dict[str, Any],
        *,
        signer: SigningKey | None = None,
        signature: str | None = None,
        session: Session | None = None,
        now: datetime | None = None,
    ) -> Entry:
        """Record one event.

        Parameters
        ----------
        kind, actor, payload
            The event; ``payload`` must match the kind's schema.
        signer
            The actor's private key, to sign here; or
        signature
            a base64 statement signature made elsewhere (``sign_statement``).
        session
            Append inside this session's transaction (from :meth:`transaction`); it is
            not committed here.
        now
            The entry's timestamp (default: the current time); an entry is never dated
            before the head entry or the newest checkpoint, so an earlier ``now`` (a
            clock that stepped back) dates it at theirs.

        Raises
        ------
        InputError
            Unknown kind, invalid payload or actor name, or a refused key event.
        SignatureError
            Neither or both of ``signer``/``signature``, a malformed signature, or one not
            made by the key the actor holds at this seq (never enrolled, or revoked); a
            receipt not signed by its site.
        """
        request = EventRequest(kind, actor, payload, signer=signer, signature=signature)
        return self.append_batch([request], session=session, now=now)[0]

    def append_batch(
        self,
        requests: Sequence[EventRequest],
        *,
        session: Session | None = None,
        now: datetime | None = None,
    ) -> list[Entry]:
        """Record several events in one transaction: all of them, or none.

        This is the fast path: canonicalisation and signing happen before the write lock
        is taken, and the rows go in with one multi-row insert per checkpoint interval.

        Raises
        ------
        InputError, SignatureError
            As for :meth:`append`; nothing is written.
        """
        log_id = bytes.fromhex(self.log_id)
        prepared = [prepare(request, log_id=log_id) for request in requests]
        if not prepared:
            return []
        ts = format_timestamp(now)
        if session is not None:
            store.acquire_write_lock(session)
            entries, due = self._append_locked(session, prepared, ts)
            if due:
                self.checkpoint_after_commit(session)
            return entries
        with store.write_session(self.engine) as own:
            entries, due = self._append_locked(own, prepared, ts)
        if due:
            self._auto_checkpoint()
        return entries

    def _append_locked(
        self, session: Session, prepared: list[Prepared], ts: str
    ) -> tuple[list[Entry], bool]:
        """Write the events at the head; returns them and whether a checkpoint is due."""
        written = append_rows(session, prepared, ts, log_id=self.log_id, root_key=self.root_key)
        if self.root_key is not None:
            self._remember_own(written.own)
        due = (
            self.root_key is not None
            and self.checkpoint_every > 0
            and written.next_seq - written.last_checkpoint >= self.checkpoint_every
        )
        return written.entries, due
