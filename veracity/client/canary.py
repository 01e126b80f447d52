"""A one-run canary audit of the site's DP-SGD: a bug detector for missing or mis-scaled noise.

After Steinke, Nasr & Jagielski, *Privacy Auditing with One (1) Training Run* (NeurIPS
2023), white-box. The audit trains with the site's own trainer
(:class:`veracity.client.training.PrivateTrainer`, same clipping and noise code, same
Poisson sampling) on synthetic data: ``base_rows`` ordinary records plus ``canaries``
canary records, each included independently with probability 1/2. Canary ``i`` is
``canary_scale * e_i`` in a coordinate no other record uses, labelled 1, so its clipped
gradient moves only weight ``i`` of a logistic model, upwards. The auditor scores every
canary by how far its weight moved and guesses "included" for the ``guesses`` highest
scores (abstaining on the rest). If the mechanism is ``epsilon``-DP, the number of correct
guesses is stochastically dominated by ``Binomial(guesses, e^eps / (1 + e^eps))``; the
largest epsilon that this rejects at the chosen confidence is an empirical lower bound.

The run is *flagged* when that lower bound exceeds the epsilon the accountant claims for
the same run: the noise is then demonstrably smaller than accounted for. With the defaults
(1000 canaries, 200 guesses, 99 % confidence) the largest certifiable bound is about 3.8,
and a one-epoch audit claims well below 1, so switched-off noise or noise scaled down
tenfold is flagged, while a correct run bounds at about 0. It cannot confirm a large
epsilon is tight; it is a test that the noise is really there. The bound uses the pure-DP
form of the theorem (ignoring delta), which is slightly optimistic.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from veracity.client.budget import prv_epsilon
from veracity.errors import InputError, VerificationError

__all__ = [
    "CanaryAudit",
    "epsilon_lower_bound",
    "run_canary_audit",
    "verify_canary_audit",
]


@dataclass(frozen=True)
class CanaryAudit:
    """The outcome of one canary audit."""

    canaries: int
    included: int
    guesses: int
    correct: int
    confidence: float
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    delta: float
    epsilon_claimed: float
    epsilon_lower_bound: float

    @property
    def flagged(self) -> bool:
        """Whether the empirical lower bound contradicts the claimed epsilon."""
        return self.epsilon_lower_bound > self.epsilon_claimed

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (infinite epsilon as ``None``)."""
        record = asdict(self)
        for name in ("epsilon_claimed", "epsilon_lower_bound"):
            if not math.isfinite(record[name]):
                record[name] = None
        record["flagged"] = self.flagged
        return record


def epsilon_lower_bound(guesses: int, correct: int, *, confidence: float = 0.99) -> float:
    """The largest epsilon that ``correct`` of ``guesses`` rejects at ``confidence``.

    That is the largest ``eps`` with ``P[Binomial(guesses, e^eps/(1+e^eps)) >= correct]
    <= 1 - confidence``; 0 if even ``eps = 0`` is not rejected.

    Raises
    ------
    InputError
        If the counts or the confidence are out of range.
    """
    from scipy.stats import binom

    if guesses < 1 or not 0 <= correct <= guesses:
        raise InputError("need at least one guess and 0 <= correct <= guesses")
    if not 0.5 < confidence < 1:
        raise InputError("confidence must lie in (0.5, 1)")
    alpha = 1.0 - confidence

    def tail(eps: float) -> float:
        p = 1.0 / (1.0 + math.exp(-eps))
        return float(binom.sf(correct - 1, guesses, p))

    if tail(0.0) > alpha:
        return 0.0
    low, high = 0.0, 50.0
    for _ in range(100):
        middle = (low + high) / 2
        if tail(middle) <= alpha:
            low = middle
        else:
            high = middle
    return low


def run_canary_audit(
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    delta: float,
    batch_size: int,
    learning_rate: float,
    epochs: int = 1,
    canaries: int = 1000,
    guesses: int = 200,
    base_rows: int = 200,
    base_features: int = 8,
    canary_scale: float = 10.0,
    confidence: float = 0.99,
    clipping: str = "linear-ghost",
    seed: int = 0,
) -> CanaryAudit:
    """Run one audit of the site trainer with these DP-SGD terms (see the module docstring).

    Raises
    ------
    InputError
        If the sizes are inconsistent (more guesses than canaries, no rows, ...).
    ConfigError
        If the clipping method is unknown.
    """
    from veracity.client.training import PrivateTrainer
    from veracity.tasks.spec import ModelFamily, ModelSpec
    from veracity.tasks.torch_models import build_model, model_weights

    if canaries < 2 or not 1 <= guesses <= canaries:
        raise InputError("need at least two canaries and 1 <= guesses <= canaries")
    if base_rows < 1 or base_features < 1 or epochs < 1:
        raise InputError("need base rows, base features and at least one epoch")
    rng = np.random.default_rng(seed)
    width = base_features + canaries
    base = rng.normal(size=(base_rows, base_features))
    direction = rng.normal(size=base_features)
    base_labels = (base @ direction > 0).astype(np.int64)
    included = rng.random(canaries) < 0.5
    chosen = np.flatnonzero(included)
    x = np.zeros((base_rows + chosen.size, width), dtype=np.float32)
    x[:base_rows, :base_features] = base
    x[base_rows + np.arange(chosen.size), base_features + chosen] = canary_scale
    y = np.concatenate([base_labels, np.ones(chosen.size, dtype=np.int64)])
    spec = ModelSpec(ModelFamily.LOGISTIC, width)
    initial = model_weights(build_model(spec, seed=seed))
    trainer = PrivateTrainer(
        spec,
        x,
        y,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        batch_size=batch_size,
        learning_rate=learning_rate,
        clipping="opacus-hooks" if clipping == "opacus-hooks" else "linear-ghost",
        seed=seed,
    )
    result = trainer.train_round(initial, epochs=epochs)
    moved = (result.weights["linear.weight"][0] - initial["linear.weight"][0])[base_features:]
    top = np.argsort(moved, kind="stable")[-guesses:]
    correct = int(included[top].sum())
    sampling = trainer.sampling
    steps = sampling.steps_per_epoch * epochs
    claimed = (
        prv_epsilon((trainer.planned_segment(epochs),), delta) if noise_multiplier > 0 else math.inf
    )
    return CanaryAudit(
        canaries=canaries,
        included=int(included.sum()),
        guesses=guesses,
        correct=correct,
        confidence=confidence,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        sample_rate=sampling.sample_rate,
        steps=steps,
        delta=delta,
        epsilon_claimed=claimed,
        epsilon_lower_bound=epsilon_lower_bound(guesses, correct, confidence=confidence),
    )


def verify_canary_audit(audit: CanaryAudit) -> None:
    """Pass a run whose empirical lower bound does not exceed its claimed epsilon.

    Raises
    ------
    VerificationError
        If the audit is flagged: the noise is smaller than the accountant assumes.
    """
    if audit.flagged:
        raise VerificationError(
            f"canary audit flagged the DP training: {audit.correct} of {audit.guesses} canary "
            f"guesses were right, an empirical epsilon of at least "
            f"{audit.epsilon_lower_bound:.2f} against {audit.epsilon_claimed:.2f} accounted; "
            "the noise is missing or mis-scaled"
        )
