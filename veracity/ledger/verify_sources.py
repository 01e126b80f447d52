"""Where the verifier's rows come from: SQLite files, any database URL, bundle files.

Each chunk of rows is a :class:`~veracity.ledger.verify_common.Task` that
:func:`run_task` checks (in this process or a spawned one, :func:`run_tasks`).
"""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from veracity.errors import (
    InputError,
    LedgerIntegrityError,
)
from veracity.ledger.checkpoint import Checkpoint
from veracity.ledger.entry import NO_LOG_ID
from veracity.ledger.verify_common import (
    MAX_ENTRY_BYTES,
    MAX_RECORD_BYTES,
    Chunk,
    KeyEvent,
    Row,
    Task,
    genesis_log_id,
)
from veracity.ledger.verify_fast import check_rows

__all__ = [
    "sqlite_rows",
    "db_rows",
    "bundle_rows",
    "run_task",
    "run_tasks",
    "BundleLayout",
    "read_bundle_layout",
]


_SELECT_ROWS = "SELECT seq, hash, prev_seq, prev, kind, actor, ts, body FROM ledger_entry"
_SQLITE_QUERY = _SELECT_ROWS + " WHERE seq >= ? AND seq < ? ORDER BY seq"
_POSTGRES_QUERY = _SELECT_ROWS + " WHERE seq >= %s AND seq < %s ORDER BY seq"


def _tolerant_text(data: bytes) -> str:
    """Decode a SQLite text value; bytes that are not UTF-8 survive as surrogates."""
    return data.decode("utf-8", errors="surrogateescape")


def sqlite_rows(path: str, start: int, end: int) -> Generator[Row, None, None]:
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


def db_rows(url: str, start: int, end: int) -> Generator[Row, None, None]:
    """Rows ``[start, end)`` of the ledger at a database URL (PostgreSQL: a server-side cursor)."""
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


def bundle_rows(path: str, byte_start: int, byte_end: int) -> Generator[Row, None, None]:
    """The entry lines of a bundle file between two byte offsets, as rows of bytes alone."""
    with open(path, "rb") as handle:
        handle.seek(byte_start)
        position = byte_start
        while position < byte_end:
            line = handle.readline(MAX_ENTRY_BYTES + 2)
            if not line:
                return
            position += len(line)
            yield (None, None, None, None, None, None, None, line.rstrip(b"\n"))


def run_task(task: Task) -> Chunk:
    """Read a task's rows from its source and check them (in a spawned process, too)."""
    kind, where = task.source
    if kind == "sqlite":
        rows: Generator[Row, None, None] = sqlite_rows(where, task.start, task.end)
    elif kind == "db":
        rows = db_rows(where, task.start, task.end)
    else:
        rows = bundle_rows(where, task.byte_start, task.end)
    try:
        return check_rows(rows, task)
    finally:
        rows.close()


def run_tasks(tasks: Sequence[Task], workers: int) -> Iterator[Chunk]:
    """The chunks' results in order, as they arrive (the caller works while others run)."""
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield run_task(task)
        return
    context = get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context) as pool:
        yield from pool.map(run_task, tasks)


@dataclass(frozen=True)
class BundleLayout:
    """A bundle file's header and trailer, and where each chunk of its entries begins."""

    size: int
    offsets: list[int]  # byte offset of every chunk's first entry, plus the end of entries
    checkpoints: list[Checkpoint]
    key_events: list[KeyEvent]
    log_id: bytes = NO_LOG_ID


def read_bundle_layout(path: Path, chunk_size: int) -> BundleLayout:
    """Read a bundle's header and trailer and the byte offsets of its chunks (one pass)."""
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
                log_id = genesis_log_id(line.rstrip(b"\n"))
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
    return BundleLayout(
        size=size, offsets=offsets, checkpoints=checkpoints, key_events=key_events, log_id=log_id
    )
