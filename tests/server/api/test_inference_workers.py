"""Encrypted inference behind a real uvicorn with two worker processes (issue 13, attack 3).

Small-batch MLP requests need a public context with Galois keys, uploaded once and then
named by hash. Each upload and each prediction here travels on its own connection, so the
two workers take them in turn as the kernel hands out connections: a context kept in one
worker's memory only would be unknown to the other.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from veracity.client.predict import InferenceClient, predict_encrypted
from veracity.contracts.events import ROOT_ACTOR
from veracity.he.contexts import SecretContext
from veracity.he.wire import RequestHeader, body_hash, decode_response, encode_request
from veracity.server.api.serve import initialise, issue_token, start_api
from veracity.server.api.settings import ApiSettings
from veracity.server.api.tokens import Role
from veracity.server.coordinator import CoordinatorHome
from veracity.server.registry import ModelRegistry
from veracity.supervise import ProcessGroup, free_port
from veracity.tasks.spec import predict_logits

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def two_workers(
    tmp_path_factory: pytest.TempPathFactory, breast_cancer: Any, trained_models: dict[str, Any]
) -> Iterator[tuple[str, Path, str, str]]:
    data_dir = tmp_path_factory.mktemp("workers") / "coordinator"
    coordinator = initialise(data_dir, superlink_port=free_port())
    spec, weights = trained_models["poly_mlp"]
    try:
        registry = ModelRegistry(coordinator.home.models)
        model_hash = registry.put(
            spec,
            weights,
            features=breast_cancer.feature_names,
            label="benign",
            scaling=breast_cancer.scaling,
            card={"name": "bc-mlp"},
        )
        coordinator.ledger.append(
            "model.released",
            ROOT_ACTOR,
            {
                "model_hash": model_hash,
                "run_id": "1",
                "study_hash": "0" * 64,
                "model": spec.to_dict(),
                "datasets": [],
                "epsilon": {},
                "metrics": {"accuracy": 0.95},
                "card_hash": registry.get(model_hash).card_hash,
            },
            signer=coordinator.root_key,
        )
    finally:
        coordinator.close()
    token = issue_token(data_dir, role=Role.RESEARCHER, name="clinic-7").token
    settings = ApiSettings(
        data_dir=data_dir,
        api_port=free_port(),
        api_workers=2,
        inference_rate_per_minute=6000,
        inference_burst=100,
    )
    with ProcessGroup() as group:
        _, base = start_api(settings, group)
        yield f"{base}/api/v1", CoordinatorHome.at(data_dir).tls.ca_cert, token, model_hash


def test_two_workers_serve_small_batch_mlp_requests(
    two_workers: tuple[str, Path, str, str], breast_cancer: Any, trained_models: dict[str, Any]
) -> None:
    url, ca_cert, token, model_hash = two_workers
    spec, weights = trained_models["poly_mlp"]
    x = breast_cancer.test_x[:5]
    expected = predict_logits(spec, weights, x)
    for _ in range(8):
        with InferenceClient(url, token=token, ca_cert=ca_cert) as describer:
            description = describer.describe(model_hash)
        assert description.small.layout.value == "replicated"
        secret = SecretContext.generate(description.parameter_set)
        steps = description.small.rotation_steps
        context = secret.public_context(rotation_steps=steps)
        with InferenceClient(url, token=token, ca_cert=ca_cert) as uploader:
            uploader.upload_context(context)
        header = RequestHeader(
            model_hash,
            description.parameter_set.name,
            body_hash(context),
            description.small.layout,
            len(x),
        )
        request = encode_request(header, secret.encrypt(description.small.layout, x, hidden=16))
        with InferenceClient(url, token=token, ca_cert=ca_cert) as predictor:
            reply = predictor.predict(model_hash, request)  # a new connection
        _, results = decode_response(reply)
        logits = secret.decrypt(
            description.small.layout, results, batch_size=len(x), n_features=30, hidden=16
        )
        np.testing.assert_allclose(logits, expected, atol=1e-3)
    # And the client's own flow (upload once, then name the context by hash) works too.
    with InferenceClient(url, token=token, ca_cert=ca_cert) as client:
        description = client.describe(model_hash)
        prediction = predict_encrypted(client, description, x)
    np.testing.assert_allclose(prediction.logits, expected, atol=1e-3)
