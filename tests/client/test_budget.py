"""Privacy histories, replace-one epsilon (PLD) and its RDP cross-check, Poisson sampling."""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import pytest
from dp_accounting import NeighboringRelation, dp_event
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
from dp_accounting.pld.privacy_loss_distribution import PrivacyLossDistribution
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant

from tests.hypothesis_examples import examples
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
    replace_one_epsilon,
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
@settings(max_examples=examples(60), deadline=None)
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
@settings(max_examples=examples(60), deadline=None)
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


def test_replace_one_epsilon_is_google_pld_with_replace_one_neighbours() -> None:
    # The auditor's call, built here independently of the module's own event builder.
    history = (Segment(1.2, 0.25, 40), Segment(3.0, 0.1, 10))
    accountant = PLDAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    accountant.compose(
        dp_event.ComposedDpEvent(
            [
                dp_event.SelfComposedDpEvent(
                    dp_event.PoissonSampledDpEvent(0.25, dp_event.GaussianDpEvent(1.2)), 40
                ),
                dp_event.SelfComposedDpEvent(
                    dp_event.PoissonSampledDpEvent(0.1, dp_event.GaussianDpEvent(3.0)), 10
                ),
            ]
        )
    )
    assert replace_one_epsilon(history, DELTA) == pytest.approx(
        accountant.get_epsilon(DELTA), abs=1e-9
    )


@pytest.mark.parametrize(
    ("sigma", "rate"), [(5.0, 1 / 7), (7.734, 0.2), (3.7104592360073014, 0.1031), (14.06, 1.0)]
)
def test_a_steps_pld_is_dp_accountings_bit_for_bit(sigma: float, rate: float) -> None:
    """One step's replace-one PLD, its divergences computed at once: dp-accounting's floats."""
    import numpy as np
    from dp_accounting.pld.privacy_loss_distribution import from_gaussian_mechanism

    ours = budget._gaussian_pld.__wrapped__(sigma, rate)
    theirs = from_gaussian_mechanism(
        standard_deviation=sigma,
        value_discretization_interval=1e-4,
        sampling_prob=rate,
        neighboring_relation=NeighboringRelation.REPLACE_ONE,
    )
    assert isinstance(ours, PrivacyLossDistribution)
    assert ours._symmetric == theirs._symmetric
    for mine, reference in (
        (ours._pmf_remove, theirs._pmf_remove),
        (ours._pmf_add, theirs._pmf_add),
    ):
        assert type(mine) is type(reference)
        assert mine._discretization == reference._discretization
        assert mine._lower_loss == reference._lower_loss
        assert mine._infinity_mass == reference._infinity_mass
        assert mine._pessimistic_estimate == reference._pessimistic_estimate
        assert np.array_equal(mine._probs, reference._probs)
    assert ours.get_epsilon_for_delta(DELTA) == theirs.get_epsilon_for_delta(DELTA)


def _pld_afresh(history: tuple[Segment, ...]) -> float:
    accountant = PLDAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    accountant.compose(budget.replace_one_event(history))
    return float(accountant.get_epsilon(DELTA))


def _grown_one_charge_at_a_time(charges: list[Segment]) -> None:
    history: tuple[Segment, ...] = ()
    for charge in charges:
        history = merge_history([*history, charge])

        assert replace_one_epsilon(history, DELTA) == _pld_afresh(history)


def test_a_history_grown_one_charge_at_a_time_costs_what_pld_gives_afresh() -> None:
    # A site's history as it grows: a DP-SGD round, an analysis query (q = 1) that adds a
    # segment, the same query again (adds a step to the last segment), and a later round
    # that merges into the first. Each epsilon comes from the cached prefix PLDs; it must
    # equal, to the last bit, dp-accounting's PLD accountant composing the whole history
    # afresh. (The longer history below, in `make test`, has the same three growths.)
    _grown_one_charge_at_a_time(
        [Segment(2.5, 0.1, 20), Segment(4.1, 1.0, 1), Segment(4.1, 1.0, 1), Segment(2.5, 0.1, 20)]
    )


@pytest.mark.slow  # ~8 CPU-s of PLD compositions; the test above is its edit-loop version
def test_a_long_history_grown_one_charge_at_a_time_costs_what_pld_gives_afresh() -> None:
    # DP-SGD rounds, analysis queries that add a segment or add steps to the last one, and
    # later rounds that merge into the first, over eight charges.
    _grown_one_charge_at_a_time(
        [
            Segment(1.3, 0.05, 60), Segment(4.1, 1.0, 1), Segment(4.1, 1.0, 1),
            Segment(6.25, 1.0, 1), Segment(1.3, 0.05, 60), Segment(4.1, 1.0, 1),
            Segment(6.25, 1.0, 1), Segment(2.2, 1.0, 1),
        ]
    )  # fmt: skip


def test_a_budget_check_leaves_the_add_remove_figure_uncomputed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The add/remove figure (Opacus PRV) is for training receipts only: a budget check
    # (every round, every analysis query) must not pay for it.
    calls: list[object] = []
    honest = PRVAccountant.get_epsilon

    def counted(self: PRVAccountant, delta: float, **kwargs: Any) -> float:
        calls.append(self.history)
        return float(honest(self, delta, **kwargs))

    monkeypatch.setattr(PRVAccountant, "get_epsilon", counted)
    checked = evaluate_round(
        dataset_history=(Segment(1.9, 0.1, 30),), study_history=(), planned=Segment(5.3, 1.0, 1),
        delta=DELTA, dataset_budget=10.0, study_cap=10.0,
    )  # fmt: skip

    assert calls == []
    assert checked.dataset.add_remove > 0
    assert len(calls) == 1


def test_replace_one_reproduces_the_figures_the_privacy_review_published() -> None:
    # The demo's terms (issue 12): 15 steps at noise 1.6, sample rate 0.2, delta 1e-5 cost
    # 2.70 under add/remove (dp-accounting PLD; Opacus PRV 2.709) and 4.29 under replace-one.
    report = epsilon_report((Segment(1.6, 0.2, 15),), DELTA)
    assert report.epsilon == pytest.approx(4.286, abs=0.001)
    assert report.add_remove == pytest.approx(2.709, abs=0.001)
    # ... and the review's M1 table: (1.0, 0.1, 10) 2.865 -> 3.434, (2.0, 0.05, 200) 1.571 -> 2.949.
    assert replace_one_epsilon((Segment(1.0, 0.1, 10),), DELTA) == pytest.approx(3.434, abs=0.001)
    assert replace_one_epsilon((Segment(2.0, 0.05, 200),), DELTA) == pytest.approx(2.949, abs=0.001)


def test_empty_history_spends_nothing() -> None:
    report = epsilon_report((), DELTA)
    assert (report.epsilon, report.rdp, report.add_remove) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("sigma", "rate", "steps"),
    [(0.8, 0.2, 100), (1.0, 0.125, 240), (2.993, 0.2, 100), (7.734, 0.2, 100), (1.1, 0.0043, 2000)],
)
def test_replace_one_is_above_add_remove_and_below_its_rdp_bound(
    sigma: float, rate: float, steps: int
) -> None:
    report = epsilon_report((Segment(sigma, rate, steps),), DELTA)
    assert report.rdp >= report.epsilon > report.add_remove > 0


def test_accountants_disagreeing_fails_the_cross_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget, "rdp_replace_one_epsilon", lambda history, delta: 0.01)
    with pytest.raises(VerificationError, match="cross-check"):
        epsilon_report((Segment(1.0, 0.2, 50),), DELTA)


def test_pld_that_cannot_bound_a_history_counts_as_infinite_and_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fail(self: PrivacyLossDistribution, delta: float) -> float:
        raise ValueError("the accountant cannot bound this history")

    monkeypatch.setattr(PrivacyLossDistribution, "get_epsilon_for_delta", fail)
    # Not in the cache from other tests; a noise multiplier above 1 keeps the PLD small
    # (the refusal is the same whatever the history: the accountant fails on every one).
    unusual = Segment(3.61803, 0.987, 17)
    assert math.isinf(replace_one_epsilon((unusual,), DELTA))
    refused = evaluate_round(
        dataset_history=(), study_history=(), planned=unusual,
        delta=DELTA, dataset_budget=1e9, study_cap=1e9,
    )  # fmt: skip
    assert not refused.allowed


def test_add_remove_falls_back_to_rdp_where_prv_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    # The failure Opacus's PRV raises for some histories (opacus#601, prv_accountant#36).
    def fail(self: PRVAccountant, delta: float, **kwargs: object) -> float:
        raise RuntimeError("Discrete mean differs from continuous mean significantly")

    monkeypatch.setattr(PRVAccountant, "get_epsilon", fail)
    # Not in the cache from other tests; a noise multiplier above 1 keeps the replace-one
    # PLD that the report also composes small.
    unusual = Segment(1.71803, 0.5, 13)
    assert math.isinf(prv_epsilon((unusual,), DELTA))
    rdp = RDPAccountant()
    rdp.history = [(1.71803, 0.5, 13)]
    assert epsilon_report((unusual,), DELTA).add_remove == pytest.approx(rdp.get_epsilon(DELTA))


def test_round_is_allowed_exactly_up_to_the_cap() -> None:
    planned = Segment(2.0, 0.2, 5)
    after = replace_one_epsilon((Segment(2.0, 0.2, 10),), DELTA)
    common: dict[str, Any] = {
        "dataset_history": (Segment(2.0, 0.2, 5),),
        "planned": planned,
        "delta": DELTA,
    }
    at_cap = evaluate_round(**common, study_history=(), dataset_budget=after, study_cap=10.0)
    assert at_cap.allowed
    assert at_cap.dataset.epsilon == after
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
    assert result.study.epsilon < result.dataset.epsilon
    assert result.allowed == (result.study.epsilon <= 1.0)


def test_epsilon_left_is_what_remains_and_never_negative() -> None:
    history = (Segment(2.0, 0.2, 10),)
    spent = replace_one_epsilon(history, DELTA)
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
        replace_one_epsilon((Segment(1.0, 0.2, 5),), 0.0)


@pytest.mark.parametrize(
    ("sigma", "rate", "steps"), [(1.0, 0.2, 15), (2.0, 0.01, 1234), (0.7, 0.5, 3), (5.0, 1.0, 7)]
)
def test_a_segments_rdp_is_opacus_compute_rdp_bit_for_bit(
    sigma: float, rate: float, steps: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-step RDP is computed once, memoised and scaled by the steps; same arrays."""
    import numpy as np
    from opacus.accountants.analysis import rdp
    from opacus.accountants.analysis.rdp import compute_rdp

    from veracity.client.budget import _RDP_ORDERS, _segment_rdp

    orders = np.array(_RDP_ORDERS, dtype=np.float64)
    removed, added = _segment_rdp(Segment(sigma, rate, steps))
    monkeypatch.setattr(rdp, "_compute_rdp", rdp._compute_rdp.__wrapped__)  # Opacus's own
    for ours, at in ((removed, 2 * orders), (added, 2 * orders - 1)):
        theirs = compute_rdp(q=rate, noise_multiplier=sigma, steps=steps, orders=list(at))
        assert np.array_equal(ours, np.asarray(theirs))


def test_opacus_rdp_memoised_changes_no_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    """PRV and RDP figures are the floats Opacus computes without the memo (#16's speed-up)."""
    from opacus.accountants.analysis import rdp

    histories = [(Segment(1.0, 0.2, 15),), (Segment(2.0, 0.1, 40), Segment(0.8, 0.5, 3))]
    delta = 1e-5
    memoised = []
    for history in histories:
        budget._prv_epsilon_cached.cache_clear()
        budget._rdp_add_remove_cached.cache_clear()
        memoised.append(
            (budget.prv_epsilon(history, delta), budget._rdp_add_remove_cached(history, delta))
        )
    assert hasattr(rdp._compute_rdp, "cache_info")  # the memo is in place
    monkeypatch.setattr(rdp, "_compute_rdp", rdp._compute_rdp.__wrapped__)
    for history, (prv, rdp_add_remove) in zip(histories, memoised, strict=True):
        prv_accountant = PRVAccountant()
        prv_accountant.history = [(s.noise_multiplier, s.sample_rate, s.steps) for s in history]
        rdp_accountant = RDPAccountant()
        rdp_accountant.history = list(prv_accountant.history)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # as budget.py computes them
            assert prv == prv_accountant.get_epsilon(delta)
            assert rdp_add_remove == rdp_accountant.get_epsilon(delta)
