"""C2SP tlog-policy: parsing, writing and the quorum rule."""

from __future__ import annotations

import hashlib

import pytest

from tests.ledger.conftest import seeded_key
from veracity.errors import InputError, SignatureError
from veracity.ledger.note import (
    SIG_COSIGNATURE_V1,
    CheckpointText,
    Note,
    NoteVerifier,
    cosign,
    log_origin,
    sign_note,
)
from veracity.ledger.policy import Policy

ORIGIN = log_origin("example.org", "cd" * 32)
LOG = seeded_key("policy-log")
WITNESSES = {f"w{i}": seeded_key(f"policy-w{i}") for i in range(1, 4)}


def _wvkey(name: str) -> NoteVerifier:
    return NoteVerifier.for_key(
        f"{name}.example", WITNESSES[name].public, sig_type=SIG_COSIGNATURE_V1
    )


def _policy(threshold: int) -> Policy:
    return Policy.build(
        logs=[NoteVerifier.for_key(ORIGIN, LOG.public)],
        witnesses={name: _wvkey(name) for name in WITNESSES},
        threshold=threshold,
    )


def _note(*cosigners: str, size: int = 5) -> Note:
    text = CheckpointText(ORIGIN, size, hashlib.sha256(b"r").digest()).text()
    signatures = [sign_note(LOG, ORIGIN, text)]
    signatures += [cosign(WITNESSES[n], f"{n}.example", text, timestamp=9) for n in cosigners]
    return Note(text, tuple(signatures))


def test_spec_example_policy_structure_parses() -> None:
    x = [_wvkey(n).vkey() for n in WITNESSES]
    y = [
        NoteVerifier.for_key(f"y{i}", seeded_key(f"y{i}").public, sig_type=4).vkey()
        for i in range(3)
    ]
    text = (
        f"log {NoteVerifier.for_key(ORIGIN, LOG.public).vkey()}\n\n"
        f"witness X1 {x[0]}\nwitness X2 {x[1]}\n\twitness X3 {x[2]}  https://x3.example/\n"
        "group X-witnesses 2 X1 X2 X3\n# comment\n"
        f"witness Y1 {y[0]}\nwitness Y2 {y[1]}\nwitness Y3 {y[2]}\n"
        "group Y-witnesses any Y1 Y2 Y3\n"
        "group X-and-Y all X-witnesses Y-witnesses\nquorum X-and-Y\n"
    )
    policy = Policy.parse(text)
    assert policy.satisfied({"X1", "X3", "Y2"})
    assert not policy.satisfied({"X1", "Y1", "Y2"})
    assert not policy.satisfied({"X1", "X2"})
    x3 = policy.witness("X3")
    assert x3 is not None
    assert x3.url == "https://x3.example/"


def test_written_policy_parses_back_to_itself() -> None:
    policy = _policy(2)
    assert Policy.parse(policy.render()) == policy
    assert "group witnesses 2 w1 w2 w3" in policy.render()
    assert _policy(0).render().endswith("quorum none\n")


def test_two_of_three_cosignatures_meet_the_quorum() -> None:
    verdict = _policy(2).check(_note("w1", "w3"))
    assert dict(verdict.cosigned) == {"w1": 9, "w3": 9}
    assert verdict.checkpoint.tree_size == 5


def test_one_of_three_cosignatures_falls_short() -> None:
    with pytest.raises(SignatureError, match="needs 2 of 3"):
        _policy(2).check(_note("w2"))


def test_cosignature_by_unlisted_witness_does_not_count() -> None:
    stranger = seeded_key("stranger")
    note = _note("w1")
    extra = cosign(stranger, "w2.example", note.text, timestamp=9)  # w2's name, another key
    with pytest.raises(SignatureError, match="lacks a quorum"):
        _policy(2).check(note.with_signatures([extra]))


def test_checkpoint_not_signed_by_the_listed_log_is_refused() -> None:
    note = _note("w1", "w2")
    other = seeded_key("other-log")
    forged = Note(note.text, (sign_note(other, ORIGIN, note.text), *note.signatures[1:]))
    with pytest.raises(SignatureError, match="not signed by a log"):
        _policy(2).check(forged)


def test_checkpoint_of_another_origin_is_refused() -> None:
    other_origin = log_origin("example.org", "ef" * 32)
    text = CheckpointText(other_origin, 5, bytes(32)).text()
    note = Note(text, (sign_note(LOG, other_origin, text),))
    with pytest.raises(SignatureError, match="not signed by a log"):
        _policy(0).check(note)


@pytest.mark.parametrize(
    "text",
    [
        "quorum none\nquorum none\n",
        "witness a {w}\ngroup g 2 a\nquorum g\n",
        "witness a {w}\ngroup g 1 a a\nquorum g\n",
        "group g any a\nwitness a {w}\nquorum g\n",
        "witness a {w}\nwitness b {w}\nquorum a\n",
        "witness none {w}\nquorum none\n",
        "witness a {w}\n",
        "witness a {w}\nquorum b\n",
        "frobnicate\nquorum none\n",
        "log {w}\nquorum none\n",  # a cosignature key is not a log key
        "witness a {w}\x0b\nquorum a\n",
    ],
)
def test_malformed_policies_are_refused(text: str) -> None:
    with pytest.raises(InputError):
        Policy.parse(text.replace("{w}", _wvkey("w1").vkey()))
