"""The offline identity key enrols the online log key; the log key rotates (#18).

The identity key is what auditors trust (``--trust root.pub``); the log key signs entries
and checkpoints. A rotation is signed by the identity and handed over by the outgoing log
key; checkpoint notes carry both log keys during the overlap; the identity's retirement
ends it. A stolen log key can enrol no other log key, and a log it makes does not verify.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ledger.test_attacks import raw_append
from tests.ledger.witness_helpers import feed, make_witness
from veracity.contracts.events import ROOT_ACTOR
from veracity.core.fields import format_timestamp
from veracity.crypto.keys import SigningKey
from veracity.errors import (
    InputError,
    LedgerIntegrityError,
    SignatureError,
    VeracityError,
)
from veracity.ledger.checkpoint import sign_checkpoint
from veracity.ledger.entry import entry_message, statement_bytes
from veracity.ledger.ledger import Ledger
from veracity.ledger.log_key import (
    retire_log_key,
    retirement_payload,
    rotate_log_key,
    rotation_payload,
)
from veracity.ledger.note import Note, NoteVerifier, sign_note
from veracity.ledger.statement import encode_signature
from veracity.ledger.verify import verify_bundle_file
from veracity.ledger.witnessed import WitnessedLog

from .conftest import STUDY_HASH, T0, World, seeded_key

IDENTITY = seeded_key("identity")
LOG_1 = seeded_key("log-1")
LOG_2 = seeded_key("log-2")


def split_world(url: str) -> World:
    """A ledger whose genesis has the identity enrol LOG_1, with two sites and a dataset."""
    ledger = Ledger.init(url, root_key=LOG_1, identity_key=IDENTITY, now=T0, checkpoint_every=0)
    world = World(ledger=ledger, root=LOG_1)
    world.enrol("hospital-a")
    world.enrol("hospital-b")
    world.dataset("hospital-a")
    world.dataset("hospital-b")
    return world


def rotate(world: World, new: SigningKey = LOG_2) -> None:
    rotate_log_key(world.ledger, identity=IDENTITY, new_key=new, now=world.now())
    world.root = new


def forged_root_entry(world: World, key: SigningKey, text: str) -> int:
    """A database writer holding ``key`` appends a root entry it signs at its position."""
    ledger = world.ledger
    seq = ledger.size()
    prev = ledger.get(seq - 1)
    ts = "2026-11-27T16:00:00.000000Z"
    statement = statement_bytes("note.recorded", ROOT_ACTOR, {"text": text})
    message = entry_message(
        bytes.fromhex(ledger.log_id), seq, bytes.fromhex(prev.hash), ts, statement
    )
    return raw_append(
        ledger,
        "note.recorded",
        ROOT_ACTOR,
        {"text": text},
        signature=encode_signature(key.sign(message)),
    )


def test_a_ledger_whose_log_key_rotated_verifies_end_to_end(db_url: str, tmp_path: Path) -> None:
    world = split_world(db_url)
    ledger = world.ledger
    witness = make_witness(tmp_path / "w", world, "hospital-a")
    world.round("run-1", STUDY_HASH, 1, ["hospital-a", "hospital-b"], "a1" * 32)
    ledger.checkpoint(now=world.now())
    feed(witness, ledger)  # pinned to LOG_1, as a site learns it at enrolment

    rotate(world)
    assert ledger.root_public_key == LOG_2.public
    assert ledger.identity_public_key == IDENTITY.public
    world.round("run-1", STUDY_HASH, 2, ["hospital-a", "hospital-b"], "a2" * 32)
    world.dataset("hospital-a", "d2")
    ledger.checkpoint(now=world.now())
    overlap = WitnessedLog(ledger).note()
    names = {s.key_id for s in overlap.signatures}
    for key in (LOG_1, LOG_2):  # both log keys sign during the overlap
        assert NoteVerifier.for_key(WitnessedLog(ledger).origin, key.public).key_id in names
    feed(witness, ledger)
    assert witness.state().log_keys == [LOG_1.public.raw.hex(), LOG_2.public.raw.hex()]

    retire_log_key(ledger, identity=IDENTITY, key_id=LOG_1.public.key_id, now=world.now())
    world.note(ROOT_ACTOR, "after the overlap")
    ledger.checkpoint(now=world.now())
    after = WitnessedLog(ledger).note(cosigned=False)
    assert len(after.signatures) == 1  # the retired key signs no more notes
    feed(witness, ledger)
    assert witness.state().log_keys == [LOG_2.public.raw.hex()]
    late = make_witness(tmp_path / "late", world, "hospital-b")  # pinned to LOG_1, sees it all now
    feed(late, ledger)

    for mode in ("all", "tail"):
        report = ledger.verify(IDENTITY.public, root_signatures=mode)
        assert report.entries == ledger.size()
    assert ledger.verify(IDENTITY.public, workers=2).entries == ledger.size()
    bundle = tmp_path / "ledger.jsonl"
    ledger.export_bundle(bundle)
    assert verify_bundle_file(bundle, trusted_root=IDENTITY.public).entries == ledger.size()
    assert (
        verify_bundle_file(bundle, trusted_root=IDENTITY.public, root_signatures="tail").checkpoints
        == 3
    )
    with pytest.raises(LedgerIntegrityError, match="identity"):
        ledger.verify(LOG_1.public)  # root.pub is the identity key, never a log key
    ledger.close()


def test_entries_signed_by_the_outgoing_log_key_after_a_rotation_are_refused(
    db_url: str,
) -> None:
    world = split_world(db_url)
    rotate(world)
    with pytest.raises(SignatureError, match="not the key enrolled"):
        world.ledger.append("note.recorded", ROOT_ACTOR, {"text": "x"}, signer=LOG_1)
    retire_log_key(world.ledger, identity=IDENTITY, key_id=LOG_1.public.key_id)
    seq = forged_root_entry(world, LOG_1, "signed by the retired log key")
    with pytest.raises(LedgerIntegrityError) as caught:
        world.ledger.verify(IDENTITY.public)
    assert caught.value.seq == seq
    world.ledger.close()


def test_a_checkpoint_signed_by_the_retired_log_key_is_refused(db_url: str, tmp_path: Path) -> None:
    world = split_world(db_url)
    ledger = world.ledger
    witness = make_witness(tmp_path / "w", world, "hospital-a")
    ledger.checkpoint(now=world.now())
    feed(witness, ledger)
    rotate(world)
    retire_log_key(ledger, identity=IDENTITY, key_id=LOG_1.public.key_id)
    ledger.checkpoint(now=world.now())
    feed(witness, ledger)
    world.note(ROOT_ACTOR, "later")
    size = ledger.size()
    # The thief of the retired key signs a checkpoint and its note.
    stolen = sign_checkpoint(
        LOG_1,
        log_id=ledger.log_id,
        tree_size=size,
        root_hash=ledger.root(size).hex(),
        timestamp=format_timestamp(),
    )
    log = WitnessedLog(ledger)
    note = Note(log.text(stolen), (sign_note(LOG_1, log.origin, log.text(stolen)),))
    with pytest.raises(SignatureError):
        feed(witness, ledger, note.render())
    with ledger.transaction() as session:  # recorded as if the coordinator had signed it
        ledger.record_checkpoint(session, stolen)
    with pytest.raises(LedgerIntegrityError, match="not signed by the log key"):
        ledger.verify(IDENTITY.public)
    ledger.close()


def test_a_log_key_enrolled_by_anything_but_the_identity_is_refused(db_url: str) -> None:
    world = split_world(db_url)
    ledger = world.ledger
    impostor = seeded_key("not the identity")
    for signer in (impostor, LOG_1):  # another key, or the log key itself
        payload = rotation_payload(
            log_id=ledger.log_id, identity=signer, outgoing=LOG_1, incoming=LOG_2
        )
        with pytest.raises(SignatureError, match="identity"):
            ledger.append("key.rotated", ROOT_ACTOR, payload, signer=LOG_1)
    payload = rotation_payload(
        log_id=ledger.log_id, identity=IDENTITY, outgoing=LOG_1, incoming=LOG_2
    )
    del payload["identity_signature"]
    with pytest.raises(SignatureError, match="identity signature is missing"):
        ledger.append("key.rotated", ROOT_ACTOR, payload, signer=LOG_1)
    # Not by a site's key event either: a site's name never carries an identity signature.
    ledger.close()


def test_a_stolen_log_key_cannot_enrol_another_log_key(db_url: str) -> None:
    """The thief holds LOG_1 (the coordinator's online key), never the identity."""
    world = split_world(db_url)
    ledger = world.ledger
    thief = seeded_key("thief's log key")
    forged = rotation_payload(log_id=ledger.log_id, identity=LOG_1, outgoing=LOG_1, incoming=thief)
    with pytest.raises(SignatureError):
        ledger.append("key.rotated", ROOT_ACTOR, forged, signer=LOG_1)
    # Through the database, signed at its position with the stolen key: verify refuses it.
    statement = statement_bytes("key.rotated", ROOT_ACTOR, forged)
    seq = ledger.size()
    prev = ledger.get(seq - 1)
    ts = "2026-11-27T16:00:00.000000Z"
    message = entry_message(
        bytes.fromhex(ledger.log_id), seq, bytes.fromhex(prev.hash), ts, statement
    )
    raw_append(
        ledger, "key.rotated", ROOT_ACTOR, forged, signature=encode_signature(LOG_1.sign(message))
    )
    with pytest.raises(LedgerIntegrityError) as caught:
        ledger.verify(IDENTITY.public)
    assert caught.value.seq == seq
    with pytest.raises(InputError, match="retire"):
        retire_log_key(ledger, identity=IDENTITY, key_id=LOG_1.public.key_id)
    ledger.close()


def test_a_stolen_log_key_cannot_retire_or_enrol_a_second_log_key(db_url: str) -> None:
    world = split_world(db_url)
    ledger = world.ledger
    rotate(world)
    forged = retirement_payload(
        log_id=ledger.log_id, identity=LOG_2, key_id=LOG_1.public.key_id, reason="x"
    )
    with pytest.raises(SignatureError):
        ledger.append("key.revoked", ROOT_ACTOR, forged, signer=LOG_2)
    second = {
        "name": "coordinator-2",
        "role": "root",
        "public_key": seeded_key("second root").public.pem(),
        "valid_from": "2026-11-27T16:00:00.000000Z",
    }
    with pytest.raises(VeracityError):
        ledger.append("key.enrolled", ROOT_ACTOR, second, signer=LOG_2)
    ledger.close()


def test_a_log_made_with_a_stolen_log_key_does_not_verify_under_the_identity(
    tmp_path: Path,
) -> None:
    """A thief of the coordinator's online key starts a log of its own: auditors refuse it.

    Before the split the online key *was* the key auditors trust, so such a log verified.
    """
    from veracity.crypto.keys import load_signing_key, load_verify_key
    from veracity.server.coordinator.bootstrap import init_coordinator

    home = tmp_path / "coordinator"
    with init_coordinator(home) as service:
        online = service.root_key  # what the running coordinator holds
    trusted = load_verify_key(home / "keys" / "root.pub")
    online_files = list((home / "keys").glob("*.pem"))
    assert [load_signing_key(p).public for p in online_files] == [online.public]
    thief = f"sqlite:///{tmp_path / 'thief.db'}"
    with (
        Ledger.init(thief, root_key=online, now=T0) as forged,
        pytest.raises(LedgerIntegrityError, match="identity"),
    ):
        forged.verify(trusted)
