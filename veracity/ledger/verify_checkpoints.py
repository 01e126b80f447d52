"""What the verifier checks once every chunk is in: key events, checkpoints, cosignatures.

:func:`finish` hashes the tree from the chunks' leaves, ties the chunks together (chain
and counts), checks that the key events the chunks found are exactly the index, and
checks every checkpoint and cosignature against the recomputed tree.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

from veracity.contracts.events import ROOT_ACTOR
from veracity.crypto.keys import VerifyKey
from veracity.errors import (
    LedgerIntegrityError,
    ProofError,
    SignatureError,
)
from veracity.ledger.checkpoint import Checkpoint, verify_cosignature
from veracity.ledger.keyring import KeyHistory
from veracity.ledger.merkle import MerkleTree, verify_consistency
from veracity.ledger.verify_common import (
    Chunk,
    Failure,
    KeyEvent,
    VerifyReport,
    backwards,
    history_of,
)

__all__ = [
    "fail_first",
    "recorded_checkpoint",
    "check_checkpoint_times",
    "check_checkpoints",
    "check_cosignature_keys",
    "finish",
]


def fail_first(errors: list[tuple[int | None, str]]) -> None:
    """Raise the failure with the lowest seq (else the first one), if there is any."""
    if not errors:
        return
    with_seq = [(seq, reason) for seq, reason in errors if seq is not None]
    if with_seq:
        seq, reason = min(with_seq, key=lambda item: item[0])
        raise LedgerIntegrityError(reason, seq=seq)
    raise LedgerIntegrityError(errors[0][1])


def signed_by_one_of(checkpoint: Checkpoint, keys: Sequence[VerifyKey]) -> None:
    """Check that one of the log keys ``keys`` signed ``checkpoint``.

    Raises
    ------
    SignatureError
        If none did.
    """
    for key in keys:
        try:
            checkpoint.verify(key)
        except SignatureError:
            continue
        return
    raise SignatureError(f"checkpoint of size {checkpoint.tree_size}: not signed by a log key")


def recorded_checkpoint(ts: str, payload: dict[str, Any]) -> Checkpoint:
    """The checkpoint a ``checkpoint`` entry dated ``ts`` records.

    Its signed time is the payload's ``timestamp`` when present (entries appended between
    signing and recording dated the entry later), else the entry's ``ts``.
    """
    return Checkpoint(
        log_id=payload["log_id"],
        tree_size=payload["tree_size"],
        root_hash=payload["root_hash"],
        timestamp=payload.get("timestamp") or ts,
        signature=payload["signature"],
    )


def check_checkpoint_times(listed: Sequence[Checkpoint], chunks: Sequence[Chunk]) -> None:
    """Check that no checkpoint is older than its last entry or an earlier checkpoint.

    A checkpoint entry's signed time may not be after the entry's own ``ts`` either. (An
    entry after a checkpoint may be older than it: only the entries' own order counts.)

    Raises
    ------
    LedgerIntegrityError
        Naming the checkpoint's size (and its entry's seq where it has one).
    """
    errors: list[tuple[int | None, str]] = []
    for chunk in chunks:
        for seq, ts, payload in chunk.checkpoint_entries:
            signed_at = payload.get("timestamp")
            if signed_at is not None and signed_at > ts:
                errors.append(
                    (seq, f"checkpoint entry dated {ts} carries a later signed time {signed_at}")
                )
    fail_first(errors)
    ts_at: dict[int, str] = {}
    entry_of: dict[int, int] = {}
    for chunk in chunks:
        ts_at.update(chunk.ts_at)
        entry_of.update((payload["tree_size"], seq) for seq, _, payload in chunk.checkpoint_entries)
    previous: Checkpoint | None = None
    for checkpoint in sorted(listed, key=lambda c: (c.tree_size, c.timestamp)):
        last = ts_at.get(checkpoint.tree_size - 1)
        if last is not None and checkpoint.timestamp < last:
            raise LedgerIntegrityError(
                f"the checkpoint of size {checkpoint.tree_size} is dated "
                f"{checkpoint.timestamp}, before its last entry ({last})",
                seq=entry_of.get(checkpoint.tree_size),
            )
        if previous is not None and checkpoint.timestamp < previous.timestamp:
            raise LedgerIntegrityError(
                f"the checkpoint of size {checkpoint.tree_size} is dated "
                f"{checkpoint.timestamp}, before the checkpoint of size "
                f"{previous.tree_size} ({previous.timestamp})",
                seq=entry_of.get(checkpoint.tree_size),
            )
        previous = checkpoint


def check_checkpoints(
    tree: MerkleTree,
    log_id: str,
    history: KeyHistory,
    listed: Sequence[Checkpoint],
    chunks: Sequence[Chunk],
    known: Sequence[Checkpoint],
) -> None:
    """Check every checkpoint (recorded, listed, pinned by the auditor) against ``tree``."""
    size = tree.size
    errors: list[tuple[int | None, str]] = []
    recorded: dict[int, Checkpoint] = {}
    for chunk in chunks:
        for seq, ts, payload in chunk.checkpoint_entries:
            checkpoint = recorded_checkpoint(ts, payload)
            cut = checkpoint.tree_size
            if cut in recorded:
                errors.append((seq, f"a second checkpoint entry of size {cut}"))
                continue
            recorded[cut] = checkpoint
            log_key = history.key_at(ROOT_ACTOR, seq)
            try:
                if log_key is None:
                    raise SignatureError("no log key")
                checkpoint.verify(log_key.key)
            except SignatureError:
                errors.append(
                    (
                        seq,
                        "checkpoint entry is not signed by the log key the trusted root "
                        "(identity) key enrolled for this position",
                    )
                )
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
    fail_first(errors)
    by_size: dict[int, Checkpoint] = {}
    for checkpoint in listed:
        try:
            if recorded.get(checkpoint.tree_size) != checkpoint:
                # (The same checkpoint recorded as an entry was verified above.)
                signed_by_one_of(checkpoint, history.log_keys())
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
    fail_first(errors)
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
    fail_first(errors)
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
            signed_by_one_of(pinned, history.log_keys())
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


def check_cosignature_keys(
    chunks: Sequence[Chunk], history: KeyHistory
) -> list[tuple[int | None, str]]:
    """The failures of cosignatures that do not verify under the key their actor held then."""
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


def finish(
    results: Iterable[Chunk],
    size: int,
    index_events: Sequence[KeyEvent],
    trusted_root: VerifyKey,
    listed: Sequence[Checkpoint],
    known: Sequence[Checkpoint],
) -> VerifyReport:
    """Combine the chunks' results and check what spans them; the report if all holds."""
    chunks: list[Chunk] = []
    tree = MerkleTree()
    for chunk in results:
        # Hash the tree while the other chunks are still being checked.
        chunks.append(chunk)
        tree.extend_blob(chunk.leaves)
    errors: list[tuple[int | None, str]] = []
    expected = 0
    previous_last: bytes | None = None
    previous_ts: str | None = None
    for chunk in chunks:
        if chunk.error is not None:
            errors.append(chunk.error)
        if (
            chunk.count
            and chunk.first_ts is not None
            and previous_ts is not None
            and chunk.first_ts < previous_ts
        ):
            errors.append((chunk.start, backwards(chunk.start, chunk.first_ts, previous_ts)))
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
        previous_ts = chunk.last_ts
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
    fail_first(errors)
    first_seen: dict[bytes, int] = {}
    for chunk in chunks:
        for message, seq in chunk.site_statements:
            earlier = first_seen.setdefault(message, seq)
            if earlier != seq:
                errors.append(
                    (seq, f"replays the site statement already recorded at seq {earlier}")
                )
    fail_first(errors)
    genesis_hash = tree.leaf(0).hex()
    try:
        history = history_of(found, bytes.fromhex(genesis_hash))
    except Failure as failure:
        raise LedgerIntegrityError(failure.reason, seq=failure.seq) from failure
    fail_first(check_cosignature_keys(chunks, history))
    check_checkpoints(tree, genesis_hash, history, listed, chunks, known)
    check_checkpoint_times(listed, chunks)
    return VerifyReport(
        entries=size,
        checkpoints=len({c.tree_size for c in listed}),
        log_id=genesis_hash,
        root_hash=tree.root().hex(),
        signatures=sum(chunk.signatures for chunk in chunks),
        receipts=sum(chunk.receipts for chunk in chunks),
        recoveries=tuple(history.recoveries()),
        tree=tree,
    )
