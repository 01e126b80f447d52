"""The site answers analysis queries under the same budget as training."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dp_accounting import NeighboringRelation, dp_event
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant

from tests.analytics.conftest import study_document, synthetic_columns
from tests.client.support import SITE, make_study, request_for
from veracity.client.analysis import (
    AnalysisAgent,
    QueryRefusal,
    QueryReply,
    QueryRequest,
    approve_analysis,
)
from veracity.client.approvals import approve_study
from veracity.client.datasets import register_dataset
from veracity.client.service import SiteAgent, TrainReply
from veracity.client.site import Site
from veracity.contracts.analysis import ANALYSIS_RECEIPT_DOMAIN, AnalysisStudy
from veracity.ledger.statement import verify_bound
from veracity.tasks import breast_cancer


def _write_csv(path: Path, rows: int = 300) -> Path:
    columns = synthetic_columns(11, rows)
    names = list(columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(names)]
    for i in range(rows):
        lines.append(",".join(f"{columns[name][i]:g}" for name in names))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def analysis_site(site: Site, tmp_path: Path) -> Site:
    register_dataset(site, dataset_id="syn", path=_write_csv(tmp_path / "syn.csv"), label="event")
    return site


def _study(**overrides: Any) -> AnalysisStudy:
    return AnalysisStudy.parse(study_document(**overrides))


def _request(analysis: AnalysisStudy, query_id: str, **changes: Any) -> QueryRequest:
    study = analysis
    terms: dict[str, Any] = {
        "study": study.to_document(),
        "study_hash": study.study_hash,
        "code_hash": study.code_hash,
        "query_id": query_id,
    }
    terms.update(changes)
    return QueryRequest(**terms)


def _pld_epsilon(history: list[list[float]], delta: float) -> float:
    accountant = PLDAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    accountant.compose(
        dp_event.ComposedDpEvent(
            [
                dp_event.SelfComposedDpEvent(
                    dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z)), int(n)
                )
                for z, q, n in history
            ]
        )
    )
    return float(accountant.get_epsilon(delta))


def test_an_approved_query_is_answered_with_a_signed_receipt_an_auditor_can_recompute(
    analysis_site: Site,
) -> None:
    study = _study()
    approve_analysis(analysis_site, study, dataset_id="syn", epsilon_cap=5.0)
    agent = AnalysisAgent(analysis_site, seed=3)

    reply = agent.handle_query(_request(study, "km-hormone"))

    assert isinstance(reply, QueryReply)
    receipt = reply.receipt
    verify_bound(
        analysis_site.key.public,
        ANALYSIS_RECEIPT_DOMAIN,
        analysis_site.log_id,
        receipt.to_json(),
        reply.signature,
        what="receipt",
    )
    assert receipt.history == [[receipt.noise_multiplier, 1.0, 1]]
    assert abs(_pld_epsilon(receipt.history, receipt.delta) - receipt.epsilon) <= 0.02
    assert abs(receipt.epsilon - 0.5) <= 0.02
    assert len(reply.answer.values) == 2 * 5 * 2


def test_the_same_query_twice_costs_epsilon_once_and_returns_the_stored_answer(
    analysis_site: Site,
) -> None:
    study = _study()
    approve_analysis(analysis_site, study, dataset_id="syn", epsilon_cap=5.0)
    agent = AnalysisAgent(analysis_site, seed=3)

    first = agent.handle_query(_request(study, "mean-age"))
    second = AnalysisAgent(analysis_site, seed=4).handle_query(_request(study, "mean-age"))

    assert isinstance(first, QueryReply)
    assert isinstance(second, QueryReply)
    assert second.answer == first.answer
    assert second.receipt.repeated
    assert second.receipt.epsilon == first.receipt.epsilon
    assert len(analysis_site.store.list_spends("syn")) == 1


def test_a_query_past_the_cap_is_refused_with_a_signed_budget_refusal(
    analysis_site: Site,
) -> None:
    study = _study(epsilon_caps={SITE: 0.6}, min_sites=1)
    approve_analysis(analysis_site, study, dataset_id="syn", epsilon_cap=0.6)
    agent = AnalysisAgent(analysis_site, seed=3)

    first = agent.handle_query(_request(study, "sum-age"))
    refused = agent.handle_query(_request(study, "mean-age"))

    assert isinstance(first, QueryReply)
    assert isinstance(refused, QueryRefusal)
    assert refused.kind == "budget.refused"
    assert refused.statement.payload["epsilon_requested"] > 0.6
    assert refused.statement in [entry.statement for entry in analysis_site.store.outbox()]
    assert len(analysis_site.store.list_spends("syn")) == 1


def test_a_query_on_an_undeclared_column_is_refused(analysis_site: Site) -> None:
    study = _study()
    approve_analysis(analysis_site, study, dataset_id="syn", epsilon_cap=5.0)
    document = study.to_document()
    document["queries"].append(
        {"query_id": "snoop", "kind": "sum", "column": "ssn", "epsilon": 0.1}
    )

    refused = AnalysisAgent(analysis_site, seed=3).handle_query(
        _request(study, "snoop", study=document)
    )

    assert isinstance(refused, QueryRefusal)
    assert refused.kind == "approval.missing"
    assert "'ssn'" in refused.reason
    assert analysis_site.store.list_spends("syn") == []


def test_a_query_the_approved_study_does_not_hold_is_refused(analysis_site: Site) -> None:
    study = _study()
    approve_analysis(analysis_site, study, dataset_id="syn", epsilon_cap=5.0)
    widened = study_document()
    widened["columns"]["age"] = {"lower": 0.0, "upper": 1000.0}

    altered = AnalysisAgent(analysis_site, seed=3).handle_query(
        _request(study, "mean-age", study=widened)
    )
    unknown = AnalysisAgent(analysis_site, seed=3).handle_query(_request(study, "no-such"))

    assert isinstance(altered, QueryRefusal)
    assert "terms differ" in altered.reason
    assert isinstance(unknown, QueryRefusal)
    assert "no query 'no-such'" in unknown.reason


def test_an_unapproved_study_is_refused(analysis_site: Site) -> None:
    study = _study()

    refused = AnalysisAgent(analysis_site, seed=3).handle_query(_request(study, "sum-age"))

    assert isinstance(refused, QueryRefusal)
    assert "not approved" in refused.reason


def test_small_cells_are_suppressed_with_the_sites_threshold(analysis_site: Site) -> None:
    study = _study()
    approve_analysis(analysis_site, study, dataset_id="syn", epsilon_cap=5.0)
    site = analysis_site
    object.__setattr__(site, "config", site.config.model_copy(update={"min_cell_count": 1e6}))

    reply = AnalysisAgent(site, seed=3).handle_query(_request(study, "hist-tsize"))

    assert isinstance(reply, QueryReply)
    assert reply.answer.values == [0.0, 0.0, 0.0, 0.0]
    assert reply.answer.suppressed == [0, 1, 2, 3]
    assert reply.receipt.suppression_threshold == 1e6


@pytest.mark.training
def test_training_after_analytics_sees_the_analytics_spend(
    site: Site, bc_csv: Path, site_dir: Path
) -> None:
    register_dataset(site, dataset_id="bc-0", path=bc_csv, label=breast_cancer.LABEL)
    training = make_study()
    approve_study(site, training, dataset_id="bc-0", epsilon_cap=5.0)
    column = training.features[0]
    analysis = AnalysisStudy.parse(
        {
            "kind": "analysis",
            "study_id": "bc-analysis",
            "columns": {column: {"lower": 0.0, "upper": 30.0}},
            "queries": [{"query_id": "mean", "kind": "mean", "column": column, "epsilon": 1.0}],
            "delta": 1e-5,
            "epsilon_caps": {SITE: 2.0},
            "code_hash": "c" * 64,
        }
    )
    approve_analysis(site, analysis, dataset_id="bc-0", epsilon_cap=2.0)
    answered = AnalysisAgent(site, seed=1).handle_query(_request(analysis, "mean"))
    assert isinstance(answered, QueryReply)

    with SiteAgent.open(site_dir, seed=7) as agent:
        trained = agent.handle_train(request_for(training, round=1))

    assert isinstance(trained, TrainReply)
    history = trained.receipt["history"]
    assert [answered.receipt.noise_multiplier, 1.0, 1] in history
    assert trained.receipt["epsilon"] > answered.receipt.epsilon
    assert math.isclose(
        _pld_epsilon(history, trained.receipt["delta"]), trained.receipt["epsilon"], abs_tol=0.02
    )
    assert np.isfinite(trained.receipt["epsilon"])


def test_a_messages_queries_read_the_dataset_once_and_a_changed_file_is_still_refused(
    analysis_site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    from veracity.client import analysis

    study = _study()
    approve_analysis(analysis_site, study, dataset_id="syn", epsilon_cap=9.0)
    agent = AnalysisAgent(analysis_site, seed=5)
    reads: list[str] = []
    honest_read = analysis.load_registered  # type: ignore[attr-defined]

    def counted(dataset: Any, digest: Any) -> Any:
        reads.append(dataset.dataset_id)
        return honest_read(dataset, digest)

    monkeypatch.setattr(analysis, "load_registered", counted)
    first = agent.handle_queries([_request(study, q) for q in ("sum-age", "mean-age", "var-age")])
    dataset = analysis_site.store.get_dataset("syn")
    assert dataset is not None
    _write_csv(dataset.path, rows=301)  # the registered file changes between messages
    changed = agent.handle_queries([_request(study, "q-age")])

    assert [type(outcome) for outcome in first] == [QueryReply] * 3
    assert reads == ["syn"]
    assert isinstance(changed[0], QueryRefusal)
    assert changed[0].kind == "approval.missing"
