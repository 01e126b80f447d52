from __future__ import annotations

import json
from typing import Any

import pytest

from tests.factories import LOG_ID, receipt_document
from veracity.contracts.messages import ReceiptRecord, RefusalRecord
from veracity.crypto.keys import SigningKey, generate_signing_key
from veracity.errors import InputError, SignatureError, VerificationError
from veracity.ledger.statement import NO_LOG_ID, RECEIPT_DOMAIN, sign_bound, sign_statement
from veracity.server.rounds import check_receipt, check_refusal

STUDY = "ab" * 32


def _receipt(**changes: Any) -> dict[str, Any]:
    return {
        **receipt_document(round=2, run_id="1234567890123456789", epsilon=1.25),
        **changes,
    }


def _check(
    receipt: dict[str, Any],
    key: SigningKey,
    *,
    signer: SigningKey | None = None,
    signed_for: bytes = LOG_ID,
) -> Any:
    signature = sign_bound(signer or key, RECEIPT_DOMAIN, signed_for, receipt)
    record = ReceiptRecord(receipt_json=json.dumps(receipt), signature=signature)
    return check_receipt(
        record,
        site="hospital-a",
        site_key=key.public,
        log_id=LOG_ID,
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


@pytest.mark.parametrize("signed_for", [bytes(range(2, 34)), NO_LOG_ID])
def test_a_receipt_signed_for_another_log_or_none_is_rejected(signed_for: bytes) -> None:
    # A dishonest coordinator cannot pass a receipt a site made for another log (or before
    # it knew its log) off as one for this log.
    key = generate_signing_key()
    with pytest.raises(SignatureError, match=f"this log {LOG_ID.hex()}"):
        _check(_receipt(), key, signed_for=signed_for)


def test_a_refusal_signed_for_another_log_is_rejected() -> None:
    key = generate_signing_key()
    refusal = _refusal(_budget_refused(), key, signed_for=bytes(range(2, 34)))
    with pytest.raises(SignatureError, match="signed for another log"):
        check_refusal(refusal, site="hospital-a", site_key=key.public, log_id=LOG_ID)


@pytest.mark.parametrize(
    "changes",
    [
        {"update_hash": "00" * 32},
        {"site": "hospital-b"},
        {"round": 1},
        {"study": "cd" * 32},
        {"run_id": "1"},
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


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        # The ledger's round.completed schema refuses both: so must the coordinator's check,
        # or one such receipt would fail the whole round's record instead of one site.
        ({"accountant": "rdp"}, "accountant"),
        ({"neighbouring": "add-remove"}, "neighbouring"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"epsilon": 1e17}, "epsilon"),
        ({"history": [[1.1, 0.2]]}, "history"),
        ({"round": True}, "round"),
    ],
)
def test_a_receipt_the_ledger_would_refuse_is_refused_here(
    changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(InputError, match=field):
        _check(_receipt(**changes), generate_signing_key())


def _refusal(
    payload: dict[str, Any], key: SigningKey, *, signed_for: bytes = LOG_ID
) -> RefusalRecord:
    signature = sign_statement(key, "budget.refused", "hospital-a", payload, log_id=signed_for)
    return RefusalRecord(
        kind="budget.refused", payload_json=json.dumps(payload), signature=signature, reason="cap"
    )


def _budget_refused(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "site": "hospital-a",
        "study_hash": STUDY,
        "dataset_id": "bc",
        "run_id": "1234567890123456789",
        "round": 2,
        "epsilon_requested": 3.2,
        "epsilon_left": 0.4,
        "signed_at": "2026-11-27T15:47:52.123456Z",
    }
    payload.update(changes)
    return payload


def test_a_signed_refusal_is_verified_and_a_forged_one_rejected() -> None:
    key = generate_signing_key()
    payload = _budget_refused()
    got = check_refusal(
        _refusal(payload, key), site="hospital-a", site_key=key.public, log_id=LOG_ID
    )
    assert got.to_json() == payload
    with pytest.raises(SignatureError):
        check_refusal(
            _refusal(payload, key),
            site="hospital-a",
            site_key=generate_signing_key().public,
            log_id=LOG_ID,
        )
    with pytest.raises(VerificationError):
        check_refusal(_refusal(payload, key), site="hospital-b", site_key=key.public, log_id=LOG_ID)


def test_a_refusal_whose_round_has_no_bound_is_accepted_with_a_null_epsilon() -> None:
    key = generate_signing_key()
    payload = _budget_refused(epsilon_requested=None)
    got = check_refusal(
        _refusal(payload, key), site="hospital-a", site_key=key.public, log_id=LOG_ID
    )
    assert got.to_json()["epsilon_requested"] is None


def test_a_refusal_that_is_not_a_valid_statement_is_refused() -> None:
    key = generate_signing_key()
    with pytest.raises(InputError, match="epsilon_left"):
        check_refusal(
            _refusal(_budget_refused(epsilon_left=None), key),
            site="hospital-a",
            site_key=key.public,
            log_id=LOG_ID,
        )
