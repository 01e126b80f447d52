"""The :class:`Ledger` facade: append, checkpoint, read, prove, verify, export, provenance.

The work is done in modules of their own: :mod:`.appending` (prepare, check and write
events), :mod:`.keyview` (key lookups while appending), :mod:`.checkpointing`
(verify-before-sign and the recorded checkpoint), :mod:`.reads` (read queries),
:mod:`.proofs` (inclusion and consistency proofs), :mod:`.bundle_export` (export) and
:mod:`.verify` (the offline verifier); this class holds the state they share (the engine,
the root key, the Merkle cache and the entries this process signed).

Appends are linear under concurrent writers and processes: each runs in a transaction that
holds the store's write lock (``BEGIN IMMEDIATE`` / ``pg_advisory_xact_lock``) while it
reads the head, and the schema itself refuses a fork. Everything about an append is
checked before anything is written: the payload schema, the actor's enrolled key at that
seq, its role, the signature (made here with ``signer=`` or passed in as base64 with
``signature=``), the key rules for ``key.*`` events and every receipt of
``round.completed``. A caller that must commit its own rows together with the entry opens
:meth:`Ledger.transaction` and passes the session as ``session=``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from veracity.contracts.events import ROOT_ACTOR
from veracity.core.fields import format_timestamp
from veracity.crypto.keys import SigningKey, VerifyKey
from veracity.errors import (
    ConfigError,
    CryptoError,
    InputError,
    LedgerIntegrityError,
    NotFound,
    SignatureError,
    StaleCheckpoint,
    VeracityError,
)
from veracity.ledger import reads, store
from veracity.ledger.appending import EventRequest, Prepared, append_rows, prepare, write_genesis
from veracity.ledger.checkpoint import Checkpoint, sign_checkpoint
from veracity.ledger.checkpointing import record_checkpoint_entry, verify_since
from veracity.ledger.entry import (
    NO_LOG_ID,
    Entry,
    parse_body,
)
from veracity.ledger.keyring import KeyHistory, KeyRecord
from veracity.ledger.keyview import KeyView
from veracity.ledger.merkle import MerkleTree, leaf_hash
from veracity.ledger.proofs import ConsistencyProof, InclusionProof
from veracity.ledger.reader import EntryReader
from veracity.ledger.verify import (
    KeyEvent,
    RootSignatures,
    VerifyReport,
    verify_database,
)
from veracity.ledger.verify_checkpoints import signed_by_one_of

#: ``EventRequest`` is defined in :mod:`.appending` and imported from here by its callers.
__all__ = ["Ledger", "EventRequest"]

log = logging.getLogger(__name__)
_CHECKPOINT_AFTER_COMMIT = "veracity.ledger.checkpoint_after_commit"
#: The most entries whose leaf hashes :attr:`Ledger._own` remembers (about 120 bytes each).
_OWN_LIMIT = 1 << 18
#: How often :meth:`Ledger.checkpoint_entry` signs again when a racing signer's newer
#: checkpoint made its own stale.
_STALE_RETRIES = 5
_CHECKPOINT_HOOKED = "veracity.ledger.checkpoint_hooked"
#: A seq after every entry (the key index lookup of "now").
_AFTER_EVERYTHING = 2**62


class Ledger(EntryReader):
    """A signed, hash-chained, Merkle-proved ledger in a SQL database.

    Open one with :meth:`open` (existing ledger) or :meth:`init` (new one, writes genesis).
    ``root_key`` is needed to sign checkpoints; with it, a checkpoint is signed
    automatically whenever ``checkpoint_every`` entries have passed since the last one.
    """

    def __init__(
        self, engine: Engine, url: str, *, root_key: SigningKey | None, checkpoint_every: int
    ) -> None:
        if checkpoint_every < 0:
            raise ConfigError("checkpoint_every must be >= 0 (0 turns automatic checkpoints off)")
        self.engine = engine
        self.url = url
        self.root_key = root_key
        self.checkpoint_every = checkpoint_every
        self._tree = MerkleTree()
        self._tree_lock = threading.RLock()
        #: True while the cache may hold leaves of a transaction not known to be committed.
        self._tree_unconfirmed = False
        self._log_id: str | None = None
        #: Leaf hashes of the entries this process wrote (and signed as root) since the
        #: last checkpoint it verified: the signer does not verify its own root signatures
        #: again (:func:`~veracity.ledger.verify.verify_extension`, ``own``).
        self._own: dict[int, bytes] = {}
        self._own_lock = threading.Lock()
        #: Outgoing log keys this process still holds during a rotation's overlap: they
        #: co-sign checkpoint notes until the identity retires them.
        self.overlap_keys: list[SigningKey] = []

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls, url: str, *, root_key: SigningKey | None = None, checkpoint_every: int = 1000
    ) -> Ledger:
        """Open an existing ledger.

        Raises
        ------
        ConfigError
            If there is no database, no ledger schema at the current revision, or no
            genesis entry, or ``root_key`` is not the ledger's root.
        """
        path = store.sqlite_path(url)
        if path is not None and not path.exists():
            raise ConfigError(f"no ledger database at {path}; run `veracity ledger init`")
        engine = store.create_engine(url)
        try:
            revision = store.current_revision(engine)
        except sa.exc.DatabaseError as err:
            engine.dispose()
            raise ConfigError(f"cannot read the database: {str(err).splitlines()[0]}") from err
        if revision is None:
            engine.dispose()
            raise ConfigError("the database holds no ledger; run `veracity ledger init`")
        if revision != store.head_revision():
            engine.dispose()
            raise ConfigError(
                f"the ledger schema is at {revision}, this version needs "
                f"{store.head_revision()}; run `veracity ledger init` to migrate"
            )
        ledger = cls(engine, url, root_key=root_key, checkpoint_every=checkpoint_every)
        try:
            if root_key is not None:
                genesis = ledger._genesis_body()
                try:
                    enrolled = parse_body(genesis).payload.get("public_key")
                except InputError as err:
                    raise ConfigError(
                        "the genesis entry is unreadable; run `veracity ledger verify`"
                    ) from err
                if enrolled != root_key.public.pem() and root_key.public != ledger.root_public_key:
                    raise ConfigError(
                        "the given key is not this ledger's current log key (another log's, "
                        "or one rotated away)"
                    )
        except BaseException:
            engine.dispose()
            raise
        return ledger

    @classmethod
    def init(
        cls,
        url: str,
        *,
        root_key: SigningKey,
        identity_key: SigningKey | None = None,
        now: datetime | None = None,
        checkpoint_every: int = 1000,
        create: bool = True,
    ) -> Ledger:
        """Create (or migrate) the ledger tables and write genesis if there is none.

        Genesis is the ``key.enrolled`` of the log key ``root_key`` (name ``coordinator``,
        role ``root``), signed by it at position 0; with ``identity_key`` (the offline
        identity, :mod:`veracity.ledger.log_key`) it names that key and carries its
        signature of the log key. Without one, ``root_key`` is its own identity. With
        ``create=False`` a missing genesis is an error (the identity is not at hand).

        Raises
        ------
        ConfigError
            If the ledger already has a genesis for another root key.
        """
        engine = store.create_engine(url)
        try:
            store.upgrade(engine)
        except sa.exc.DatabaseError as err:
            engine.dispose()
            raise ConfigError(f"cannot create the ledger: {str(err).splitlines()[0]}") from err
        ledger = cls(engine, url, root_key=root_key, checkpoint_every=checkpoint_every)
        try:
            with store.write_session(engine) as session:
                row = session.get(store.EntryRow, 0)
                if row is None:
                    if not create:
                        raise ConfigError(
                            "the database holds no ledger, and a new one needs the identity key"
                        )
                    write_genesis(session, root_key, now, identity_key)
                else:
                    genesis = parse_body(bytes(row.body)).payload
                    identity = genesis.get("identity_key", genesis["public_key"])
                    if identity_key is not None and identity != identity_key.public.pem():
                        raise ConfigError("this ledger was created under another identity key")
            if ledger.root_public_key != root_key.public:
                raise ConfigError(
                    "this ledger was created under another root key (or its log key was "
                    "rotated since: use the current log key)"
                )
        except BaseException:
            engine.dispose()
            raise
        return ledger

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _genesis_body(self) -> bytes:
        with store.read_session(self.engine) as session:
            body = session.execute(
                select(store.EntryRow.body).where(store.EntryRow.seq == 0)
            ).scalar_one_or_none()
        if body is None:
            raise ConfigError("the ledger has no genesis entry; run `veracity ledger init`")
        return bytes(body)

    def _genesis(self) -> Entry:
        with store.read_session(self.engine) as session:
            row = session.get(store.EntryRow, 0)
        if row is None:
            raise ConfigError("the ledger has no genesis entry; run `veracity ledger init`")
        return reads.entry_from_row(row)

    @property
    def log_id(self) -> str:
        """The log's id: the genesis entry's leaf hash (hex)."""
        if self._log_id is None:
            self._log_id = leaf_hash(self._genesis_body()).hex()
        return self._log_id

    @property
    def root_public_key(self) -> VerifyKey:
        """The current log key: the one the identity enrolled last (not a trust anchor).

        Read from the key index; verification derives it from the entries instead.
        """
        with store.read_session(self.engine) as session:
            record = KeyView(session).key_at(ROOT_ACTOR, _AFTER_EVERYTHING)
        if record is None:
            raise ConfigError("the ledger has no genesis entry; run `veracity ledger init`")
        return record.key

    @property
    def identity_public_key(self) -> VerifyKey:
        """The identity key genesis names (the log key itself for a log made before the split).

        Not a trust anchor either: auditors pin their own copy (``root.pub``).
        """
        payload = self._genesis().payload
        return VerifyKey.from_pem(payload.get("identity_key", payload["public_key"]))

    def _log_key_history(self, size: int | None = None) -> KeyHistory:
        """The log key's history (genesis, rotations, retirements), checked from the entries.

        Raises
        ------
        LedgerIntegrityError
            If a stored key event of the log key breaks the rules.
        """
        with store.read_session(self.engine) as session:
            events = self._key_events(session, self._size(session) if size is None else size)
        history = KeyHistory(log_id=self.log_id)
        for seq, kind, payload in events:
            if payload.get("name") != ROOT_ACTOR:
                continue
            try:
                history.apply(seq, kind, payload)
            except (InputError, SignatureError, CryptoError) as err:
                raise LedgerIntegrityError(
                    f"invalid key event of the log key: {err}", seq=seq
                ) from err
        return history

    def log_keys(self) -> list[VerifyKey]:
        """Every log key the identity enrolled, oldest first (retired ones included)."""
        return self._log_key_history().log_keys()

    def log_keys_at(self, seq: int) -> list[VerifyKey]:
        """The log keys that may sign at ``seq``: the current one, then any in its overlap."""
        return self._log_key_history().log_keys_at(seq)

    def transaction(self) -> AbstractContextManager[Session]:
        """A session holding the write lock; pass it as ``session=`` to append.

        The caller's own rows and the ledger entries commit together when the block ends
        and roll back together when it raises.
        """
        return store.write_session(self.engine)

    # ------------------------------------------------------------------ appending

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
            The entry's timestamp (default: the current time).

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

    # ------------------------------------------------------------------ checkpoints

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

    # ------------------------------------------------------------------ Merkle cache

    def _synced_tree(
        self, session: Session | Connection, *, upto: int, head_hash: bytes | None = None
    ) -> MerkleTree:
        """The cached tree brought to exactly ``upto`` leaves from ``session``'s view.

        ``head_hash`` (the stored hash of entry ``upto - 1``), when known, saves a query.
        """
        tree = self._tree
        if tree.size > upto:
            tree.truncate(upto)
        if tree.size:
            if head_hash is not None and tree.size == upto:
                stored: bytes | None = head_hash
            else:
                stored = session.execute(
                    select(store.EntryRow.hash).where(store.EntryRow.seq == tree.size - 1)
                ).scalar_one_or_none()
            if stored is None or bytes(stored) != tree.leaf(tree.size - 1):
                tree.truncate(0)
        if tree.size < upto:
            result = session.execute(
                select(store.EntryRow.hash)
                .where(store.EntryRow.seq >= tree.size, store.EntryRow.seq < upto)
                .order_by(store.EntryRow.seq)
                .execution_options(yield_per=65536)
            )
            expected = upto - tree.size
            blob = b"".join(bytes(value) for value in result.scalars())
            if len(blob) != expected * 32:
                raise InputError("the ledger has gaps; run `veracity ledger verify`")
            tree.extend_blob(blob)
        return tree

    @staticmethod
    def _head(connection: Session | Connection) -> tuple[int, bytes | None]:
        """(number of entries, hash of the last one)."""
        return reads.head_of(connection)

    def root(self, size: int | None = None) -> bytes:
        """The Merkle root of the first ``size`` entries (default: all).

        Raises
        ------
        InputError
            If ``size`` exceeds the ledger.
        """
        with store.read_session(self.engine) as session, self._tree_lock:
            current = self._size(session)
            wanted = current if size is None else size
            if not 0 <= wanted <= current:
                raise InputError(f"the ledger has {current} entries, not {wanted}")
            return self._synced_tree(session, upto=current).root(wanted)

    def _point_query(self, raw: Any, statement: str, params: tuple[int, ...]) -> Any:
        """One row (or ``None``) of ``statement`` on the DBAPI connection ``raw``.

        ``statement`` uses ``?`` placeholders (rewritten for PostgreSQL). On SQLite it runs
        on its own (autocommit, one snapshot); on PostgreSQL the pool rolls the connection
        back when it takes it back.
        """
        if self.engine.dialect.paramstyle != "qmark":
            statement = statement.replace("?", "%s")
        cursor = raw.cursor()
        try:
            cursor.execute(statement, params)
            return cursor.fetchone()
        finally:
            cursor.close()

    def _proof_from_cache(self, raw: Any, seq: int, size: int | None) -> InclusionProof | None:
        """The proof served from the tree cache and a point read, when the cache allows.

        The cache holds committed leaves only (``_tree_unconfirmed`` is false) and entries
        are append-only, so any size it covers can be proved from it. Without ``size``, the
        cache must be at the head: one query reads the head and the newest checkpoint, and
        the head's stored hash must be the cached last leaf. ``None`` means "take the
        synchronising path" (which also raises the errors).
        """
        tree = self._tree
        if self._tree_unconfirmed or not tree.size:
            return None
        if size is None:
            head = self._point_query(
                raw,
                "SELECT (SELECT max(tree_size) FROM ledger_checkpoint), seq, hash "
                "FROM ledger_entry ORDER BY seq DESC LIMIT 1",
                (),
            )
            if head is None or head[1] + 1 != tree.size or bytes(head[2]) != tree.leaf(head[1]):
                return None
            latest = head[0]
            size = latest if latest is not None and latest > seq else tree.size
        if not 0 <= seq < size <= tree.size:
            return None
        row = self._point_query(raw, "SELECT body FROM ledger_entry WHERE seq = ?", (seq,))
        if row is None:
            return None
        return InclusionProof(
            log_id=self.log_id,
            seq=seq,
            tree_size=size,
            entry=bytes(row[0]),
            proof=tuple(tree.inclusion_proof(seq, size)),
        )

    def inclusion_proof(self, seq: int, size: int | None = None) -> InclusionProof:
        """Prove entry ``seq`` is in the tree of ``size`` entries.

        ``size`` defaults to the newest checkpoint that covers ``seq`` (so the proof can
        be checked against a signed root), else the current size. Served from the in-memory
        tree cache with one point read of the entry when the cache is current (about 0.1
        ms at 10^6 entries); otherwise the cache is first brought up to date.

        Raises
        ------
        InputError
            If ``seq`` is not below ``size`` or ``size`` exceeds the ledger.
        """
        raw = self.engine.raw_connection()  # taken before the lock, as everywhere here
        try:
            with self._tree_lock:
                cached = self._proof_from_cache(raw, seq, size)
        finally:
            raw.close()
        if cached is not None:
            return cached
        with self.engine.connect() as connection, self._tree_lock:
            current, head_hash = self._head(connection)
            if size is None:
                latest = connection.execute(
                    select(func.max(store.CheckpointRow.tree_size))
                ).scalar_one_or_none()
                size = latest if latest is not None and latest > seq else current
            if not 0 <= seq < size <= current:
                raise InputError(f"no entry {seq} in a tree of size {size} (ledger has {current})")
            tree = self._synced_tree(connection, upto=current, head_hash=head_hash)
            self._tree_unconfirmed = False  # synced against committed rows
            body = connection.execute(
                select(store.EntryRow.body).where(store.EntryRow.seq == seq)
            ).scalar_one()
            connection.rollback()
            return InclusionProof(
                log_id=self.log_id,
                seq=seq,
                tree_size=size,
                entry=bytes(body),
                proof=tuple(tree.inclusion_proof(seq, size)),
            )

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> ConsistencyProof:
        """Prove the tree of ``new_size`` entries (default: all) extends ``old_size``.

        Raises
        ------
        InputError
            If the sizes are not ``0 < old_size <= new_size <= size()``.
        """
        with store.read_session(self.engine) as session, self._tree_lock:
            current = self._size(session)
            new = current if new_size is None else new_size
            if not 0 < old_size <= new <= current:
                raise InputError(
                    f"no consistency proof from {old_size} to {new} (ledger has {current})"
                )
            tree = self._synced_tree(session, upto=current)
            return ConsistencyProof(
                log_id=self.log_id,
                old_size=old_size,
                new_size=new,
                proof=tuple(tree.consistency_proof(old_size, new)),
            )

    # ------------------------------------------------------------------ reading
    @staticmethod
    def _size(session: Session) -> int:
        return reads.size_of(session)

    def size(self) -> int:
        """Number of entries (genesis included)."""
        with store.read_session(self.engine) as session:
            return self._size(session)

    def get(self, seq: int) -> Entry:
        """The entry at ``seq``.

        Raises
        ------
        InputError
            If there is no such entry.
        """
        with store.read_session(self.engine) as session:
            row = session.get(store.EntryRow, seq)
        if row is None:
            raise NotFound(f"no entry {seq} in the ledger")
        return reads.entry_from_row(row)

    def iter_entries(
        self,
        *,
        since: int = 0,
        kind: str | None = None,
        actor: str | None = None,
        limit: int | None = None,
    ) -> Iterator[Entry]:
        """Like :meth:`entries`, streaming."""
        query = select(store.EntryRow.body).where(store.EntryRow.seq >= since)
        if kind is not None:
            query = query.where(store.EntryRow.kind == kind)
        if actor is not None:
            query = query.where(store.EntryRow.actor == actor)
        query = query.order_by(store.EntryRow.seq)
        if limit is not None:
            query = query.limit(limit)
        with store.read_session(self.engine) as session:
            result = session.execute(query.execution_options(yield_per=2048))
            try:
                for body in result.scalars():
                    yield parse_body(bytes(body))
            finally:
                result.close()

    def key_at(self, name: str, seq: int | None = None) -> KeyRecord | None:
        """The key ``name`` holds for signing entry ``seq`` (default: the next entry)."""
        with store.read_session(self.engine) as session:
            where = self._size(session) if seq is None else seq
            return KeyView(session).key_at(name, where)

    def key_history(self, name: str) -> list[tuple[int, str, str]]:
        """Every key event of ``name``: (seq, ``enrolled``/``revoked``, key id)."""
        with store.read_session(self.engine) as session:
            rows = session.execute(
                select(store.KeyEventRow)
                .where(store.KeyEventRow.name == name)
                .order_by(store.KeyEventRow.seq)
            ).scalars()
            return [(row.seq, row.action, row.key_id) for row in rows]

    def checkpoints(self) -> list[Checkpoint]:
        """Every signed checkpoint, oldest first."""
        with store.read_session(self.engine) as session:
            return reads.stored_checkpoints(session)

    def latest_checkpoint(self) -> Checkpoint | None:
        """The newest signed checkpoint, if any."""
        with store.read_session(self.engine) as session:
            return reads.newest_checkpoint(session)

    def _key_events(self, session: Session, size: int) -> list[KeyEvent]:
        return reads.key_events(session, size)

    def _key_events_for_verify(self) -> list[KeyEvent]:
        """The key index verification starts from (tests and tools)."""
        with store.read_session(self.engine) as session:
            return self._key_events(session, self._size(session))

    # ------------------------------------------------------------------ verify, export

    def verify(
        self,
        trusted_root: VerifyKey,
        *,
        known_checkpoints: Sequence[Checkpoint] = (),
        root_signatures: RootSignatures = "all",
        workers: int | None = None,
    ) -> VerifyReport:
        """Recompute and check everything (see :mod:`veracity.ledger.verify`).

        Parameters
        ----------
        trusted_root
            The auditor's pinned root public key (not the one the ledger names).
        known_checkpoints
            Checkpoints the auditor saw before; the ledger must extend each of them.
        root_signatures
            ``"all"`` checks every entry's signature; ``"tail"`` skips the root's own
            per-entry signatures below the newest checkpoint (which already commits to
            them) and still checks every site signature and receipt.
        workers
            Processes for the entry checks (default: one per CPU for large ledgers).

        Raises
        ------
        LedgerIntegrityError
            Naming the first bad seq (where determinable) and what was wrong.
        """
        with store.read_session(self.engine) as session:
            size = self._size(session)
            events = self._key_events(session, size)
            listed = reads.stored_checkpoints(session)
            genesis = session.execute(
                select(store.EntryRow.body).where(store.EntryRow.seq == 0)
            ).scalar_one_or_none()
        # (A missing genesis is reported by the checks of entry 0.)
        genesis_id = NO_LOG_ID if genesis is None else leaf_hash(bytes(genesis))
        return verify_database(
            self.url,
            size=size,
            trusted_root=trusted_root,
            key_events=events,
            checkpoints=listed,
            known_checkpoints=known_checkpoints,
            root_signatures=root_signatures,
            workers=workers,
            log_id=genesis_id,
        )

    def export_bundle(self, path: Path) -> dict[str, Any]:
        """Write every entry, checkpoint and key event into one offline-verifiable file.

        The file appears atomically (written beside it, then renamed).

        Returns
        -------
        dict
            ``{"path", "entries", "checkpoints", "bytes", "sha256"}``.
        """
        from veracity.ledger.bundle_export import export_bundle

        return export_bundle(self.engine, path, log_id=self.log_id, notes=self._bundle_notes)

    def _bundle_notes(self, sizes: Sequence[int]) -> list[str]:
        """The newest two checkpoints as signed notes with their cosignatures (rendered)."""
        from veracity.ledger.witnessed import WitnessedLog

        log = WitnessedLog(self)
        notes = (log.stored_note(size) for size in sizes[-2:])
        return [note.render() for note in notes if note is not None]

    def provenance(self, model_hash: str) -> dict[str, Any]:
        """W3C PROV-JSON of one model's lineage, derived from the entries.

        Raises
        ------
        InputError
            If no entry mentions the model.
        """
        from veracity.ledger.provenance import build_provenance

        return build_provenance(self, model_hash)
