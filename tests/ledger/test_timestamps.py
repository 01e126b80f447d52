"""Time in the log never goes backwards (issue 18), on SQLite and PostgreSQL.

Appends are dated no earlier than the entry before them and the newest checkpoint; a
checkpoint is signed no older than its last entry and the checkpoint before it, and its
entry takes the head's time when entries were appended between signing and recording. The
verifier refuses, in every mode, an entry dated before its predecessor and a checkpoint
dated before its last entry or an earlier checkpoint. The attack: the coordinator, log key
in hand, re-dates an entry into the past (even before genesis) and signs it again.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from veracity.contracts.events import ROOT_ACTOR
from veracity.core.fields import format_timestamp
from veracity.crypto.keys import SigningKey
from veracity.errors import InputError, LedgerIntegrityError, StaleCheckpoint
from veracity.ledger.checkpoint import sign_checkpoint
from veracity.ledger.entry import build_body, entry_message, statement_bytes, statement_of_body
from veracity.ledger.ledger import Ledger
from veracity.ledger.merkle import leaf_hash
from veracity.ledger.statement import encode_signature
from veracity.ledger.verify import RootSignatures, verify_bundle_file, verify_database

from .conftest import T0, World
from .test_fast_paths import inference_payload


def _ts(seconds: float) -> str:
    return format_timestamp(T0 + timedelta(seconds=seconds))


# ---------------------------------------------------------------------- appending


def test_an_append_with_a_clock_set_back_is_dated_as_its_predecessor(
    db_url: str, make_world: Callable[..., World]
) -> None:
    world = make_world(db_url, checkpoint_every=0)
    before = world.note(ROOT_ACTOR, "at the right time")
    late = world.ledger.append(
        "note.recorded", ROOT_ACTOR, {"text": "clock set back"}, signer=world.root, now=T0
    )
    assert late.ts == before.ts
    assert world.ledger.get(late.seq).ts == before.ts
    world.ledger.verify(world.root.public)


def test_an_append_is_never_dated_before_the_newest_checkpoint(
    db_url: str, make_world: Callable[..., World]
) -> None:
    world = make_world(db_url, checkpoint_every=0)
    checkpoint = world.ledger.checkpoint(now=T0 + timedelta(hours=1))
    entry = world.note(ROOT_ACTOR, "after the checkpoint, clock behind it")
    assert entry.ts == checkpoint.timestamp
    world.ledger.verify(world.root.public)


# ---------------------------------------------------------------------- checkpoints


def test_a_checkpoint_is_signed_no_older_than_its_last_entry(
    db_url: str, make_world: Callable[..., World]
) -> None:
    world = make_world(db_url, checkpoint_every=0)
    last = world.note(ROOT_ACTOR, "late entry")
    checkpoint = world.ledger.checkpoint(now=T0)  # a clock behind the entries
    assert checkpoint.tree_size == last.seq + 1
    assert checkpoint.timestamp == last.ts
    world.ledger.verify(world.root.public)


def test_entries_appended_between_signing_and_recording_date_the_checkpoint_entry(
    db_url: str, make_world: Callable[..., World], tmp_path: Path
) -> None:
    world = make_world(db_url, checkpoint_every=0)
    signed = world.ledger.sign_checkpoint(now=T0 + timedelta(seconds=10))
    later = world.ledger.append(
        "note.recorded",
        ROOT_ACTOR,
        {"text": "appended meanwhile"},
        signer=world.root,
        now=T0 + timedelta(seconds=20),
    )
    with world.ledger.transaction() as session:
        entry = world.ledger.record_checkpoint(session, signed)
    assert entry.ts == later.ts
    assert entry.payload["timestamp"] == signed.timestamp
    assert world.ledger.checkpoints() == [signed]
    for mode in ("all", "tail"):
        world.ledger.verify(world.root.public, root_signatures=mode)
    bundle = tmp_path / "ledger.bundle"
    world.ledger.export_bundle(bundle)
    verify_bundle_file(bundle, trusted_root=world.root.public)


def test_a_racing_signer_gets_a_stale_checkpoint_and_signs_again(
    db_url: str, make_world: Callable[..., World]
) -> None:
    world = make_world(db_url, checkpoint_every=0)
    first = world.ledger.sign_checkpoint(now=T0 + timedelta(seconds=30))
    world.note(ROOT_ACTOR, "appended meanwhile")
    second = world.ledger.checkpoint(now=T0 + timedelta(seconds=40))  # the other signer
    assert second.tree_size > first.tree_size
    with (
        pytest.raises(StaleCheckpoint, match="sign the head again"),
        world.ledger.transaction() as session,
    ):
        world.ledger.record_checkpoint(session, first)
    assert world.ledger.checkpoints() == [second]
    # Signed later, but of a smaller size than one recorded meanwhile: stale as well.
    world.note(ROOT_ACTOR, "more")
    smaller = world.ledger.sign_checkpoint(now=T0 + timedelta(seconds=50))
    world.note(ROOT_ACTOR, "more again")
    world.ledger.checkpoint(now=T0 + timedelta(seconds=45))
    with pytest.raises(StaleCheckpoint), world.ledger.transaction() as session:
        world.ledger.record_checkpoint(session, smaller)
    again = world.ledger.checkpoint()
    assert again.tree_size == world.ledger.size() - 1
    world.ledger.verify(world.root.public)


# ---------------------------------------------------------------------- the attack


def _redate_head(ledger: Ledger, root: SigningKey | None, ts: str) -> int:
    """Re-date the newest entry to ``ts``; with ``root`` (the log key), sign it again there."""
    seq = ledger.size() - 1
    head = ledger.get(seq)
    statement = statement_of_body(head.body)
    prev, log_id = bytes.fromhex(head.prev), bytes.fromhex(ledger.log_id)
    signature, extra = head.signature, {}
    if head.root_signature is not None:
        extra = {"root_signature": head.root_signature}
    if root is not None and head.root_signature is None:
        signature = encode_signature(root.sign(entry_message(log_id, seq, prev, ts, statement)))
    elif root is not None:
        raw = base64.b64decode(head.signature)
        message = entry_message(log_id, seq, prev, ts, statement, raw)
        extra = {"root_signature": encode_signature(root.sign(message))}
    body = build_body(statement, prev=head.prev, seq=seq, signature=signature, ts=ts, **extra)
    with ledger.engine.begin() as connection:
        connection.execute(
            sa.text(
                "UPDATE ledger_entry SET ts = :ts, hash = :hash, body = :body WHERE seq = :seq"
            ),
            {"ts": ts, "hash": leaf_hash(body), "body": body, "seq": seq},
        )
    return seq


def _verify_all_modes(world: World, tmp_path: Path, seq: int) -> list[LedgerIntegrityError]:
    ledger, trusted = world.ledger, world.root.public
    errors: list[LedgerIntegrityError] = []
    checks: list[Callable[[], Any]] = [
        lambda: ledger.verify(trusted),
        lambda: ledger.verify(trusted, root_signatures="tail"),
        # The re-dated entry opens a chunk of its own: the chunks are tied by time too.
        lambda: verify_database(
            ledger.url,
            size=ledger.size(),
            trusted_root=trusted,
            key_events=ledger._key_events_for_verify(),
            checkpoints=ledger.checkpoints(),
            chunk_size=seq,
            workers=1,
        ),
    ]
    bundle = tmp_path / "redated.bundle"
    ledger.export_bundle(bundle)
    modes: tuple[RootSignatures, ...] = ("all", "tail")
    for mode in modes:
        checks.append(
            functools.partial(
                verify_bundle_file, bundle, trusted_root=trusted, root_signatures=mode
            )
        )
        checks.append(
            functools.partial(
                verify_bundle_file,
                bundle,
                trusted_root=trusted,
                root_signatures=mode,
                chunk_size=seq,
                workers=1,
            )
        )
    for check in checks:
        with pytest.raises(LedgerIntegrityError) as caught:
            check()
        errors.append(caught.value)
    return errors


@pytest.mark.parametrize("kind", ["root-note", "site-note", "inference"])
@pytest.mark.parametrize("when", ["past", "before-genesis"])
def test_an_entry_re_dated_into_the_past_and_signed_again_is_refused_in_every_mode(
    db_url: str, make_world: Callable[..., World], tmp_path: Path, kind: str, when: str
) -> None:
    world = make_world(db_url, checkpoint_every=0)
    for i in range(3):
        world.note("hospital-a", f"site note {i}")
    world.ledger.checkpoint()
    world.note(ROOT_ACTOR, "after the checkpoint")
    if kind == "root-note":
        world.note(ROOT_ACTOR, "re-dated")
    elif kind == "site-note":
        world.note("hospital-b", "re-dated")
    else:
        world.ledger.append(
            "inference.served", ROOT_ACTOR, inference_payload(1), signer=world.root, now=world.now()
        )
    world.ledger.verify(world.root.public)
    ts = _ts(1.5) if when == "past" else "2020-01-01T00:00:00.000000Z"
    seq = _redate_head(world.ledger, world.root, ts)

    for error in _verify_all_modes(world, tmp_path, seq):
        assert error.seq == seq, error
        assert f"dated {ts}, before entry {seq - 1}" in error.reason, error


def test_an_entry_re_dated_by_a_database_writer_is_refused_in_every_mode(
    db_url: str, make_world: Callable[..., World], tmp_path: Path
) -> None:
    world = make_world(db_url, checkpoint_every=0)
    world.ledger.checkpoint()
    world.note("hospital-a", "re-dated")
    seq = _redate_head(world.ledger, None, "2020-01-01T00:00:00.000000Z")
    for error in _verify_all_modes(world, tmp_path, seq):
        assert error.seq == seq, error


def _record_raw_checkpoint(world: World, *, timestamp: str) -> int:
    """The coordinator, log key in hand, records a checkpoint of the head dated ``timestamp``."""
    ledger = world.ledger
    size = ledger.size()
    signed = sign_checkpoint(
        world.root,
        log_id=ledger.log_id,
        tree_size=size,
        root_hash=ledger.root(size).hex(),
        timestamp=timestamp,
    )
    payload = {
        "tree_size": size,
        "root_hash": signed.root_hash,
        "log_id": signed.log_id,
        "signature": signed.signature,
    }
    head = ledger.get(size - 1)
    ts = max(timestamp, head.ts)
    if ts != timestamp:
        payload["timestamp"] = timestamp
    statement = statement_bytes("checkpoint", ROOT_ACTOR, payload)
    prev = leaf_hash(head.body)
    message = entry_message(bytes.fromhex(ledger.log_id), size, prev, ts, statement)
    signature = encode_signature(world.root.sign(message))
    body = build_body(statement, prev=prev.hex(), seq=size, signature=signature, ts=ts)
    with ledger.engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO ledger_entry (seq, ts, kind, actor, prev_seq, prev, hash, body) "
                "VALUES (:seq, :ts, 'checkpoint', :actor, :prev_seq, :prev, :hash, :body)"
            ),
            {
                "seq": size,
                "ts": ts,
                "actor": ROOT_ACTOR,
                "prev_seq": size - 1,
                "prev": prev,
                "hash": leaf_hash(body),
                "body": body,
            },
        )
        connection.execute(
            sa.text(
                "INSERT INTO ledger_checkpoint (tree_size, root_hash, timestamp, log_id, "
                "signature) VALUES (:size, :root, :timestamp, :log_id, :signature)"
            ),
            {
                "size": size,
                "root": bytes.fromhex(signed.root_hash),
                "timestamp": timestamp,
                "log_id": signed.log_id,
                "signature": signed.signature,
            },
        )
    return size


@pytest.mark.parametrize("older_than", ["its-last-entry", "the-previous-checkpoint"])
def test_a_checkpoint_dated_in_the_past_is_refused(
    db_url: str, make_world: Callable[..., World], tmp_path: Path, older_than: str
) -> None:
    world = make_world(db_url, checkpoint_every=0)
    world.note(ROOT_ACTOR, "an entry")
    if older_than == "the-previous-checkpoint":
        world.ledger.checkpoint(now=T0 + timedelta(hours=1))
    seq = _record_raw_checkpoint(world, timestamp=_ts(0.5))
    for mode in ("all", "tail"):
        with pytest.raises(LedgerIntegrityError, match=r"is dated .*, before") as caught:
            world.ledger.verify(world.root.public, root_signatures=mode)
        assert caught.value.seq == seq
    bundle = tmp_path / "stale.bundle"
    world.ledger.export_bundle(bundle)
    with pytest.raises(LedgerIntegrityError, match=r"is dated .*, before"):
        verify_bundle_file(bundle, trusted_root=world.root.public)


def test_a_checkpoint_dated_before_its_last_entry_is_not_recorded(
    db_url: str, make_world: Callable[..., World]
) -> None:
    world = make_world(db_url, checkpoint_every=0)
    world.note(ROOT_ACTOR, "an entry")
    size = world.ledger.size()
    backdated = sign_checkpoint(
        world.root,
        log_id=world.ledger.log_id,
        tree_size=size,
        root_hash=world.ledger.root(size).hex(),
        timestamp=_ts(0.5),
    )
    with (
        pytest.raises(InputError, match="before its last entry"),
        world.ledger.transaction() as session,
    ):
        world.ledger.record_checkpoint(session, backdated)
    assert world.ledger.checkpoints() == []
    world.ledger.verify(world.root.public)
