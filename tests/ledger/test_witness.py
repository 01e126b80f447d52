"""Checkpoint notes served by the log, and a site witness that cosigns only consistent ones.

Attack 6 (split view): two copies of the coordinator's database extended differently are
detected by a witness that cosigned one of them, which keeps both notes as evidence.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.ledger.conftest import T0, World, enrolment_payload, recovery_payload, seeded_key
from tests.ledger.witness_helpers import feed, make_witness, second_db_url
from veracity.contracts.events import ROOT_ACTOR
from veracity.errors import InputError, LedgerIntegrityError, ProofError, SignatureError
from veracity.ledger import store
from veracity.ledger.merkle import MerkleTree, leaf_hash
from veracity.ledger.note import CheckpointText, Note, NoteVerifier, sign_note, verify_note
from veracity.ledger.witness import CompactRange
from veracity.ledger.witnessed import WitnessedLog, witness_name

__all__ = ["second_db_url"]  # the fixture, imported for pytest


def _split(make_world: Callable[..., World], url_a: str, url_b: str) -> tuple[World, World]:
    """Two copies of one ledger (same keys, times and bytes), checkpointed at the same size."""
    worlds = []
    for url in (url_a, url_b):
        world = make_world(url, sites=("hospital-a", "hospital-b"))
        world.dataset("hospital-a")
        world.ledger.checkpoint(now=T0)
        worlds.append(world)
    assert worlds[0].ledger.root() == worlds[1].ledger.root()
    return worlds[0], worlds[1]


def test_note_verifies_under_the_logs_vkey(make_world: Callable[..., World], db_url: str) -> None:
    world = make_world(db_url)
    world.ledger.checkpoint(now=T0)
    log = WitnessedLog(world.ledger)
    note = Note.parse(log.note().render())
    assert verify_note(note, [NoteVerifier.parse(log.verifier.vkey())])
    checkpoint = CheckpointText.parse(note.text)
    assert checkpoint.origin == f"veracity.local/veracity/{world.ledger.log_id}"
    assert checkpoint.root_hash == world.ledger.root(checkpoint.tree_size)


def test_no_note_is_signed_for_a_forged_checkpoint_row(
    make_world: Callable[..., World], db_url: str
) -> None:
    world = make_world(db_url)
    world.ledger.checkpoint(now=T0)
    size = world.ledger.latest_checkpoint().tree_size  # type: ignore[union-attr]
    with store.write_session(world.ledger.engine) as session:
        row = session.get(store.CheckpointRow, size)
        assert row is not None
        row.root_hash = hashlib.sha256(b"forged").digest()
    with pytest.raises(SignatureError):
        WitnessedLog(world.ledger).note()


def test_witness_cosigns_and_the_log_serves_the_cosignature(
    make_world: Callable[..., World], db_url: str, tmp_path: Path
) -> None:
    world = make_world(db_url)
    world.ledger.checkpoint(now=T0)
    witness = make_witness(tmp_path / "w", world, "hospital-a")
    cosignature = feed(witness, world.ledger)
    log = WitnessedLog(world.ledger)
    size = witness.state().tree_size
    assert log.add_cosignature(size, cosignature, witness.verifier, site="hospital-a")
    assert not log.add_cosignature(size, cosignature, witness.verifier, site="hospital-a")
    note = Note.parse(log.note().render())
    assert verify_note(note, [log.verifier, witness.verifier]) == [log.verifier, witness.verifier]


def test_a_site_cannot_post_another_sites_cosignature(
    make_world: Callable[..., World], db_url: str, tmp_path: Path
) -> None:
    world = make_world(db_url)
    world.ledger.checkpoint(now=T0)
    witness = make_witness(tmp_path / "w", world, "hospital-a")
    cosignature = feed(witness, world.ledger)
    with pytest.raises(InputError, match="cosigns as"):
        WitnessedLog(world.ledger).add_cosignature(
            witness.state().tree_size, cosignature, witness.verifier, site="hospital-b"
        )


def test_witness_follows_the_log_across_checkpoints(
    make_world: Callable[..., World], db_url: str, tmp_path: Path
) -> None:
    world = make_world(db_url)
    witness = make_witness(tmp_path / "w", world, "hospital-a")
    for round_number in range(3):
        for i in range(5):
            world.note(ROOT_ACTOR, f"r{round_number}-{i}")
        world.ledger.checkpoint(now=T0)
        feed(witness, world.ledger)
    assert witness.state().tree_size == world.ledger.latest_checkpoint().tree_size  # type: ignore[union-attr]


def test_witness_refuses_a_rollback(
    make_world: Callable[..., World], db_url: str, tmp_path: Path
) -> None:
    world = make_world(db_url)
    world.ledger.checkpoint(now=T0)
    old = WitnessedLog(world.ledger).note().render()
    world.note(ROOT_ACTOR, "more")
    world.ledger.checkpoint(now=T0)
    witness = make_witness(tmp_path / "w", world, "hospital-a")
    feed(witness, world.ledger)
    with pytest.raises(ProofError, match="rollback"):
        feed(witness, world.ledger, note=old)


def test_split_view_is_detected_by_the_witness_which_keeps_both_notes(
    make_world: Callable[..., World], db_url: str, second_db_url: str, tmp_path: Path
) -> None:
    a, b = _split(make_world, db_url, second_db_url)
    witness = make_witness(tmp_path / "w", a, "hospital-a")
    feed(witness, a.ledger)
    a.note(ROOT_ACTOR, "study X withdrawn")
    b.note(ROOT_ACTOR, "study X approved by the board")
    a.ledger.checkpoint(now=T0)
    b.ledger.checkpoint(now=T0)
    feed(witness, a.ledger)
    with pytest.raises(ProofError, match=r"two roots|inconsistent"):
        feed(witness, b.ledger)
    evidence = sorted((tmp_path / "w" / "evidence").iterdir())
    assert len(evidence) == 2
    roots = {CheckpointText.parse(Note.parse(p.read_text()).text).root_hash for p in evidence}
    assert len(roots) == 2


def test_split_view_at_a_larger_size_fails_the_consistency_proof(
    make_world: Callable[..., World], db_url: str, second_db_url: str, tmp_path: Path
) -> None:
    a, b = _split(make_world, db_url, second_db_url)
    a.note(ROOT_ACTOR, "only in a")
    a.ledger.checkpoint(now=T0)
    witness = make_witness(tmp_path / "w", a, "hospital-a")
    feed(witness, a.ledger)
    for text in ("only in b", "and more", "and more still"):
        b.note(ROOT_ACTOR, text)
    b.ledger.checkpoint(now=T0)
    with pytest.raises(ProofError, match="inconsistent"):
        feed(witness, b.ledger)
    assert len(list((tmp_path / "w" / "evidence").iterdir())) == 2


def test_witness_refuses_when_the_root_enrols_its_own_key_for_the_site(
    make_world: Callable[..., World], db_url: str, tmp_path: Path
) -> None:
    world = make_world(db_url)
    world.ledger.checkpoint(now=T0)
    witness = make_witness(tmp_path / "w", world, "hospital-a")
    feed(witness, world.ledger)
    real = world.keys["hospital-a"]
    impostor = seeded_key("impostor")
    with pytest.raises(InputError, match="enrolled once"):  # no silent re-enrolment
        world.ledger.append(
            "key.enrolled",
            ROOT_ACTOR,
            enrolment_payload(world.ledger.log_id, "hospital-a", impostor),
            signer=world.root,
            now=world.now(),
        )
    # The only way left is a visible recovery, which the site's witness refuses to cosign.
    payload = recovery_payload(world.ledger.log_id, "hospital-a", impostor)
    world.ledger.append("key.recovered", ROOT_ACTOR, payload, signer=world.root, now=world.now())
    world.ledger.checkpoint(now=T0)
    before = witness.state()
    with pytest.raises(LedgerIntegrityError, match="does not hold"):
        feed(witness, world.ledger)
    assert witness.state() == before  # nothing stored on refusal
    assert real.public != impostor.public


def test_witness_refuses_a_revocation_the_site_did_not_make(
    make_world: Callable[..., World], db_url: str, tmp_path: Path
) -> None:
    world = make_world(db_url)
    world.revoke("hospital-a")
    world.ledger.checkpoint(now=T0)
    witness = make_witness(tmp_path / "w", world, "hospital-a")
    with pytest.raises(LedgerIntegrityError, match=r"key\.revoked"):
        feed(witness, world.ledger)


def test_witness_refuses_entries_that_are_not_the_trees(
    make_world: Callable[..., World], db_url: str, tmp_path: Path
) -> None:
    world = make_world(db_url)
    world.ledger.checkpoint(now=T0)
    witness = make_witness(tmp_path / "w", world, "hospital-b")
    size = WitnessedLog(world.ledger).note().text.split("\n")[1]
    entries = [e.body for e in world.ledger.iter_entries(limit=int(size))]
    entries[1] = entries[2]
    with pytest.raises(ProofError, match="not its tree"):
        witness.witness(WitnessedLog(world.ledger).note().render(), [], entries)


def test_witness_refuses_a_note_not_signed_by_the_pinned_log(
    make_world: Callable[..., World], db_url: str, tmp_path: Path
) -> None:
    world = make_world(db_url)
    world.ledger.checkpoint(now=T0)
    witness = make_witness(tmp_path / "w", world, "hospital-a")
    note = WitnessedLog(world.ledger).note()
    from veracity.ledger.note import sign_note

    forged = Note(note.text, (sign_note(seeded_key("other"), note.text.split("\n")[0], note.text),))
    with pytest.raises(SignatureError):
        witness.witness(forged.render(), [], [])


def test_witness_name_is_a_note_key_name() -> None:
    assert witness_name("hospital-a") == "hospital-a.witness.veracity.local"


@given(st.lists(st.binary(min_size=32, max_size=32), max_size=70), st.integers(0, 70))
def test_compact_range_root_equals_the_merkle_tree_root(leaves: list[bytes], cut: int) -> None:
    cut = min(cut, len(leaves))
    compact = CompactRange()
    for leaf in leaves[:cut]:
        compact.append(leaf)
    resumed = CompactRange(compact.size, list(compact.hashes))
    for leaf in leaves[cut:]:
        resumed.append(leaf)
    assert resumed.root() == MerkleTree(leaves).root()


def test_witness_refuses_a_foreign_key_for_its_site_even_in_a_log_that_signs_anything(
    make_world: Callable[..., World], db_url: str, tmp_path: Path
) -> None:
    """A coordinator that signs whatever it likes (its own code, its own key): the site's
    witness still refuses a history in which its name was given a key it does not hold."""
    world = make_world(db_url)
    world.ledger.checkpoint(now=T0)
    witness = make_witness(tmp_path / "w", world, "hospital-a")
    feed(witness, world.ledger)
    log = WitnessedLog(world.ledger)
    old = witness.state().tree_size
    bodies = log.bodies(0, world.ledger.size())
    enrolment = next(b for b in bodies if b'"name":"hospital-b"' in b and b'"kind":"key.' in b)
    impostor = seeded_key("impostor-2").public.pem()
    forged = enrolment.replace(b'"name":"hospital-b"', b'"name":"hospital-a"').replace(
        world.keys["hospital-b"].public.pem().replace("\n", "\\n").encode(),
        impostor.replace("\n", "\\n").encode(),
    )
    assert forged != enrolment
    leaves = [*bodies, forged]
    tree = MerkleTree(leaf_hash(b) for b in leaves)
    text = CheckpointText(log.origin, tree.size, tree.root()).text()
    note = Note(text, (sign_note(world.root, log.origin, text),)).render()
    with pytest.raises(LedgerIntegrityError, match="does not hold"):
        witness.witness(note, tree.consistency_proof(old, tree.size), leaves[old:])
