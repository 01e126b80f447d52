"""A noise audit of the site's DP-SGD: the noise is really there, at the accounted scale.

The audit runs the study's own trainer (:meth:`PrivateTrainer.for_study`: the study's
model, noise multiplier, clipping norm, batch size, learning rate and local epochs, the
site's clipping method and its ChaCha20 noise source) for the study's rounds on synthetic
rows as many as the site's dataset has (so the sample rate and the steps per round are
the site's). Every feature of the synthetic rows is 0 after scaling: these are canaries
that were *not* included, so no record moves the first layer's weights (a sample's
gradient there is its output gradient times its input, 0) and each of those weights moves,
in each released round, by the noise alone::

    delta ~ N(0, s^2),  s = learning_rate * noise_multiplier * max_grad_norm
                             * sqrt(steps per round) / expected batch size

independently across weights, rounds and repeats. With ``m`` such coordinates, the
statistic ``T = sum (delta / s)^2`` is chi-squared with ``m`` degrees of freedom when the
noise is right. The audit is *flagged* when ``T`` falls outside the central
``1 - false_alarm_rate`` interval of that distribution, in either direction. So:

* noise switched off gives ``T = 0``: flagged at any noise multiplier;
* noise at half the accounted scale gives ``T`` about ``m / 4``: flagged (with at least
  400 coordinates, below the 0.05 % quantile, about ``0.77 m``, with certainty);
* correct noise is flagged with probability ``false_alarm_rate`` exactly (default 0.001),
  which the tests check at a larger rate over many seeded audits.

It is a bug detector for the noise path (the generator, its scale, the optimizer that adds
it), not a measurement of epsilon: it does not exercise clipping, and it cannot see a bug
that only happens on real data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from veracity.client.budget import poisson_sampling
from veracity.errors import InputError, VerificationError
from veracity.tasks.study import Study

__all__ = ["NoiseAudit", "run_noise_audit", "verify_noise_audit"]

#: The default probability that a correct mechanism is flagged.
FALSE_ALARM_RATE = 1e-3


@dataclass(frozen=True)
class NoiseAudit:
    """The outcome of one noise audit (see the module docstring)."""

    study_id: str
    rows: int
    clipping: str
    sample_rate: float
    steps_per_round: int
    expected_batch_size: int
    rounds: int
    repeats: int
    coordinates: int
    noise_multiplier: float
    max_grad_norm: float
    learning_rate: float
    expected_std: float
    measured_std: float
    statistic: float
    lower: float
    upper: float
    false_alarm_rate: float

    @property
    def variance_ratio(self) -> float:
        """Measured over accounted noise variance (1 when right, 0 without noise)."""
        return self.statistic / self.coordinates

    @property
    def flagged(self) -> bool:
        """Whether the noise is not at the accounted scale (at ``false_alarm_rate``)."""
        return not self.lower <= self.statistic <= self.upper

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record."""
        record = asdict(self)
        record["variance_ratio"] = self.variance_ratio
        record["flagged"] = self.flagged
        return record


def _noise_only(weights: dict[str, np.ndarray]) -> np.ndarray:
    """The first layer's weights (moved by noise alone when every input is 0)."""
    name = "linear.weight" if "linear.weight" in weights else "fc1.weight"
    return np.asarray(weights[name], dtype=np.float64).ravel()


def run_noise_audit(
    study: Study,
    *,
    rows: int,
    clipping: Literal["linear-ghost", "opacus-hooks"] = "linear-ghost",
    false_alarm_rate: float = FALSE_ALARM_RATE,
    min_coordinates: int = 400,
    seed: int | None = None,
) -> NoiseAudit:
    """Audit the noise of ``study``'s DP-SGD at a site with ``rows`` records.

    Parameters
    ----------
    study
        The study whose terms and model are audited.
    rows
        The site's dataset size (public): sets the sample rate and steps per round.
    clipping
        The site's clipping method.
    false_alarm_rate
        The probability of flagging correct noise.
    min_coordinates
        The study's rounds are repeated (with fresh trainers) until at least this many
        noise-only coordinates are measured.
    seed
        Derives the noise keys (tests); ``None`` uses keys from the OS, as at a site.

    Raises
    ------
    InputError
        If ``rows``, ``false_alarm_rate`` or ``min_coordinates`` is out of range.
    """
    from scipy.stats import chi2

    from veracity.client.training import PrivateTrainer
    from veracity.tasks.torch_models import build_model, model_weights

    if rows < 1:
        raise InputError("the audit needs the number of rows of the site's dataset")
    if not 0 < false_alarm_rate < 0.5:
        raise InputError("the false-alarm rate must lie in (0, 0.5)")
    if min_coordinates < 1:
        raise InputError("the audit needs at least one coordinate")
    x = np.zeros((rows, len(study.features)), dtype=np.float32)
    y = (np.arange(rows) % 2).astype(np.int64)
    initial = model_weights(build_model(study.model_spec, seed=study.model_seed))
    per_run = _noise_only(initial).size * study.rounds
    repeats = max(1, math.ceil(min_coordinates / per_run))
    sampling = poisson_sampling(rows, study.training.batch_size)
    moves: list[np.ndarray] = []
    for repeat in range(repeats):
        trainer = PrivateTrainer.for_study(
            study,
            x,
            y,
            clipping=clipping,
            secure_mode=seed is None,
            seed=None if seed is None else seed * 10_000 + repeat,
        )
        weights = initial
        for _round in range(study.rounds):
            result = trainer.train_round(weights, epochs=study.training.local_epochs)
            moves.append(_noise_only(result.weights) - _noise_only(weights))
            weights = result.weights
    steps = sampling.steps_per_epoch * study.training.local_epochs
    expected = (
        study.training.learning_rate
        * study.dp.noise_multiplier
        * study.dp.max_grad_norm
        * math.sqrt(steps)
        / sampling.expected_batch_size
    )
    delta = np.concatenate(moves)
    statistic = float(np.sum((delta / expected) ** 2))
    m = int(delta.size)
    return NoiseAudit(
        study_id=study.study_id,
        rows=rows,
        clipping=clipping,
        sample_rate=sampling.sample_rate,
        steps_per_round=steps,
        expected_batch_size=sampling.expected_batch_size,
        rounds=study.rounds,
        repeats=repeats,
        coordinates=m,
        noise_multiplier=study.dp.noise_multiplier,
        max_grad_norm=study.dp.max_grad_norm,
        learning_rate=study.training.learning_rate,
        expected_std=expected,
        measured_std=float(np.sqrt(np.mean(delta**2))),
        statistic=statistic,
        lower=float(chi2.ppf(false_alarm_rate / 2, m)),
        upper=float(chi2.isf(false_alarm_rate / 2, m)),
        false_alarm_rate=false_alarm_rate,
    )


def verify_noise_audit(audit: NoiseAudit) -> None:
    """Pass an audit whose measured noise is at the accounted scale.

    Raises
    ------
    VerificationError
        If the audit is flagged: the noise is missing or not at the accounted scale.
    """
    if audit.flagged:
        raise VerificationError(
            f"noise audit flagged the DP training of study {audit.study_id!r}: the noise "
            f"measured on {audit.coordinates} untouched weights has standard deviation "
            f"{audit.measured_std:.4g} against {audit.expected_std:.4g} accounted (variance "
            f"ratio {audit.variance_ratio:.3f}); the noise is missing or mis-scaled"
        )
