"""From a query's epsilon share to its Gaussian noise, in the accountant's terms.

A query's release is a vector ``f(D)`` whose L2 change, when one record is replaced by
another, is at most its replace-one sensitivity ``Delta``. The site adds Gaussian noise of
standard deviation ``s`` to every coordinate. In Google dp-accounting's replace-one
accounting a ``GaussianDpEvent(z)`` is the Gaussian mechanism with noise ``z`` over a
sensitivity of 2 (one record's clipped contribution removed, another's added: DP-SGD's
``2C``), so the query enters the dataset's history as the segment
``[z, 1.0, 1]`` with ``z = 2 s / Delta``: a Poisson-sampled Gaussian at sample rate 1,
one step, composed exactly with the DP-SGD rounds in the same history.

``z`` is chosen so that the single query costs ``epsilon`` at ``delta``: the exact
privacy profile of the Gaussian mechanism (Balle & Wang, ICML 2018, Theorem 8) with
``mu = Delta / s = 2 / z``::

    delta(epsilon) = Phi(mu / 2 - epsilon / mu) - exp(epsilon) Phi(-mu / 2 - epsilon / mu)

solved for the largest ``mu`` (least noise) whose ``delta(epsilon)`` does not exceed
``delta``, by bisection, so the result is a deterministic function of the terms.
"""

from __future__ import annotations

import math

from veracity.errors import InputError

__all__ = ["gaussian_delta", "calibrate_noise_multiplier", "noise_std"]


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def gaussian_delta(mu: float, epsilon: float) -> float:
    """The smallest delta of the Gaussian mechanism with ``Delta / s = mu`` at ``epsilon``."""
    a = _phi(mu / 2.0 - epsilon / mu)
    b = _phi(-mu / 2.0 - epsilon / mu)
    return max(0.0, a - math.exp(epsilon) * b) if b > 0 else max(0.0, a)


def calibrate_noise_multiplier(epsilon: float, delta: float) -> float:
    """The accountant noise multiplier ``z`` of one query that costs ``epsilon`` at ``delta``.

    Raises
    ------
    InputError
        If ``epsilon`` is not positive and finite, or ``delta`` not in (0, 1).
    """
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise InputError(f"epsilon {epsilon!r} must be positive and finite")
    if not (math.isfinite(delta) and 0 < delta < 1):
        raise InputError(f"delta {delta!r} must lie in (0, 1)")
    low, high = 1e-9, 1.0
    while gaussian_delta(high, epsilon) <= delta:
        high *= 2.0
        if high > 1e6:  # pragma: no cover - epsilon beyond any cap
            break
    for _ in range(200):
        mid = 0.5 * (low + high)
        if gaussian_delta(mid, epsilon) <= delta:
            low = mid
        else:
            high = mid
    return 2.0 / low


def noise_std(noise_multiplier: float, sensitivity: float) -> float:
    """The noise standard deviation ``z Delta / 2`` of a release of replace-one ``sensitivity``."""
    return noise_multiplier * sensitivity / 2.0
