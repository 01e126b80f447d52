"""The fast canonical encoder equals the reference, and entry bytes are built as JCS would."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hypothesis_examples import examples
from veracity.core.canonical import canonical_json
from veracity.core.jcs import decode_canonical, encode_canonical
from veracity.errors import InputError
from veracity.ledger.entry import (
    build_body,
    parse_body,
    statement_bytes,
    statement_message,
    statement_of_body,
)
from veracity.ledger.statement import sign_statement, verify_statement

from .conftest import seeded_key

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
_keys = st.text(max_size=8) | st.sampled_from(["a", "b", "\u20ac", "\ufb33", "\U0001f600", "\r"])
json_documents = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=12,
)


def _reference(document: Any) -> bytes | None:
    try:
        return canonical_json(document)
    except InputError:
        return None


@settings(max_examples=examples(400), deadline=None)
@given(json_documents)
def test_fast_encoder_equals_rfc8785_reference(document: Any) -> None:
    expected = _reference(document)
    if expected is None:
        with pytest.raises(InputError):
            encode_canonical(document)
    else:
        assert encode_canonical(document) == expected


_exact = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=examples(300), deadline=None)
@given(_exact)
def test_canonical_bytes_decode_back_to_the_document(document: Any) -> None:
    data = encode_canonical(document)
    assert decode_canonical(data) == document


@pytest.mark.parametrize(
    "document", [{1: "int key"}, {"t": (1, 2)}, {"big": 2**53}, {"x": float("nan")}]
)
def test_fast_encoder_refuses_or_matches_what_json_dumps_would_coerce(document: Any) -> None:
    expected = _reference(document)
    if expected is None:
        with pytest.raises(InputError):
            encode_canonical(document)
    else:
        assert encode_canonical(document) == expected


@pytest.mark.parametrize(
    "data",
    [
        b'{"b":1,"a":2}',
        b'{"a": 1}',
        b'{"a":1.0}',
        b'{"a":1e-05}',
        b'{"a":1,"a":2}',
        b'{"a":"\\u00e9"}',
        b'{"a":NaN}',
        b"\xff",
        b'{"a":9007199254740993}',
    ],
)
def test_decode_refuses_non_canonical_bytes(data: bytes) -> None:
    with pytest.raises(InputError):
        decode_canonical(data)


@settings(max_examples=examples(200), deadline=None)
@given(
    payload=st.dictionaries(st.text(max_size=6), _exact, max_size=4),
    seq=st.integers(min_value=0, max_value=2**40),
    actor=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,10}", fullmatch=True),
)
def test_entry_body_is_the_canonical_entry_and_holds_the_signed_statement(
    payload: dict[str, Any], seq: int, actor: str
) -> None:
    if _reference(payload) is None:
        return
    statement = statement_bytes("note.recorded", actor, payload)
    signature = "A" * 86 + "=="
    ts = "2026-11-27T15:47:52.123456Z"
    body = build_body(statement, prev="ab" * 32, seq=seq, signature=signature, ts=ts)
    document = {
        "actor": actor,
        "kind": "note.recorded",
        "payload": payload,
        "prev": "ab" * 32,
        "seq": seq,
        "signature": signature,
        "ts": ts,
    }
    assert body == canonical_json(document)
    assert statement_of_body(body) == statement
    entry = parse_body(body)
    assert (entry.seq, entry.actor, entry.payload) == (seq, actor, payload)


def test_statement_message_is_what_sign_statement_signs() -> None:
    key = seeded_key("site")
    log_id = bytes(range(1, 33))
    payload = {"text": "ethics approval REC-1", "n": 2}
    statement = statement_bytes("note.recorded", "hospital-a", payload)
    signature = key.sign(statement_message(statement, log_id))
    import base64

    verify_statement(
        key.public,
        "note.recorded",
        "hospital-a",
        payload,
        base64.b64encode(signature).decode(),
        log_id=log_id,
    )
    assert (
        sign_statement(key, "note.recorded", "hospital-a", payload, log_id=log_id)
        == base64.b64encode(signature).decode()
    )


@pytest.mark.parametrize(
    "body",
    [
        b'{"actor":"a","kind":"k","payload":{},"prev":"00","seq":1,"signature":"s","ts":"t"}',
        b'{"actor":"a","kind":"k","payload":{},"prev":"'
        + b"0" * 64
        + b'","seq":-1,"signature":"s","ts":"2026-11-27T15:47:52.123456Z"}',
        b'{"actor":"a","extra":1,"kind":"k","payload":{},"prev":"'
        + b"0" * 64
        + b'","seq":1,"signature":"s","ts":"2026-11-27T15:47:52.123456Z"}',
        b'{"actor":"a","kind":"k","payload":[],"prev":"'
        + b"0" * 64
        + b'","seq":1,"signature":"s","ts":"2026-11-27T15:47:52.123456Z"}',
    ],
)
def test_parse_body_refuses_malformed_entries(body: bytes) -> None:
    with pytest.raises(InputError):
        parse_body(body)
