"""The ledger's checkpoints: verify-before-sign, sign, record, and after a commit.

:class:`LedgerCheckpoints` verifies every entry since the newest checkpoint
(:mod:`.checkpointing`), signs the root of exactly those entries outside any transaction and
records the ``checkpoint`` entry in a transaction of its own; it also remembers the leaf
hashes of the entries this process wrote, which verification need not check again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import select
from sqlalchemy.orm import Session

from veracity.core.fields import format_timestamp
from veracity.crypto.keys import SigningKey, VerifyKey
from veracity.errors import (
    ConfigError,
    LedgerIntegrityError,
    SignatureError,
    StaleCheckpoint,
    VeracityError,
)
from veracity.ledger import reads, store
from veracity.ledger.checkpoint import Checkpoint, sign_checkpoint
from veracity.ledger.checkpointing import record_checkpoint_entry, verify_since
from veracity.ledger.entry import Entry
from veracity.ledger.ledger_proofs import LedgerProofs
from veracity.ledger.verify_checkpoints import signed_by_one_of

__all__ = ["LedgerCheckpoints"]

#: The facade's logger, as before its parts had modules of their own.
log = logging.getLogger("veracity.ledger.ledger")
_CHECKPOINT_AFTER_COMMIT = "veracity.ledger.checkpoint_after_commit"
#: The most entries whose leaf hashes :attr:`Ledger._own` remembers (about 120 bytes each).
_OWN_LIMIT = 1 << 18
#: How often :meth:`Ledger.checkpoint_entry` signs again when a racing signer's newer
#: checkpoint made its own stale.
_STALE_RETRIES = 5
_CHECKPOINT_HOOKED = "veracity.ledger.checkpoint_hooked"


class LedgerCheckpoints(LedgerProofs):
    """A ledger's checkpoints (signing needs the root key)."""

    def checkpoint(self, *, now: datetime | None = None) -> Checkpoint:
        """Verify every entry since the last checkpoint, then sign and record the head.

        See :meth:`checkpoint_entry`.

        Raises
        ------
        ConfigError
            If this ledger was opened without the root key.
        LedgerIntegrityError
            If an entry since the last checkpoint (or what ties the log to it) fails
            verification: nothing is signed.
        """
        return self.checkpoint_entry(now=now)[0]

    def checkpoint_entry(
        self,
        *,
        now: datetime | None = None,
        on_record: Callable[[Session, Entry], None] | None = None,
    ) -> tuple[Checkpoint, Entry]:
        """Verify, sign and record a checkpoint of the committed log; returns it and its entry.

        Three steps, none inside a caller's transaction, so a signed checkpoint only ever
        covers committed entries and can never be rolled back from under its signature:

        1. *verify*: read the committed head and check every entry since the newest
           checkpoint with the reference verifier (every signature, receipts, key rules,
           chain), after checking that checkpoint's signature and that the stored hashes
           below it lead to its root, and that every key event below it is the entry the
           signed tree holds (verify-before-sign);
        2. *sign* the root of exactly those entries, outside any transaction;
        3. *record* the checkpoint (a ``checkpoint`` entry at the head, whose
           ``tree_size`` may be below its seq when others appended meanwhile) in a
           transaction of its own; ``on_record`` runs inside it.

        Raises
        ------
        ConfigError
            If this ledger was opened without the root key.
        LedgerIntegrityError
            If verification fails: nothing is signed.
        """
        for attempt in range(_STALE_RETRIES):
            signed = self.sign_checkpoint(now=now)
            try:
                with store.write_session(self.engine) as session:
                    entry = self.record_checkpoint(session, signed)
                    if on_record is not None:
                        on_record(session, entry)
            except StaleCheckpoint:
                if attempt + 1 == _STALE_RETRIES:
                    raise
                continue  # another signer recorded a newer checkpoint: sign the head again
            return signed, entry
        raise AssertionError("unreachable")  # pragma: no cover

    def sign_checkpoint(self, *, now: datetime | None = None) -> Checkpoint:
        """Steps 1 and 2 of :meth:`checkpoint_entry`: verify, then sign the committed head.

        Nothing is recorded; :meth:`record_checkpoint` does that (a caller that records it
        together with its own rows, in its own transaction, does so after this returns).

        Raises
        ------
        ConfigError
            If this ledger was opened without the root key.
        LedgerIntegrityError
            If verification fails: nothing is signed.
        """
        if self.root_key is None:
            raise ConfigError("signing a checkpoint needs the root key (root.pem)")
        size, root, floor = self._verified_head(self.identity_public_key)
        return sign_checkpoint(
            self.root_key,
            log_id=self.log_id,
            tree_size=size,
            root_hash=root.hex(),
            # Never older than its last entry or the previous checkpoint.
            timestamp=max(format_timestamp(now), floor),
        )

    def record_checkpoint(self, session: Session, signed: Checkpoint) -> Entry:
        """Step 3 of :meth:`checkpoint_entry`: record ``signed`` in ``session``'s transaction.

        The checkpoint covers committed entries only, so rolling this transaction back
        leaves at most a signed checkpoint that is true of the log and unrecorded.

        Raises
        ------
        ConfigError
            If this ledger was opened without the root key.
        """
        if self.root_key is None:
            raise ConfigError("recording a checkpoint needs the root key (root.pem)")
        store.acquire_write_lock(session)
        return self._record_checkpoint(session, signed, self.root_key)

    def _remember_own(self, written: Iterable[tuple[int, bytes]]) -> None:
        """Remember the leaf hashes of entries this process wrote at these seqs.

        A transaction that rolls back leaves them behind; harmless, since they are only
        ever used for a stored entry whose bytes hash to exactly the same.
        """
        with self._own_lock:
            if len(self._own) < _OWN_LIMIT:
                self._own.update(written)

    def _own_since(self, start: int, size: int) -> dict[int, bytes]:
        """The remembered leaf hashes for seqs in ``[start, size)``; forgets those below."""
        with self._own_lock:
            for seq in [seq for seq in self._own if seq < start]:
                del self._own[seq]
            return {seq: digest for seq, digest in self._own.items() if seq < size}

    def _verified_head(self, trusted: VerifyKey) -> tuple[int, bytes, str]:
        """Step 1 of :meth:`checkpoint_entry`: the committed size, root and earliest time.

        The time is the latest of its last entry's and the newest checkpoint's: a
        checkpoint of it may not be dated before.
        """
        with store.read_session(self.engine) as session, self._tree_lock:
            size = self._size(session)
            start = 0
            floor = (
                session.execute(
                    select(store.EntryRow.ts).where(store.EntryRow.seq == size - 1)
                ).scalar_one_or_none()
                or ""
            )
            last = reads.newest_checkpoint(session)
            if last is not None:
                try:
                    signed_by_one_of(last, self.log_keys())
                except SignatureError as err:
                    raise LedgerIntegrityError(
                        f"the newest stored checkpoint (size {last.tree_size}) is not signed by "
                        "a log key of this log; run `veracity ledger verify`"
                    ) from err
                if last.log_id != self.log_id or last.tree_size > size:
                    raise LedgerIntegrityError(
                        f"the newest stored checkpoint (size {last.tree_size}) is not of this "
                        "log's committed entries; run `veracity ledger verify`"
                    )
                start = last.tree_size
                floor = max(floor, last.timestamp)
            self._tree_unconfirmed = True
            tree = self._synced_tree(session, upto=start)
            if last is not None and tree.root(start).hex() != last.root_hash:
                raise LedgerIntegrityError(
                    f"the stored hashes of entries 0..{start - 1} do not lead to the root the "
                    "newest checkpoint signed; run `veracity ledger verify`"
                )
            leaves = verify_since(
                session,
                tree,
                start=start,
                size=size,
                trusted=trusted,
                log_id=self.log_id,
                own=self._own_since,
            )
            tree.extend_blob(leaves)
            self._tree_unconfirmed = False  # every leaf is a committed entry's
            return size, tree.root(size), floor

    def _record_checkpoint(self, session: Session, signed: Checkpoint, key: SigningKey) -> Entry:
        """Step 3 of :meth:`checkpoint_entry`: the ``checkpoint`` entry at the head."""
        return record_checkpoint_entry(
            session,
            signed,
            key,
            log_id=self.log_id,
            recorded=lambda size: self.iter_entries(since=size, kind="checkpoint"),
        )

    def checkpoint_after_commit(
        self,
        session: Session,
        *,
        on_done: Callable[[tuple[Checkpoint, Entry] | VeracityError], None] | None = None,
        on_record: Callable[[Session, Entry], None] | None = None,
    ) -> None:
        """Sign a checkpoint once ``session``'s transaction has committed (never inside it).

        Nothing happens if it rolls back. A failure is logged and passed to ``on_done``
        (the caller's change has committed by then); so is the result.
        """
        session.info[_CHECKPOINT_AFTER_COMMIT] = (on_done, on_record)
        if not session.info.get(_CHECKPOINT_HOOKED):
            session.info[_CHECKPOINT_HOOKED] = True
            sa.event.listen(session, "after_commit", self._after_commit)

    def _after_commit(self, session: Session) -> None:
        request = session.info.pop(_CHECKPOINT_AFTER_COMMIT, None)
        if request is None:
            return
        on_done, on_record = request
        result: tuple[Checkpoint, Entry] | VeracityError
        try:
            result = self.checkpoint_entry(on_record=on_record)
        except VeracityError as err:
            log.error("no checkpoint signed after the commit: %s", err)
            result = err
        except sa.exc.SQLAlchemyError as err:  # the change has committed: report, go on
            log.error("no checkpoint recorded after the commit: %s", err)
            result = VeracityError(f"no checkpoint recorded: {str(err).splitlines()[0]}")
        if on_done is not None:
            on_done(result)

    def _auto_checkpoint(self) -> None:
        """The automatic checkpoint after an append committed (failures are logged)."""
        try:
            self.checkpoint()
        except (VeracityError, sa.exc.SQLAlchemyError) as err:
            log.error("no automatic checkpoint signed: %s", err)
