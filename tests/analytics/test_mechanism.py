from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from veracity.analytics.calibration import calibrate_noise_multiplier
from veracity.analytics.combine import combine, read_figures
from veracity.analytics.mechanism import add_noise, exact_release
from veracity.client.budget import Segment, replace_one_epsilon
from veracity.contracts.analysis import AnalysisStudy, Query
from veracity.errors import InputError

Columns = dict[str, npt.NDArray[np.float64]]


def _pooled(hospitals: dict[str, Columns]) -> Columns:
    names = next(iter(hospitals.values())).keys()
    return {name: np.concatenate([cols[name] for cols in hospitals.values()]) for name in names}


@pytest.mark.parametrize("epsilon", [0.1, 0.5, 1.0, 3.0])
def test_one_query_costs_its_epsilon_share_in_the_replace_one_accountant(epsilon: float) -> None:
    z = calibrate_noise_multiplier(epsilon, 1e-5)

    charged = replace_one_epsilon((Segment(z, 1.0, 1),), 1e-5)

    assert epsilon <= charged <= epsilon + 0.02


def test_sensitivity_bounds_the_release_change_when_one_record_is_replaced(
    study: AnalysisStudy, hospitals: dict[str, Columns]
) -> None:
    columns = hospitals["hospital-a"]
    rng = np.random.default_rng(0)
    for query in study.queries:
        before = exact_release(study, query, columns)
        for _ in range(40):
            changed = {name: values.copy() for name, values in columns.items()}
            row, donor = rng.integers(200, size=2)
            other = hospitals["hospital-b"]
            for name in changed:  # replace one record by another hospital's record
                changed[name][row] = other[name][donor]
                if name == "age":  # and push it to the bounds now and then
                    changed[name][row] = rng.choice([0.0, 200.0, other[name][donor]])
            after = exact_release(study, query, changed)
            moved = np.linalg.norm((after.values - before.values) / before.scales)
            assert moved <= before.sensitivity + 1e-9, query.query_id


def test_every_query_kind_covers_the_pooled_answer_in_at_least_90_percent_of_50_runs(
    study: AnalysisStudy, hospitals: dict[str, Columns]
) -> None:
    pooled = _pooled(hospitals)
    for query in study.queries:
        z = calibrate_noise_multiplier(query.epsilon, study.delta)
        truth = read_figures(
            study,
            query,
            exact_release(study, query, pooled).values,
            np.zeros(len(exact_release(study, query, pooled).values)),
        ).value
        covered = 0
        total = 0
        for seed in range(50):
            rng = np.random.default_rng(seed)
            answers = {}
            for site, columns in hospitals.items():
                noisy = add_noise(
                    exact_release(study, query, columns),
                    noise_multiplier=z,
                    unit_noise=rng.standard_normal,
                )
                answers[site] = (noisy.values, noisy.stds)
            combined = combine(study, query, answers)
            for k, value in enumerate(truth):
                total += 1
                covered += combined.lower[k] <= value <= combined.upper[k]
        assert covered / total >= 0.9, (query.query_id, covered / total)


def test_exact_answers_match_numpy(study: AnalysisStudy, hospitals: dict[str, Columns]) -> None:
    pooled = _pooled(hospitals)
    age = np.clip(pooled["age"], 20.0, 90.0)

    def exact(query: Query) -> tuple[float, ...]:
        values = exact_release(study, query, pooled).values
        return read_figures(study, query, values, np.zeros(len(values))).value

    assert exact(study.query("n-grade-3")) == (float((pooled["grade"] == 3).sum()),)
    assert exact(study.query("sum-age"))[0] == pytest.approx(age.sum())
    assert exact(study.query("mean-age"))[0] == pytest.approx(age.mean())
    assert exact(study.query("var-age"))[0] == pytest.approx(age.var(ddof=1))
    hist = exact(study.query("hist-tsize"))
    expected, _ = np.histogram(np.clip(pooled["tsize"], 0, 120), [0, 20, 40, 60, 120.0001])
    assert hist == tuple(map(float, expected))
    median = exact(study.query("q-age"))[1]
    assert abs(median - float(np.median(age))) < 2.0


def test_suppression_zeroes_small_noisy_cells_after_the_noise(study: AnalysisStudy) -> None:
    columns: Columns = {name: np.zeros(5) for name in study.columns}
    columns["tsize"] = np.array([1.0, 2.0, 3.0, 50.0, 100.0])
    release = exact_release(study, study.query("hist-tsize"), columns)

    noisy = add_noise(
        release, noise_multiplier=1e-6, unit_noise=lambda n: np.zeros(n), threshold=2.0
    )

    assert noisy.values == (3.0, 0.0, 0.0, 0.0)
    assert noisy.suppressed == (1, 2, 3)


def test_a_query_outside_the_study_is_refused(study: AnalysisStudy) -> None:
    stray = Query.parse({"query_id": "x", "kind": "count", "epsilon": 0.1})
    with pytest.raises(InputError, match="not one of the study's queries"):
        exact_release(study, stray, {"age": np.zeros(3)})


def test_noise_std_follows_the_noise_multiplier_and_sensitivity(study: AnalysisStudy) -> None:
    release = exact_release(
        study, study.query("mean-age"), {n: np.ones(4) * 30 for n in study.columns}
    )
    noisy = add_noise(release, noise_multiplier=3.0, unit_noise=lambda n: np.zeros(n))
    assert noisy.noise_std == 3.0
    assert noisy.stds == (3.0, 3.0 * 35.0)
    assert math.isclose(noisy.values[0], 4.0)
