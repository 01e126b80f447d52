"""The coordinator's side: add the sites' noisy releases up and read each query's figures.

The sites' releases of one query have the same layout
(:mod:`veracity.analytics.mechanism`), so they are summed figure by figure; the noise is
independent across sites, so the variances of the sums are the sums of the sites' stated
noise variances. Each kind then reads its figures from the summed vector:

* ``count``, ``sum``, ``histogram``, ``crosstab``: the sums, with standard error
  ``sqrt(sum of variances)``;
* ``mean`` (``c + A / n``) and ``variance`` (``(B - A^2 / n) / (n - 1)``, with ``A`` and ``B``
  the sums of ``x - c`` and ``(x - c)^2``): standard errors by the delta method;
* ``quantiles``: read from the combined histogram (linear within a bin, negative counts
  read as 0), standard error by a parametric bootstrap over the known noise;
* ``kaplan_meier``: the life-table estimator on the combined events and censored counts
  of each time bin (at risk: everyone still in the study at the bin's start, less half the
  bin's censored), survival at each bin's end; its standard error adds the bootstrap's
  noise variance to Greenwood's sampling variance, so the band is a confidence band for
  the survival curve (and covers the non-private pooled curve at least as often).

Every standard error describes the noise the sites added (and, for survival, sampling):
the 95% interval ``value +- 1.96 se`` covers the answer that the pooled data, clipped and
binned the same way, would give without noise.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from veracity.contracts.analysis import AnalysisStudy, CombinedAnswer, Query, query_hash
from veracity.errors import InputError

__all__ = ["Z95", "BOOTSTRAP_DRAWS", "Combined", "combine", "read_figures", "kaplan_meier"]

#: The two-sided 95% normal quantile.
Z95 = 1.959963984540054
#: Draws of the parametric bootstrap (quantiles, survival).
BOOTSTRAP_DRAWS = 400

_Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Combined:
    """A query's figures: labels, values, standard errors, 95% interval."""

    labels: tuple[str, ...]
    value: tuple[float, ...]
    se: tuple[float, ...]

    @property
    def lower(self) -> tuple[float, ...]:
        """``value - 1.96 se``."""
        return tuple(v - Z95 * s for v, s in zip(self.value, self.se, strict=True))

    @property
    def upper(self) -> tuple[float, ...]:
        """``value + 1.96 se``."""
        return tuple(v + Z95 * s for v, s in zip(self.value, self.se, strict=True))

    def to_contract(self, query: Query, sites: Sequence[str]) -> CombinedAnswer:
        """The answer as ``analysis.answered`` records it."""
        return CombinedAnswer(
            kind=query.kind,
            labels=list(self.labels),
            value=list(self.value),
            se=list(self.se),
            lower=list(self.lower),
            upper=list(self.upper),
            sites=sorted(sites),
        )


def _edge_labels(name: str, edges: Sequence[float]) -> list[str]:
    return [f"{name}[{a:g},{b:g})" for a, b in itertools.pairwise(edges)]


def _quantiles(counts: _Array, edges: Sequence[float], probabilities: Sequence[float]) -> _Array:
    positive = np.maximum(counts, 0.0)
    total = float(positive.sum())
    out = np.empty(len(probabilities))
    if total <= 0:
        out[:] = (edges[0] + edges[-1]) / 2.0
        return out
    cumulative = np.cumsum(positive)
    for k, p in enumerate(probabilities):
        target = p * total
        j = min(int(np.searchsorted(cumulative, target, side="left")), len(positive) - 1)
        before = float(cumulative[j - 1]) if j > 0 else 0.0
        fraction = (target - before) / positive[j] if positive[j] > 0 else 0.5
        fraction = min(max(fraction, 0.0), 1.0)
        out[k] = edges[j] + fraction * (edges[j + 1] - edges[j])
    return out


def kaplan_meier(cells: _Array, strata: int, bins: int) -> tuple[_Array, _Array]:
    """Life-table survival at each bin's end and its Greenwood variance, per stratum.

    ``cells`` is the flat ``(stratum, bin, [events, censored])`` layout; negative noisy
    counts are read as 0. Returns two ``(strata * bins,)`` arrays.
    """
    grid = np.maximum(cells.reshape(strata, bins, 2), 0.0)
    events, censored = grid[..., 0], grid[..., 1]
    leaving = events + censored
    at_risk = np.flip(np.cumsum(np.flip(leaving, axis=1), axis=1), axis=1) - censored / 2.0
    safe = np.where(at_risk > 0, at_risk, 1.0)
    hazard = np.where(at_risk > 0, np.minimum(events / safe, 1.0), 0.0)
    survival = np.cumprod(1.0 - hazard, axis=1)
    gap = safe - events
    terms = np.where((at_risk > 0) & (gap > 0), events / (safe * np.where(gap > 0, gap, 1.0)), 0.0)
    greenwood = survival**2 * np.cumsum(terms, axis=1)
    flat_survival: _Array = survival.reshape(-1).astype(np.float64)
    flat_greenwood: _Array = greenwood.reshape(-1).astype(np.float64)
    return flat_survival, flat_greenwood


def _labels(query: Query) -> list[str]:
    kind = query.kind
    if kind in ("count", "sum", "mean", "variance"):
        return [kind]
    assert query.column is not None  # noqa: S101 - the Query contract guarantees it
    assert query.bins is not None  # noqa: S101 - the Query contract guarantees it
    if kind == "histogram":
        return _edge_labels(query.column, query.bins)
    if kind == "quantiles":
        assert query.probabilities is not None  # noqa: S101
        return [f"q{p:g}" for p in query.probabilities]
    if kind == "crosstab":
        assert query.by is not None  # noqa: S101 - the Query contract guarantees it
        assert query.by_bins is not None  # noqa: S101 - the Query contract guarantees it
        rows = _edge_labels(query.column, query.bins)
        cols = _edge_labels(query.by, query.by_bins)
        return [f"{r}|{c}" for r in rows for c in cols]
    strata = _edge_labels(query.by, query.by_bins) if query.by and query.by_bins else ["all"]
    ends = [f"S(t<{b:g})" for b in query.bins[1:]]
    return [f"{s}|{e}" for s in strata for e in ends]


def _strata(query: Query) -> int:
    return len(query.by_bins) - 1 if query.by_bins is not None else 1


def _seed(study: AnalysisStudy, query: Query) -> int:
    return int.from_bytes(hashlib.sha256(query_hash(study, query).encode()).digest()[:8], "big")


def read_figures(study: AnalysisStudy, query: Query, total: _Array, variance: _Array) -> Combined:
    """The query's figures from the summed release ``total`` with noise ``variance``.

    With ``variance`` all 0 this is the exact (non-private) answer of the same release.
    """
    kind = query.kind
    labels = tuple(_labels(query))
    if kind in ("count", "sum", "histogram", "crosstab"):
        return Combined(labels, tuple(map(float, total)), tuple(map(math.sqrt, variance)))
    if kind in ("mean", "variance"):
        assert query.column is not None  # noqa: S101
        bounds = study.columns[query.column]
        centre = (bounds.upper + bounds.lower) / 2.0
        n = max(float(total[0]), 1.0)
        a = float(total[1])
        if kind == "mean":
            mean = centre + a / n
            se2 = variance[1] / n**2 + (a / n) ** 2 * variance[0] / n**2
            return Combined(labels, (mean,), (math.sqrt(se2),))
        b = float(total[2])
        m = max(n - 1.0, 1.0)
        spread = max((b - a * a / n) / m, 0.0)
        grad_b = 1.0 / m
        grad_a = -2.0 * a / (n * m)
        grad_n = ((a * a / (n * n)) * m - (b - a * a / n)) / (m * m)
        se2 = grad_n**2 * variance[0] + grad_a**2 * variance[1] + grad_b**2 * variance[2]
        return Combined(labels, (spread,), (math.sqrt(float(se2)),))
    assert query.bins is not None  # noqa: S101
    bins = len(query.bins) - 1
    if kind == "quantiles":
        assert query.probabilities is not None  # noqa: S101
        edges, probabilities = query.bins, query.probabilities

        def statistic(cells: _Array) -> _Array:
            return _quantiles(cells, edges, probabilities)

        extra: _Array | None = None
    else:
        strata = _strata(query)

        def statistic(cells: _Array) -> _Array:
            return kaplan_meier(cells, strata, bins)[0]

        extra = kaplan_meier(total, strata, bins)[1]
    value: _Array = statistic(total)
    if float(variance.max(initial=0.0)) > 0:
        rng = np.random.default_rng(_seed(study, query))
        sd = np.sqrt(variance)
        draws = np.stack(
            [
                statistic(total + sd * rng.standard_normal(len(total)))
                for _ in range(BOOTSTRAP_DRAWS)
            ]
        )
        boot_var = draws.var(axis=0, ddof=1)
    else:
        boot_var = np.zeros(len(value))
    se2 = boot_var if extra is None else boot_var + extra
    return Combined(labels, tuple(map(float, value)), tuple(float(math.sqrt(v)) for v in se2))


def combine(
    study: AnalysisStudy,
    query: Query,
    answers: Mapping[str, tuple[Sequence[float], Sequence[float]]],
) -> Combined:
    """Combine sites' noisy releases ``{site: (values, stds)}`` of ``query``.

    Raises
    ------
    InputError
        If there is no answer, or the answers' layouts differ.
    """
    if not answers:
        raise InputError(f"no site answered query {query.query_id!r}")
    lengths = {len(values) for values, _ in answers.values()}
    lengths |= {len(stds) for _, stds in answers.values()}
    if len(lengths) != 1:
        raise InputError(f"the sites' answers to query {query.query_id!r} differ in layout")
    total = np.sum([np.asarray(values, dtype=np.float64) for values, _ in answers.values()], 0)
    variance = np.sum([np.asarray(stds, dtype=np.float64) ** 2 for _, stds in answers.values()], 0)
    return read_figures(study, query, total, variance)
