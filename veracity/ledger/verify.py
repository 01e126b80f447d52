"""Offline verification: recompute everything from the entry bytes and the pinned root key.

What is checked, for every entry ``seq``:

* the stored leaf hash is ``SHA-256(0x00 || bytes)`` and the bytes are RFC 8785 canonical
  JSON of exactly ``{actor, kind, payload, prev, seq, signature, ts}``;
* ``seq`` is contiguous from 0 and ``prev`` is the previous entry's leaf hash (64 zeros for
  genesis); the stored columns (``prev``, ``prev_seq``, ``kind``, ``actor``, ``ts``) agree
  with the bytes;
* the payload passes its kind's schema;
* the actor holds an enrolled key at ``seq`` (key history replayed from the ``key.*``
  entries), its role may record this kind, and the statement signature verifies under it;
  genesis must enrol the *trusted* root key and be signed by it;
* every receipt inside ``round.completed`` is signed by the named site's enrolled key;
* every checkpoint (recorded entries, the checkpoint list, and any the auditor pins) is
  signed by the trusted root, names this log, matches the recomputed tree, and each
  consecutive pair is proved consistent; a checkpoint beyond the end of the ledger means
  entries were cut; site cosignatures verify and match the tree.

The entries are checked in chunks that run in parallel processes when the ledger is large
(Ed25519 verification dominates: about 55 us per signature through libsodium here, see
:mod:`veracity.crypto.keys`). The key history is read first from the ``key.*`` entries (an
index), each chunk looks keys up in it, and afterwards the key events the chunks actually
found must be exactly that index. SQLite chunks are read with the standard library's
``sqlite3``; the main process hashes the Merkle tree as the chunks arrive.

Each row takes a fast path when its kind has an entry template
(:mod:`veracity.ledger.templates`: one regular expression that proves the bytes canonical
and the payload valid for the frequent kinds, about 2 us instead of about 12 us for
decoding, re-encoding and schema validation) and every check passes on the template's
reading. Any other row, and any row where some check fails, is checked by the reference
code, which gives every failure and its message; so the fast path changes no outcome.

With ``root_signatures="tail"`` the per-entry signatures of the *root's own* entries are
checked only after the newest checkpoint: below it, the root's checkpoint signature
commits to those exact bytes (including the per-entry signature), and the signer checked
every one of them with :func:`verify_extension` before it signed (verify-before-sign,
``Ledger.checkpoint``), so a forged root entry is never under a checkpoint of an honest
signer. ``tail`` therefore trusts the signer's verification as well as its signature. Site
signatures and receipts are always checked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import os
import sqlite3
import urllib.request
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

from veracity.contracts.events import (
    KEY_KINDS,
    KINDS,
    RECEIPT_DOMAINS,
    ROOT_ACTOR,
    SITE_KINDS,
    Role,
    allowed_roles,
    validate_payload,
)
from veracity.crypto.keys import VerifyKey
from veracity.errors import (
    CryptoError,
    InputError,
    LedgerIntegrityError,
    ProofError,
    SignatureError,
)
from veracity.ledger.checkpoint import Checkpoint, verify_cosignature
from veracity.ledger.entry import (
    GENESIS_PREV,
    NO_LOG_ID,
    entry_message,
    parse_body,
    statement_message,
    statement_of_body,
)
from veracity.ledger.keyring import KeyHistory, KeyRecord
from veracity.ledger.merkle import MerkleTree, verify_consistency
from veracity.ledger.statement import verify_document
from veracity.ledger.templates import read_entry, template_for

__all__ = [
    "RootSignatures",
    "VerifyReport",
    "KeyEvent",
    "verify_rows",
    "verify_extension",
    "verify_database",
    "verify_bundle_file",
    "DEFAULT_CHUNK",
    "MAX_ENTRY_BYTES",
    "MAX_RECORD_BYTES",
]

RootSignatures = Literal["all", "tail"]
#: (seq, kind, payload) of a ``key.*`` entry.
KeyEvent = tuple[int, str, dict[str, Any]]
#: A stored row: seq, hash, prev_seq, prev, kind, actor, ts, body (``None`` where unknown).
Row = tuple[
    int | None, bytes | None, int | None, bytes | None, str | None, str | None, str | None, bytes
]

#: The longest entry a bundle may hold (bytes, newline excluded): the ledger refuses to
#: write a longer one, so a longer line is not an entry (and is never read whole).
MAX_ENTRY_BYTES = 8 << 20
#: The longest header or trailer line of a bundle (the checkpoint list of 10^6 entries,
#: one every 1000, is about 0.3 MB).
MAX_RECORD_BYTES = 64 << 20
#: Entries per chunk (small enough to balance the processes).
DEFAULT_CHUNK = 1 << 13
#: Below this many entries, verification runs in this process.
PARALLEL_THRESHOLD = 20_000
_ZERO_HASH = bytes(32)
_NO_SEQ = 2**63
_ALLOWED_ROLES = {kind: allowed_roles(kind) for kind in KINDS}


@dataclass(frozen=True)
class VerifyReport:
    """What a successful verification covered."""

    entries: int
    checkpoints: int
    log_id: str
    root_hash: str
    signatures: int
    receipts: int

    def to_json(self) -> dict[str, Any]:
        """The report in the CLI's JSON shape (plus details)."""
        return {
            "ok": True,
            "entries": self.entries,
            "checkpoints": self.checkpoints,
            "first_bad_seq": None,
            "reason": None,
            "log_id": self.log_id,
            "root_hash": self.root_hash,
            "signatures_checked": self.signatures,
            "receipts_checked": self.receipts,
        }


@dataclass
class _Chunk:
    """What one chunk of entries showed."""

    start: int
    count: int = 0
    first_prev: str | None = None
    last_hash: bytes | None = None
    leaves: bytes = b""
    key_events: list[KeyEvent] = field(default_factory=list)
    checkpoint_entries: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    cosignatures: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    site_statements: list[tuple[bytes, int]] = field(default_factory=list)
    signatures: int = 0
    receipts: int = 0
    error: tuple[int, str] | None = None


@dataclass(frozen=True)
class _Task:
    """A chunk to check: where its rows come from and what it needs to know."""

    source: tuple[str, str]  # ("sqlite", path), ("db", url) or ("bundle", path)
    start: int
    end: int  # seq bound (db) or byte bound (bundle)
    byte_start: int
    trusted_root: bytes
    key_events: tuple[KeyEvent, ...]
    covered_size: int
    root_signatures: RootSignatures
    #: The log id (genesis leaf hash) every entry signature after genesis binds.
    log_id: bytes = NO_LOG_ID
    #: Leaf hashes (by seq) of entries the checking process wrote and signed itself: the
    #: root's signatures in an entry whose bytes hash to these are its own (see
    #: :func:`verify_extension`); empty in every other check.
    own: Mapping[int, bytes] = field(default_factory=dict)


class _Failure(Exception):
    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(reason)
        self.seq = seq
        self.reason = reason


def _history(events: Iterable[KeyEvent], log_id: bytes) -> KeyHistory:
    history, failure = _lenient_history(events, log_id)
    if failure is not None:
        raise failure
    return history


def _lenient_history(
    events: Iterable[KeyEvent], log_id: bytes
) -> tuple[KeyHistory, _Failure | None]:
    """The key history up to the first invalid key event, and that event's failure."""
    history = KeyHistory(log_id=log_id.hex())
    for seq, kind, payload in events:
        try:
            history.apply(seq, kind, payload)
        except (InputError, SignatureError, CryptoError, KeyError, ValueError, TypeError) as err:
            return history, _Failure(seq, f"invalid key event: {err}")
    return history, None


def _decode_signature(text: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as err:
        raise SignatureError("signature is not base64") from err
    if len(raw) != 64:
        raise SignatureError("an Ed25519 signature is 64 bytes")
    return raw


@dataclass
class _Context:
    """What every row of a chunk is checked against."""

    task: _Task
    history: KeyHistory
    trusted_root: VerifyKey
    chunk: _Chunk


def _stored_bytes(value: object) -> bytes | None:
    """A stored blob as bytes (``None`` for a value of another type, which never matches)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return None


def _check_row_reference(
    context: _Context, row: Row, seq: int, digest: bytes, prev_hash: bytes | None
) -> None:
    """The reference check of one row (every kind, every failure message).

    Raises
    ------
    _Failure
        Naming ``seq`` (or the seq the failure is about) and what is wrong.
    """
    seq_col, hash_col, prev_seq_col, prev_col, kind_col, actor_col, ts_col, body = row
    task, history, chunk = context.task, context.history, context.chunk
    if seq_col is not None and seq_col != seq:
        if seq_col > seq:
            raise _Failure(seq, f"entry {seq} is missing (the next stored entry is {seq_col})")
        raise _Failure(seq, f"entry {seq_col} is stored out of order")
    if hash_col is not None and _stored_bytes(hash_col) != digest:
        raise _Failure(seq, "stored hash does not match the entry bytes")
    try:
        entry = parse_body(body)
    except InputError as err:
        raise _Failure(seq, f"entry bytes are malformed: {err}") from err
    if entry.seq != seq:
        raise _Failure(seq, f"entry bytes say seq {entry.seq} (entries reordered or inserted)")
    if prev_hash is None:
        chunk.first_prev = entry.prev
        if seq == 0 and entry.prev != GENESIS_PREV:
            raise _Failure(0, "genesis prev is not 64 zeros")
    elif entry.prev != prev_hash.hex():
        raise _Failure(seq, f"prev is not the hash of entry {seq - 1} (chain broken)")
    if prev_col is not None:
        stored_prev = _stored_bytes(prev_col)
        wanted_prev = _ZERO_HASH if seq == 0 else bytes.fromhex(entry.prev)
        if stored_prev != wanted_prev or prev_seq_col != (None if seq == 0 else seq - 1):
            raise _Failure(seq, "stored prev columns do not match the entry bytes")
    if (kind_col, actor_col, ts_col) != (None, None, None) and (
        kind_col,
        actor_col,
        ts_col,
    ) != (entry.kind, entry.actor, entry.ts):
        raise _Failure(seq, "stored kind, actor or ts columns do not match the entry bytes")
    try:
        validate_payload(entry.kind, entry.payload, actor=entry.actor)
    except InputError as err:
        raise _Failure(seq, str(err)) from err
    kind, actor, payload = entry.kind, entry.actor, entry.payload
    if seq == 0:
        if kind != "key.enrolled" or actor != ROOT_ACTOR or payload["role"] != Role.ROOT:
            raise _Failure(0, f"genesis must be key.enrolled of {ROOT_ACTOR!r} as root")
        if VerifyKey.from_pem(payload["public_key"]) != context.trusted_root:
            raise _Failure(0, "genesis enrols a root key other than the trusted root key")
        signer = context.trusted_root
        role = Role.ROOT
    else:
        record = history.key_at(actor, seq)
        if record is None:
            raise _Failure(
                seq, f"{actor!r} holds no enrolled key here (never enrolled, or revoked)"
            )
        signer = record.key
        role = record.role
    roles = _ALLOWED_ROLES[kind]
    if roles is not None and role not in roles:
        raise _Failure(seq, f"a {role.value} key may not record {kind}")
    check_root = (
        seq == 0 or task.root_signatures == "all" or seq >= task.covered_size
    ) and task.own.get(seq) != digest
    statement = statement_of_body(entry.body)
    log_id = NO_LOG_ID if seq == 0 else task.log_id
    prev_raw = bytes.fromhex(entry.prev)
    if role is Role.ROOT:
        if entry.root_signature is not None:
            raise _Failure(seq, "a root entry carries no root_signature")
        if check_root:
            try:
                signer.verify(
                    _decode_signature(entry.signature),
                    entry_message(log_id, seq, prev_raw, entry.ts, statement),
                )
            except SignatureError as err:
                raise _Failure(
                    seq,
                    f"signature does not verify under {actor!r}'s enrolled key at this position "
                    "(moved, copied, re-dated or forged)",
                ) from err
            chunk.signatures += 1
    else:
        if entry.root_signature is None:
            raise _Failure(
                seq, "the entry lacks the root's countersignature binding it to its position"
            )
        message = statement_message(statement)
        try:
            raw = _decode_signature(entry.signature)
            signer.verify(raw, message)
        except SignatureError as err:
            raise _Failure(
                seq, f"signature does not verify under {actor!r}'s enrolled key"
            ) from err
        chunk.signatures += 1
        if kind in SITE_KINDS:
            chunk.site_statements.append((message, seq))
        if check_root:
            root_record = history.key_at(ROOT_ACTOR, seq)
            try:
                if root_record is None:
                    raise SignatureError("no root key")
                root_record.key.verify(
                    _decode_signature(entry.root_signature),
                    entry_message(log_id, seq, prev_raw, entry.ts, statement, raw),
                )
            except SignatureError as err:
                raise _Failure(
                    seq,
                    "the root's countersignature does not verify at this position (moved, "
                    "copied, re-dated or forged)",
                ) from err
            chunk.signatures += 1
    if kind in KEY_KINDS:
        chunk.key_events.append((seq, kind, payload))
    elif kind in RECEIPT_DOMAINS:
        domain = RECEIPT_DOMAINS[kind]
        for signed in payload["receipts"]:
            site = signed["receipt"]["site"]
            site_record = history.key_at(site, seq)
            if site_record is None or site_record.role is not Role.SITE:
                raise _Failure(seq, f"receipt of {site!r}: no enrolled site key here")
            try:
                verify_document(site_record.key, domain, signed["receipt"], signed["signature"])
            except SignatureError as err:
                raise _Failure(
                    seq, f"receipt of {site!r} is not signed by its enrolled key (forged)"
                ) from err
            chunk.receipts += 1
    elif kind == "checkpoint":
        if payload["tree_size"] > seq:
            raise _Failure(seq, "a checkpoint entry can only record entries before it")
        chunk.checkpoint_entries.append((seq, entry.ts, payload))
    elif kind == "checkpoint.cosigned":
        if payload["tree_size"] > seq:
            raise _Failure(seq, "a cosignature can only cover entries before it")
        chunk.cosignatures.append((seq, actor, payload))


def _check_rows(rows: Iterable[Row], task: _Task) -> _Chunk:
    """Check consecutive rows starting at ``task.start``; stops at the first failure.

    Each row first tries the fast path: an entry of a templated kind
    (:mod:`veracity.ledger.templates`) whose every check passes is accepted with the same
    checks done on the template's reading. Any row the fast path does not accept outright
    (another kind, a template mismatch, any failed check) goes through
    :func:`_check_row_reference`, which accepts it or names the failure, so failures and
    their messages are exactly the reference's.
    """
    chunk = _Chunk(start=task.start)
    leaves = bytearray()
    history, bad_key_event = _lenient_history(task.key_events, task.log_id)
    context = _Context(
        task=task, history=history, trusted_root=VerifyKey.from_raw(task.trusted_root), chunk=chunk
    )
    bad_from = bad_key_event.seq if bad_key_event is not None else _NO_SEQ
    root_checked_from = 0 if task.root_signatures == "all" else task.covered_size
    spans: dict[str, tuple[KeyRecord | None, int, int]] = {}
    site_statements = chunk.site_statements
    own = task.own.get if task.own else None
    sha256 = hashlib.sha256
    expected = task.start
    prev_hash: bytes | None = None
    prev_hex = b""
    try:
        for row in rows:
            seq = expected
            if seq >= bad_from and bad_key_event is not None:
                raise bad_key_event
            seq_col, hash_col, prev_seq_col, prev_col, kind_col, actor_col, ts_col, body = row
            if body.__class__ is not bytes:
                stored = _stored_bytes(body)
                if stored is None:
                    raise _Failure(seq, "entry bytes are not stored as a blob")
                body = stored
                row = (seq_col, hash_col, prev_seq_col, prev_col, kind_col, actor_col, ts_col, body)
            digest = sha256(b"\x00" + body).digest()
            accepted = False
            template = None
            if (
                prev_hash is not None
                and (seq_col is None or seq_col == seq)
                and (hash_col is None or hash_col == digest)
            ):
                template = template_for(body, kind_col)
            fast = None if template is None else read_entry(template, body)
            if fast is not None and template is not None and prev_hash is not None:
                actor, prev_text, entry_seq, signature_text, ts, root_text = fast
                kind = template.kind
                columns = (kind_col, actor_col, ts_col)
                if (
                    entry_seq == seq
                    and prev_text == prev_hex
                    and (prev_col is None or (prev_col == prev_hash and prev_seq_col == seq - 1))
                    and (columns == (None, None, None) or columns == (kind, actor, ts))
                ):
                    span = spans.get(actor)
                    if span is None or not span[1] < seq <= span[2]:
                        span = spans[actor] = history.key_span(actor, seq)
                    record = span[0]
                    roles = _ALLOWED_ROLES[kind]
                    if record is not None and (roles is None or record.role in roles):
                        is_root = record.role is Role.ROOT
                        check_root = seq >= root_checked_from and (
                            own is None or own(seq) != digest
                        )
                        root_key = None
                        if check_root and not is_root:
                            root_span = spans.get(ROOT_ACTOR)
                            if root_span is None or not root_span[1] < seq <= root_span[2]:
                                root_span = spans[ROOT_ACTOR] = history.key_span(ROOT_ACTOR, seq)
                            root_key = None if root_span[0] is None else root_span[0].key
                        try:
                            if is_root != (root_text is None):
                                raise SignatureError("the reference names the failure")
                            statement = statement_of_body(body)
                            if is_root:
                                if check_root:
                                    record.key.verify(
                                        binascii.a2b_base64(signature_text),
                                        entry_message(task.log_id, seq, prev_hash, ts, statement),
                                    )
                                    chunk.signatures += 1
                            else:
                                raw = binascii.a2b_base64(signature_text)
                                message = statement_message(statement)
                                record.key.verify(raw, message)
                                if check_root:
                                    if root_key is None or root_text is None:
                                        raise SignatureError("no root key")
                                    root_key.verify(
                                        binascii.a2b_base64(root_text),
                                        entry_message(
                                            task.log_id, seq, prev_hash, ts, statement, raw
                                        ),
                                    )
                                    chunk.signatures += 1
                                chunk.signatures += 1
                                if kind in SITE_KINDS:
                                    site_statements.append((message, seq))
                        except SignatureError:
                            pass  # the reference names the failure
                        else:
                            accepted = True
            if not accepted:
                _check_row_reference(context, row, seq, digest, prev_hash)
            leaves += digest
            prev_hash = digest
            prev_hex = binascii.hexlify(digest)
            expected += 1
            chunk.count += 1
    except _Failure as failure:
        chunk.error = (failure.seq, failure.reason)
    chunk.last_hash = prev_hash
    chunk.leaves = bytes(leaves)
    return chunk


_SELECT_ROWS = "SELECT seq, hash, prev_seq, prev, kind, actor, ts, body FROM ledger_entry"
_SQLITE_QUERY = _SELECT_ROWS + " WHERE seq >= ? AND seq < ? ORDER BY seq"
_POSTGRES_QUERY = _SELECT_ROWS + " WHERE seq >= %s AND seq < %s ORDER BY seq"


def _tolerant_text(data: bytes) -> str:
    """Decode a SQLite text value; bytes that are not UTF-8 survive as surrogates."""
    return data.decode("utf-8", errors="surrogateescape")


def _sqlite_rows(path: str, start: int, end: int) -> Generator[Row, None, None]:
    """Rows of a SQLite ledger file, read with the standard library alone.

    One statement reads the whole range, so it sees one snapshot (WAL); the rows come as
    the driver builds them.
    """
    uri = f"file:{urllib.request.pathname2url(path)}?mode=rw"
    try:
        connection = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None)
    except sqlite3.Error as err:
        raise InputError(f"cannot open the ledger database {path}: {err}") from err
    # Text that is not UTF-8 (a tampered column) must reach the checks, not crash the read.
    connection.text_factory = _tolerant_text
    try:
        cursor = connection.execute(_SQLITE_QUERY, (start, end))
        while batch := cursor.fetchmany(4096):
            yield from batch
    finally:
        connection.close()


def _db_rows(url: str, start: int, end: int) -> Generator[Row, None, None]:
    from veracity.ledger.store import create_engine

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            raw = connection.connection.dbapi_connection
            if raw is None:  # pragma: no cover - a checked-out connection always has one
                raise InputError("no database connection")
            if engine.dialect.name == "sqlite":
                raw.text_factory = _tolerant_text
                cursor = raw.cursor()
                cursor.execute(_SQLITE_QUERY, (start, end))
            else:
                cursor = raw.cursor(name=f"veracity_verify_{start}")
                cursor.execute(_POSTGRES_QUERY, (start, end))
            try:
                while True:
                    batch = cursor.fetchmany(4096)
                    if not batch:
                        break
                    for seq, digest, prev_seq, prev, kind, actor, ts, body in batch:
                        yield (
                            seq,
                            bytes(digest),
                            prev_seq,
                            bytes(prev),
                            kind,
                            actor,
                            ts,
                            bytes(body),
                        )
            finally:
                cursor.close()
            connection.rollback()
    finally:
        engine.dispose()


def _bundle_rows(path: str, byte_start: int, byte_end: int) -> Generator[Row, None, None]:
    with open(path, "rb") as handle:
        handle.seek(byte_start)
        position = byte_start
        while position < byte_end:
            line = handle.readline(MAX_ENTRY_BYTES + 2)
            if not line:
                return
            position += len(line)
            yield (None, None, None, None, None, None, None, line.rstrip(b"\n"))


def _run_task(task: _Task) -> _Chunk:
    kind, where = task.source
    if kind == "sqlite":
        rows: Generator[Row, None, None] = _sqlite_rows(where, task.start, task.end)
    elif kind == "db":
        rows = _db_rows(where, task.start, task.end)
    else:
        rows = _bundle_rows(where, task.byte_start, task.end)
    try:
        return _check_rows(rows, task)
    finally:
        rows.close()


def _run_tasks(tasks: Sequence[_Task], workers: int) -> Iterator[_Chunk]:
    """The chunks' results in order, as they arrive (the caller works while others run)."""
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield _run_task(task)
        return
    context = get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context) as pool:
        yield from pool.map(_run_task, tasks)


def _worker_count(workers: int | None, size: int) -> int:
    if size < PARALLEL_THRESHOLD:
        return 1
    if workers is None:
        return os.cpu_count() or 1
    return max(1, workers)


def _fail(errors: list[tuple[int | None, str]]) -> None:
    if not errors:
        return
    with_seq = [(seq, reason) for seq, reason in errors if seq is not None]
    if with_seq:
        seq, reason = min(with_seq, key=lambda item: item[0])
        raise LedgerIntegrityError(reason, seq=seq)
    raise LedgerIntegrityError(errors[0][1])


def _check_checkpoints(
    tree: MerkleTree,
    log_id: str,
    trusted_root: VerifyKey,
    listed: Sequence[Checkpoint],
    chunks: Sequence[_Chunk],
    known: Sequence[Checkpoint],
) -> None:
    size = tree.size
    errors: list[tuple[int | None, str]] = []
    recorded: dict[int, Checkpoint] = {}
    for chunk in chunks:
        for seq, ts, payload in chunk.checkpoint_entries:
            checkpoint = Checkpoint(
                log_id=payload["log_id"],
                tree_size=payload["tree_size"],
                root_hash=payload["root_hash"],
                timestamp=ts,
                signature=payload["signature"],
            )
            cut = checkpoint.tree_size
            if cut in recorded:
                errors.append((seq, f"a second checkpoint entry of size {cut}"))
                continue
            recorded[cut] = checkpoint
            try:
                checkpoint.verify(trusted_root)
            except SignatureError:
                errors.append((seq, "checkpoint entry is not signed by the trusted root key"))
                continue
            if checkpoint.log_id != log_id:
                errors.append((seq, "checkpoint entry names another log"))
            elif tree.root(cut).hex() != checkpoint.root_hash:
                errors.append((seq, f"checkpoint entry's root does not match entries 0..{cut - 1}"))
        for seq, site, payload in chunk.cosignatures:
            cosigned_size = payload["tree_size"]
            if payload["log_id"] != log_id:
                errors.append((seq, "cosignature names another log"))
            elif tree.root(cosigned_size).hex() != payload["root_hash"]:
                errors.append((seq, f"{site!r} cosigned a root that does not match the entries"))
    _fail(errors)
    by_size: dict[int, Checkpoint] = {}
    for checkpoint in listed:
        try:
            if recorded.get(checkpoint.tree_size) != checkpoint:
                # (The same checkpoint recorded as an entry was verified above.)
                checkpoint.verify(trusted_root)
        except SignatureError:
            errors.append(
                (
                    None,
                    f"checkpoint of size {checkpoint.tree_size} is forged: not signed by "
                    + "the trusted root key",
                )
            )
            continue
        if checkpoint.log_id != log_id:
            errors.append((None, f"checkpoint of size {checkpoint.tree_size} names another log"))
            continue
        other = by_size.get(checkpoint.tree_size)
        if other is not None and other.root_hash != checkpoint.root_hash:
            errors.append(
                (
                    None,
                    f"two checkpoints of size {checkpoint.tree_size} with different roots: "
                    + "the log forked",
                )
            )
            continue
        by_size[checkpoint.tree_size] = checkpoint
        if checkpoint.tree_size >= size:
            errors.append(
                (
                    size,
                    f"the ledger ends at {size} entries but a checkpoint signed its size "
                    f"{checkpoint.tree_size} (and its own entry): entries were cut",
                )
            )
            continue
        entry = recorded.get(checkpoint.tree_size)
        if entry != checkpoint:
            errors.append(
                (
                    checkpoint.tree_size,
                    f"the checkpoint list and the checkpoint entry of size "
                    f"{checkpoint.tree_size} differ",
                )
            )
    listed_sizes = {c.tree_size for c in listed}
    for cut in recorded:
        if cut not in listed_sizes:
            errors.append((cut, "checkpoint entry is missing from the checkpoint list"))
    _fail(errors)
    ordered = sorted(by_size.values(), key=lambda c: c.tree_size)
    previous_good = 0
    for checkpoint in ordered:
        if tree.root(checkpoint.tree_size).hex() != checkpoint.root_hash:
            errors.append(
                (
                    None,
                    f"checkpoint of size {checkpoint.tree_size} does not match the entries: "
                    f"some entry in {previous_good}..{checkpoint.tree_size - 1} differs from "
                    "what the root signed",
                )
            )
            break
        previous_good = checkpoint.tree_size
    _fail(errors)
    for older, newer in itertools.pairwise(ordered):
        try:
            verify_consistency(
                older.tree_size,
                newer.tree_size,
                tree.consistency_proof(older.tree_size, newer.tree_size),
                bytes.fromhex(older.root_hash),
                bytes.fromhex(newer.root_hash),
            )
        except ProofError as err:
            raise LedgerIntegrityError(
                f"checkpoints {older.tree_size} and {newer.tree_size} are not consistent: {err}"
            ) from err
    for pinned in known:
        try:
            pinned.verify(trusted_root)
        except SignatureError as err:
            raise LedgerIntegrityError(
                f"the pinned checkpoint of size {pinned.tree_size} is not signed by the "
                "trusted root"
            ) from err
        if pinned.log_id != log_id:
            raise LedgerIntegrityError("the pinned checkpoint belongs to another log")
        if pinned.tree_size > size:
            raise LedgerIntegrityError(
                f"the ledger has {size} entries but you hold a checkpoint of size "
                f"{pinned.tree_size}: entries were cut or rolled back",
                seq=size,
            )
        if pinned.tree_size and tree.root(pinned.tree_size).hex() != pinned.root_hash:
            raise LedgerIntegrityError(
                f"the ledger is not consistent with the checkpoint of size {pinned.tree_size} "
                "you hold: its history was rewritten or forked"
            )


def _check_cosignature_keys(
    chunks: Sequence[_Chunk], history: KeyHistory
) -> list[tuple[int | None, str]]:
    errors: list[tuple[int | None, str]] = []
    for chunk in chunks:
        for seq, site, payload in chunk.cosignatures:
            record = history.key_at(site, seq)
            if record is None:
                errors.append((seq, f"{site!r} holds no key for its cosignature"))
                continue
            try:
                verify_cosignature(
                    record.key,
                    log_id=payload["log_id"],
                    tree_size=payload["tree_size"],
                    root_hash=payload["root_hash"],
                    signature=payload["signature"],
                )
            except SignatureError:
                errors.append((seq, f"cosignature of {site!r} does not verify"))
    return errors


def _finish(
    results: Iterable[_Chunk],
    size: int,
    index_events: Sequence[KeyEvent],
    trusted_root: VerifyKey,
    listed: Sequence[Checkpoint],
    known: Sequence[Checkpoint],
) -> VerifyReport:
    chunks: list[_Chunk] = []
    tree = MerkleTree()
    for chunk in results:
        # Hash the tree while the other chunks are still being checked.
        chunks.append(chunk)
        tree.extend_blob(chunk.leaves)
    errors: list[tuple[int | None, str]] = []
    expected = 0
    previous_last: bytes | None = None
    for chunk in chunks:
        if chunk.error is not None:
            errors.append(chunk.error)
        if chunk.start != expected:
            errors.append((expected, f"entry {expected} is missing"))
        if (
            chunk.count
            and chunk.start > 0
            and previous_last is not None
            and chunk.first_prev != previous_last.hex()
        ):
            errors.append(
                (chunk.start, f"prev is not the hash of entry {chunk.start - 1} (chain broken)")
            )
        if chunk.error is not None:
            break
        expected = chunk.start + chunk.count
        previous_last = chunk.last_hash
    if not errors and expected != size:
        errors.append((expected, f"entry {expected} is missing"))
    if size == 0:
        errors.append((0, "the ledger is empty (no genesis)"))
    limit = min((seq for seq, _ in errors if seq is not None), default=size)
    found = [event for chunk in chunks for event in chunk.key_events if event[0] < limit]
    indexed = [event for event in index_events if event[0] < limit]
    for position in range(max(len(found), len(indexed))):
        mine = found[position] if position < len(found) else None
        theirs = indexed[position] if position < len(indexed) else None
        if mine != theirs:
            where = min(e[0] for e in (mine, theirs) if e is not None)
            errors.append((where, "the key events in the entries differ from the key index here"))
            break
    _fail(errors)
    first_seen: dict[bytes, int] = {}
    for chunk in chunks:
        for message, seq in chunk.site_statements:
            earlier = first_seen.setdefault(message, seq)
            if earlier != seq:
                errors.append(
                    (seq, f"replays the site statement already recorded at seq {earlier}")
                )
    _fail(errors)
    genesis_hash = tree.leaf(0).hex()
    try:
        history = _history(found, bytes.fromhex(genesis_hash))
    except _Failure as failure:
        raise LedgerIntegrityError(failure.reason, seq=failure.seq) from failure
    _fail(_check_cosignature_keys(chunks, history))
    _check_checkpoints(tree, genesis_hash, trusted_root, listed, chunks, known)
    return VerifyReport(
        entries=size,
        checkpoints=len({c.tree_size for c in listed}),
        log_id=genesis_hash,
        root_hash=tree.root().hex(),
        signatures=sum(chunk.signatures for chunk in chunks),
        receipts=sum(chunk.receipts for chunk in chunks),
    )


def _genesis_log_id(body: object) -> bytes:
    """The log id genesis bytes define (its leaf hash); zeros when there are none."""
    stored = _stored_bytes(body)
    return NO_LOG_ID if stored is None else hashlib.sha256(b"\x00" + stored).digest()


def _covered_size(listed: Sequence[Checkpoint], size: int) -> int:
    sizes = [c.tree_size for c in listed if c.tree_size < size]
    return max(sizes, default=0)


def verify_rows(
    rows: Iterable[Row],
    *,
    trusted_root: VerifyKey,
    key_events: Sequence[KeyEvent],
    checkpoints: Sequence[Checkpoint] = (),
    known_checkpoints: Sequence[Checkpoint] = (),
    root_signatures: RootSignatures = "all",
) -> VerifyReport:
    """Verify a ledger given as rows in this process (small ledgers and tests).

    Raises
    ------
    LedgerIntegrityError
        Naming the first bad seq (where determinable) and what was wrong.
    """
    materialised = list(rows)
    log_id = _genesis_log_id(materialised[0][7] if materialised else None)
    task = _Task(
        source=("rows", ""),
        start=0,
        end=len(materialised),
        byte_start=0,
        trusted_root=trusted_root.raw,
        key_events=tuple(key_events),
        covered_size=_covered_size(checkpoints, len(materialised)),
        root_signatures=root_signatures,
        log_id=log_id,
    )
    chunk = _check_rows(materialised, task)
    return _finish(
        [chunk], len(materialised), key_events, trusted_root, checkpoints, known_checkpoints
    )


def verify_extension(
    rows: Iterable[Row],
    *,
    start: int,
    end: int,
    prev_hash: bytes | None,
    trusted_root: VerifyKey,
    key_events: Sequence[KeyEvent],
    log_id: bytes,
    own: Mapping[int, bytes] | None = None,
) -> bytes:
    """Check entries ``[start, end)`` that extend a verified prefix; returns their leaf hashes.

    This is the check a checkpoint signer runs before it signs (verify-before-sign): every
    entry since the last checkpoint gets the reference checks of :func:`verify_rows` with
    every signature checked, and must link to ``prev_hash`` (the leaf hash of entry
    ``start - 1``, ``None`` for genesis). ``key_events`` is every key event before ``end``
    read from entry bytes the caller has tied to its signed tree; those inside the range
    must be exactly the ones the entries hold.

    ``own`` maps seqs to the leaf hashes of entries the caller itself wrote and signed
    (the appending process): in a row whose bytes hash to exactly that, the root's entry
    signature or countersignature is the caller's own, made over these bytes, and is not
    verified again. Everything else still is: the row's structure, chain, schema and key
    rules, and every *site* signature and receipt (the append path checked those against
    the key index, which a database writer can edit; here they meet the key history the
    entries hold). Any row whose bytes differ from what the caller wrote gets every check.

    Raises
    ------
    LedgerIntegrityError
        Naming the first bad seq and what was wrong.
    """
    task = _Task(
        source=("rows", ""),
        start=start,
        end=end,
        byte_start=0,
        trusted_root=trusted_root.raw,
        key_events=tuple(key_events),
        covered_size=0,
        root_signatures="all",
        log_id=log_id,
        own=own or {},
    )
    chunk = _check_rows(rows, task)
    if chunk.error is not None:
        raise LedgerIntegrityError(chunk.error[1], seq=chunk.error[0])
    if chunk.count != end - start:
        raise LedgerIntegrityError(
            f"entry {start + chunk.count} is missing", seq=start + chunk.count
        )
    if chunk.count and start > 0 and prev_hash is not None and chunk.first_prev != prev_hash.hex():
        raise LedgerIntegrityError(f"prev is not the hash of entry {start - 1}", seq=start)
    inside = [event for event in key_events if start <= event[0] < end]
    if chunk.key_events != inside:
        where = min((e[0] for e in (*chunk.key_events, *inside)), default=start)
        raise LedgerIntegrityError("the key events differ from the entries here", seq=where)
    return chunk.leaves


def verify_database(
    url: str,
    *,
    size: int,
    trusted_root: VerifyKey,
    key_events: Sequence[KeyEvent],
    checkpoints: Sequence[Checkpoint],
    known_checkpoints: Sequence[Checkpoint] = (),
    root_signatures: RootSignatures = "all",
    workers: int | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    log_id: bytes | None = None,
) -> VerifyReport:
    """Verify the first ``size`` entries of the ledger at ``url``, in parallel when large.

    ``log_id`` is the leaf hash of the stored genesis entry (which the checks of entry 0
    tie to the trusted root; read here when not given); every later entry signature must
    bind it.

    Raises
    ------
    LedgerIntegrityError
        Naming the first bad seq (where determinable) and what was wrong.
    """
    from veracity.ledger.store import sqlite_path

    covered = _covered_size(checkpoints, size)
    path = sqlite_path(url)
    source = ("db", url) if path is None else ("sqlite", str(path))
    if log_id is None:
        first = _sqlite_rows(str(path), 0, 1) if path is not None else _db_rows(url, 0, 1)
        try:
            log_id = _genesis_log_id(next((row[7] for row in first), None))
        finally:
            first.close()
    tasks = [
        _Task(
            source=source,
            start=start,
            end=min(start + chunk_size, size),
            byte_start=0,
            trusted_root=trusted_root.raw,
            key_events=tuple(key_events),
            covered_size=covered,
            root_signatures=root_signatures,
            log_id=log_id,
        )
        for start in range(0, max(size, 1), chunk_size)
    ]
    chunks = _run_tasks(tasks, _worker_count(workers, size))
    return _finish(chunks, size, key_events, trusted_root, checkpoints, known_checkpoints)


@dataclass(frozen=True)
class _BundleLayout:
    size: int
    offsets: list[int]  # byte offset of every chunk's first entry, plus the end of entries
    checkpoints: list[Checkpoint]
    key_events: list[KeyEvent]
    log_id: bytes = NO_LOG_ID


def _read_bundle_layout(path: Path, chunk_size: int) -> _BundleLayout:
    from veracity.ledger.bundle import BUNDLE_FORMAT, BUNDLE_VERSION

    try:
        handle = path.open("rb")
    except OSError as err:
        raise InputError(f"cannot read bundle {path}: {err.strerror}") from err
    with handle:
        header_line = handle.readline(MAX_RECORD_BYTES + 1)
        if len(header_line) > MAX_RECORD_BYTES:
            raise LedgerIntegrityError("bundle header is too long: not a ledger bundle")
        try:
            header = json.loads(header_line)
        except (ValueError, RecursionError) as err:
            raise LedgerIntegrityError("bundle header is not JSON: not a ledger bundle") from err
        if not isinstance(header, dict) or header.get("format") != BUNDLE_FORMAT:
            raise LedgerIntegrityError("not a Veracity ledger bundle")
        if header.get("version") != BUNDLE_VERSION:
            raise LedgerIntegrityError(f"unsupported bundle version {header.get('version')!r}")
        size = header.get("entries")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise LedgerIntegrityError("bundle header has no entry count")
        offsets: list[int] = []
        log_id = NO_LOG_ID
        position = len(header_line)
        for index in range(size):
            if index % chunk_size == 0:
                offsets.append(position)
            line = handle.readline(MAX_ENTRY_BYTES + 2)
            if len(line.rstrip(b"\n")) > MAX_ENTRY_BYTES:
                raise LedgerIntegrityError(
                    f"bundle line of entry {index} is longer than {MAX_ENTRY_BYTES} bytes "
                    "(the longest entry the ledger writes): not an entry",
                    seq=index,
                )
            if index == 0:
                log_id = _genesis_log_id(line.rstrip(b"\n"))
            if not line.endswith(b"\n"):
                raise LedgerIntegrityError(
                    f"the bundle ends after {index} entries but its header says {size}", seq=index
                )
            position += len(line)
        offsets.append(position)
        documents = []
        for _ in range(3):
            line = handle.readline(MAX_RECORD_BYTES + 1)
            if not line:
                break
            if len(line) > MAX_RECORD_BYTES:
                raise LedgerIntegrityError(
                    f"bundle trailer line is longer than {MAX_RECORD_BYTES} bytes"
                )
            if not line.strip():
                continue
            try:
                documents.append(json.loads(line))
            except ValueError as err:
                raise LedgerIntegrityError(
                    "bundle trailer (checkpoints, keys) is not JSON"
                ) from err
            except RecursionError as err:
                raise LedgerIntegrityError(
                    "bundle trailer (checkpoints, keys) nests too deeply"
                ) from err
        if handle.read(1):
            raise LedgerIntegrityError(
                "the bundle holds more than its entries, checkpoints, key_events and notes"
            )
    checkpoints: list[Checkpoint] = []
    key_events: list[KeyEvent] = []
    seen = set()
    for document in documents:
        if not isinstance(document, dict) or len(document) != 1:
            raise LedgerIntegrityError(
                "bundle trailer records must be {checkpoints}, {key_events} or {notes}"
            )
        ((name, value),) = document.items()
        if name in seen:
            raise LedgerIntegrityError(f"the bundle holds its {name} record twice")
        seen.add(name)
        try:
            if name == "checkpoints":
                checkpoints = [Checkpoint.from_json(item) for item in value]
            elif name == "key_events":
                key_events = [(int(s), str(k), dict(p)) for s, k, p in value]
            elif name == "notes":
                if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
                    raise TypeError("notes are a list of note texts")
            else:
                raise LedgerIntegrityError(f"unknown bundle record {name!r}")
        except (InputError, TypeError, ValueError) as err:
            raise LedgerIntegrityError(f"bundle {name} record is malformed: {err}") from err
    if seen - {"notes"} != {"checkpoints", "key_events"}:
        raise LedgerIntegrityError("bundle lacks its checkpoints or key_events record")
    return _BundleLayout(
        size=size, offsets=offsets, checkpoints=checkpoints, key_events=key_events, log_id=log_id
    )


def verify_bundle_file(
    path: Path,
    *,
    trusted_root: VerifyKey,
    known_checkpoints: Sequence[Checkpoint] = (),
    root_signatures: RootSignatures = "all",
    workers: int | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> VerifyReport:
    """Verify an exported bundle with nothing but the trusted root public key.

    Raises
    ------
    InputError
        If the file cannot be read.
    LedgerIntegrityError
        If the bundle is malformed or any check fails (naming the first bad seq).
    """
    layout = _read_bundle_layout(path, chunk_size)
    covered = _covered_size(layout.checkpoints, layout.size)
    tasks = [
        _Task(
            source=("bundle", str(path)),
            start=index * chunk_size,
            end=layout.offsets[index + 1],
            byte_start=layout.offsets[index],
            trusted_root=trusted_root.raw,
            key_events=tuple(layout.key_events),
            covered_size=covered,
            root_signatures=root_signatures,
            log_id=layout.log_id,
        )
        for index in range(len(layout.offsets) - 1)
    ]
    chunks = _run_tasks(tasks, _worker_count(workers, layout.size))
    return _finish(
        chunks, layout.size, layout.key_events, trusted_root, layout.checkpoints, known_checkpoints
    )
