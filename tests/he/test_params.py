"""Parameter sets: 128-bit security, what SEAL builds, and the hash that names them."""

from __future__ import annotations

import dataclasses

import pytest

from veracity.errors import CryptoError
from veracity.he.params import (
    LOGISTIC_PARAMETERS,
    MAX_LOG_Q_128,
    PARAMETER_SETS,
    POLY_MLP_PARAMETERS,
    check_security,
    he_params_hash,
    parameter_set_for,
    parameter_set_named,
)
from veracity.he.seal import seal_primes


@pytest.mark.parametrize("name", sorted(PARAMETER_SETS))
def test_every_parameter_set_is_128_bit_secure_and_built_by_seal(name: str) -> None:
    parameter_set = PARAMETER_SETS[name]
    check_security(parameter_set)
    assert parameter_set.total_bits <= MAX_LOG_Q_128[parameter_set.poly_modulus_degree]
    primes = seal_primes(parameter_set)
    assert [p.bit_length() for p in primes] == list(parameter_set.coeff_modulus_bits)


def test_a_modulus_above_the_standard_is_refused() -> None:
    weak = dataclasses.replace(LOGISTIC_PARAMETERS, name="weak", coeff_modulus_bits=(60, 50))
    with pytest.raises(CryptoError, match="below 128-bit security"):
        check_security(weak)


def test_an_unsupported_degree_is_refused() -> None:
    odd = dataclasses.replace(LOGISTIC_PARAMETERS, name="odd", poly_modulus_degree=3000)
    with pytest.raises(CryptoError, match="not a supported degree"):
        check_security(odd)


def test_each_family_has_its_parameter_set() -> None:
    assert parameter_set_for("logistic") is LOGISTIC_PARAMETERS
    assert parameter_set_for("poly_mlp") is POLY_MLP_PARAMETERS
    with pytest.raises(CryptoError):
        parameter_set_for("transformer")
    with pytest.raises(CryptoError, match="unknown CKKS parameter set"):
        parameter_set_named("ckks-toy")


def test_params_hash_names_the_exact_primes() -> None:
    primes = seal_primes(LOGISTIC_PARAMETERS)
    digest = he_params_hash(LOGISTIC_PARAMETERS, primes)
    assert len(digest) == 64
    assert digest == he_params_hash(LOGISTIC_PARAMETERS, primes)
    assert digest != he_params_hash(LOGISTIC_PARAMETERS, (primes[0] - 2**14,))
    assert digest != he_params_hash(POLY_MLP_PARAMETERS, primes)
