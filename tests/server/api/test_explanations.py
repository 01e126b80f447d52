"""``/models/{hash}/explanations``: the reports a model's ``model.explained`` entries name,
read back and re-hashed; a report changed on disk is refused, an unreleased model is 404."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from veracity.analytics.calibration import calibrate_noise_multiplier
from veracity.contracts.analysis import ANALYSIS_RECEIPT_DOMAIN, AnalysisReceipt
from veracity.contracts.explanation import (
    EXPLANATION_QUERY_ID,
    ExplanationTerms,
    ModelExplained,
    SiteExplanation,
    terms_hash,
)
from veracity.core.canonical import canonical_hash
from veracity.ledger.statement import sign_bound
from veracity.server.coordinator import operator
from veracity.server.explanation import explanation_report, report_svg
from veracity.tasks.spec import ModelFamily, ModelSpec

from .conftest import Api, release_model

FEATURES = ["a", "b", "c"]
STUDY = "ab" * 32


def _explained(api: Api) -> tuple[str, str]:
    spec = ModelSpec(ModelFamily.LOGISTIC, n_features=3)
    weights = {"linear.weight": np.ones((1, 3), np.float32), "linear.bias": np.zeros(1, np.float32)}
    api.enrol(api.site)
    model = release_model(api, spec, weights, FEATURES, "y", study_hash=STUDY)
    terms = ExplanationTerms(
        model_hash=model, study_hash=STUDY, clip_norm=1.0, epsilon=1.0, delta=1e-5
    )
    z = calibrate_noise_multiplier(1.0, 1e-5)
    answer = SiteExplanation(
        query_hash=terms_hash(terms), records=40, values=[8.0, -2.0, 0.5], stds=[z] * 3
    )
    receipt = AnalysisReceipt(
        site=api.site.name, study=STUDY, query_id=EXPLANATION_QUERY_ID,
        query_hash=terms_hash(terms), answer_hash=canonical_hash(answer.to_json()),
        dataset_id="cohort-1", dataset_commitment="cd" * 32, sensitivity=2.0,
        noise_multiplier=z, noise_std=z, accountant="pld", neighbouring="replace-one",
        delta=1e-5, epsilon_query=1.0, epsilon=1.0, history=[[z, 1.0, 1]],
        suppression_threshold=0.0, repeated=False, noise_generator="test",
    )  # fmt: skip
    signature = sign_bound(
        api.site.key, ANALYSIS_RECEIPT_DOMAIN, api.site.log_id, receipt.to_json()
    )
    report = explanation_report(
        spec=spec, features=FEATURES, terms=terms, sums={api.site.name: answer}
    )
    hashed = api.service.registry.put_explanation(model, report, report_svg(report))
    api.service.record_explanation(
        operator("test"),
        ModelExplained(
            run_id="9", model_hash=model, study_hash=STUDY, terms=terms,
            terms_hash=terms_hash(terms), report_hash=hashed, records=40,
            top_features=report["top_features"],
            receipts=[{"receipt": receipt, "signature": signature}],  # type: ignore[list-item]
        ),
    )  # fmt: skip
    return model, hashed


def test_a_models_explanations_are_listed_with_their_reports_and_plots(api: Api) -> None:
    model, hashed = _explained(api)

    listed = api.call("GET", f"/api/v1/models/{model}/explanations", "researcher").json()

    (item,) = listed["items"]
    assert item["report_hash"] == hashed == canonical_hash(item["report"])
    assert item["top_features"] == ["a", "b", "c"]
    assert item["report"]["features"]["value"] == pytest.approx([0.2, -0.05, 0.0125])
    assert item["plot_svg"].startswith("<svg")
    assert item["sites"] == [api.site.name]
    card = api.call("GET", f"/api/v1/models/{model}", "site").json()
    assert [e["report_hash"] for e in card["explanations"]] == [hashed]
    api.service.ledger.verify(api.service.ledger.identity_public_key)


def test_a_report_changed_on_disk_is_refused(api: Api) -> None:
    model, hashed = _explained(api)
    path = api.service.registry.root / model / "explanations" / f"{hashed}.json"
    path.write_text(path.read_text().replace('"records":40', '"records":41'))

    response = api.call("GET", f"/api/v1/models/{model}/explanations", "admin")

    assert response.status_code == 409
    assert "was modified" in response.text


def test_explaining_a_model_of_no_proposed_study_is_not_found(api: Api) -> None:
    model, _ = _explained(api)
    body: dict[str, Any] = {"epsilon": 1.0, "clip_norm": 1.0}

    response = api.call("POST", f"/api/v1/models/{model}/explanations", "admin", json=body)

    assert response.status_code == 404
