"""Checkpoint signing's two steps on the store: verify-before-sign and the recorded entry.

:meth:`~veracity.ledger.ledger.Ledger.checkpoint_entry` verifies every entry since the
newest checkpoint (:func:`verify_since`), signs the root, and records a ``checkpoint``
entry at the head (:func:`record_checkpoint_entry`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from veracity.contracts.events import (
    KEY_KINDS,
    ROOT_ACTOR,
)
from veracity.crypto.keys import SigningKey, VerifyKey
from veracity.errors import (
    ConfigError,
    InputError,
    LedgerIntegrityError,
    StaleCheckpoint,
)
from veracity.ledger import store
from veracity.ledger.appending import EventRequest, check_event, position_signatures, prepare
from veracity.ledger.checkpoint import Checkpoint
from veracity.ledger.entry import (
    Entry,
    build_body,
    parse_body,
)
from veracity.ledger.keyview import KeyView
from veracity.ledger.merkle import MerkleTree, leaf_hash
from veracity.ledger.verify import (
    KeyEvent,
    verify_extension,
)

__all__ = ["verify_since", "record_checkpoint_entry"]


def verify_since(
    session: Session,
    tree: MerkleTree,
    *,
    start: int,
    size: int,
    trusted: VerifyKey,
    log_id: str,
    own: Callable[[int, int], Mapping[int, bytes]],
) -> bytes:
    """Verify entries ``[start, size)`` with the reference verifier; returns their leaf hashes.

    ``tree`` holds the verified leaves below ``start``: every key event below it must be
    the entry the signed tree holds. ``own(start, size)`` gives the leaf hashes of the
    entries this process signed itself (:func:`~veracity.ledger.verify.verify_extension`).

    Raises
    ------
    LedgerIntegrityError
        If an entry (or a key event below ``start``) fails.
    """
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
    prev_ts = (
        session.execute(
            select(store.EntryRow.ts).where(store.EntryRow.seq == start - 1)
        ).scalar_one_or_none()
        if start
        else None
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
            log_id=bytes.fromhex(log_id),
            own=own(start, size),
            prev_ts=prev_ts,
        )
    finally:
        result.close()
    return leaves


def record_checkpoint_entry(
    session: Session,
    signed: Checkpoint,
    key: SigningKey,
    *,
    log_id: str,
    recorded: Callable[[int], Iterable[Entry]],
) -> Entry:
    """The ``checkpoint`` entry of ``signed`` at the head (the caller holds the write lock).

    ``recorded(size)`` gives the ``checkpoint`` entries from seq ``size`` on: when another
    signer recorded this size first, its entry is returned.

    Raises
    ------
    InputError
        If ``signed`` is dated before the last entry it covers.
    StaleCheckpoint
        If a larger or later checkpoint was recorded since ``signed`` was signed.
    """
    head = session.execute(
        select(store.EntryRow.seq, store.EntryRow.hash, store.EntryRow.ts)
        .order_by(store.EntryRow.seq.desc())
        .limit(1)
    ).first()
    if head is None:
        raise ConfigError("the ledger has no genesis entry; run `veracity ledger init`")
    existing = session.get(store.CheckpointRow, signed.tree_size)
    if existing is not None:
        # Another signer recorded this size first; its checkpoint has the same root.
        for entry in recorded(signed.tree_size):
            if entry.payload["tree_size"] == signed.tree_size:
                return entry
        raise LedgerIntegrityError(
            f"the checkpoint of size {signed.tree_size} has no checkpoint entry"
        )
    last_ts = session.execute(
        select(store.EntryRow.ts).where(store.EntryRow.seq == signed.tree_size - 1)
    ).scalar_one_or_none()
    if last_ts is not None and signed.timestamp < last_ts:
        raise InputError(
            f"the checkpoint of size {signed.tree_size} is dated {signed.timestamp}, before "
            f"its last entry ({last_ts}): a checkpoint is never older than what it covers"
        )
    newest = session.execute(
        select(store.CheckpointRow.tree_size, store.CheckpointRow.timestamp)
        .order_by(store.CheckpointRow.tree_size.desc())
        .limit(1)
    ).first()
    if newest is not None and (
        newest.tree_size > signed.tree_size or newest.timestamp > signed.timestamp
    ):
        raise StaleCheckpoint(
            f"the checkpoint of size {signed.tree_size} signed at {signed.timestamp} is older "
            f"than the one recorded meanwhile (size {newest.tree_size}, {newest.timestamp}); "
            "sign the head again"
        )
    seq, prev = head.seq + 1, bytes(head.hash)
    payload: dict[str, Any] = {
        "tree_size": signed.tree_size,
        "root_hash": signed.root_hash,
        "log_id": signed.log_id,
        "signature": signed.signature,
    }
    # The entry's ts is the signed time, unless entries appended since signing are newer:
    # then it takes the head's time and the payload carries the signed one.
    ts = max(signed.timestamp, head.ts)
    if ts != signed.timestamp:
        payload["timestamp"] = signed.timestamp
    item = prepare(
        EventRequest("checkpoint", ROOT_ACTOR, payload, signer=key), log_id=bytes.fromhex(log_id)
    )
    check_event(KeyView(session, head=head.seq), seq, item, log_id=log_id)
    signature, _ = position_signatures(
        item, root_key=key, log_id=bytes.fromhex(log_id), seq=seq, prev=prev, ts=ts
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
