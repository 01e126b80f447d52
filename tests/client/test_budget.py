"""Privacy histories, the PRV/RDP cross-check, Poisson sampling terms and the round check."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant

from veracity.client import budget
from veracity.client.budget import (
    Segment,
    epsilon_left,
    epsilon_report,
    evaluate_round,
    history_from_json,
    history_to_json,
    merge_history,
    poisson_sampling,
    prv_epsilon,
    rdp_epsilon,
    total_steps,
)
from veracity.errors import InputError, VerificationError

DELTA = 1e-5

segments = st.builds(
    Segment,
    st.sampled_from([0.8, 1.0, 2.5, 7.7]),
    st.sampled_from([1.0, 0.5, 0.2, 1 / 3, 0.01]),
    st.integers(min_value=1, max_value=500),
)


@given(st.lists(segments, max_size=12))
@settings(max_examples=60, deadline=None)
def test_merging_keeps_every_step_once_per_mechanism(history: list[Segment]) -> None:
    merged = merge_history(history)
    assert total_steps(merged) == total_steps(history)
    keys = [(s.noise_multiplier, s.sample_rate) for s in merged]
    assert len(keys) == len(set(keys))
    assert merge_history(merged) == merged
    assert merge_history([*history, *history]) == tuple(
        Segment(s.noise_multiplier, s.sample_rate, 2 * s.steps) for s in merged
    )


@given(st.lists(segments, max_size=8))
@settings(max_examples=60, deadline=None)
def test_history_json_round_trip_is_exact(history: list[Segment]) -> None:
    merged = merge_history(history)
    assert history_from_json(json.loads(json.dumps(history_to_json(merged)))) == merged


@pytest.mark.parametrize(
    "bad",
    [{"a": 1}, [[1.0, 0.2]], [[0.0, 0.2, 3]], [[1.0, 1.5, 3]], [[1.0, 0.2, 0]], [["x", 0.2, 1]]],
)
def test_malformed_histories_are_refused(bad: object) -> None:
    with pytest.raises(InputError):
        history_from_json(bad)


def test_prv_epsilon_matches_an_accountant_stepped_one_step_at_a_time() -> None:
    stepped = PRVAccountant()
    for _ in range(40):
        stepped.step(noise_multiplier=1.2, sample_rate=0.25)
    for _ in range(10):
        stepped.step(noise_multiplier=3.0, sample_rate=0.1)
    history = (Segment(1.2, 0.25, 40), Segment(3.0, 0.1, 10))
    assert prv_epsilon(history, DELTA) == pytest.approx(stepped.get_epsilon(DELTA), abs=1e-9)
    rdp = RDPAccountant()
    rdp.history = list(stepped.history)
    assert rdp_epsilon(history, DELTA) == pytest.approx(rdp.get_epsilon(DELTA), abs=1e-9)


def test_empty_history_spends_nothing() -> None:
    assert prv_epsilon((), DELTA) == 0.0
    assert epsilon_report((), DELTA).rdp == 0.0


@pytest.mark.parametrize(
    ("sigma", "rate", "steps"),
    [(0.8, 0.2, 100), (1.0, 0.125, 240), (2.993, 0.2, 100), (7.734, 0.2, 100), (1.1, 0.0043, 2000)],
)
def test_rdp_is_never_below_prv_in_realistic_regimes(sigma: float, rate: float, steps: int) -> None:
    report = epsilon_report((Segment(sigma, rate, steps),), DELTA)
    assert report.rdp >= report.prv > 0


def test_accountants_disagreeing_fails_the_cross_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget, "rdp_epsilon", lambda history, delta: 0.01)
    with pytest.raises(VerificationError, match="cross-check"):
        epsilon_report((Segment(1.0, 0.2, 50),), DELTA)


def test_prv_that_cannot_bound_a_history_counts_as_infinite_and_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The failure Opacus's PRV raises for some histories (opacus#601, prv_accountant#36).
    def fail(self: PRVAccountant, delta: float, **kwargs: object) -> float:
        raise RuntimeError("Discrete mean differs from continuous mean significantly")

    monkeypatch.setattr(PRVAccountant, "get_epsilon", fail)
    unusual = Segment(0.61803, 0.987, 17)  # not in the cache from other tests
    assert math.isinf(prv_epsilon((unusual,), DELTA))
    refused = evaluate_round(
        dataset_history=(), study_history=(), planned=unusual,
        delta=DELTA, dataset_budget=1e9, study_cap=1e9,
    )  # fmt: skip
    assert not refused.allowed


def test_round_is_allowed_exactly_up_to_the_cap() -> None:
    planned = Segment(2.0, 0.2, 5)
    after = prv_epsilon((Segment(2.0, 0.2, 10),), DELTA)
    common: dict[str, Any] = {
        "dataset_history": (Segment(2.0, 0.2, 5),),
        "planned": planned,
        "delta": DELTA,
    }
    at_cap = evaluate_round(**common, study_history=(), dataset_budget=after, study_cap=10.0)
    assert at_cap.allowed
    assert at_cap.dataset.prv == after
    below = evaluate_round(**common, study_history=(), dataset_budget=after - 1e-9, study_cap=10.0)
    assert not below.allowed
    assert not below.dataset_allowed
    assert below.study_allowed


def test_study_and_dataset_histories_are_checked_separately() -> None:
    other_study = (Segment(1.0, 0.2, 50),)
    planned = Segment(2.0, 0.2, 5)
    result = evaluate_round(
        dataset_history=other_study, study_history=(), planned=planned,
        delta=DELTA, dataset_budget=100.0, study_cap=1.0,
    )  # fmt: skip
    assert result.study.history == (planned,)
    assert result.dataset.history == (*other_study, planned)
    assert result.study.prv < result.dataset.prv
    assert result.allowed == (result.study.prv <= 1.0)


def test_epsilon_left_is_what_remains_and_never_negative() -> None:
    history = (Segment(2.0, 0.2, 10),)
    spent = prv_epsilon(history, DELTA)
    assert epsilon_left(5.0, history, DELTA) == pytest.approx(5.0 - spent)
    assert epsilon_left(spent / 2, history, DELTA) == 0.0


@pytest.mark.parametrize(
    ("rows", "batch", "steps"), [(152, 32, 5), (151, 32, 5), (10, 100, 1), (93 * 4, 4, 93)]
)
def test_poisson_sampling_terms_are_exact(rows: int, batch: int, steps: int) -> None:
    sampling = poisson_sampling(rows, batch)
    assert sampling.steps_per_epoch == steps
    assert sampling.sample_rate == 1 / steps
    assert sampling.expected_batch_size == max(1, int(rows / steps))
    assert sampling.segment(1.5, 3) == Segment(1.5, 1 / steps, 3 * steps)


def test_poisson_sampling_does_not_lose_the_step_opacus_loses() -> None:
    assert int(1 / (1 / 93)) == 92  # what Opacus's sampler would run for 93 batches
    assert poisson_sampling(93, 1).steps_per_epoch == 93


@pytest.mark.parametrize(
    ("terms"), [(0.0, 0.2, 1), (1.0, 0.0, 1), (1.0, 0.2, 0), (math.nan, 0.2, 1)]
)
def test_invalid_segments_are_refused(terms: tuple[float, float, int]) -> None:
    with pytest.raises(InputError):
        Segment(*terms)


def test_delta_must_be_a_probability() -> None:
    with pytest.raises(InputError, match="delta"):
        prv_epsilon((Segment(1.0, 0.2, 5),), 0.0)
