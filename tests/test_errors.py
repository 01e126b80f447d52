"""The error hierarchy: one root, exit codes, and LedgerIntegrityError's seq."""

from __future__ import annotations

import pytest

from veracity import errors
from veracity.errors import (
    ApprovalMissing,
    ConfigError,
    CryptoError,
    InputError,
    LedgerIntegrityError,
    PrivacyBudgetExceeded,
    ProofError,
    SignatureError,
    VeracityError,
    VerificationError,
    exit_code_for,
)


@pytest.mark.parametrize(
    ("error_type", "parent"),
    [
        (ConfigError, VeracityError),
        (InputError, VeracityError),
        (VerificationError, VeracityError),
        (LedgerIntegrityError, VerificationError),
        (SignatureError, VerificationError),
        (ProofError, VerificationError),
        (PrivacyBudgetExceeded, VeracityError),
        (ApprovalMissing, VeracityError),
        (CryptoError, VeracityError),
    ],
)
def test_every_error_sits_under_its_documented_parent(
    error_type: type[Exception], parent: type[Exception]
) -> None:
    assert issubclass(error_type, parent)
    assert error_type.__name__ in (errors.__doc__ or "")


def test_configuration_errors_exit_2_and_refusals_exit_1() -> None:
    assert exit_code_for(ConfigError("x")) == 2
    assert exit_code_for(InputError("x")) == 1
    assert exit_code_for(LedgerIntegrityError("bad", seq=3)) == 1
    assert exit_code_for(PrivacyBudgetExceeded("x")) == 1
    assert exit_code_for(RuntimeError("x")) == 2


def test_ledger_integrity_error_names_seq_and_reason() -> None:
    error = LedgerIntegrityError("stored hash does not match its bytes", seq=41)
    assert error.seq == 41
    assert error.reason == "stored hash does not match its bytes"
    assert str(error) == "entry 41: stored hash does not match its bytes"
