"""Per-feature contributions to an encrypted linear prediction (issue 19).

A requester asks for ``w_j * x_j`` of each declared patient (``query: contributions``): one
output per feature, every other coefficient masked exactly as for a prediction, and d
predictions charged per patient the ciphertexts carry (one such answer with a nonzero
feature vector gives the whole linear model).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from veracity.contracts.events import InferenceServed
from veracity.errors import InputError
from veracity.he.contexts import SecretContext
from veracity.he.layouts import ModelShape
from veracity.he.packing import coefficients_from_slots
from veracity.he.params import LOGISTIC_PARAMETERS, PackingLayout
from veracity.he.seal import seal_primes
from veracity.he.wire import (
    Query,
    RequestHeader,
    body_hash,
    decode_request,
    decode_response,
    encode_request,
)
from veracity.server.inference import InferenceService
from veracity.server.registry import ModelRegistry
from veracity.tasks.spec import predict_logits

FloatArray = npt.NDArray[np.float64]
#: CKKS noise and flooding are ~1e-5 in logit units.
ZERO = 1e-3


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, breast_cancer: Any, trained_models: dict[str, Any]
) -> tuple[InferenceService, dict[str, str], list[dict[str, Any]]]:
    registry = ModelRegistry(tmp_path_factory.mktemp("models"))
    hashes = {
        family: registry.put(
            spec,
            weights,
            features=breast_cancer.feature_names,
            label="benign",
            scaling=breast_cancer.scaling,
            card={},
        )
        for family, (spec, weights) in trained_models.items()
    }
    entries: list[dict[str, Any]] = []

    def record(payload: InferenceServed) -> None:
        entries.append(payload.to_json())

    return InferenceService(registry, recorder=record), hashes, entries


def _request(
    secret: SecretContext,
    model_hash: str,
    layout: PackingLayout,
    x: FloatArray,
    declared: int,
    query: Query = Query.CONTRIBUTIONS,
) -> bytes:
    context = secret.public_context()
    header = RequestHeader(
        model_hash, LOGISTIC_PARAMETERS.name, body_hash(context), layout, declared, query
    )
    return encode_request(header, secret.encrypt(layout, x), context=context)


@pytest.mark.parametrize("layout", [PackingLayout.COEFFICIENT, PackingLayout.COLUMN_COEFFICIENT])
def test_contributions_are_w_times_x_and_sum_to_the_logit_minus_bias(
    layout: PackingLayout,
    served: tuple[InferenceService, dict[str, str], list[dict[str, Any]]],
    breast_cancer: Any,
    trained_models: dict[str, Any],
) -> None:
    service, hashes, entries = served
    spec, weights = trained_models["logistic"]
    w = np.asarray(weights["linear.weight"], dtype=np.float64)[0]
    bias = float(np.asarray(weights["linear.bias"])[0])
    x = np.asarray(breast_cancer.test_x[:20], dtype=np.float64)
    secret = SecretContext.generate(LOGISTIC_PARAMETERS)
    request = _request(secret, hashes["logistic"], layout, x, len(x))

    answer, results = decode_response(service.serve(request, requester="clinic-7"))

    assert answer.query is Query.CONTRIBUTIONS
    contributions = secret.decrypt(
        layout, results, batch_size=len(x), n_features=30, shape=ModelShape(30, outputs=30)
    )
    assert contributions.shape == (20, 30)
    np.testing.assert_allclose(contributions, w[None, :] * x, atol=ZERO)
    logits = predict_logits(spec, weights, x)
    np.testing.assert_allclose(contributions.sum(axis=1), logits - bias, atol=ZERO)
    # Charged and recorded: d outputs for every patient the ciphertexts carry.
    carried = 136 if layout is PackingLayout.COEFFICIENT else 4096
    recorded = entries[-1]
    assert recorded["batch_size"] == carried
    assert recorded["contributions"] == 30
    assert recorded["served_total"] - (entries[-2]["served_total"] if len(entries) > 1 else 0) == (
        carried * 30
    )


@pytest.mark.parametrize("layout", [PackingLayout.COEFFICIENT, PackingLayout.COLUMN_COEFFICIENT])
def test_a_one_patient_contributions_request_learns_only_that_patients_contributions(
    layout: PackingLayout,
    served: tuple[InferenceService, dict[str, str], list[dict[str, Any]]],
    trained_models: dict[str, Any],
) -> None:
    # One patient declared, the rest of the ciphertexts filled with chosen points: every
    # result decrypts to that patient's w_j * x_j at its output coefficient and to
    # integers uniform modulo q everywhere else (the other points' contributions included).
    service, hashes, _ = served
    _, weights = trained_models["logistic"]
    w = np.asarray(weights["linear.weight"], dtype=np.float64)[0]
    per = 136 if layout is PackingLayout.COEFFICIENT else 4096
    x = np.random.default_rng(19).normal(size=(per, 30))
    secret = SecretContext.generate(LOGISTIC_PARAMETERS)
    request = _request(secret, hashes["logistic"], layout, x, 1)

    _, results = decode_response(service.serve(request, requester="clinic-7"))

    assert len(results) == 30
    header, _, _ = decode_request(request)
    assert header.query is Query.CONTRIBUTIONS
    prime = seal_primes(LOGISTIC_PARAMETERS)[0]
    circuit = service._served(hashes["logistic"]).circuit
    scale = LOGISTIC_PARAMETERS.input_scale * circuit.weight_scale  # type: ignore[union-attr]
    positions = np.arange(per) * (30 if layout is PackingLayout.COEFFICIENT else 1)
    for j, data in enumerate(results):
        raw = coefficients_from_slots(secret._decrypt_values(data, j)) * scale
        assert abs(raw[0] / scale - w[j] * x[0, j]) < ZERO  # the declared patient's
        others = np.delete(raw, 0) / prime
        # Uniform modulo q: about half beyond q/4, whatever the chosen points were ...
        assert 0.44 < float((np.abs(others) > 0.25).mean()) < 0.56
        # ... and no other point's contribution is there to read.
        leaked = raw[positions[1:]] / scale - w[j] * x[1:, j]
        assert float((np.abs(leaked) < ZERO).mean()) < 0.01


def test_contributions_of_a_nonlinear_model_are_refused(
    served: tuple[InferenceService, dict[str, str], list[dict[str, Any]]],
) -> None:
    service, hashes, entries = served
    description = service.describe(hashes["poly_mlp"])
    assert "contributions" not in description["he"]
    from veracity.he.params import POLY_MLP_PARAMETERS

    secret = SecretContext.generate(POLY_MLP_PARAMETERS)
    context = secret.public_context()
    header = RequestHeader(
        hashes["poly_mlp"],
        POLY_MLP_PARAMETERS.name,
        body_hash(context),
        PackingLayout.COLUMN,
        1,
        Query.CONTRIBUTIONS,
    )
    x = np.zeros((1, 30))
    request = encode_request(header, secret.encrypt(PackingLayout.COLUMN, x), context=context)
    before = len(entries)
    with pytest.raises(InputError, match="linear"):
        service.serve(request, requester="clinic-7")
    assert len(entries) == before  # refused, not recorded


def test_the_description_offers_contributions_for_a_linear_model(
    served: tuple[InferenceService, dict[str, str], list[dict[str, Any]]],
) -> None:
    service, hashes, _ = served
    offered = service.describe(hashes["logistic"])["he"]["contributions"]
    assert offered == {"layout": "coefficient", "max_batch": 136, "outputs_per_patient": 30}


def test_a_request_header_names_a_known_query_or_none() -> None:
    secret = SecretContext.generate(LOGISTIC_PARAMETERS)
    x = np.zeros((1, 30))
    plain = _request(secret, "a" * 64, PackingLayout.COEFFICIENT, x, 1, Query.PREDICTION)
    # A prediction's header is unchanged (no "query" field), so its bytes and hash are too.
    assert b'"query"' not in plain
    assert decode_request(plain)[0].query is Query.PREDICTION
    asked = _request(secret, "a" * 64, PackingLayout.COEFFICIENT, x, 1)
    assert decode_request(asked)[0].query is Query.CONTRIBUTIONS
    with pytest.raises(InputError, match="unknown query 'weights'"):
        decode_request(asked.replace(b'"contributions"', b'"weights"      '))
