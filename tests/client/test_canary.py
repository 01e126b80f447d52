"""The one-run canary audit passes correctly noised DP-SGD and flags missing or mis-scaled noise."""

from __future__ import annotations

import math
from typing import Any

import pytest

from veracity.client.canary import epsilon_lower_bound, run_canary_audit, verify_canary_audit
from veracity.client.noise import ChaCha20Source
from veracity.errors import InputError, VerificationError

# The DP-SGD terms of a study calibrated to epsilon 3 over 100 steps at q = 0.2.
STUDY_TERMS: dict[str, Any] = {
    "noise_multiplier": 2.9931640625,
    "max_grad_norm": 1.0,
    "delta": 1e-5,
    "batch_size": 32,
    "learning_rate": 0.5,
}


def _scale_noise(monkeypatch: pytest.MonkeyPatch, factor: float) -> None:
    """Inject a bug: the noise the site draws is ``factor`` times what is accounted for."""
    original = ChaCha20Source.gaussian

    def scaled(self: ChaCha20Source, shape: tuple[int, ...], std: float) -> Any:
        return original(self, shape, std * factor)

    monkeypatch.setattr(ChaCha20Source, "gaussian", scaled)


def test_lower_bound_is_zero_for_chance_and_capped_by_the_number_of_guesses() -> None:
    assert epsilon_lower_bound(200, 100) == 0.0
    assert epsilon_lower_bound(200, 110) == 0.0
    best = epsilon_lower_bound(200, 200, confidence=0.99)
    p = 0.01 ** (1 / 200)  # P[all 200 right] = p**200 = 1 %
    assert best == pytest.approx(math.log(p / (1 - p)), abs=1e-6)
    assert 0 < epsilon_lower_bound(200, 160) < best
    with pytest.raises(InputError):
        epsilon_lower_bound(10, 11)


@pytest.mark.parametrize("clipping", ["linear-ghost", "opacus-hooks"])
def test_correctly_noised_training_passes(clipping: str) -> None:
    audit = run_canary_audit(**STUDY_TERMS, clipping=clipping, seed=0)
    assert audit.epsilon_lower_bound <= audit.epsilon_claimed
    assert not audit.flagged
    verify_canary_audit(audit)
    assert audit.guesses == 200
    assert 400 < audit.included < 600


@pytest.mark.parametrize("clipping", ["linear-ghost", "opacus-hooks"])
def test_training_with_the_noise_switched_off_is_flagged(
    clipping: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _scale_noise(monkeypatch, 0.0)
    audit = run_canary_audit(**STUDY_TERMS, clipping=clipping, seed=0)
    assert audit.correct == audit.guesses
    assert audit.flagged
    with pytest.raises(VerificationError, match="noise is missing or mis-scaled"):
        verify_canary_audit(audit)


@pytest.mark.parametrize("seed", [0, 1])
def test_training_with_noise_ten_times_too_small_is_flagged(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _scale_noise(monkeypatch, 0.1)
    audit = run_canary_audit(**STUDY_TERMS, seed=seed)
    assert audit.flagged, audit
    assert audit.epsilon_lower_bound > audit.epsilon_claimed > 0


def test_audit_record_is_json_ready() -> None:
    record = run_canary_audit(**STUDY_TERMS, canaries=100, guesses=20, seed=3).to_dict()
    assert record["flagged"] is False
    assert record["guesses"] == 20
    assert isinstance(record["epsilon_claimed"], float)
