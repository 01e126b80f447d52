from __future__ import annotations

import pytest

from veracity.core.canonical import canonical_json
from veracity.crypto.keys import generate_signing_key
from veracity.errors import InputError, SignatureError
from veracity.ledger.statement import (
    RECEIPT_DOMAIN,
    STATEMENT_DOMAIN,
    sign_document,
    sign_statement,
    verify_document,
    verify_statement,
)


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
    signature = sign_statement(key, "dataset.registered", "hospital-a", payload)
    verify_statement(key.public, "dataset.registered", "hospital-a", payload, signature)
    with pytest.raises(SignatureError):
        verify_statement(key.public, "dataset.registered", "hospital-b", payload, signature)
    with pytest.raises(SignatureError):
        verify_statement(
            key.public, "dataset.registered", "hospital-a", {**payload, "rows": 153}, signature
        )


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
