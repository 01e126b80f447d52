from __future__ import annotations

import json
from typing import Any

import pytest

from veracity.crypto.keys import SigningKey, generate_signing_key
from veracity.errors import InputError, SignatureError, VerificationError
from veracity.ledger.statement import RECEIPT_DOMAIN, sign_document, sign_statement
from veracity.server.rounds import check_receipt, check_refusal

STUDY = "ab" * 32


def _receipt(**changes: Any) -> dict[str, Any]:
    receipt: dict[str, Any] = {
        "site": "hospital-a",
        "study": STUDY,
        "round": 2,
        "run_id": "1234567890123456789",
        "dataset_id": "bc",
        "dataset_commitment": "cd" * 32,
        "update_hash": "ef" * 32,
        "accountant": "pld",
        "neighbouring": "replace-one",
        "delta": 1e-5,
        "epsilon": 1.25,
        "epsilon_add_remove": 0.9,
        "history": [[1.1, 0.2, 10]],
        "max_grad_norm": 1.0,
        "num_examples": 150,
        "noise_generator": "chacha20",
    }
    receipt.update(changes)
    return receipt


def _check(receipt: dict[str, Any], key: SigningKey, *, signer: SigningKey | None = None) -> Any:
    signature = sign_document(signer or key, RECEIPT_DOMAIN, receipt)
    return check_receipt(
        json.dumps(receipt),
        signature,
        site="hospital-a",
        site_key=key.public,
        study_hash=STUDY,
        run_id="1234567890123456789",
        server_round=2,
        update_hash="ef" * 32,
    )


def test_a_genuine_receipt_is_accepted() -> None:
    key = generate_signing_key()
    accepted = _check(_receipt(), key)
    assert accepted.site == "hospital-a"
    assert accepted.epsilon == 1.25


def test_a_receipt_signed_by_another_key_is_rejected() -> None:
    with pytest.raises(SignatureError):
        _check(_receipt(), generate_signing_key(), signer=generate_signing_key())


@pytest.mark.parametrize(
    "changes",
    [
        {"update_hash": "00" * 32},
        {"site": "hospital-b"},
        {"round": 1},
        {"study": "cd" * 32},
        {"run_id": "1"},
        {"epsilon": -1.0},
    ],
)
def test_a_receipt_for_something_else_is_rejected(changes: dict[str, Any]) -> None:
    with pytest.raises(VerificationError):
        _check(_receipt(**changes), generate_signing_key())


def test_a_receipt_with_missing_or_extra_fields_is_refused() -> None:
    key = generate_signing_key()
    receipt = _receipt()
    del receipt["history"]
    with pytest.raises(InputError, match="history"):
        _check(receipt, key)
    with pytest.raises(InputError, match="secret"):
        _check(_receipt(secret=1), key)


def test_a_signed_refusal_is_verified_and_a_forged_one_rejected() -> None:
    key = generate_signing_key()
    payload = {"site": "hospital-a", "study_hash": STUDY, "epsilon_requested": 3.2}
    signature = sign_statement(key, "budget.refused", "hospital-a", payload)
    got = check_refusal(
        "budget.refused", json.dumps(payload), signature, site="hospital-a", site_key=key.public
    )
    assert got == payload
    with pytest.raises(SignatureError):
        check_refusal(
            "budget.refused",
            json.dumps(payload),
            signature,
            site="hospital-a",
            site_key=generate_signing_key().public,
        )
    with pytest.raises(VerificationError):
        check_refusal(
            "budget.refused", json.dumps(payload), signature, site="hospital-b", site_key=key.public
        )
