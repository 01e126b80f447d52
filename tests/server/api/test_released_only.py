"""Only released models are visible or served (a model's files alone are not a release).

The attack: weights put into the registry without ``model.released`` (a release that
failed after the files were written, or files copied in by hand) were listed by
``GET /models``, described, downloadable and served for encrypted inference, so a model no
audit trail accounts for answered clinics.
"""

from __future__ import annotations

from typing import Any

from tests.server.api.conftest import Api, release_model


def _unreleased(api: Api, trained_models: dict[str, Any], breast_cancer: Any) -> str:
    spec, weights = trained_models["poly_mlp"]
    features = list(breast_cancer.feature_names)
    model_hash: str = api.service.registry.put(
        spec,
        weights,
        features=features,
        label="malignant",
        scaling=[(0.0, 1.0)] * len(features),
        card={"name": "never-released"},
    )
    return model_hash


def test_a_model_never_released_is_neither_listed_read_downloaded_nor_served(
    api: Api, trained_models: dict[str, Any], breast_cancer: Any
) -> None:
    spec, weights = trained_models["logistic"]
    released = release_model(api, spec, weights, list(breast_cancer.feature_names), "malignant")
    hidden = _unreleased(api, trained_models, breast_cancer)
    assert hidden in api.service.registry

    listed = api.call("GET", "/api/v1/models", "researcher").json()["items"]
    assert [m["model_hash"] for m in listed] == [released]
    for role, path in [
        ("researcher", f"/api/v1/models/{hidden}"),
        ("admin", f"/api/v1/models/{hidden}/weights"),
        ("researcher", f"/api/v1/inference/models/{hidden}"),
    ]:
        answer = api.call("GET", path, role)
        assert answer.status_code == 404, (path, answer.status_code, answer.text)
        assert "no released model" in answer.json()["detail"]
    assert api.call("GET", f"/api/v1/inference/models/{released}", "researcher").status_code == 200
