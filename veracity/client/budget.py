"""Privacy accounting for a site's datasets: histories, epsilon, and the per-round budget check.

A dataset's privacy history is the list of DP-SGD segments ever run on it, each
``(noise_multiplier, sample_rate, steps)`` of the Poisson-subsampled Gaussian mechanism,
across every round, run and study. Composition is commutative, so a history is kept
*merged*: segments with the same ``(noise_multiplier, sample_rate)`` are added up, in order
of first appearance. Merging keeps the accountants fast (its cost grows with the number
of distinct segments) and makes the history a canonical value: receipts carry it, and an
auditor recomputes epsilon from exactly that list.

The unit of privacy is one record (one row) of a dataset and the neighbouring relation
is **replace-one**: a dataset's row count is public (receipts, metrics and
``dataset.registered`` carry it, and it sets the sample rate), so the guarantee is stated
for two datasets of the same size that differ in one record. Epsilon comes from Google
dp-accounting's PLD accountant with ``NeighboringRelation.REPLACE_ONE``
(:func:`replace_one_epsilon`), cross-checked against a replace-one bound from Opacus's RDP
analysis that is always an upper bound and must not come out below it. The add/remove-one
figure (Opacus's PRV accountant, what the DP-SGD literature reports) is computed beside it
for comparison only. The GDP accountant is never used: it under-reports.

Before each round the agent evaluates what the round *would* bring the dataset's and the
study's epsilon to (:func:`evaluate_round`) and trains only if both stay within their caps.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from veracity.errors import InputError, VerificationError

__all__ = [
    "ACCOUNTANT",
    "NEIGHBOURING",
    "Segment",
    "History",
    "merge_history",
    "history_to_json",
    "history_from_json",
    "total_steps",
    "replace_one_event",
    "replace_one_epsilon",
    "rdp_replace_one_epsilon",
    "prv_epsilon",
    "EpsilonReport",
    "epsilon_report",
    "RoundBudget",
    "evaluate_round",
    "epsilon_left",
    "Sampling",
    "poisson_sampling",
]

log = logging.getLogger(__name__)

#: The accountant whose epsilon receipts, budgets and caps use (Google dp-accounting's PLD).
ACCOUNTANT: Final = "pld"
#: The neighbouring relation that epsilon is for: one record replaced by another (the
#: number of records is public: receipts, metrics and ``dataset.registered`` carry it).
NEIGHBOURING: Final = "replace-one"


@dataclass(frozen=True, order=True)
class Segment:
    """``steps`` DP-SGD steps at one noise multiplier and Poisson sample rate."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise InputError(f"noise multiplier {self.noise_multiplier!r} must be positive")
        if not (math.isfinite(self.sample_rate) and 0 < self.sample_rate <= 1):
            raise InputError(f"sample rate {self.sample_rate!r} must lie in (0, 1]")
        steps: object = self.steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise InputError(f"steps {self.steps!r} must be a positive integer")

    def as_list(self) -> list[float | int]:
        """``[noise_multiplier, sample_rate, steps]``, as receipts carry it."""
        return [self.noise_multiplier, self.sample_rate, self.steps]


@dataclass(frozen=True)
class Sampling:
    """How DP-SGD samples a dataset: Poisson rate, steps per epoch, expected batch size."""

    sample_rate: float
    steps_per_epoch: int
    expected_batch_size: int

    def segment(self, noise_multiplier: float, epochs: int) -> Segment:
        """The history segment of ``epochs`` epochs at ``noise_multiplier``."""
        return Segment(noise_multiplier, self.sample_rate, self.steps_per_epoch * epochs)


def poisson_sampling(rows: int, batch_size: int) -> Sampling:
    """Poisson sampling of ``rows`` records for an expected batch of about ``batch_size``.

    As Opacus does for a loader of ``ceil(rows / batch_size)`` batches: an epoch is
    ``k = ceil(rows / batch_size)`` steps, each record joins each step's batch
    independently with probability ``q = 1 / k``, and the mean gradient divides the
    noisy sum by ``int(rows * q)``. Here ``k`` is computed exactly (Opacus's
    ``int(1 / (1 / k))`` loses a step for some ``k``, e.g. 93), so the steps run and the
    steps accounted always agree.

    Raises
    ------
    InputError
        If ``rows`` or ``batch_size`` is not positive.
    """
    if rows < 1 or batch_size < 1:
        raise InputError("Poisson sampling needs at least one row and a positive batch size")
    steps = -(-rows // batch_size)
    rate = 1.0 / steps
    return Sampling(
        sample_rate=rate, steps_per_epoch=steps, expected_batch_size=max(1, int(rows * rate))
    )


#: A merged history: distinct ``(noise_multiplier, sample_rate)`` pairs in first-seen order.
History = tuple[Segment, ...]


def merge_history(segments: Iterable[Segment]) -> History:
    """Add up segments with equal ``(noise_multiplier, sample_rate)``, keeping first-seen order."""
    steps: dict[tuple[float, float], int] = {}
    for segment in segments:
        key = (segment.noise_multiplier, segment.sample_rate)
        steps[key] = steps.get(key, 0) + segment.steps
    return tuple(Segment(sigma, q, n) for (sigma, q), n in steps.items())


def total_steps(history: Iterable[Segment]) -> int:
    """Number of DP-SGD steps in ``history`` (not the number of segments)."""
    return sum(segment.steps for segment in history)


def history_to_json(history: Iterable[Segment]) -> list[list[float | int]]:
    """The history as receipts carry it: ``[[noise_multiplier, sample_rate, steps], ...]``."""
    return [segment.as_list() for segment in history]


def history_from_json(data: Any) -> History:
    """Parse ``[[noise_multiplier, sample_rate, steps], ...]`` (and merge it).

    Raises
    ------
    InputError
        If the value is not a list of three-number lists with valid terms.
    """
    if not isinstance(data, list):
        raise InputError("a privacy history is a list of [noise_multiplier, sample_rate, steps]")
    segments = []
    for item in data:
        if not isinstance(item, list | tuple) or len(item) != 3:
            raise InputError(
                f"history entry {item!r} is not [noise_multiplier, sample_rate, steps]"
            )
        sigma, rate, steps = item
        if isinstance(steps, float) and steps.is_integer():
            steps = int(steps)
        if not isinstance(sigma, int | float) or not isinstance(rate, int | float):
            raise InputError(f"history entry {item!r} holds non-numbers")
        segments.append(Segment(float(sigma), float(rate), steps))
    return merge_history(segments)


def _as_accountant_history(history: History) -> list[tuple[float, float, int]]:
    return [(s.noise_multiplier, s.sample_rate, s.steps) for s in history]


def replace_one_event(history: History) -> Any:
    """The history as Google dp-accounting's DP event (what the auditor composes).

    ``ComposedDpEvent([SelfComposedDpEvent(PoissonSampledDpEvent(q,
    GaussianDpEvent(sigma)), steps), ...])``, one term per segment, in order.
    """
    from dp_accounting import dp_event

    return dp_event.ComposedDpEvent(
        [
            dp_event.SelfComposedDpEvent(
                dp_event.PoissonSampledDpEvent(
                    s.sample_rate, dp_event.GaussianDpEvent(s.noise_multiplier)
                ),
                s.steps,
            )
            for s in history
        ]
    )


#: PLD discretisation: dp-accounting's ``PLDAccountant`` default, what the auditor composes.
_PLD_INTERVAL: Final = 1e-4


@functools.lru_cache(maxsize=64)
def _gaussian_pld(noise_multiplier: float, sample_rate: float) -> Any:
    """The replace-one PLD of one Poisson-subsampled Gaussian step.

    What ``privacy_loss_distribution.from_gaussian_mechanism(standard_deviation=
    noise_multiplier, value_discretization_interval=1e-4, sampling_prob=sample_rate,
    neighboring_relation=REPLACE_ONE)`` returns, bit for bit (the test suite compares
    the two): the same connect-the-dots construction from dp-accounting's own
    ``GaussianPrivacyLoss``, whose hockey-stick divergences dp-accounting computes with
    one Python call per discretised epsilon (100,000-700,000 of them, 85% of the time);
    here :func:`_inverse_replace_losses` computes the same floats for all of them at once.
    """
    import numpy as np
    from dp_accounting.pld import pld_pmf, privacy_loss_distribution, privacy_loss_mechanism

    loss = privacy_loss_mechanism.GaussianPrivacyLoss(
        noise_multiplier,
        sensitivity=1,
        pessimistic_estimate=True,
        log_mass_truncation_bound=-50,
        sampling_prob=sample_rate,
        adjacency_type=privacy_loss_mechanism.AdjacencyType.REPLACE,
    )
    bounds = loss.connect_dots_bounds()
    upper = math.ceil(bounds.epsilon_upper / _PLD_INTERVAL)
    lower = math.floor(bounds.epsilon_lower / _PLD_INTERVAL)
    epsilons = np.arange(lower, upper + 1) * _PLD_INTERVAL
    # AdditiveNoisePrivacyLoss.get_delta_for_epsilon for the replace relation.
    cutoffs = _inverse_replace_losses(noise_multiplier, sample_rate, epsilons)
    deltas = np.clip(
        loss.mu_upper_cdf(cutoffs) - np.exp(epsilons + loss.mu_lower_log_cdf(cutoffs)), 0, 1
    )
    pmf = pld_pmf.create_pmf_pessimistic_connect_dots_fixed_gap(_PLD_INTERVAL, lower, upper, deltas)
    return privacy_loss_distribution.PrivacyLossDistribution(pmf)


def _inverse_replace_losses(noise_multiplier: float, sample_rate: float, losses: Any) -> Any:
    """``GaussianPrivacyLoss.inverse_privacy_loss`` (replace, sensitivity 1) of each loss.

    The same operations on the same floats, in the same order, as dp-accounting's
    ``_inverse_privacy_loss_replace``, ``common.log_sinh`` and ``common.asinh_exp``:
    arithmetic and ``np.logaddexp`` on arrays (exactly what they give on each element),
    ``exp`` and ``log1p`` from ``math`` as dp-accounting calls them (NumPy's vectorised
    ``exp`` may round differently on some CPUs).
    """
    import numpy as np

    sigma_squared = noise_multiplier**2
    if sample_rate == 1.0:
        inverse = -losses * sigma_squared / 1 / 2
    else:
        log_alpha = (
            0.5 * (1 / noise_multiplier) ** 2 + math.log1p(-sample_rate) - math.log(sample_rate)
        )
        halves = np.abs(losses) / 2
        log_one_minus = [math.log1p(-math.exp(-2 * a)) if a else 0.0 for a in halves.tolist()]
        log_sinh = halves + np.array(log_one_minus, dtype=np.float64) - math.log(2)
        # asinh_exp(log_alpha + log_sinh, -sign(loss)): log|b| + a with |b| = 1.
        exponent = math.log(1.0) + (log_alpha + log_sinh)
        magnitude = np.logaddexp(0.5 * np.logaddexp(0, 2 * exponent), exponent)
        asinh = np.where(losses >= 0, -1.0, 1.0) * magnitude
        inverse = sigma_squared / 1 * (asinh - losses / 2)
    return np.where(losses == 0, 0.0, inverse)


@functools.lru_cache(maxsize=64)
def _segment_pld(segment: Segment) -> Any:
    """A segment's PLD, as ``PLDAccountant`` builds ``SelfComposedDpEvent(PoissonSampled...)``."""
    return _gaussian_pld(segment.noise_multiplier, segment.sample_rate).self_compose(segment.steps)


@functools.lru_cache(maxsize=32)
def _history_pld(history: History) -> Any:
    """The replace-one PLD of ``history``: its prefix's PLD composed with its last segment.

    ``PLDAccountant.compose`` of :func:`replace_one_event` starts from the identity PLD and
    composes the segments one by one, in order; so does this, with every prefix cached.
    A history that grows by a segment at its end (a query, a round at a new noise
    multiplier), or whose last segment gains steps, costs one segment and one convolution,
    and gives the same PLD, bit for bit, as composing the whole history afresh.
    """
    from dp_accounting.pld import privacy_loss_distribution

    if not history:
        return privacy_loss_distribution.identity(value_discretization_interval=_PLD_INTERVAL)
    return _history_pld(history[:-1]).compose(_segment_pld(history[-1]))


@functools.lru_cache(maxsize=4096)
def _replace_one_cached(history: History, delta: float) -> float:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = float(_history_pld(history).get_epsilon_for_delta(delta))
    except (ValueError, RuntimeError, OverflowError, FloatingPointError) as err:
        log.warning("PLD accountant failed for %s at delta %s: %s", history, delta, err)
        return math.inf
    return value if math.isfinite(value) else math.inf


def _memoise_opacus_rdp() -> None:
    """Make Opacus compute each order's RDP of a subsampled Gaussian step once per process.

    ``opacus.accountants.analysis.rdp._compute_rdp(q, sigma, alpha)`` is a pure function
    of three floats, and everything here calls it with the same few: Opacus's RDP
    accountant (on which its PRV accountant sizes its domain, twice per call) recomputes
    the same 150 orders for every history, about 90% of a PRV figure's CPU. Memoised, the
    figures are the same floats (the test suite compares them with the unmemoised
    function); only the repeats are gone.
    """
    from opacus.accountants.analysis import rdp

    if not hasattr(rdp._compute_rdp, "cache_info"):
        rdp._compute_rdp = functools.lru_cache(maxsize=65536)(rdp._compute_rdp)


@functools.lru_cache(maxsize=4096)
def _prv_epsilon_cached(history: History, delta: float) -> float:
    from opacus.accountants import PRVAccountant

    _memoise_opacus_rdp()

    accountant = PRVAccountant()
    accountant.history = _as_accountant_history(history)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = float(accountant.get_epsilon(delta))
    except (ValueError, RuntimeError, OverflowError, FloatingPointError) as err:
        # PRV cannot bound this history numerically (very large epsilon): count it as
        # unbounded, which no cap admits.
        log.warning("PRV accountant failed for %s at delta %s: %s", history, delta, err)
        return math.inf
    return value if math.isfinite(value) else math.inf


def _check_delta(delta: float) -> None:
    if not (math.isfinite(delta) and 0 < delta < 1):
        raise InputError(f"delta {delta!r} must lie in (0, 1)")


def _epsilon(cached: Callable[[History, float], float], history: History, delta: float) -> float:
    _check_delta(delta)
    merged = merge_history(history)
    return cached(merged, float(delta)) if merged else 0.0


def replace_one_epsilon(history: History, delta: float) -> float:
    """Epsilon of ``history`` at ``delta`` for replace-one neighbours (0 for no history).

    The epsilon budgets, caps and receipts count. Computed with Google dp-accounting's
    privacy-loss-distribution accountant, ``PLDAccountant(neighboring_relation=
    NeighboringRelation.REPLACE_ONE)`` (default discretisation, pessimistic estimate, so
    an upper bound), composing :func:`replace_one_event`. Returns ``inf`` where the
    accountant cannot bound the history. Cached per ``(history, delta)``, and the PLD of
    every history prefix, so a history grown by one segment costs that segment only.

    Raises
    ------
    InputError
        If ``delta`` is not in (0, 1).
    """
    return _epsilon(_replace_one_cached, history, delta)


def prv_epsilon(history: History, delta: float) -> float:
    """Epsilon of ``history`` at ``delta`` for add/remove-one neighbours, by Opacus's PRV.

    The figure the DP-SGD literature reports, carried beside the replace-one epsilon
    (``epsilon_add_remove``) for comparison; it does not hold here, where each dataset's
    row count is public. Returns ``inf`` where the accountant cannot bound the history;
    0 for no history. Cached per ``(history, delta)`` (0.1-2 s).

    Raises
    ------
    InputError
        If ``delta`` is not in (0, 1).
    """
    return _epsilon(_prv_epsilon_cached, history, delta)


@functools.lru_cache(maxsize=4096)
def _rdp_add_remove_cached(history: History, delta: float) -> float:
    from opacus.accountants import RDPAccountant

    _memoise_opacus_rdp()
    accountant = RDPAccountant()
    accountant.history = _as_accountant_history(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(accountant.get_epsilon(delta))
    return value if math.isfinite(value) else math.inf


#: Orders of the RDP cross-check (Opacus's default grid).
_RDP_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))


@functools.lru_cache(maxsize=256)
def _step_rdp(noise_multiplier: float, sample_rate: float) -> tuple[Any, Any]:
    """Opacus's add/remove RDP of one step at orders ``2a`` and ``2a - 1``."""
    import numpy as np
    from opacus.accountants.analysis.rdp import compute_rdp

    _memoise_opacus_rdp()
    orders = np.array(_RDP_ORDERS, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        removed, added = (
            np.asarray(
                compute_rdp(
                    q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(at)
                )
            )
            for at in (2 * orders, 2 * orders - 1)
        )
    return removed, added


@functools.lru_cache(maxsize=4096)
def _segment_rdp(segment: Segment) -> tuple[Any, Any]:
    """Opacus's add/remove RDP of one segment at orders ``2a`` and ``2a - 1``.

    ``compute_rdp`` is one step's RDP times ``steps`` (``rdp * steps``, and ``rdp * 1`` is
    ``rdp``): the same arrays, bit for bit, with the per-step part computed once per
    noise multiplier and sampling rate instead of once per round.
    """
    removed, added = _step_rdp(segment.noise_multiplier, segment.sample_rate)
    return removed * segment.steps, added * segment.steps


@functools.lru_cache(maxsize=4096)
def _rdp_replace_one_cached(history: History, delta: float) -> float:
    import numpy as np
    from opacus.accountants.analysis.rdp import get_privacy_spent

    orders = np.array(_RDP_ORDERS, dtype=np.float64)
    removed = sum(_segment_rdp(s)[0] for s in history)
    added = sum(_segment_rdp(s)[1] for s in history)
    # Weak triangle inequality (Mironov 2017, Prop. 11 with p = q = 2): a replacement
    # is a removal then an addition, D_a(P||R) <= (a - 1/2)/(a - 1) D_2a(P||Q)
    # + D_(2a-1)(Q||R), with each add/remove divergence bounded by Opacus's RDP.
    replaced = (orders - 0.5) / (orders - 1) * removed + added
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value, _order = get_privacy_spent(orders=list(orders), rdp=replaced, delta=delta)
    value = float(value)
    return value if math.isfinite(value) else math.inf


def rdp_replace_one_epsilon(history: History, delta: float) -> float:
    """An independent, looser replace-one bound from Opacus's RDP analysis (0 for no history).

    The cross-check of :func:`replace_one_epsilon`: RDP of the Poisson-subsampled
    Gaussian for add/remove neighbours (Opacus ``compute_rdp``), turned into a replace-one
    bound by the weak triangle inequality of Renyi divergences, composed over the
    history and converted to (epsilon, delta) by Opacus's ``get_privacy_spent``. It is
    1.1-3 times the PLD figure in realistic regimes and never below it. Cached.

    Raises
    ------
    InputError
        If ``delta`` is not in (0, 1).
    """
    return _epsilon(_rdp_replace_one_cached, history, delta)


@dataclass(frozen=True)
class EpsilonReport:
    """Epsilon of one merged history at one delta.

    ``epsilon`` is the replace-one figure that counts (PLD); ``rdp`` the replace-one RDP
    cross-check (never below it); :attr:`add_remove` the add/remove-one figure, for
    comparison only, computed when first read (a training receipt reads it; budget checks
    and analysis receipts do not).
    """

    history: History
    delta: float
    epsilon: float
    rdp: float

    @functools.cached_property
    def add_remove(self) -> float:
        """The add/remove-one epsilon: Opacus PRV, or Opacus RDP where PRV cannot bound it."""
        value = prv_epsilon(self.history, self.delta)
        if not math.isfinite(value) and self.history:
            value = _rdp_add_remove_cached(self.history, self.delta)
        return value


def epsilon_report(history: Iterable[Segment], delta: float) -> EpsilonReport:
    """Replace-one (PLD) epsilon of ``history`` and its RDP cross-check (add/remove on demand).

    Raises
    ------
    InputError
        If ``delta`` is not in (0, 1).
    VerificationError
        If the RDP bound comes out below a finite PLD value: the accountants disagree, so
        neither number can be trusted for a budget.
    """
    merged = merge_history(history)
    epsilon = replace_one_epsilon(merged, delta)
    rdp = rdp_replace_one_epsilon(merged, delta)
    if math.isfinite(epsilon) and rdp < epsilon:
        raise VerificationError(
            f"accountant cross-check failed: the replace-one RDP bound {rdp:.6g} is below "
            f"the PLD epsilon {epsilon:.6g} for history {history_to_json(merged)} at "
            f"delta {delta:g}"
        )
    return EpsilonReport(history=merged, delta=float(delta), epsilon=epsilon, rdp=rdp)


@dataclass(frozen=True)
class RoundBudget:
    """What one planned round would do to a dataset's and a study's epsilon.

    ``dataset`` and ``study`` report epsilon *after* the round. The round may run only if
    :attr:`allowed`.
    """

    planned: Segment
    dataset: EpsilonReport
    study: EpsilonReport
    dataset_budget: float
    study_cap: float

    @property
    def dataset_allowed(self) -> bool:
        """Whether the dataset stays within its budget."""
        return self.dataset.epsilon <= self.dataset_budget

    @property
    def study_allowed(self) -> bool:
        """Whether the study stays within its approved cap at this site."""
        return self.study.epsilon <= self.study_cap

    @property
    def allowed(self) -> bool:
        """Whether the round may run."""
        return self.dataset_allowed and self.study_allowed


def evaluate_round(
    *,
    dataset_history: Sequence[Segment],
    study_history: Sequence[Segment],
    planned: Segment,
    delta: float,
    dataset_budget: float,
    study_cap: float,
) -> RoundBudget:
    """Epsilon the dataset and the study would reach after ``planned``, against their caps.

    ``dataset_history`` is every segment run on the dataset (all studies);
    ``study_history`` the part of it this study ran. Both are evaluated at the study's
    ``delta``. The dataset budget is checked at that delta too, which is sound because a
    study may only be approved with a delta no larger than the dataset's.

    Raises
    ------
    InputError
        If ``delta`` is not in (0, 1).
    VerificationError
        If the PRV and RDP accountants disagree (see :func:`epsilon_report`).
    """
    dataset_after = merge_history([*dataset_history, planned])
    study_after = merge_history([*study_history, planned])
    dataset_report = epsilon_report(dataset_after, delta)
    study_report = (
        dataset_report if study_after == dataset_after else epsilon_report(study_after, delta)
    )
    return RoundBudget(
        planned=planned,
        dataset=dataset_report,
        study=study_report,
        dataset_budget=dataset_budget,
        study_cap=study_cap,
    )


def epsilon_left(cap: float, history: Sequence[Segment], delta: float) -> float:
    """How much of ``cap`` remains after ``history`` (never negative).

    Raises
    ------
    InputError
        If ``delta`` is not in (0, 1).
    """
    spent = replace_one_epsilon(merge_history(history), delta)
    return max(0.0, cap - spent) if math.isfinite(spent) else 0.0
