"""The site's explanation of a model: integrated gradients per record, clipped, summed,
noised, charged to the dataset's budget and the study's cap, and signed like a query."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from dp_accounting import NeighboringRelation, dp_event
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant

from tests.client.support import initial_weights, make_study
from veracity.analytics.calibration import calibrate_noise_multiplier
from veracity.client.analysis import QueryRefusal
from veracity.client.approvals import approve_study
from veracity.client.attributions import integrated_gradients
from veracity.client.budget import Segment
from veracity.client.datasets import check_registered, load_registered, register_dataset
from veracity.client.explanation import (
    ExplanationAgent,
    ExplanationAnswer,
    ExplanationRequest,
    clipped_sum,
)
from veracity.client.site import Site
from veracity.client.study_inputs import study_examples
from veracity.contracts.analysis import ANALYSIS_RECEIPT_DOMAIN
from veracity.contracts.explanation import EXPLANATION_QUERY_ID, ExplanationTerms, terms_hash
from veracity.core.canonical import canonical_hash
from veracity.ledger.statement import verify_bound
from veracity.tasks import breast_cancer
from veracity.tasks.study import Study
from veracity.tasks.weights import weights_hash


def _terms(study: Study, weights: dict[str, Any], **changes: Any) -> dict[str, Any]:
    terms: dict[str, Any] = {
        "model_hash": weights_hash(weights),
        "study_hash": study.study_hash,
        "steps": 16,
        "clip_norm": 1.0,
        "epsilon": 1.0,
        "delta": 1e-5,
    }
    terms.update(changes)
    return terms


def _request(study: Study, weights: dict[str, Any], **changes: Any) -> ExplanationRequest:
    return ExplanationRequest(
        terms=_terms(study, weights, **changes),
        study=study.to_document(),
        code_hash=study.code_hash,
        weights=weights,
    )


def _examples(site: Site, study: Study) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    dataset = site.store.get_dataset("bc-0")
    assert dataset is not None
    return study_examples(study, load_registered(dataset, check_registered(dataset)))


def _trained_weights(study: Study) -> dict[str, np.ndarray]:
    weights = initial_weights(study)
    rng = np.random.default_rng(3)
    return {name: rng.normal(0, 0.5, array.shape).astype(np.float32) for name, array in
            weights.items()}  # fmt: skip


def test_integrated_gradients_of_a_linear_model_are_its_weights_times_the_input(
    approved: Study, ready_site: Site
) -> None:
    weights = _trained_weights(approved)
    x, y = _examples(ready_site, approved)

    attributions = integrated_gradients(approved.model_spec, weights, x, y, steps=8)

    (w,) = [a for name, a in weights.items() if name.endswith("weight")]
    baseline = np.zeros_like(x)
    towards_own_class = (2.0 * y - 1.0)[:, None]  # the class-1 logit, negated for class 0
    expected = towards_own_class * w.reshape(1, -1).astype(np.float64) * (x - baseline)
    assert attributions.shape == x.shape
    np.testing.assert_allclose(attributions, expected, rtol=1e-5, atol=1e-6)


def test_the_sites_sum_before_noise_is_the_closed_form_clipped_and_summed(
    approved: Study, ready_site: Site
) -> None:
    weights = _trained_weights(approved)
    x, y = _examples(ready_site, approved)
    agent = ExplanationAgent(ready_site, seed=1)
    agent._analyst._noise = lambda n: np.zeros(n)  # the sum before noise

    outcome = agent.handle(_request(approved, weights, clip_norm=2.0))

    assert isinstance(outcome, ExplanationAnswer), getattr(outcome, "reason", outcome)
    (w,) = [a for name, a in weights.items() if name.endswith("weight")]
    rows = (2.0 * y - 1.0)[:, None] * w.reshape(1, -1).astype(np.float64) * x
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    expected = (rows * np.minimum(1.0, 2.0 / norms)).sum(axis=0)
    np.testing.assert_allclose(outcome.explanation.values, expected, rtol=1e-5, atol=1e-5)
    assert outcome.explanation.records == len(x)


def test_one_extreme_record_moves_the_sum_by_at_most_the_clip_bound() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(0, 1, (50, 6))
    extreme = rows.copy()
    extreme[17] = 1e9 * np.arange(1, 7)

    moved = np.linalg.norm(clipped_sum(extreme, 0.5) - clipped_sum(rows, 0.5))

    assert moved <= 2 * 0.5 + 1e-9
    without = np.linalg.norm(clipped_sum(rows[np.arange(50) != 17], 0.5) - clipped_sum(rows, 0.5))
    assert without <= 0.5 + 1e-9


def _pld_epsilon(history: list[list[float]], delta: float) -> float:
    accountant = PLDAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    accountant.compose(
        dp_event.ComposedDpEvent(
            [
                dp_event.SelfComposedDpEvent(
                    dp_event.PoissonSampledDpEvent(rate, dp_event.GaussianDpEvent(sigma)), steps
                )
                for sigma, rate, steps in history
            ]
        )
    )
    return float(accountant.get_epsilon(delta))


def test_an_explanation_is_charged_its_declared_epsilon_and_signed_like_a_query(
    approved: Study, ready_site: Site
) -> None:
    weights = _trained_weights(approved)
    agent = ExplanationAgent(ready_site, seed=1)
    request = _request(approved, weights, epsilon=0.8)

    outcome = agent.handle(request)

    assert isinstance(outcome, ExplanationAnswer)
    receipt = outcome.receipt.to_json()
    verify_bound(
        ready_site.key.public,
        ANALYSIS_RECEIPT_DOMAIN,
        ready_site.log_id,
        receipt,
        outcome.signature,
        what="receipt",
    )
    terms = ExplanationTerms.parse(dict(request.terms))
    z = calibrate_noise_multiplier(0.8, 1e-5)
    assert receipt["query_id"] == EXPLANATION_QUERY_ID
    assert receipt["query_hash"] == terms_hash(terms)
    assert receipt["answer_hash"] == canonical_hash(outcome.explanation.to_json())
    assert receipt["history"] == [[z, 1.0, 1]]
    assert receipt["sensitivity"] == 2.0
    assert receipt["epsilon_query"] == pytest.approx(0.8, abs=1e-3)
    assert _pld_epsilon(receipt["history"], 1e-5) == pytest.approx(receipt["epsilon"], rel=1e-9)
    assert ready_site.store.dataset_history("bc-0") == (Segment(z, 1.0, 1),)
    assert all(std == pytest.approx(z * 1.0) for std in outcome.explanation.stds)


def test_the_same_explanation_asked_again_is_the_stored_answer_and_costs_nothing(
    approved: Study, ready_site: Site
) -> None:
    weights = _trained_weights(approved)
    agent = ExplanationAgent(ready_site, seed=1)
    first = agent.handle(_request(approved, weights))

    again = agent.handle(_request(approved, weights))

    assert isinstance(first, ExplanationAnswer)
    assert isinstance(again, ExplanationAnswer)
    assert again.explanation == first.explanation
    assert again.receipt.repeated
    assert len(ready_site.store.dataset_history("bc-0")) == 1


def test_a_spent_budget_refuses_the_explanation_with_a_signed_statement(
    approved: Study, ready_site: Site
) -> None:
    weights = _trained_weights(approved)
    computed: list[int] = []

    def counting(*args: Any, **kwargs: Any) -> npt.NDArray[np.float64]:
        computed.append(1)
        return integrated_gradients(*args, **kwargs)

    agent = ExplanationAgent(ready_site, seed=1, attribute=counting)

    # The study's cap is 5: an explanation at epsilon 6 would take it past it.
    outcome = agent.handle(_request(approved, weights, epsilon=6.0))

    assert isinstance(outcome, QueryRefusal)
    assert outcome.kind == "budget.refused"
    assert "would bring study 'bc-test' (cap 5) to epsilon" in outcome.reason
    assert outcome.statement.payload["run_id"] == "query:explanation"
    assert computed == []  # nothing was computed, nothing released
    assert ready_site.store.dataset_history("bc-0") == ()


def test_weights_that_are_not_the_named_model_are_refused(
    approved: Study, ready_site: Site
) -> None:
    weights = _trained_weights(approved)
    other = {name: array + np.float32(1) for name, array in weights.items()}
    request = ExplanationRequest(
        terms=_terms(approved, weights),
        study=approved.to_document(),
        code_hash=approved.code_hash,
        weights=other,
    )

    outcome = ExplanationAgent(ready_site, seed=1).handle(request)

    assert isinstance(outcome, QueryRefusal)
    assert outcome.kind == "approval.missing"
    assert "not the model the terms name" in outcome.reason


def test_a_study_not_approved_here_is_refused(ready_site: Site) -> None:
    study = make_study(study_id="bc-other")
    weights = _trained_weights(study)

    outcome = ExplanationAgent(ready_site, seed=1).handle(_request(study, weights))

    assert isinstance(outcome, QueryRefusal)
    assert outcome.kind == "approval.missing"
    assert "is not approved" in outcome.reason


def test_explaining_after_training_spends_from_the_same_cap(
    ready_site: Site,
) -> None:
    study = make_study(study_id="bc-small-cap", epsilon_caps={"hospital-a": 1.0})
    approve_study(ready_site, study, dataset_id="bc-0", epsilon_cap=1.0)
    weights = _trained_weights(study)
    agent = ExplanationAgent(ready_site, seed=1)

    first = agent.handle(_request(study, weights, epsilon=0.9))
    second = agent.handle(_request(study, weights, epsilon=0.5))

    assert isinstance(first, ExplanationAnswer)
    assert isinstance(second, QueryRefusal)
    assert second.kind == "budget.refused"


def test_a_feature_that_alone_decides_the_label_ranks_first_in_at_least_95_percent_of_runs(
    site: Site, tmp_path: Path
) -> None:
    from sklearn.linear_model import LogisticRegression

    study = make_study(study_id="bc-decider", epsilon_caps={"hospital-a": 500.0})
    rng = np.random.default_rng(0)
    means = np.array([m for m, _ in study.scaling])
    stds = np.array([s for _, s in study.scaling])
    standard = rng.normal(size=(300, len(means)))
    labels = (standard[:, 3] > 0).astype(np.int64)  # mean_area alone decides
    csv = breast_cancer.write_csv(
        breast_cancer.Partition(features=means + stds * standard, labels=labels),
        tmp_path / "decider.csv",
    )
    register_dataset(
        site, dataset_id="bc-0", path=csv, label=breast_cancer.LABEL, epsilon_budget=500.0
    )
    approve_study(site, study, dataset_id="bc-0", epsilon_cap=500.0)
    fitted = LogisticRegression(C=1.0).fit(standard, labels)  # the model trained on it
    weights = {
        "linear.weight": fitted.coef_.astype(np.float32),
        "linear.bias": fitted.intercept_.astype(np.float32),
    }
    runs, first = 20, 0
    for seed in range(runs):
        agent = ExplanationAgent(site, seed=seed)
        # New terms each run (so each is computed, noised and charged anew), epsilon 1: a
        # clip norm a hair apart names new terms under the same noise multiplier, so the
        # charges compose as steps of one mechanism (cheap to account) rather than twenty.
        outcome = agent.handle(_request(study, weights, clip_norm=1.0 + seed * 1e-6, steps=4))
        assert isinstance(outcome, ExplanationAnswer)
        values = np.abs(outcome.explanation.values)
        first += int(np.argmax(values) == 3)

    assert first >= 0.95 * runs
