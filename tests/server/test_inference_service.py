"""The inference service without HTTP: checks, evaluation and the ``inference.served`` record."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from veracity.contracts.events import InferenceServed
from veracity.errors import CryptoError, InputError
from veracity.he.contexts import SecretContext
from veracity.he.params import LOGISTIC_PARAMETERS, POLY_MLP_PARAMETERS, PackingLayout
from veracity.he.wire import RequestHeader, body_hash, decode_response, encode_request
from veracity.server.inference import InferenceService
from veracity.server.registry import ModelRegistry
from veracity.tasks.spec import predict_logits


@pytest.fixture(scope="module")
def registry(
    tmp_path_factory: pytest.TempPathFactory, breast_cancer: Any, trained_models: dict[str, Any]
) -> tuple[ModelRegistry, dict[str, str]]:
    registry = ModelRegistry(tmp_path_factory.mktemp("models"))
    hashes = {
        family: registry.put(
            spec,
            weights,
            features=breast_cancer.feature_names,
            label="benign",
            scaling=breast_cancer.scaling,
            card={"family": family},
        )
        for family, (spec, weights) in trained_models.items()
    }
    return registry, hashes


class Recorder:
    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def __call__(self, served: InferenceServed) -> None:
        self.entries.append(served.to_json())


def _request(
    secret: SecretContext,
    model_hash: str,
    x: Any,
    layout: PackingLayout,
    *,
    inline: bool = True,
    **overrides: Any,
) -> bytes:
    context = secret.public_context()
    fields: dict[str, Any] = {
        "model_hash": model_hash,
        "parameter_set": secret.parameter_set.name,
        "context_hash": body_hash(context),
        "layout": layout,
        "batch_size": len(x),
    }
    fields.update(overrides)
    return encode_request(
        RequestHeader(**fields), secret.encrypt(layout, x), context=context if inline else None
    )


def test_served_batch_is_decrypted_and_recorded_with_exactly_the_ledger_payload(
    registry: tuple[ModelRegistry, dict[str, str]],
    breast_cancer: Any,
    trained_models: dict[str, Any],
) -> None:
    models, hashes = registry
    recorder = Recorder()
    service = InferenceService(models, recorder=recorder)
    secret = SecretContext.generate(LOGISTIC_PARAMETERS)
    x = breast_cancer.test_x[:40]
    request = _request(secret, hashes["logistic"], x, PackingLayout.COLUMN_COEFFICIENT)

    response = service.serve(request, requester="clinic-7", model_hash=hashes["logistic"])

    header, results = decode_response(response)
    logits = secret.decrypt(PackingLayout.COLUMN_COEFFICIENT, results, batch_size=40, n_features=30)
    spec, weights = trained_models["logistic"]
    np.testing.assert_allclose(logits, predict_logits(spec, weights, x), atol=1e-3)
    assert header.request_hash == hashlib.sha256(request).hexdigest()
    assert recorder.entries == [
        {
            "model_hash": hashes["logistic"],
            "requester": "clinic-7",
            "he_params_hash": secret.he_params_hash,
            "batch_size": 4096,  # what the 30 ciphertexts can carry, not the 40 declared
            "request_hash": hashlib.sha256(request).hexdigest(),
            "served_total": 4096,
        }
    ]


def test_an_uploaded_context_is_used_by_hash(
    registry: tuple[ModelRegistry, dict[str, str]], breast_cancer: Any
) -> None:
    models, hashes = registry
    service = InferenceService(models, recorder=Recorder())
    secret = SecretContext.generate(POLY_MLP_PARAMETERS)
    assert service.upload_context(secret.public_context()) == secret.context_hash()
    request = _request(
        secret, hashes["poly_mlp"], breast_cancer.test_x[:3], PackingLayout.COLUMN, inline=False
    )
    header, results = decode_response(service.serve(request, requester="r"))
    assert header.batch_size == 3
    assert len(results) == 1


def test_the_description_tells_the_client_what_it_needs(
    registry: tuple[ModelRegistry, dict[str, str]], breast_cancer: Any
) -> None:
    models, hashes = registry
    description = InferenceService(models, recorder=Recorder()).describe(hashes["poly_mlp"])
    assert description["features"] == list(breast_cancer.feature_names)
    assert description["model"]["family"] == "poly_mlp"
    assert description["he"]["parameter_set"]["name"] == POLY_MLP_PARAMETERS.name
    assert description["he"]["layouts"]["batch"] == {"name": "column", "max_batch": 4096}
    assert description["he"]["layouts"]["small"]["rotation_steps"] == [
        *(-256, -512, -1024, -2048),
        *(1, 2, 4, 8, 16),
        *(256, 512, 1024, 2048),
    ]


def _refused(
    service: InferenceService, request: bytes, error: type[Exception], match: str, **kwargs: Any
) -> None:
    with pytest.raises(error, match=match):
        service.serve(request, requester="r", **kwargs)


def test_mismatched_requests_are_refused_and_nothing_is_recorded(
    registry: tuple[ModelRegistry, dict[str, str]], breast_cancer: Any
) -> None:
    models, hashes = registry
    recorder = Recorder()
    service = InferenceService(models, recorder=recorder)
    lr_secret = SecretContext.generate(LOGISTIC_PARAMETERS)
    mlp_secret = SecretContext.generate(POLY_MLP_PARAMETERS)
    x = breast_cancer.test_x[:5]
    lr, mlp = hashes["logistic"], hashes["poly_mlp"]
    good = _request(lr_secret, lr, x, PackingLayout.COLUMN_COEFFICIENT)

    _refused(service, good, InputError, "not " + mlp, model_hash=mlp)
    _refused(
        service,
        _request(lr_secret, "f" * 64, x, PackingLayout.COLUMN_COEFFICIENT),
        InputError,
        "no released model",
    )
    # An LR context and ciphertexts sent to the MLP: wrong parameter set.
    _refused(
        service,
        _request(lr_secret, mlp, x, PackingLayout.COLUMN_COEFFICIENT),
        CryptoError,
        "served under",
    )
    # The header claims the MLP's parameter set, the context is LR's.
    claimed = _request(
        lr_secret, mlp, x, PackingLayout.COLUMN, parameter_set=POLY_MLP_PARAMETERS.name
    )
    _refused(service, claimed, CryptoError, "context is for")
    _refused(
        service,
        _request(mlp_secret, mlp, x, PackingLayout.COLUMN_COEFFICIENT),
        CryptoError,
        "does not serve",
    )
    _refused(
        service,
        _request(lr_secret, lr, x, PackingLayout.COLUMN_COEFFICIENT, batch_size=9000),
        InputError,
        "exceeds",
    )
    _refused(
        service,
        _request(lr_secret, lr, x, PackingLayout.COLUMN_COEFFICIENT, context_hash="0" * 64),
        InputError,
        "does not hash",
    )
    _refused(
        InferenceService(models, recorder=recorder),  # has seen no context yet
        _request(
            SecretContext.generate(LOGISTIC_PARAMETERS),
            lr,
            x,
            PackingLayout.COLUMN_COEFFICIENT,
            inline=False,
        ),
        InputError,
        "not known here",
    )
    short = encode_request(
        RequestHeader(
            lr,
            LOGISTIC_PARAMETERS.name,
            lr_secret.context_hash(),
            PackingLayout.COLUMN_COEFFICIENT,
            5,
        ),
        lr_secret.encrypt(PackingLayout.COLUMN_COEFFICIENT, x)[:-1],
        context=lr_secret.public_context(),
    )
    _refused(service, short, InputError, "needs 30 ciphertexts")
    _refused(service, good[:-7], InputError, "truncated")
    _refused(service, b"GET / HTTP/1.1\r\n", InputError, "bad magic")
    assert recorder.entries == []
    service.serve(good, requester="r")  # still healthy
    assert len(recorder.entries) == 1


def test_a_failing_recorder_withholds_the_response(
    registry: tuple[ModelRegistry, dict[str, str]], breast_cancer: Any
) -> None:
    models, hashes = registry

    def ledger_down(payload: InferenceServed) -> None:
        raise RuntimeError("ledger unavailable")

    service = InferenceService(models, recorder=ledger_down)
    secret = SecretContext.generate(LOGISTIC_PARAMETERS)
    request = _request(
        secret, hashes["logistic"], breast_cancer.test_x[:2], PackingLayout.COEFFICIENT
    )
    with pytest.raises(RuntimeError, match="ledger unavailable"):
        service.serve(request, requester="r")


def test_a_tampered_model_is_not_served(
    tmp_path: Path, breast_cancer: Any, trained_models: dict[str, Any]
) -> None:
    from veracity.errors import LedgerIntegrityError

    models = ModelRegistry(tmp_path)
    spec, weights = trained_models["logistic"]
    model_hash = models.put(
        spec,
        weights,
        features=breast_cancer.feature_names,
        label="y",
        scaling=breast_cancer.scaling,
        card={},
    )
    path = tmp_path / model_hash / "weights.npz"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(LedgerIntegrityError):
        InferenceService(models, recorder=Recorder()).describe(model_hash)


def test_a_network_too_wide_for_the_small_layout_is_served_in_batches_only(tmp_path: Path) -> None:
    from veracity.tasks.spec import ModelFamily, ModelSpec
    from veracity.tasks.torch_models import build_model, model_weights

    spec = ModelSpec(ModelFamily.POLY_MLP, n_features=300, hidden=16)
    weights = model_weights(build_model(spec, seed=0))
    for name in ("fc1.weight", "fc2.weight"):
        weights[name] *= 0.05  # keep the worst case within the parameter set
    models = ModelRegistry(tmp_path)
    features = tuple(f"f{i}" for i in range(300))
    model_hash = models.put(
        spec, weights, features=features, label="y", scaling=((0.0, 1.0),) * 300, card={}
    )
    service = InferenceService(models, recorder=Recorder())
    layouts = service.describe(model_hash)["he"]["layouts"]
    assert layouts["small"]["max_batch"] == 0
    assert layouts["batch"]["max_batch"] == 4096
    secret = SecretContext.generate(POLY_MLP_PARAMETERS)
    request = encode_request(
        RequestHeader(
            model_hash, POLY_MLP_PARAMETERS.name, secret.context_hash(), PackingLayout.REPLICATED, 1
        ),
        [b"\x00"],
        context=secret.public_context(),
    )
    with pytest.raises(InputError, match="cannot hold this model"):
        service.serve(request, requester="r")


def test_uploaded_contexts_are_shared_through_the_context_directory(
    registry: tuple[ModelRegistry, dict[str, str]], breast_cancer: Any, tmp_path: Path
) -> None:
    from veracity.he.packing import ReplicatedGeometry

    models, hashes = registry
    secret = SecretContext.generate(POLY_MLP_PARAMETERS)
    steps = ReplicatedGeometry(30, 16, POLY_MLP_PARAMETERS.slots).rotation_steps()
    context = secret.public_context(rotation_steps=steps)
    worker_a = InferenceService(models, recorder=Recorder(), context_dir=tmp_path / "contexts")
    worker_b = InferenceService(models, recorder=Recorder(), context_dir=tmp_path / "contexts")
    worker_a.upload_context(context)
    x = breast_cancer.test_x[:3]
    request = encode_request(
        RequestHeader(
            hashes["poly_mlp"],
            POLY_MLP_PARAMETERS.name,
            body_hash(context),
            PackingLayout.REPLICATED,
            len(x),
        ),
        secret.encrypt(PackingLayout.REPLICATED, x, hidden=16),
    )
    _, results = decode_response(worker_b.serve(request, requester="r"))
    logits = secret.decrypt(
        PackingLayout.REPLICATED, results, batch_size=3, n_features=30, hidden=16
    )
    assert np.all(np.isfinite(logits))
    stored = tmp_path / "contexts" / f"{body_hash(context)}.context"
    stored.write_bytes(stored.read_bytes()[:-1])  # damaged on disk: refused, not trusted
    worker_c = InferenceService(models, recorder=Recorder(), context_dir=tmp_path / "contexts")
    with pytest.raises(InputError, match="not known here"):
        worker_c.serve(request, requester="r")


def test_the_im2col_keys_are_uploaded_once_and_found_by_another_worker(tmp_path: Path) -> None:
    from veracity.he.layouts import ModelShape
    from veracity.he.params import CNN_IMAGE_PARAMETERS
    from veracity.tasks.spec import ModelFamily, ModelSpec

    rng = np.random.default_rng(0)
    spec = ModelSpec(
        ModelFamily.CNN2D,
        64,
        classes=10,
        input_shape=(1, 8, 8),
        filters=(4, 8),
        kernel=3,
        conv_activation="square",
    )
    weights = {
        "conv1.weight": rng.normal(size=(4, 1, 3, 3)) * 0.3,
        "conv1.bias": rng.normal(size=4) * 0.1,
        "conv2.weight": rng.normal(size=(8, 4, 3, 3)) * 0.1,
        "conv2.bias": rng.normal(size=8) * 0.1,
        "fc.weight": rng.normal(size=(10, 32)) * 0.1,
        "fc.bias": rng.normal(size=10),
    }
    models = ModelRegistry(tmp_path / "models")
    model_hash = models.put(
        spec, weights, features=("grey",), label="digit", scaling=((0.0, 1.0),), card={}
    )
    recorded: list[InferenceServed] = []
    worker_a = InferenceService(models, recorder=recorded.append, context_dir=tmp_path / "ctx")
    worker_b = InferenceService(models, recorder=recorded.append, context_dir=tmp_path / "ctx")
    small = worker_a.describe(model_hash)["he"]["layouts"]["small"]
    assert (small["name"], small["max_batch"]) == ("im2col", 16)
    secret = SecretContext.generate(CNN_IMAGE_PARAMETERS)
    keys = secret.public_context(rotation_steps=small["rotation_steps"])
    assert len(keys) > 8 * 2**20  # Galois keys: too large to send with every request
    context_hash = worker_a.upload_context(keys)
    shape = ModelShape(64, outputs=10, input_shape=(1, 8, 8), filters=(4, 8), kernel=3)
    x = rng.uniform(-1.0, 1.0, size=(2, 64))
    request = encode_request(
        RequestHeader(model_hash, CNN_IMAGE_PARAMETERS.name, context_hash, PackingLayout.IM2COL, 2),
        secret.encrypt(PackingLayout.IM2COL, x, shape=shape),
    )
    assert len(request) < 2 * 200 * 1024  # two images, one seeded ciphertext each
    _, results = decode_response(worker_b.serve(request, requester="r"))
    logits = secret.decrypt(
        PackingLayout.IM2COL, results, batch_size=2, n_features=64, outputs=10, shape=shape
    )
    np.testing.assert_allclose(logits, predict_logits(spec, weights, x), atol=0.1)
    assert recorded[-1].batch_size == 2  # charged the two images it carried
