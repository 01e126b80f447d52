from __future__ import annotations

import pytest

from veracity.core.canonical import canonical_json
from veracity.crypto.keys import generate_signing_key
from veracity.errors import InputError, SignatureError
from veracity.ledger.statement import (
    NO_LOG_ID,
    RECEIPT_DOMAIN,
    STATEMENT_DOMAIN,
    sign_bound,
    sign_document,
    sign_statement,
    verify_bound,
    verify_document,
    verify_statement,
)

LOG_A = bytes(range(1, 33))
LOG_B = bytes(range(2, 34))


def test_canonical_json_follows_rfc8785_number_and_key_rules() -> None:
    assert (
        canonical_json({"b": 1e-05, "a": 1.0, "c": [3, "é"]})
        == '{"a":1,"b":0.00001,"c":[3,"é"]}'.encode()
    )


def test_canonical_json_refuses_integers_beyond_2_pow_53() -> None:
    with pytest.raises(InputError):
        canonical_json({"run_id": 2**63})


def test_statement_signature_binds_kind_actor_and_payload() -> None:
    key = generate_signing_key()
    payload = {"dataset_id": "d1", "rows": 152}
    signature = sign_statement(key, "dataset.registered", "hospital-a", payload, log_id=LOG_A)
    verify_statement(
        key.public, "dataset.registered", "hospital-a", payload, signature, log_id=LOG_A
    )
    with pytest.raises(SignatureError):
        verify_statement(
            key.public, "dataset.registered", "hospital-b", payload, signature, log_id=LOG_A
        )
    with pytest.raises(SignatureError):
        verify_statement(
            key.public,
            "dataset.registered",
            "hospital-a",
            {**payload, "rows": 153},
            signature,
            log_id=LOG_A,
        )


def test_statement_signature_binds_the_log() -> None:
    key = generate_signing_key()
    payload = {"text": "hello"}
    for_a = sign_statement(key, "note.recorded", "hospital-a", payload, log_id=LOG_A)
    with pytest.raises(SignatureError, match=f"this log {LOG_B.hex()}.*another log"):
        verify_statement(key.public, "note.recorded", "hospital-a", payload, for_a, log_id=LOG_B)
    for_none = sign_statement(key, "note.recorded", "hospital-a", payload, log_id=NO_LOG_ID)
    with pytest.raises(SignatureError, match=f"for no log .*not for this log {LOG_A.hex()}"):
        verify_statement(key.public, "note.recorded", "hospital-a", payload, for_none, log_id=LOG_A)
    # the log id hex form signs the same bytes
    assert for_a == sign_statement(key, "note.recorded", "hospital-a", payload, log_id=LOG_A.hex())


def test_receipt_signature_binds_the_log() -> None:
    key = generate_signing_key()
    signature = sign_bound(key, RECEIPT_DOMAIN, LOG_A, {"x": 1})
    verify_bound(key.public, RECEIPT_DOMAIN, LOG_A, {"x": 1}, signature, what="receipt")
    with pytest.raises(SignatureError, match=r"receipt: .*another log"):
        verify_bound(key.public, RECEIPT_DOMAIN, LOG_B, {"x": 1}, signature, what="receipt")


@pytest.mark.parametrize("bad", [b"\x00" * 31, "AB" * 32, "zz" * 32, "0" * 63])
def test_a_malformed_log_id_is_refused(bad: bytes | str) -> None:
    with pytest.raises(InputError, match="log id"):
        sign_statement(generate_signing_key(), "note.recorded", "a", {}, log_id=bad)


def test_signature_for_one_domain_does_not_verify_in_another() -> None:
    key = generate_signing_key()
    document = {"x": 1}
    signature = sign_document(key, RECEIPT_DOMAIN, document)
    with pytest.raises(SignatureError):
        verify_document(key.public, STATEMENT_DOMAIN, document, signature)


@pytest.mark.parametrize("bad", ["", "not base64!", "AAAA"])
def test_malformed_signatures_are_refused(bad: str) -> None:
    with pytest.raises(SignatureError):
        verify_document(generate_signing_key().public, RECEIPT_DOMAIN, {}, bad)
