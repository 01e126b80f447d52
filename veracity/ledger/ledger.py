"""The :class:`Ledger` facade: append, checkpoint, read, prove, verify, export, provenance.

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

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from veracity.contracts.events import (
    KEY_KINDS,
    RECEIPT_DOMAINS,
    ROOT_ACTOR,
    SITE_KINDS,
    Role,
    allowed_roles,
    validate_actor_name,
    validate_payload,
)
from veracity.core.fields import format_timestamp
from veracity.crypto.keys import SigningKey, VerifyKey
from veracity.errors import (
    ConfigError,
    Conflict,
    CryptoError,
    InputError,
    LedgerIntegrityError,
    NotFound,
    ProofError,
    SignatureError,
    VeracityError,
)
from veracity.ledger import store
from veracity.ledger.checkpoint import Checkpoint, sign_checkpoint
from veracity.ledger.entry import (
    GENESIS_PREV,
    NO_LOG_ID,
    Entry,
    build_body,
    entry_message,
    parse_body,
    statement_bytes,
    statement_message,
)
from veracity.ledger.keyring import KeyRecord, check_key_event
from veracity.ledger.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from veracity.ledger.statement import (
    decode_signature,
    encode_signature,
    verify_document,
)
from veracity.ledger.verify import (
    MAX_ENTRY_BYTES,
    KeyEvent,
    RootSignatures,
    VerifyReport,
    verify_database,
    verify_extension,
)

__all__ = ["Ledger", "EventRequest", "InclusionProof", "ConsistencyProof"]

log = logging.getLogger(__name__)
_CHECKPOINT_AFTER_COMMIT = "veracity.ledger.checkpoint_after_commit"
#: The most entries whose leaf hashes :attr:`Ledger._own` remembers (about 120 bytes each).
_OWN_LIMIT = 1 << 18
_CHECKPOINT_HOOKED = "veracity.ledger.checkpoint_hooked"


@dataclass(frozen=True)
class EventRequest:
    """One event to append: exactly one of ``signer`` or ``signature`` must be given."""

    kind: str
    actor: str
    payload: dict[str, Any]
    signer: SigningKey | None = None
    signature: str | None = None


@dataclass(frozen=True)
class InclusionProof:
    """RFC 9162 inclusion proof of entry ``seq`` in the tree of ``tree_size`` leaves."""

    log_id: str
    seq: int
    tree_size: int
    entry: bytes
    proof: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (hashes in hex, the entry bytes as UTF-8 text)."""
        return {
            "type": "inclusion",
            "log_id": self.log_id,
            "seq": self.seq,
            "tree_size": self.tree_size,
            "leaf_hash": leaf_hash(self.entry).hex(),
            "entry": self.entry.decode("utf-8"),
            "proof": [item.hex() for item in self.proof],
        }

    @classmethod
    def from_json(cls, document: Any) -> InclusionProof:
        """Parse :meth:`to_json` output.

        Raises
        ------
        InputError
            If the document is not an inclusion proof.
        """
        try:
            if document["type"] != "inclusion":
                raise InputError("not an inclusion proof")
            proof = cls(
                log_id=str(document["log_id"]),
                seq=int(document["seq"]),
                tree_size=int(document["tree_size"]),
                entry=str(document["entry"]).encode("utf-8"),
                proof=tuple(bytes.fromhex(item) for item in document["proof"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"malformed inclusion proof: {err}") from err
        if document.get("leaf_hash") not in (None, leaf_hash(proof.entry).hex()):
            raise InputError("inclusion proof's leaf_hash is not the hash of its entry")
        return proof

    def verify(self, checkpoint: Checkpoint, trusted_root: VerifyKey) -> None:
        """Check the proof against a checkpoint signed by ``trusted_root``.

        The tree size comes from the signed checkpoint, never from the proof alone.

        Raises
        ------
        SignatureError
            If the checkpoint is not signed by ``trusted_root``.
        ProofError
            If the proof is for another log or size, or does not lead to the root.
        """
        checkpoint.verify(trusted_root)
        if checkpoint.log_id != self.log_id:
            raise ProofError("the proof and the checkpoint belong to different logs")
        if checkpoint.tree_size != self.tree_size:
            raise ProofError(
                f"the proof is for tree size {self.tree_size} but the checkpoint is for "
                f"{checkpoint.tree_size}"
            )
        try:
            entry = parse_body(self.entry)
        except InputError as err:
            raise ProofError(f"the proved entry is malformed: {err}") from err
        if entry.seq != self.seq:
            raise ProofError(f"the proved entry is seq {entry.seq}, not {self.seq}")
        verify_inclusion(
            leaf_hash(self.entry),
            self.seq,
            self.tree_size,
            list(self.proof),
            bytes.fromhex(checkpoint.root_hash),
        )


@dataclass(frozen=True)
class ConsistencyProof:
    """RFC 9162 consistency proof that the tree of ``new_size`` extends ``old_size``."""

    log_id: str
    old_size: int
    new_size: int
    proof: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (hashes in hex)."""
        return {
            "type": "consistency",
            "log_id": self.log_id,
            "old_size": self.old_size,
            "new_size": self.new_size,
            "proof": [item.hex() for item in self.proof],
        }

    def verify(self, old: Checkpoint, new: Checkpoint, trusted_root: VerifyKey) -> None:
        """Check the proof between two checkpoints signed by ``trusted_root``.

        Raises
        ------
        SignatureError
            If either checkpoint is not signed by ``trusted_root``.
        ProofError
            If the sizes or logs do not match or the trees diverge.
        """
        old.verify(trusted_root)
        new.verify(trusted_root)
        if {old.log_id, new.log_id} != {self.log_id}:
            raise ProofError("the proof and the checkpoints belong to different logs")
        if (old.tree_size, new.tree_size) != (self.old_size, self.new_size):
            raise ProofError("the proof is for other tree sizes than the checkpoints")
        verify_consistency(
            self.old_size,
            self.new_size,
            list(self.proof),
            bytes.fromhex(old.root_hash),
            bytes.fromhex(new.root_hash),
        )


@dataclass
class _Prepared:
    request: EventRequest
    statement: bytes
    #: The actor's statement signature (``None`` for the root's own entries, which are
    #: signed at their position under the write lock).
    signature: str | None


def _readable(body: bytes, request: EventRequest) -> None:
    """Refuse an entry whose bytes would not read back as the event (never write those).

    Raises
    ------
    InputError
        If the bytes do not decode, or decode to a payload its schema refuses.
    """
    if len(body) > MAX_ENTRY_BYTES:
        raise InputError(
            f"{request.kind} would take {len(body)} bytes; an entry holds at most {MAX_ENTRY_BYTES}"
        )
    try:
        entry = parse_body(body)
    except InputError as err:
        raise InputError(f"{request.kind} would be stored as unreadable bytes: {err}") from err
    if entry.payload != request.payload:
        validate_payload(entry.kind, entry.payload, actor=entry.actor)


def _entry_from_row(row: Any) -> Entry:
    return parse_body(bytes(row.body))


def _checkpoint_from_row(row: store.CheckpointRow) -> Checkpoint:
    return Checkpoint(
        log_id=row.log_id,
        tree_size=row.tree_size,
        root_hash=bytes(row.root_hash).hex(),
        timestamp=row.timestamp,
        signature=row.signature,
    )


class _KeyView:
    """Key lookups while appending: the key index plus the batch's own key events."""

    def __init__(self, session: Session, *, head: int | None = None) -> None:
        self._session = session
        self._pending: dict[str, list[tuple[int, KeyRecord | None]]] = {}
        self._pending_holders: dict[str, str] = {}
        #: Stored key state per name for seqs after ``head`` (fixed while the lock is held).
        self._head = head
        self._stored: dict[str, KeyRecord | None] = {}

    def key_at(self, name: str, seq: int) -> KeyRecord | None:
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
        if key_id in self._pending_holders:
            return self._pending_holders[key_id]
        return self._session.execute(
            select(store.KeyEventRow.name)
            .where(store.KeyEventRow.key_id == key_id, store.KeyEventRow.action != "revoked")
            .limit(1)
        ).scalar_one_or_none()

    def record(self, seq: int, name: str, record: KeyRecord | None) -> None:
        self._pending.setdefault(name, []).append((seq, record))
        if record is not None:
            self._pending_holders[record.key_id] = name


class Ledger:
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
                if enrolled != root_key.public.pem():
                    raise ConfigError("the given root key is not this ledger's root key")
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
        now: datetime | None = None,
        checkpoint_every: int = 1000,
    ) -> Ledger:
        """Create (or migrate) the ledger tables and write genesis if there is none.

        Genesis is the root's own ``key.enrolled`` entry (name ``coordinator``, role
        ``root``), signed by the root key.

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
                    ledger._write_genesis(session, root_key, now)
                elif parse_body(bytes(row.body)).payload["public_key"] != root_key.public.pem():
                    raise ConfigError("this ledger was created under another root key")
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

    def _write_genesis(self, session: Session, root_key: SigningKey, now: datetime | None) -> None:
        ts = format_timestamp(now)
        payload = {
            "name": ROOT_ACTOR,
            "role": Role.ROOT.value,
            "public_key": root_key.public.pem(),
            "valid_from": ts,
        }
        statement = statement_bytes("key.enrolled", ROOT_ACTOR, payload)
        message = entry_message(NO_LOG_ID, 0, bytes(32), ts, statement)
        signature = encode_signature(root_key.sign(message))
        body = build_body(statement, prev=GENESIS_PREV, seq=0, signature=signature, ts=ts)
        session.execute(
            insert(store.EntryRow),
            [
                {
                    "seq": 0,
                    "ts": ts,
                    "kind": "key.enrolled",
                    "actor": ROOT_ACTOR,
                    "prev_seq": None,
                    "prev": bytes(32),
                    "hash": leaf_hash(body),
                    "body": body,
                }
            ],
        )
        session.execute(
            insert(store.KeyEventRow),
            [
                {
                    "seq": 0,
                    "name": ROOT_ACTOR,
                    "action": "enrolled",
                    "role": Role.ROOT.value,
                    "key_id": root_key.public.key_id,
                    "public_key": payload["public_key"],
                }
            ],
        )

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
        return _entry_from_row(row)

    @property
    def log_id(self) -> str:
        """The log's id: the genesis entry's leaf hash (hex)."""
        if self._log_id is None:
            self._log_id = leaf_hash(self._genesis_body()).hex()
        return self._log_id

    @property
    def root_public_key(self) -> VerifyKey:
        """The root key this ledger's genesis enrols (not a trust anchor: pin your own)."""
        return VerifyKey.from_pem(self._genesis().payload["public_key"])

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
        prepared = [self._prepare(request) for request in requests]
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

    def _prepare(self, request: EventRequest) -> _Prepared:
        validate_actor_name(request.actor)
        validate_payload(request.kind, request.payload, actor=request.actor)
        if (request.signer is None) == (request.signature is None):
            raise SignatureError("give exactly one of signer= or signature=")
        statement = statement_bytes(request.kind, request.actor, request.payload)
        signature: str | None = None
        if request.actor == ROOT_ACTOR:
            if request.signer is None:
                raise SignatureError(
                    "the root's entries are signed at their position when appended: pass signer="
                )
        elif request.signer is not None:
            signature = encode_signature(request.signer.sign(statement_message(statement)))
        elif request.signature is not None:
            signature = request.signature
            decode_signature(signature)
        return _Prepared(request=request, statement=statement, signature=signature)

    def _log_id_bytes(self) -> bytes:
        return bytes.fromhex(self.log_id)

    def _position_signatures(
        self, item: _Prepared, *, log_id: bytes, seq: int, prev: bytes, ts: str
    ) -> tuple[str, str | None]:
        """``(signature, root_signature)`` of ``item`` at ``seq`` (see :mod:`.entry`).

        Raises
        ------
        ConfigError
            If another actor's statement is to be countersigned without the root key.
        """
        request = item.request
        if item.signature is None:
            if request.signer is None:  # pragma: no cover - _prepare refused it
                raise SignatureError("the root's entries need signer=")
            message = entry_message(log_id, seq, prev, ts, item.statement)
            return encode_signature(request.signer.sign(message)), None
        if self.root_key is None:
            raise ConfigError(
                f"recording {request.actor!r}'s statement needs the root key (root.pem) to "
                "countersign it at its position"
            )
        raw = decode_signature(item.signature)
        message = entry_message(log_id, seq, prev, ts, item.statement, raw)
        return item.signature, encode_signature(self.root_key.sign(message))

    def _check_event(self, keys: _KeyView, seq: int, item: _Prepared) -> KeyRecord | None:
        """Every check that needs the ledger's state; returns the key change, if any."""
        request = item.request
        record = keys.key_at(request.actor, seq)
        if record is None:
            raise SignatureError(
                f"{request.actor!r} holds no enrolled key (never enrolled, or revoked)"
            )
        roles = allowed_roles(request.kind)
        if roles is not None and record.role not in roles:
            raise SignatureError(f"a {record.role.value} key may not record {request.kind}")
        if request.signer is not None:
            if request.signer.public != record.key:
                raise SignatureError(f"the signer is not the key enrolled for {request.actor!r}")
        elif item.signature is not None:
            record.key.verify(decode_signature(item.signature), statement_message(item.statement))
        payload = request.payload
        domain = RECEIPT_DOMAINS.get(request.kind)
        if domain is not None:
            for signed in payload["receipts"]:
                site = signed["receipt"]["site"]
                site_record = keys.key_at(site, seq)
                if site_record is None or site_record.role is not Role.SITE:
                    raise SignatureError(f"receipt of {site!r}: the site holds no enrolled key")
                try:
                    verify_document(site_record.key, domain, signed["receipt"], signed["signature"])
                except SignatureError as err:
                    raise SignatureError(f"receipt of {site!r} is not signed by its key") from err
        if request.kind in KEY_KINDS:
            name = payload["name"]
            try:
                return check_key_event(
                    request.kind,
                    payload,
                    seq=seq,
                    log_id=self.log_id,
                    current=keys.key_at(name, seq + 1),
                    last=keys.last_record(name, seq + 1),
                    holder_of=keys.holder_of,
                )
            except CryptoError as err:  # pragma: no cover - the schema checked the key
                raise InputError(str(err)) from err
        return None

    def _append_locked(
        self, session: Session, prepared: list[_Prepared], ts: str
    ) -> tuple[list[Entry], bool]:
        """Write the events at the head; returns them and whether a checkpoint is due."""
        head = session.execute(
            select(store.EntryRow.seq, store.EntryRow.hash)
            .order_by(store.EntryRow.seq.desc())
            .limit(1)
        ).first()
        if head is None:
            raise ConfigError("the ledger has no genesis entry; run `veracity ledger init`")
        seq, prev = head.seq + 1, bytes(head.hash)
        last_checkpoint = session.scalar(select(func.max(store.CheckpointRow.tree_size))) or 0
        keys = _KeyView(session, head=head.seq)
        log_id = self._log_id_bytes()
        entry_rows: list[dict[str, Any]] = []
        key_rows: list[dict[str, Any]] = []
        statement_rows: dict[bytes, int] = {}
        entries: list[Entry] = []
        for item in prepared:
            change = self._check_event(keys, seq, item)
            request = item.request
            signature, root_signature = self._position_signatures(
                item, log_id=log_id, seq=seq, prev=prev, ts=ts
            )
            body = build_body(
                item.statement,
                prev=prev.hex(),
                seq=seq,
                signature=signature,
                ts=ts,
                root_signature=root_signature,
            )
            _readable(body, request)
            digest = leaf_hash(body)
            entry_rows.append(
                {
                    "seq": seq,
                    "ts": ts,
                    "kind": request.kind,
                    "actor": request.actor,
                    "prev_seq": seq - 1,
                    "prev": prev,
                    "hash": digest,
                    "body": body,
                }
            )
            entries.append(
                Entry(
                    seq=seq,
                    ts=ts,
                    kind=request.kind,
                    actor=request.actor,
                    payload=request.payload,
                    prev=prev.hex(),
                    signature=signature,
                    body=body,
                    root_signature=root_signature,
                )
            )
            if request.kind in KEY_KINDS:
                payload = request.payload
                keys.record(seq, payload["name"], change)
                key_rows.append(
                    {
                        "seq": seq,
                        "name": payload["name"],
                        "action": request.kind.removeprefix("key."),
                        "role": change.role.value if change is not None else None,
                        "key_id": change.key_id if change is not None else payload["key_id"],
                        "public_key": payload["public_key"] if change is not None else None,
                    }
                )
            if request.kind in SITE_KINDS:
                statement_digest = hashlib.sha256(item.statement).digest()
                if statement_digest in statement_rows:
                    raise InputError("this signed statement appears twice in the batch")
                statement_rows[statement_digest] = seq
            seq, prev = seq + 1, digest
        if statement_rows:
            already = session.execute(
                select(store.SiteStatementRow.seq).where(
                    store.SiteStatementRow.digest.in_(list(statement_rows))
                )
            ).first()
            if already is not None:
                raise Conflict(f"this signed statement is already recorded at seq {already.seq}")
        session.execute(insert(store.EntryRow), entry_rows)
        if statement_rows:
            session.execute(
                insert(store.SiteStatementRow),
                [{"digest": d, "seq": s} for d, s in statement_rows.items()],
            )
        if key_rows:
            session.execute(insert(store.KeyEventRow), key_rows)
        session.flush()
        if self.root_key is not None:
            mine = self.root_key.public
            self._remember_own(
                (row["seq"], row["hash"])
                for row, item in zip(entry_rows, prepared, strict=True)
                if item.signature is not None  # countersigned with self.root_key
                or (item.request.signer is not None and item.request.signer.public == mine)
            )
        due = (
            self.root_key is not None
            and self.checkpoint_every > 0
            and seq - last_checkpoint >= self.checkpoint_every
        )
        return entries, due

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
        signed = self.sign_checkpoint(now=now)
        with store.write_session(self.engine) as session:
            entry = self.record_checkpoint(session, signed)
            if on_record is not None:
                on_record(session, entry)
        return signed, entry

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
        size, root = self._verified_head(self.root_key.public)
        return sign_checkpoint(
            self.root_key,
            log_id=self.log_id,
            tree_size=size,
            root_hash=root.hex(),
            timestamp=format_timestamp(now),
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

    def _verified_head(self, trusted: VerifyKey) -> tuple[int, bytes]:
        """Step 1 of :meth:`checkpoint_entry`: the committed size and its verified root."""
        with store.read_session(self.engine) as session, self._tree_lock:
            size = self._size(session)
            row = session.execute(
                select(store.CheckpointRow).order_by(store.CheckpointRow.tree_size.desc()).limit(1)
            ).scalar_one_or_none()
            start = 0
            last = None if row is None else _checkpoint_from_row(row)
            if last is not None:
                try:
                    last.verify(trusted)
                except SignatureError as err:
                    raise LedgerIntegrityError(
                        f"the newest stored checkpoint (size {last.tree_size}) is not signed by "
                        "this root key; run `veracity ledger verify`"
                    ) from err
                if last.log_id != self.log_id or last.tree_size > size:
                    raise LedgerIntegrityError(
                        f"the newest stored checkpoint (size {last.tree_size}) is not of this "
                        "log's committed entries; run `veracity ledger verify`"
                    )
                start = last.tree_size
            self._tree_unconfirmed = True
            tree = self._synced_tree(session, upto=start)
            if last is not None and tree.root(start).hex() != last.root_hash:
                raise LedgerIntegrityError(
                    f"the stored hashes of entries 0..{start - 1} do not lead to the root the "
                    "newest checkpoint signed; run `veracity ledger verify`"
                )
            events: list[KeyEvent] = []
            for seq, body in session.execute(
                select(store.EntryRow.seq, store.EntryRow.body)
                .where(store.EntryRow.kind.in_(KEY_KINDS), store.EntryRow.seq < size)
                .order_by(store.EntryRow.seq)
            ):
                body = bytes(body)
                if seq < start and leaf_hash(body) != tree.leaf(seq):
                    raise LedgerIntegrityError(
                        "this key event is not the entry the newest checkpoint signed", seq=seq
                    )
                try:
                    entry = parse_body(body)
                except InputError as err:
                    raise LedgerIntegrityError(f"unreadable key event: {err}", seq=seq) from err
                events.append((int(seq), entry.kind, entry.payload))
            result = session.execute(
                select(
                    store.EntryRow.seq,
                    store.EntryRow.hash,
                    store.EntryRow.prev_seq,
                    store.EntryRow.prev,
                    store.EntryRow.kind,
                    store.EntryRow.actor,
                    store.EntryRow.ts,
                    store.EntryRow.body,
                )
                .where(store.EntryRow.seq >= start, store.EntryRow.seq < size)
                .order_by(store.EntryRow.seq)
                .execution_options(yield_per=4096)
            )
            try:
                leaves = verify_extension(
                    (
                        (seq, bytes(digest), prev_seq, bytes(prev), kind, actor, ts, bytes(body))
                        for seq, digest, prev_seq, prev, kind, actor, ts, body in result
                    ),
                    start=start,
                    end=size,
                    prev_hash=tree.leaf(start - 1) if start else None,
                    trusted_root=trusted,
                    key_events=events,
                    log_id=self._log_id_bytes(),
                    own=self._own_since(start, size),
                )
            finally:
                result.close()
            tree.extend_blob(leaves)
            self._tree_unconfirmed = False  # every leaf is a committed entry's
            return size, tree.root(size)

    def _record_checkpoint(self, session: Session, signed: Checkpoint, key: SigningKey) -> Entry:
        """Step 3 of :meth:`checkpoint_entry`: the ``checkpoint`` entry at the head."""
        head = session.execute(
            select(store.EntryRow.seq, store.EntryRow.hash)
            .order_by(store.EntryRow.seq.desc())
            .limit(1)
        ).first()
        if head is None:
            raise ConfigError("the ledger has no genesis entry; run `veracity ledger init`")
        existing = session.get(store.CheckpointRow, signed.tree_size)
        if existing is not None:
            # Another signer recorded this size first; its checkpoint has the same root.
            for entry in self.iter_entries(since=signed.tree_size, kind="checkpoint"):
                if entry.payload["tree_size"] == signed.tree_size:
                    return entry
            raise LedgerIntegrityError(
                f"the checkpoint of size {signed.tree_size} has no checkpoint entry"
            )
        seq, prev = head.seq + 1, bytes(head.hash)
        payload = {
            "tree_size": signed.tree_size,
            "root_hash": signed.root_hash,
            "log_id": signed.log_id,
            "signature": signed.signature,
        }
        item = self._prepare(EventRequest("checkpoint", ROOT_ACTOR, payload, signer=key))
        self._check_event(_KeyView(session, head=head.seq), seq, item)
        ts = signed.timestamp  # the entry's ts is the signed timestamp
        signature, _ = self._position_signatures(
            item, log_id=self._log_id_bytes(), seq=seq, prev=prev, ts=ts
        )
        body = build_body(item.statement, prev=prev.hex(), seq=seq, signature=signature, ts=ts)
        session.execute(
            insert(store.EntryRow),
            [
                {
                    "seq": seq,
                    "ts": ts,
                    "kind": "checkpoint",
                    "actor": ROOT_ACTOR,
                    "prev_seq": seq - 1,
                    "prev": prev,
                    "hash": leaf_hash(body),
                    "body": body,
                }
            ],
        )
        session.execute(
            insert(store.CheckpointRow),
            [
                {
                    "tree_size": signed.tree_size,
                    "root_hash": bytes.fromhex(signed.root_hash),
                    "timestamp": signed.timestamp,
                    "log_id": signed.log_id,
                    "signature": signed.signature,
                }
            ],
        )
        session.flush()
        return Entry(
            seq=seq,
            ts=ts,
            kind="checkpoint",
            actor=ROOT_ACTOR,
            payload=payload,
            prev=prev.hex(),
            signature=signature,
            body=body,
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
        head = connection.execute(
            select(store.EntryRow.seq, store.EntryRow.hash)
            .order_by(store.EntryRow.seq.desc())
            .limit(1)
        ).first()
        if head is None:
            return 0, None
        return int(head.seq) + 1, bytes(head.hash)

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
        top = session.scalar(select(func.max(store.EntryRow.seq)))
        return 0 if top is None else int(top) + 1

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
        return _entry_from_row(row)

    def entries(
        self,
        *,
        since: int = 0,
        kind: str | None = None,
        actor: str | None = None,
        limit: int | None = None,
    ) -> list[Entry]:
        """Entries with ``seq >= since`` in order, optionally of one kind or actor."""
        return list(self.iter_entries(since=since, kind=kind, actor=actor, limit=limit))

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
            return _KeyView(session).key_at(name, where)

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
            rows = session.execute(
                select(store.CheckpointRow).order_by(store.CheckpointRow.tree_size)
            ).scalars()
            return [_checkpoint_from_row(row) for row in rows]

    def latest_checkpoint(self) -> Checkpoint | None:
        """The newest signed checkpoint, if any."""
        with store.read_session(self.engine) as session:
            row = session.execute(
                select(store.CheckpointRow).order_by(store.CheckpointRow.tree_size.desc()).limit(1)
            ).scalar_one_or_none()
            return None if row is None else _checkpoint_from_row(row)

    def _key_events(self, session: Session, size: int) -> list[KeyEvent]:
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
            listed = [
                _checkpoint_from_row(row)
                for row in session.execute(
                    select(store.CheckpointRow).order_by(store.CheckpointRow.tree_size)
                ).scalars()
            ]
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
        from veracity.ledger.bundle import write_bundle

        with store.read_session(self.engine) as session:
            size = self._size(session)
            events = self._key_events(session, size)
            listed = [
                _checkpoint_from_row(row)
                for row in session.execute(
                    select(store.CheckpointRow).order_by(store.CheckpointRow.tree_size)
                ).scalars()
            ]
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
                log_id=self.log_id,
                size=size,
                bodies=bodies,
                checkpoints=listed,
                key_events=events,
                notes=self._bundle_notes([c.tree_size for c in listed]),
            )

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
