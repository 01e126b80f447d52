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

This module holds the entry points; the work is in :mod:`.verify_common` (shared shapes
and the key history replay), :mod:`.verify_reference` (the reference check of a row),
:mod:`.verify_fast` (a chunk of rows, fast path first), :mod:`.verify_sources` (reading
rows from databases and bundles, running chunks in processes) and
:mod:`.verify_checkpoints` (key events, checkpoints and cosignatures once every chunk is
in).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from veracity.crypto.keys import VerifyKey
from veracity.errors import LedgerIntegrityError
from veracity.ledger.checkpoint import Checkpoint
from veracity.ledger.verify_checkpoints import finish
from veracity.ledger.verify_common import (
    MAX_ENTRY_BYTES,
    MAX_RECORD_BYTES,
    KeyEvent,
    RootSignatures,
    Row,
    Task,
    VerifyReport,
    genesis_log_id,
)
from veracity.ledger.verify_fast import check_rows
from veracity.ledger.verify_sources import db_rows, read_bundle_layout, run_tasks, sqlite_rows

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

#: Entries per chunk (small enough to balance the processes).
DEFAULT_CHUNK = 1 << 13
#: Below this many entries, verification runs in this process.
PARALLEL_THRESHOLD = 20_000


def _worker_count(workers: int | None, size: int) -> int:
    if size < PARALLEL_THRESHOLD:
        return 1
    if workers is None:
        return os.cpu_count() or 1
    return max(1, workers)


def _ts_wanted(listed: Sequence[Checkpoint]) -> frozenset[int]:
    """The seqs whose ts the checkpoint checks need: each checkpoint's last entry."""
    return frozenset(c.tree_size - 1 for c in listed if c.tree_size > 0)


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
    log_id = genesis_log_id(materialised[0][7] if materialised else None)
    task = Task(
        source=("rows", ""),
        start=0,
        end=len(materialised),
        byte_start=0,
        trusted_root=trusted_root.raw,
        key_events=tuple(key_events),
        covered_size=_covered_size(checkpoints, len(materialised)),
        root_signatures=root_signatures,
        log_id=log_id,
        ts_wanted=_ts_wanted(checkpoints),
    )
    chunk = check_rows(materialised, task)
    return finish(
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
    prev_ts: str | None = None,
) -> bytes:
    """Check entries ``[start, end)`` that extend a verified prefix; returns their leaf hashes.

    This is the check a checkpoint signer runs before it signs (verify-before-sign): every
    entry since the last checkpoint gets the reference checks of :func:`verify_rows` with
    every signature checked, and must link to ``prev_hash`` (the leaf hash of entry
    ``start - 1``, ``None`` for genesis; ``prev_ts`` is its ts, which no entry may
    precede). ``key_events`` is every key event before ``end``
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
    task = Task(
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
        prev_ts=prev_ts,
    )
    chunk = check_rows(rows, task)
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
    wanted = _ts_wanted(checkpoints)
    path = sqlite_path(url)
    source = ("db", url) if path is None else ("sqlite", str(path))
    if log_id is None:
        first = sqlite_rows(str(path), 0, 1) if path is not None else db_rows(url, 0, 1)
        try:
            log_id = genesis_log_id(next((row[7] for row in first), None))
        finally:
            first.close()
    tasks = [
        Task(
            source=source,
            start=start,
            end=min(start + chunk_size, size),
            byte_start=0,
            trusted_root=trusted_root.raw,
            key_events=tuple(key_events),
            covered_size=covered,
            root_signatures=root_signatures,
            log_id=log_id,
            ts_wanted=wanted,
        )
        for start in range(0, max(size, 1), chunk_size)
    ]
    chunks = run_tasks(tasks, _worker_count(workers, size))
    return finish(chunks, size, key_events, trusted_root, checkpoints, known_checkpoints)


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
    layout = read_bundle_layout(path, chunk_size)
    covered = _covered_size(layout.checkpoints, layout.size)
    wanted = _ts_wanted(layout.checkpoints)
    tasks = [
        Task(
            source=("bundle", str(path)),
            start=index * chunk_size,
            end=layout.offsets[index + 1],
            byte_start=layout.offsets[index],
            trusted_root=trusted_root.raw,
            key_events=tuple(layout.key_events),
            covered_size=covered,
            root_signatures=root_signatures,
            log_id=layout.log_id,
            ts_wanted=wanted,
        )
        for index in range(len(layout.offsets) - 1)
    ]
    chunks = run_tasks(tasks, _worker_count(workers, layout.size))
    return finish(
        chunks, layout.size, layout.key_events, trusted_root, layout.checkpoints, known_checkpoints
    )
