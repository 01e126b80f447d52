"""The noise audit passes correct DP-SGD noise and flags noise that is missing or mis-scaled.

The bugs are injected into the site's own noise source (what the optimizer draws is
``factor`` times what is accounted for), and the audit runs the study's own trainer.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from scipy.stats import binom

from tests.client.support import make_study
from veracity.client.canary import NoiseAudit, run_noise_audit, verify_noise_audit
from veracity.client.noise import ChaCha20Source
from veracity.errors import InputError, VerificationError
from veracity.tasks.spec import ModelFamily

ROWS = 152  # hospital 0 of the breast-cancer split: q = 0.2, 5 steps per round at batch 32
ENGINES = ["linear-ghost", "opacus-hooks"]

# Every audit trains the study's own model with Opacus.
pytestmark = pytest.mark.training


def _scale_noise(monkeypatch: pytest.MonkeyPatch, factor: float) -> None:
    """Inject a bug: the noise the site draws is ``factor`` times what is accounted for."""
    original = ChaCha20Source.gaussian

    def scaled(self: ChaCha20Source, shape: tuple[int, ...], std: float) -> torch.Tensor:
        return original(self, shape, std * factor)

    monkeypatch.setattr(ChaCha20Source, "gaussian", scaled)


def _audit(**changes: Any) -> NoiseAudit:
    terms: dict[str, Any] = {"rows": ROWS, "seed": 1}
    study_terms = changes.pop("study", {})
    terms.update(changes)
    return run_noise_audit(make_study(**study_terms), **terms)


@pytest.mark.parametrize("clipping", ENGINES)
def test_correct_noise_passes_on_the_studys_own_trainer(clipping: str) -> None:
    audit = _audit(clipping=clipping)

    assert not audit.flagged
    verify_noise_audit(audit)
    # Its standard error is sqrt(2 / m): within 4 of them.
    assert abs(audit.variance_ratio - 1) < 4 * (2 / audit.coordinates) ** 0.5
    assert audit.coordinates >= 400
    assert (audit.sample_rate, audit.steps_per_round, audit.expected_batch_size) == (0.2, 5, 30)
    assert audit.rounds == 5  # the study's rounds, repeated until 400 coordinates
    assert audit.expected_std == pytest.approx(0.5 * 2.0 * 1.0 * 5**0.5 / 30)


@pytest.mark.parametrize("noise_multiplier", [0.3, 0.6, 1.0, 5.0, 20.0])
@pytest.mark.parametrize("clipping", ENGINES)
def test_noise_switched_off_is_flagged_at_any_multiplier(
    noise_multiplier: float, clipping: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _scale_noise(monkeypatch, 0.0)

    audit = _audit(study={"noise_multiplier": noise_multiplier}, clipping=clipping)

    assert audit.statistic == 0.0
    assert audit.flagged
    with pytest.raises(VerificationError, match="missing or mis-scaled"):
        verify_noise_audit(audit)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("factor", [0.5, 0.25, 2.0])
def test_noise_at_half_a_quarter_or_twice_the_accounted_scale_is_flagged(
    factor: float, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _scale_noise(monkeypatch, factor)

    audit = _audit(seed=seed)

    assert audit.flagged
    assert audit.variance_ratio == pytest.approx(factor**2, rel=0.25)


def test_a_poly_mlp_study_is_audited_on_its_own_model(monkeypatch: pytest.MonkeyPatch) -> None:
    study = {"family": ModelFamily.POLY_MLP, "hidden": 8, "learning_rate": 0.2}
    audit = _audit(study=study)
    assert not audit.flagged
    assert audit.coordinates == 8 * 30 * 5  # fc1's weights over 5 rounds: one repeat
    _scale_noise(monkeypatch, 0.5)
    assert _audit(study=study).flagged


@pytest.mark.slow
def test_the_false_alarm_rate_is_what_the_audit_states() -> None:
    # At a stated rate of 0.2, 200 independent audits of correct noise flag
    # Binomial(200, 0.2) of them (mean 40): outside [17, 67] with probability below 1e-5.
    rate = 0.2
    audits = [
        _audit(seed=seed, false_alarm_rate=rate, min_coordinates=60, study={"rounds": 2})
        for seed in range(200)
    ]
    flagged = sum(audit.flagged for audit in audits)
    low, high = binom.ppf(5e-6, 200, rate), binom.isf(5e-6, 200, rate)
    assert low <= flagged <= high, flagged
    assert all(audit.false_alarm_rate == rate for audit in audits)


def test_bad_audit_terms_are_refused() -> None:
    with pytest.raises(InputError, match="rows"):
        _audit(rows=0)
    with pytest.raises(InputError, match="false-alarm"):
        _audit(false_alarm_rate=0.7)


def test_the_audit_record_is_json_ready() -> None:
    record = _audit().to_dict()
    assert record["flagged"] is False
    assert record["coordinates"] == 30 * 5 * 3
    assert abs(record["variance_ratio"] - 1) < 4 * (2 / record["coordinates"]) ** 0.5
