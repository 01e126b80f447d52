"""A site's release of one query: the exact figures, their scales, the noise, suppression.

Every query is released as one flat vector with one Gaussian noise draw per figure; the
standard deviation of figure ``i`` is ``s * scale[i]`` with ``s = z * Delta / 2``
(:func:`veracity.analytics.calibration.noise_std`). Values are clipped to their column's
declared bounds first (and binned values to their outer edges); the cohort filter is
applied to the raw values. The layout and replace-one L2 sensitivity of each kind
(``h = (upper - lower) / 2`` and ``c = (upper + lower) / 2`` of the value column):

=============  ============================================  ==========  ==============
kind           figures                                       scales      Delta
=============  ============================================  ==========  ==============
count          n (rows in the cohort)                        1           1
sum            sum of x                                      1           max(U-L,|L|,|U|)
mean           n, sum of (x - c)                             1, h        2
variance       n, sum of (x - c), sum of (x - c)^2           1, h, h^2   2
histogram      one count per bin                             1 each      sqrt 2
quantiles      one count per bin (read as quantiles)         1 each      sqrt 2
crosstab       one count per (bin, by-bin) cell              1 each      sqrt 2
kaplan_meier   per stratum and time bin: events, censored    1 each      sqrt 2
=============  ============================================  ==========  ==============

Why: replacing one record moves one unit between two cells (histograms, crosstabs, the
Kaplan-Meier cells: L2 change sqrt 2) or in or out of the cohort (1). For mean and
variance, in units of ``h`` each record contributes ``(1, y, y^2)`` with ``|y| <= 1``;
two in-cohort records differ by at most ``(0, 2, 0)`` in norm (the maximum of
``(a - b)^2 (1 + (a + b)^2)`` over ``[-1, 1]^2`` is 4), one record entering or leaving by
at most ``sqrt 3``: so 2.

Small cells (count figures whose noisy value is below the site's threshold) are set to 0
after the noise, which is post-processing and costs nothing; for mean and variance a
noisy count below it suppresses the whole release.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from veracity.analytics.calibration import noise_std
from veracity.contracts.analysis import AnalysisStudy, Query
from veracity.errors import InputError

__all__ = ["Columns", "Release", "cohort_mask", "exact_release", "NoisyRelease", "add_noise"]

#: A dataset's columns by name, one float per row.
Columns = Mapping[str, npt.NDArray[np.float64]]
#: A source of independent standard normals (the site's ChaCha20 source).
UnitNoise = Callable[[int], npt.NDArray[np.float64]]

_SQRT2 = math.sqrt(2.0)


@dataclass(frozen=True)
class Release:
    """The exact figures a site would release for one query, before noise."""

    values: npt.NDArray[np.float64]
    scales: npt.NDArray[np.float64]
    sensitivity: float
    #: Indices of the figures that are counts (subject to small-cell suppression).
    count_cells: tuple[int, ...]
    #: Whether one small count suppresses the whole release (mean, variance).
    suppress_all: bool = False


def _column(columns: Columns, name: str) -> npt.NDArray[np.float64]:
    try:
        return np.asarray(columns[name], dtype=np.float64)
    except KeyError as err:
        raise InputError(f"the dataset has no column {name!r}") from err


def _rows(columns: Columns) -> int:
    lengths = {len(values) for values in columns.values()}
    if len(lengths) != 1:
        raise InputError("every column must have one value per row")
    return lengths.pop()


def cohort_mask(query: Query, columns: Columns) -> npt.NDArray[np.bool_]:
    """Rows that meet every condition of the query's cohort filter (raw values)."""
    mask = np.ones(_rows(columns), dtype=bool)
    for condition in query.cohort:
        values = _column(columns, condition.column)
        target = condition.value
        match condition.op:
            case "==":
                mask &= values == target
            case "!=":
                mask &= values != target
            case "<":
                mask &= values < target
            case "<=":
                mask &= values <= target
            case ">":
                mask &= values > target
            case ">=":
                mask &= values >= target
    return mask


def _bounded(study: AnalysisStudy, columns: Columns, name: str) -> npt.NDArray[np.float64]:
    bounds = study.columns[name]
    return np.clip(_column(columns, name), bounds.lower, bounds.upper)


def _bin_index(values: npt.NDArray[np.float64], edges: list[float]) -> npt.NDArray[np.intp]:
    """Bin of each value over ``edges`` (values outside go to the outer bins)."""
    inner = np.asarray(edges[1:-1], dtype=np.float64)
    return np.searchsorted(inner, values, side="right").astype(np.intp)


def _counts(index: npt.NDArray[np.intp], size: int) -> npt.NDArray[np.float64]:
    return np.bincount(index, minlength=size).astype(np.float64)


def exact_release(study: AnalysisStudy, query: Query, columns: Columns) -> Release:
    """The exact figures of ``query`` on ``columns`` (see the module docstring for layouts).

    Raises
    ------
    InputError
        If the query is not one of the study's, or a column it reads is missing.
    """
    if query not in study.queries:
        raise InputError(f"query {query.query_id!r} is not one of the study's queries")
    mask = cohort_mask(query, columns)
    kind = query.kind
    if kind == "count":
        return Release(np.array([float(mask.sum())]), np.ones(1), 1.0, (0,))
    assert query.column is not None  # noqa: S101 - the Query contract guarantees it
    bounds = study.columns[query.column]
    x = _bounded(study, columns, query.column)[mask]
    if kind == "sum":
        lo, hi = bounds.lower, bounds.upper
        sensitivity = max(hi - lo, abs(lo), abs(hi))
        return Release(np.array([math.fsum(x)]), np.ones(1), sensitivity, ())
    centre = (bounds.upper + bounds.lower) / 2.0
    half = (bounds.upper - bounds.lower) / 2.0
    y = x - centre
    if kind == "mean":
        values = np.array([float(len(x)), math.fsum(y)])
        return Release(values, np.array([1.0, half]), 2.0, (0,), suppress_all=True)
    if kind == "variance":
        values = np.array([float(len(x)), math.fsum(y), math.fsum(y * y)])
        return Release(values, np.array([1.0, half, half * half]), 2.0, (0,), suppress_all=True)
    assert query.bins is not None  # noqa: S101 - the Query contract guarantees it
    bins = len(query.bins) - 1
    index = _bin_index(x, query.bins)
    if kind in ("histogram", "quantiles"):
        counts = _counts(index, bins)
        return Release(counts, np.ones(bins), _SQRT2, tuple(range(bins)))
    if kind == "crosstab":
        assert query.by is not None  # noqa: S101 - the Query contract guarantees it
        assert query.by_bins is not None  # noqa: S101 - the Query contract guarantees it
        by_bins = len(query.by_bins) - 1
        by_index = _bin_index(_bounded(study, columns, query.by)[mask], query.by_bins)
        counts = _counts(index * by_bins + by_index, bins * by_bins)
        return Release(counts, np.ones(bins * by_bins), _SQRT2, tuple(range(bins * by_bins)))
    # kaplan_meier: per stratum, per time bin, (events, censored)
    assert query.event is not None  # noqa: S101
    event = _bounded(study, columns, query.event)[mask] >= 0.5
    strata = 1
    stratum = np.zeros(len(x), dtype=np.intp)
    if query.by is not None and query.by_bins is not None:
        strata = len(query.by_bins) - 1
        stratum = _bin_index(_bounded(study, columns, query.by)[mask], query.by_bins)
    cell = (stratum * bins + index) * 2 + np.where(event, 0, 1)
    size = strata * bins * 2
    return Release(_counts(cell, size), np.ones(size), _SQRT2, tuple(range(size)))


@dataclass(frozen=True)
class NoisyRelease:
    """What leaves the site: noisy figures, each one's noise std, the suppressed indices."""

    values: tuple[float, ...]
    stds: tuple[float, ...]
    suppressed: tuple[int, ...]
    #: The noise standard deviation of a figure of unit scale.
    noise_std: float


def add_noise(
    release: Release,
    *,
    noise_multiplier: float,
    unit_noise: UnitNoise,
    threshold: float = 0.0,
) -> NoisyRelease:
    """Add Gaussian noise of std ``z Delta / 2 * scale`` to each figure, then suppress.

    ``unit_noise(n)`` gives ``n`` independent standard normals (the site's secure source).
    Count figures whose noisy value is below ``threshold`` are set to 0 and listed.

    Raises
    ------
    InputError
        If the noise multiplier is not positive, or the source gives the wrong shape.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise InputError("the noise multiplier must be positive and finite")
    std = noise_std(noise_multiplier, release.sensitivity)
    size = len(release.values)
    draws = np.asarray(unit_noise(size), dtype=np.float64)
    if draws.shape != (size,):
        raise InputError("the noise source returned the wrong number of draws")
    stds = std * release.scales
    noisy = release.values + stds * draws
    suppressed: list[int] = []
    if threshold > 0:
        small = [i for i in release.count_cells if noisy[i] < threshold]
        suppressed = list(range(size)) if small and release.suppress_all else small
        noisy[suppressed] = 0.0
    return NoisyRelease(
        values=tuple(float(v) for v in noisy),
        stds=tuple(float(v) for v in stds),
        suppressed=tuple(suppressed),
        noise_std=std,
    )
