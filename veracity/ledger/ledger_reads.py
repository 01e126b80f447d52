"""The ledger's shared state, its identity and log keys, and its read queries.

:class:`LedgerReads` is the base of :class:`~veracity.ledger.ledger.Ledger`: it holds what
the other parts share (the engine, the root key, the Merkle cache, the entries this process
signed), reads genesis, the log id and the log key's history, and answers the read queries
(:mod:`.reads` has the SQL).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Self

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from veracity.contracts.events import ROOT_ACTOR
from veracity.crypto.keys import SigningKey, VerifyKey
from veracity.errors import (
    ConfigError,
    CryptoError,
    InputError,
    LedgerIntegrityError,
    NotFound,
    SignatureError,
)
from veracity.ledger import reads, store
from veracity.ledger.checkpoint import Checkpoint
from veracity.ledger.entry import Entry, parse_body
from veracity.ledger.keyring import KeyHistory, KeyRecord
from veracity.ledger.keyview import KeyView
from veracity.ledger.merkle import MerkleTree, leaf_hash
from veracity.ledger.reader import EntryReader
from veracity.ledger.verify import KeyEvent

__all__ = ["LedgerReads"]

#: A seq after every entry (the key index lookup of "now").
_AFTER_EVERYTHING = 2**62


class LedgerReads(EntryReader):
    """A ledger's state and read queries (the base of :class:`~veracity.ledger.ledger.Ledger`).

    Raises ``ConfigError`` on construction if ``checkpoint_every`` is negative.
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

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    def __enter__(self) -> Self:
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
