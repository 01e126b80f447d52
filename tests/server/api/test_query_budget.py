"""Query budgets: predictions per requester and model, set by an admin, charged by capacity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from veracity.he.contexts import SecretContext
from veracity.he.params import LOGISTIC_PARAMETERS, POLY_MLP_PARAMETERS, PackingLayout
from veracity.he.wire import CONTENT_TYPE, Query, RequestHeader, body_hash, encode_request

from .conftest import Api, open_api, release_model

pytestmark = pytest.mark.integration  # both databases, PostgreSQL included

HEADERS = {"Content-Type": CONTENT_TYPE}


def _request(model_hash: str, layout: PackingLayout, patients: int) -> bytes:
    secret = SecretContext.generate(LOGISTIC_PARAMETERS)
    context = secret.public_context()
    x = np.zeros((patients, 30))
    header = RequestHeader(
        model_hash, LOGISTIC_PARAMETERS.name, body_hash(context), layout, patients
    )
    return encode_request(header, secret.encrypt(layout, x), context=context)


def _predict(api: Api, model_hash: str, request: bytes) -> Any:
    path = f"/api/v1/inference/models/{model_hash}/predict"
    return api.call("POST", path, "researcher", content=request, headers=HEADERS)


def _release(api: Api, trained_models: dict[str, Any], breast_cancer: Any) -> str:
    spec, weights = trained_models["logistic"]
    return release_model(api, spec, weights, list(breast_cancer.feature_names), "malignant")


def test_an_admin_sets_a_budget_and_inference_stops_there(
    tmp_path: Path, db_url: str, trained_models: dict[str, Any], breast_cancer: Any
) -> None:
    for api in open_api(tmp_path / "coordinator", db_url):
        model = _release(api, trained_models, breast_cancer)
        path = f"/api/v1/models/{model}/budgets/researcher-user"
        assert api.call("PUT", path, "researcher", json={"budget": 10**6}).status_code == 403
        assert (
            api.call(
                "PUT", f"/api/v1/models/{'0' * 64}/budgets/x", "admin", json={"budget": 1}
            ).status_code
            == 404
        )
        assert api.call("PUT", path, "admin", json={"budget": -1}).status_code == 422
        answer = api.call("PUT", path, "admin", json={"budget": 300})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "requester": "researcher-user",
            "model_hash": model,
            "budget": 300,
            "effective_budget": 300,
            "used": 0,
            "remaining": 300,
        }
        # Three patients in the coefficient layout: one ciphertext, which carries 136.
        one = _request(model, PackingLayout.COEFFICIENT, 3)
        assert _predict(api, model, one).status_code == 200
        assert _predict(api, model, one).status_code == 200
        refused = _predict(api, model, one)
        assert refused.status_code == 403
        assert refused.json()["code"] == "budget_exhausted"
        assert "272 of the 300" in refused.json()["detail"]
        served = api.service.ledger.entries(kind="inference.served")
        assert [(e.payload["batch_size"], e.payload["served_total"]) for e in served] == [
            (136, 136),
            (136, 272),
        ]
        listed = api.call("GET", f"/api/v1/models/{model}/budgets", "admin").json()["items"]
        assert [(b["requester"], b["used"], b["remaining"]) for b in listed] == [
            ("researcher-user", 272, 28)
        ]
        assert api.call("GET", f"/api/v1/models/{model}/budgets", "auditor").status_code == 403
        actions = api.call("GET", "/api/v1/actions", "admin").json()["items"]
        assert [a["target"] for a in actions if a["action"] == "inference.budget"] == [
            f"{model}/researcher-user"
        ]
        # More budget, and the same requester goes on from its running count.
        api.call("PUT", path, "admin", json={"budget": 408})
        assert _predict(api, model, one).status_code == 200
        last = api.service.ledger.entries(kind="inference.served")[-1]
        assert last.payload["served_total"] == 408


def test_the_default_budget_applies_until_an_admin_sets_one(
    tmp_path: Path, db_url: str, trained_models: dict[str, Any], breast_cancer: Any
) -> None:
    for api in open_api(tmp_path / "coordinator", db_url, inference_default_budget=136):
        model = _release(api, trained_models, breast_cancer)
        one = _request(model, PackingLayout.COEFFICIENT, 1)
        assert _predict(api, model, one).status_code == 200
        assert _predict(api, model, one).json()["code"] == "budget_exhausted"


def test_predictions_are_rate_limited_by_what_requests_carry(
    tmp_path: Path, db_url: str, trained_models: dict[str, Any], breast_cancer: Any
) -> None:
    now = [2_000_000.0]
    for api in open_api(
        tmp_path / "coordinator",
        db_url,
        inference_patients_per_minute=4096,
        inference_patient_burst=4096,
        app_options={"rate_clock": lambda: now[0]},
    ):
        model = _release(api, trained_models, breast_cancer)
        # One patient declared in the batch layout: its 30 ciphertexts carry 4096.
        batch = _request(model, PackingLayout.COLUMN_COEFFICIENT, 1)
        assert _predict(api, model, batch).status_code == 200
        limited = _predict(api, model, batch)
        assert limited.status_code == 429
        assert limited.json()["code"] == "rate_limited"
        assert limited.headers["retry-after"] == "60"
        now[0] += 60.0
        assert _predict(api, model, batch).status_code == 200
        served = api.service.ledger.entries(kind="inference.served")
        assert [e.payload["served_total"] for e in served] == [4096, 8192]


def test_contributions_are_charged_d_per_patient_and_refused_past_the_budget(
    tmp_path: Path, db_url: str, trained_models: dict[str, Any], breast_cancer: Any
) -> None:
    # Issue 19: one contributions answer with a nonzero feature vector gives every weight
    # of a linear model, so it counts as d = 30 predictions per patient carried.
    for api in open_api(tmp_path / "coordinator", db_url):
        model = _release(api, trained_models, breast_cancer)
        path = f"/api/v1/models/{model}/budgets/researcher-user"
        assert api.call("PUT", path, "admin", json={"budget": 5000}).status_code == 200
        secret = SecretContext.generate(LOGISTIC_PARAMETERS)
        context = secret.public_context()
        header = RequestHeader(
            model,
            LOGISTIC_PARAMETERS.name,
            body_hash(context),
            PackingLayout.COEFFICIENT,
            3,
            Query.CONTRIBUTIONS,
        )
        x = np.ones((3, 30))
        asked = encode_request(
            header, secret.encrypt(PackingLayout.COEFFICIENT, x), context=context
        )
        assert _predict(api, model, asked).status_code == 200  # 136 * 30 = 4080
        refused = _predict(api, model, asked)
        assert refused.status_code == 403
        assert refused.json()["code"] == "budget_exhausted"
        # A prediction (136) still fits what is left.
        one = _request(model, PackingLayout.COEFFICIENT, 3)
        assert _predict(api, model, one).status_code == 200
        served = api.service.ledger.entries(kind="inference.served")
        assert [
            (e.payload["batch_size"], e.payload.get("contributions"), e.payload["served_total"])
            for e in served
        ] == [(136, 30, 4080), (136, None, 4216)]
        # A quadratic network offers none: the same question is refused with 422.
        spec, weights = trained_models["poly_mlp"]
        mlp = release_model(api, spec, weights, list(breast_cancer.feature_names), "malignant")
        mlp_secret = SecretContext.generate(POLY_MLP_PARAMETERS)
        mlp_context = mlp_secret.public_context()
        mlp_header = RequestHeader(
            mlp,
            POLY_MLP_PARAMETERS.name,
            body_hash(mlp_context),
            PackingLayout.COLUMN,
            1,
            Query.CONTRIBUTIONS,
        )
        nonlinear = encode_request(
            mlp_header,
            mlp_secret.encrypt(PackingLayout.COLUMN, np.ones((1, 30))),
            context=mlp_context,
        )
        answer = _predict(api, mlp, nonlinear)
        assert answer.status_code == 422
        assert "linear" in answer.json()["detail"]
