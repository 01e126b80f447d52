"""C2SP signed notes, checkpoints and cosignatures against the specifications' own examples."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.ledger.conftest import seeded_key
from veracity.errors import InputError, SignatureError
from veracity.ledger.note import (
    SIG_COSIGNATURE_V1,
    SIG_ED25519,
    CheckpointText,
    Note,
    NoteVerifier,
    cosign,
    cosignature_time,
    key_id,
    log_origin,
    sign_note,
    verify_note,
)

LOG = seeded_key("note-log")
WITNESS = seeded_key("note-witness")
ORIGIN = log_origin("example.org", "ab" * 32)


def _checkpoint(size: int = 7) -> str:
    return CheckpointText(ORIGIN, size, hashlib.sha256(b"root").digest()).text()


def test_spec_vkey_parses_and_its_key_id_is_the_recommended_hash(
    load_vector: Callable[[str], Any],
) -> None:
    vector = load_vector("c2sp/examples.json")["signed_note"]
    verifier = NoteVerifier.parse(vector["vkey"])
    assert verifier.name == "example.com/foo"
    assert verifier.sig_type == SIG_ED25519
    assert verifier.key_id.hex() == "530d903a"
    assert verifier.vkey() == vector["vkey"]


def test_spec_signed_note_verifies_under_its_vkey(load_vector: Callable[[str], Any]) -> None:
    vector = load_vector("c2sp/examples.json")["signed_note"]
    note = Note.parse(vector["note"])
    assert note.text == "This is an example message.\n"
    assert verify_note(note, [NoteVerifier.parse(vector["vkey"])])
    assert note.render() == vector["note"]


def test_spec_signed_note_with_changed_text_is_refused(load_vector: Callable[[str], Any]) -> None:
    vector = load_vector("c2sp/examples.json")["signed_note"]
    note = Note.parse(vector["note"].replace("example message", "example massage"))
    with pytest.raises(SignatureError):
        verify_note(note, [NoteVerifier.parse(vector["vkey"])])


def test_note_signed_only_by_unknown_keys_is_refused(load_vector: Callable[[str], Any]) -> None:
    vector = load_vector("c2sp/examples.json")
    note = Note.parse(vector["unsigned_by_known_key"]["note"])
    assert note.text.endswith("ed è subito sera.\n")  # the text keeps its inner blank line
    with pytest.raises(SignatureError, match="no signature by a trusted key"):
        verify_note(note, [NoteVerifier.parse(vector["signed_note"]["vkey"])])


def test_spec_cosigned_checkpoint_parses_with_its_timestamp(
    load_vector: Callable[[str], Any],
) -> None:
    vector = load_vector("c2sp/examples.json")["cosigned_checkpoint"]
    note = Note.parse(vector["note"])
    body = CheckpointText.parse(note.text)
    assert body.origin == vector["origin"]
    assert body.tree_size == vector["tree_size"]
    assert body.text() == note.text
    log_line, cosignature = note.signatures
    assert log_line.name == vector["origin"]
    assert len(log_line.signature) == 64
    assert cosignature.name == "witness.example.com/w1"
    assert cosignature_time(cosignature) == vector["cosignature_time"]
    assert note.render() == vector["note"]


def test_cosignature_signs_the_message_the_spec_prints(load_vector: Callable[[str], Any]) -> None:
    vector = load_vector("c2sp/examples.json")["cosigned_checkpoint"]
    text = Note.parse(vector["note"]).text
    signature = cosign(WITNESS, "w.example", text, timestamp=vector["cosignature_time"])
    message = vector["cosigned_message"].encode()
    WITNESS.public.verify(signature.signature[8:], message)  # independent of note.py's verify
    assert signature.signature[:8] == vector["cosignature_time"].to_bytes(8, "big")
    assert signature.key_id == hashlib.sha256(b"w.example\n\x04" + WITNESS.public.raw).digest()[:4]


def test_log_signature_and_cosignature_verify_together() -> None:
    text = _checkpoint()
    log = NoteVerifier.for_key(ORIGIN, LOG.public)
    witness = NoteVerifier.for_key("w.example", WITNESS.public, sig_type=SIG_COSIGNATURE_V1)
    note = Note(text, (sign_note(LOG, ORIGIN, text),)).with_signatures(
        [cosign(WITNESS, "w.example", text, timestamp=1_700_000_000)]
    )
    parsed = Note.parse(note.render())
    assert verify_note(parsed, [log, witness]) == [log, witness]
    assert witness.verify(parsed.text, parsed.signatures[1]) == 1_700_000_000


def test_cosignature_of_another_checkpoint_is_refused() -> None:
    witness = NoteVerifier.for_key("w.example", WITNESS.public, sig_type=SIG_COSIGNATURE_V1)
    signature = cosign(WITNESS, "w.example", _checkpoint(7), timestamp=5)
    with pytest.raises(SignatureError):
        witness.verify(_checkpoint(8), signature)


def test_cosignature_with_changed_timestamp_is_refused() -> None:
    witness = NoteVerifier.for_key("w.example", WITNESS.public, sig_type=SIG_COSIGNATURE_V1)
    signature = cosign(WITNESS, "w.example", _checkpoint(), timestamp=5)
    forged = type(signature)(
        signature.name, signature.key_id, (6).to_bytes(8, "big") + signature.signature[8:]
    )
    with pytest.raises(SignatureError):
        witness.verify(_checkpoint(), forged)


def test_same_key_as_cosigner_has_another_key_id() -> None:
    # signed-note: one key used for two types needs two key ids
    assert key_id("n", SIG_ED25519, LOG.public.raw) != key_id(
        "n", SIG_COSIGNATURE_V1, LOG.public.raw
    )


def test_unknown_signature_is_ignored_and_known_bad_one_refuses_the_note() -> None:
    text = _checkpoint()
    log = NoteVerifier.for_key(ORIGIN, LOG.public)
    stranger = sign_note(seeded_key("stranger"), "stranger.example", text)
    good = sign_note(LOG, ORIGIN, text)
    assert verify_note(Note(text, (stranger, good)), [log]) == [log]
    bad = type(good)(good.name, good.key_id, bytes(64))
    with pytest.raises(SignatureError):
        verify_note(Note(text, (good, bad)), [log])


@pytest.mark.parametrize(
    "note",
    [
        "no blank line\n\u2014 a AAAAAAA=\n",
        "text\n\n",
        "text\n\n\u2014 a AAAAAAA=",
        "text\n\n- a AAAAAAA=\n",
        "text\n\n\u2014 a b AAAAAAA=\n",
        "text\n\n\u2014 a+b AAAAAAA=\n",
        "text\n\n\u2014 a AAAA\n",  # under 5 bytes
        "text\n\n\u2014 a AAAAAAB=\n",  # non-canonical padding bits
        "te\txt\n\n\u2014 a AAAAAAA=\n",
    ],
)
def test_malformed_notes_are_refused(note: str) -> None:
    with pytest.raises(InputError):
        Note.parse(note)


def test_oversized_note_is_refused_before_parsing() -> None:
    with pytest.raises(InputError, match="at most"):
        Note.parse(b"x" * (70 * 1024))


@pytest.mark.parametrize(
    "vkey",
    [
        "example.com/foo+530d903b+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",  # wrong id
        "example.com/foo+530d903a+AqkyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",  # type 2
        "example.com/foo+530d903a",
        "example com+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
    ],
)
def test_malformed_vkeys_are_refused(vkey: str) -> None:
    with pytest.raises(InputError):
        NoteVerifier.parse(vkey)


@pytest.mark.parametrize(
    "text",
    [
        "origin\n012\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
        "origin\n-1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
        "origin\n12\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jx\n",
        "origin\n12\n",
        "origin\n12\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n",
        "origin\n12\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=",
    ],
)
def test_malformed_checkpoint_texts_are_refused(text: str) -> None:
    with pytest.raises(InputError):
        CheckpointText.parse(text)


def test_origin_has_the_veracity_shape() -> None:
    assert ORIGIN == "example.org/veracity/" + "ab" * 32
    with pytest.raises(InputError):
        log_origin("two words", "ab" * 32)


@given(
    size=st.integers(min_value=0, max_value=2**63),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(st.text(alphabet="abc xyz=/", min_size=1, max_size=8), max_size=2),
)
def test_checkpoint_note_round_trips(size: int, root: bytes, extensions: list[str]) -> None:
    body = CheckpointText(ORIGIN, size, root, tuple(extensions))
    note = Note(body.text(), (sign_note(LOG, ORIGIN, body.text()),))
    parsed = Note.parse(note.render())
    assert CheckpointText.parse(parsed.text) == body
    assert verify_note(parsed, [NoteVerifier.for_key(ORIGIN, LOG.public)])
    assert base64.b64decode(parsed.text.split("\n")[2]) == root
