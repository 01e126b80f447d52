"""Only the prediction leaves the server (issue 13, attack 1).

Each test plays a requester that declares one patient and fills the rest of its ciphertexts
with chosen inputs (all zeros, unit vectors, as many packed points as the ciphertexts
hold), decrypts *everything* the server sends back with its own secret key, and tries to
learn more than that patient's prediction: other slots, other coefficients, the noise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from veracity.contracts.events import InferenceServed
from veracity.errors import CryptoError, InputError
from veracity.he.circuit import compile_circuit
from veracity.he.contexts import SecretContext
from veracity.he.layouts import ModelShape
from veracity.he.layouts.im2col import IMAGE_FLOOD
from veracity.he.packing import coefficients_from_slots
from veracity.he.params import PackingLayout, parameter_set_for, parameter_set_named
from veracity.he.seal import seal_primes
from veracity.he.wire import RequestHeader, body_hash, decode_response, encode_request
from veracity.server.inference import InferenceService
from veracity.server.registry import ModelRegistry
from veracity.tasks.spec import predict_logits

FloatArray = npt.NDArray[np.float64]
SLOT_LAYOUTS = {"column", "replicated", "column_complex"}
#: "Zero within the scheme's noise": CKKS noise and flooding are ~1e-5 in logit units.
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


@dataclass
class Answer:
    """Everything one response lets the requester decrypt."""

    layout: str
    slots: list[npt.NDArray[np.complex128]]
    secret: SecretContext
    ciphertexts: list[bytes]
    recorded: dict[str, Any]
    per_ciphertext: int


def _points_per_request(layout: Mapping[str, Any], n_features: int, degree: int) -> int:
    """How many patients the ciphertexts of a one-patient request can hold."""
    name = layout["name"]
    if name == "coefficient":
        return degree // n_features
    if name == "replicated":
        return int(layout["patients_per_ciphertext"])
    return int(layout["max_batch"])


def _ask(
    served: tuple[InferenceService, dict[str, str], list[dict[str, Any]]],
    family: str,
    which: str,
    x: FloatArray | None = None,
    *,
    vectors: list[FloatArray] | None = None,
) -> Answer:
    """Declare one patient; send ``x`` (or raw slot ``vectors``); decrypt every result."""
    service, hashes, entries = served
    description = service.describe(hashes[family])
    layout = description["he"]["layouts"][which]
    parameter_set = parameter_set_for(family)
    secret = SecretContext.generate(parameter_set)
    steps = layout.get("rotation_steps", [])
    context = secret.public_context(rotation_steps=steps)
    hidden = int(description["model"].get("hidden", 0))
    if vectors is not None:
        ciphertexts = [secret._encrypt_values(v.tolist()) for v in vectors]
    else:
        assert x is not None
        ciphertexts = secret.encrypt(PackingLayout(layout["name"]), x, hidden=hidden)
    inline = context if len(context) < 64 * 1024 else None
    if inline is None:
        service.upload_context(context)
    header = RequestHeader(
        hashes[family], parameter_set.name, body_hash(context), PackingLayout(layout["name"]), 1
    )
    request = encode_request(header, ciphertexts, context=inline)
    _, results = decode_response(service.serve(request, requester="clinic-7"))
    slots = [secret._decrypt_values(data, i) for i, data in enumerate(results)]
    per = _points_per_request(layout, 30, parameter_set.poly_modulus_degree)
    return Answer(layout["name"], slots, secret, ciphertexts, entries[-1], per)


def _chosen(kind: str, count: int) -> FloatArray:
    rng = np.random.default_rng(13)
    if kind == "zeros":
        return np.zeros((count, 30))
    if kind == "unit vectors":
        x = np.zeros((count, 30))
        for p in range(1, count):
            x[p, (p - 1) % 30] = 4.0 if (p - 1) // 30 % 2 == 0 else -4.0
        return x
    return rng.normal(size=(count, 30))  # packed points


def _output_scale(family: str, trained_models: dict[str, Any]) -> float:
    spec, weights = trained_models[family]
    parameter_set = parameter_set_for(family)
    circuit = compile_circuit(
        family,
        weights,
        parameter_set=parameter_set,
        primes=seal_primes(parameter_set),
        n_features=30,
        hidden=spec.hidden,
        activation=spec.activation,
    )
    return float(parameter_set.input_scale * circuit.weight_scale)  # type: ignore[union-attr]


def _slot_positions(answer: Answer) -> list[int]:
    """Slots where the declared patient's output sits (every copy of it)."""
    if answer.layout == "replicated":
        blocks = 4096 // (32 * answer.per_ciphertext)
        return [k * answer.per_ciphertext * 32 for k in range(blocks)]
    return [0]


def _coefficient_positions(answer: Answer) -> npt.NDArray[np.int64]:
    """Coefficients where the chosen points' logits sit, in point order."""
    if answer.layout == "coefficient":
        return np.arange(answer.per_ciphertext) * 30
    return np.arange(answer.per_ciphertext)


def _encrypted_features(answer: Answer, positions: npt.NDArray[np.int64]) -> FloatArray:
    """The features the requester really encrypted, noise included, at ``positions``."""
    input_scale = parameter_set_for("logistic").input_scale
    decrypted = np.stack(
        [
            np.round(coefficients_from_slots(answer.secret._decrypt_values(c, j)) * input_scale)
            for j, c in enumerate(answer.ciphertexts)
        ]
    )
    if answer.layout == "coefficient":  # patient p's feature j at coefficient p * 30 + j
        rows = positions[:, None] + np.arange(30)[None, :]
        return np.asarray(decrypted[0][rows] / input_scale, dtype=np.float64)
    return np.asarray(decrypted[:, positions].T / input_scale, dtype=np.float64)


def _fit_linear(x: FloatArray, y: FloatArray) -> FloatArray:
    design = np.hstack([x, np.ones((x.shape[0], 1))])
    return np.asarray(np.linalg.lstsq(design, y, rcond=None)[0], dtype=np.float64)


CASES = [
    (family, which, kind)
    for family in ("logistic", "poly_mlp")
    for which in ("batch", "small")
    for kind in ("zeros", "unit vectors", "packed points")
]


@pytest.mark.parametrize(("family", "which", "kind"), CASES)
def test_a_one_patient_request_with_chosen_inputs_learns_only_that_prediction(
    family: str,
    which: str,
    kind: str,
    served: tuple[InferenceService, dict[str, str], list[dict[str, Any]]],
    trained_models: dict[str, Any],
) -> None:
    service, hashes, _ = served
    layout = service.describe(hashes[family])["he"]["layouts"][which]
    count = _points_per_request(layout, 30, parameter_set_for(family).poly_modulus_degree)
    x = _chosen(kind, count)
    spec, weights = trained_models[family]
    truth = predict_logits(spec, weights, x)

    answer = _ask(served, family, which, x)

    # Charged and recorded: what the ciphertexts carry, not the one patient declared.
    assert answer.recorded["batch_size"] == count
    if answer.layout in SLOT_LAYOUTS:
        values = answer.slots[0]
        outputs = _slot_positions(answer)
        # The declared patient's logit, every copy of it ...
        np.testing.assert_allclose(values[outputs].real, truth[0], atol=ZERO)
        # ... and nothing else: every other slot (and the output's imaginary part) is zero.
        others = np.delete(values, outputs)
        assert np.abs(others).max() < ZERO
        assert np.abs(values[outputs].imag).max() < ZERO
        assert np.abs(truth[1:]).max() > 100 * ZERO  # the chosen points had outputs to leak
        return
    scale = _output_scale(family, trained_models)
    prime = seal_primes(parameter_set_for(family))[0]
    raw = coefficients_from_slots(answer.slots[0]) * scale  # centred integers modulo q
    assert abs(raw[0] / scale - truth[0]) < ZERO  # the declared patient's logit
    in_q = np.delete(raw, 0) / prime
    # Every other coefficient is uniform modulo q: about half lie beyond q/4 ...
    assert 0.45 < float((np.abs(in_q) > 0.25).mean()) < 0.55
    # ... and the attacker's fit of the chosen points' "logits" against what it really
    # encrypted (its inputs and its own noise, both known to it) recovers no weight.
    positions = _coefficient_positions(answer)[1:]
    fitted = _fit_linear(_encrypted_features(answer, positions), raw[positions] / scale)
    true_w = np.asarray(weights["linear.weight"], dtype=np.float64)[0]
    assert np.abs(fitted[:30] - true_w).max() > np.abs(true_w).max()


def test_the_noise_of_a_one_patient_linear_batch_reveals_no_weight(
    served: tuple[InferenceService, dict[str, str], list[dict[str, Any]]],
    trained_models: dict[str, Any],
) -> None:
    # One all-zero patient in the batch layout: the result polynomial is
    # sum_j W_j * d_j + B, and the requester knows every d_j (its own decryption, noise
    # included). Without masks, 4096 exact equations give every weight.
    _, weights = trained_models["logistic"]
    answer = _ask(served, "logistic", "batch", np.zeros((1, 30)))
    input_scale = parameter_set_for("logistic").input_scale
    inputs = np.stack(
        [
            np.round(coefficients_from_slots(answer.secret._decrypt_values(c, j)) * input_scale)
            for j, c in enumerate(answer.ciphertexts)
        ]
    )
    assert np.abs(inputs).max() < 100  # zeros plus the requester's own, known, noise
    scale = _output_scale("logistic", trained_models)
    bias = float(np.asarray(weights["linear.bias"])[0])
    if answer.layout == "column_complex":  # the bias b + ib, as the server encodes it
        known = coefficients_from_slots(np.full(2048, complex(bias, bias))) * scale
    else:
        known = np.zeros(4096)
        known[0] = bias * scale
    result = coefficients_from_slots(answer.slots[0]) * scale - known
    rows = np.arange(1, 4096)  # everything but the declared output
    fitted, *_ = np.linalg.lstsq(inputs[:, rows].T, result[rows], rcond=None)
    true_w = np.asarray(weights["linear.weight"], dtype=np.float64)[0]
    recovered = fitted / (scale / input_scale)
    assert np.abs(recovered - true_w).max() > np.abs(true_w).max()


def test_a_replicated_request_cannot_probe_hidden_units_one_at_a_time(
    served: tuple[InferenceService, dict[str, str], list[dict[str, Any]]],
    trained_models: dict[str, Any],
) -> None:
    # The per-neuron oracle: a different input in each hidden unit's block. Whatever the
    # blocks hold, the answer must be the network's output at one input.
    spec, weights = trained_models["poly_mlp"]
    rng = np.random.default_rng(5)
    per_unit = rng.normal(size=(16, 30))
    vector = np.zeros(4096)
    stride = 8 * 32
    for k in range(16):
        vector[k * stride : k * stride + 30] = per_unit[k]
        vector[k * stride + 30] = 1.0  # the constant slot a requester used to supply
    answer = _ask(served, "poly_mlp", "small", vectors=[vector])
    seen = per_unit.sum(axis=0, keepdims=True)
    np.testing.assert_allclose(
        answer.slots[0][0].real, predict_logits(spec, weights, seen)[0], atol=ZERO
    )
    assert np.abs(np.delete(answer.slots[0], _slot_positions(answer))).max() < ZERO


# ---- k classes (issue 13, "many classes"): the same guarantee for every class's result ----


@pytest.fixture(scope="module")
def served_digits(
    tmp_path_factory: pytest.TempPathFactory, digits_models: dict[str, Any]
) -> tuple[InferenceService, dict[str, str], list[dict[str, Any]]]:
    registry = ModelRegistry(tmp_path_factory.mktemp("digits-models"))
    hashes = {
        family: registry.put(
            spec,
            weights,
            features=tuple(f"pixel{i}" for i in range(64)),
            label="digit",
            scaling=tuple((0.0, 1.0) for _ in range(64)),
            card={"classes": [str(d) for d in range(10)]},
        )
        for family, (spec, weights) in digits_models.items()
    }
    entries: list[dict[str, Any]] = []
    return (
        InferenceService(registry, recorder=lambda p: entries.append(p.to_json())),
        hashes,
        entries,
    )


@pytest.mark.parametrize(
    ("family", "which"),
    [(f, w) for f in ("logistic", "poly_mlp") for w in ("batch", "small")],
)
def test_a_one_patient_ten_class_request_learns_only_that_patients_ten_logits(
    family: str,
    which: str,
    served_digits: tuple[InferenceService, dict[str, str], list[dict[str, Any]]],
    digits: Any,
    digits_models: dict[str, Any],
) -> None:
    service, hashes, entries = served_digits
    description = service.describe(hashes[family])
    assert description["classes"] == [str(d) for d in range(10)]
    assert description["input_shape"] == [64]
    layout = description["he"]["layouts"][which]
    name = PackingLayout(layout["name"])
    parameter_set = parameter_set_for(family)
    degree = parameter_set.poly_modulus_degree
    per = {
        "coefficient": degree // 64,
        "replicated": int(layout.get("patients_per_ciphertext", 0)),
    }.get(name.value, int(layout["max_batch"]))
    x = digits.test_x[:per]  # a full ciphertext of real images behind one declared patient
    spec, weights = digits_models[family]
    truth = predict_logits(spec, weights, x)
    secret = SecretContext.generate(parameter_set)
    context = secret.public_context(rotation_steps=layout.get("rotation_steps", []))
    inline = context if len(context) < 64 * 1024 else None
    if inline is None:
        service.upload_context(context)
    ciphertexts = secret.encrypt(name, x, hidden=spec.hidden)
    header = RequestHeader(hashes[family], parameter_set.name, body_hash(context), name, 1)
    _, results = decode_response(
        service.serve(encode_request(header, ciphertexts, context=inline), requester="clinic-9")
    )

    assert entries[-1]["batch_size"] == per  # charged for what the ciphertexts carry
    assert len(results) == 10  # exactly one result per class for the one ciphertext group
    slots = [secret._decrypt_values(data, i) for i, data in enumerate(results)]
    for c, values in enumerate(slots):
        if name.value in SLOT_LAYOUTS:
            if name is PackingLayout.REPLICATED:
                stride = per * 64
                outputs = [k * stride for k in range(parameter_set.slots // stride)]
            else:
                outputs = [0]
            np.testing.assert_allclose(values[outputs].real, truth[0, c], atol=ZERO)
            assert np.abs(np.delete(values, outputs)).max() < ZERO
            continue
        scale = parameter_set.input_scale * _ten_class_weight_scale(family, digits_models)
        prime = seal_primes(parameter_set)[0]
        raw = coefficients_from_slots(values) * scale
        assert abs(raw[0] / scale - truth[0, c]) < ZERO
        in_q = np.delete(raw, 0) / prime
        assert 0.45 < float((np.abs(in_q) > 0.25).mean()) < 0.55  # uniform modulo q
    assert np.abs(truth[1:]).max() > 100 * ZERO  # the other images had logits to leak


def _ten_class_weight_scale(family: str, digits_models: dict[str, Any]) -> float:
    _, weights = digits_models[family]
    parameter_set = parameter_set_for(family)
    circuit = compile_circuit(
        family,
        weights,
        parameter_set=parameter_set,
        primes=seal_primes(parameter_set),
        n_features=64,
        outputs=10,
    )
    return float(circuit.weight_scale)  # type: ignore[union-attr]


# ---- images (issue 13, "images under encryption"): the square-activation CNN ----


@pytest.fixture(scope="module", params=["two convolutions", "one convolution"])
def cnn(request: pytest.FixtureRequest) -> tuple[Any, dict[str, Any]]:
    """Each digits CNN: conv, conv, dense (``digits_cnn``) and conv, dense (``digits_cnn_one``)."""
    name = "digits_cnn" if request.param == "two convolutions" else "digits_cnn_one"
    found: tuple[Any, dict[str, Any]] = request.getfixturevalue(name)
    return found


@pytest.fixture(scope="module")
def served_cnn(
    tmp_path_factory: pytest.TempPathFactory, cnn: tuple[Any, dict[str, Any]]
) -> tuple[InferenceService, str, list[dict[str, Any]]]:
    registry = ModelRegistry(tmp_path_factory.mktemp("cnn-models"))
    spec, weights = cnn
    model_hash = registry.put(
        spec,
        weights,
        features=("grey",),
        label="digit",
        scaling=((0.0, 1.0),),
        card={"classes": [str(d) for d in range(10)], "inputs": {"intensity_max": 1.0}},
    )
    entries: list[dict[str, Any]] = []
    service = InferenceService(registry, recorder=lambda p: entries.append(p.to_json()))
    return service, model_hash, entries


@pytest.mark.slow  # ~8 CPU-s each at N=16384: in `make test`, not the edit loop
@pytest.mark.parametrize("kind", ["zeros", "unit vectors", "packed images"])
def test_a_one_image_cnn_request_with_chosen_inputs_learns_only_that_images_logits(
    kind: str,
    served_cnn: tuple[InferenceService, str, list[dict[str, Any]]],
    digits: Any,
    cnn: tuple[Any, dict[str, Any]],
) -> None:
    service, model_hash, entries = served_cnn
    description = service.describe(model_hash)
    assert description["input_shape"] == [1, 8, 8]
    layout = description["he"]["layouts"]["batch"]
    assert layout["name"] == "column"
    parameter_set = parameter_set_for("cnn2d")
    count = int(layout["max_batch"])  # 8192 images behind one declared image
    if kind == "zeros":
        x = np.zeros((count, 64))
    elif kind == "unit vectors":
        x = np.zeros((count, 64))
        x[np.arange(1, count), np.arange(count - 1) % 64] = 1.0
    else:
        x = digits.train_x[np.arange(count) % len(digits.train_x)]
    spec, weights = cnn
    truth = predict_logits(spec, weights, x)
    secret = SecretContext.generate(parameter_set)
    context = secret.public_context()
    ciphertexts = secret.encrypt(PackingLayout.COLUMN, x)
    header = RequestHeader(
        model_hash, parameter_set.name, body_hash(context), PackingLayout.COLUMN, 1
    )

    reply = service.serve(encode_request(header, ciphertexts, context=context), requester="lab")

    _, results = decode_response(reply)
    assert entries[-1]["batch_size"] == count  # charged for all it could carry
    assert len(results) == 10  # one result per class
    for c, data in enumerate(results):
        values = secret._decrypt_values(data, c)
        assert abs(values[0].real - truth[0, c]) < 0.05  # the declared image's logit
        assert np.abs(values[1:]).max() < ZERO  # every other image's slot: zero
        assert abs(values[0].imag) < ZERO
    assert np.abs(truth[1:]).max() > 1.0  # the hidden images had logits to leak


@pytest.mark.parametrize(
    ("stem", "problem"), [("learned", "with relu"), ("scattering", "the scattering stem")]
)
def test_a_relu_cnn_is_not_served_under_encryption(
    tmp_path: Any, digits_cnn: tuple[Any, dict[str, Any]], stem: str, problem: str
) -> None:
    import dataclasses

    from veracity.errors import CryptoError

    spec = dataclasses.replace(digits_cnn[0], conv_activation="relu", stem=stem)
    registry = ModelRegistry(tmp_path)
    model_hash = registry.put(
        spec,
        spec.initial_weights(0),
        features=("grey",),
        label="digit",
        scaling=((0.0, 1.0),),
        card={},
    )
    service = InferenceService(registry, recorder=lambda p: None)
    with pytest.raises(CryptoError, match="square activations") as refused:
        service.describe(model_hash)
    assert problem in str(refused.value)


@pytest.mark.slow  # ~1 CPU-s each (keys, one image): in `make test`, not the edit loop
@pytest.mark.parametrize("kind", ["zeros", "unit vector", "saturated", "an image"])
def test_a_one_image_im2col_request_with_chosen_inputs_learns_only_that_images_logits(
    kind: str,
    served_cnn: tuple[InferenceService, str, list[dict[str, Any]]],
    digits: Any,
    cnn: tuple[Any, dict[str, Any]],
) -> None:
    service, model_hash, entries = served_cnn
    small = service.describe(model_hash)["he"]["layouts"]["small"]
    assert small["name"] == "im2col"
    assert small["parameter_set"]["poly_modulus_degree"] == 8192
    parameter_set = parameter_set_named(small["parameter_set"]["name"])
    steps = [int(s) for s in small["rotation_steps"]]
    if kind == "zeros":
        x = np.zeros((1, 64))
    elif kind == "unit vector":
        x = np.zeros((1, 64))
        x[0, 27] = 1.0
    elif kind == "saturated":
        x = np.full((1, 64), parameter_set.input_bound)
    else:
        x = digits.test_x[:1]
    spec, weights = cnn
    truth = predict_logits(spec, weights, x)[0]
    secret = SecretContext.generate(parameter_set)
    context_hash = service.upload_context(secret.public_context(rotation_steps=steps))
    shape = ModelShape(64, outputs=10, input_shape=(1, 8, 8), filters=spec.filters, kernel=3)
    ciphertexts = secret.encrypt(PackingLayout.IM2COL, x, shape=shape)
    header = RequestHeader(model_hash, parameter_set.name, context_hash, PackingLayout.IM2COL, 1)

    reply = service.serve(encode_request(header, ciphertexts), requester="lab")

    _, results = decode_response(reply)
    assert entries[-1]["batch_size"] == 1  # charged one image, what one ciphertext carries
    assert len(results) == 1  # one result for the image
    values = secret._decrypt_values(results[0], 0)
    slots = np.arange(len(values))
    classes = slots % 16
    declared = classes < 10
    # Every slot is a copy of one of the image's ten logits, or zero, within the flood of
    # 2**-4 and the scheme's noise: nothing else about the model is in the response. The
    # noise is relative (~2**-19 of the intermediate values' size: the dense weights' zeros
    # are encoded at 2**24), so an image at the input bound, whose logits are ~1e5, gets
    # the same absolute error in its logits and in the zero slots (docs/inference-wire.md).
    tolerance = IMAGE_FLOOD + 0.05 * max(1.0, float(np.abs(truth).max()) / 100.0)
    assert np.abs(values.real[declared] - truth[classes[declared]]).max() < tolerance
    assert np.abs(values.real[~declared]).max() < tolerance
    assert np.abs(values.imag).max() < tolerance
    if kind != "saturated":  # an image in the digits' range: the flood and a few thousandths
        assert np.abs(values.real[~declared]).max() < IMAGE_FLOOD + 0.05


def test_an_im2col_request_carries_exactly_its_declared_images(
    served_cnn: tuple[InferenceService, str, list[dict[str, Any]]],
    cnn: tuple[Any, dict[str, Any]],
) -> None:
    service, model_hash, entries = served_cnn
    filters = cnn[0].filters
    small = service.describe(model_hash)["he"]["layouts"]["small"]
    parameter_set = parameter_set_named(small["parameter_set"]["name"])
    secret = SecretContext.generate(parameter_set)
    context = secret.public_context()  # no Galois keys: only the parameters
    shape = ModelShape(64, outputs=10, input_shape=(1, 8, 8), filters=filters, kernel=3)
    two = secret.encrypt(PackingLayout.IM2COL, np.zeros((2, 64)), shape=shape)
    before = len(entries)
    header = RequestHeader(
        model_hash, parameter_set.name, body_hash(context), PackingLayout.IM2COL, 1
    )
    with pytest.raises(InputError, match="needs 1 ciphertexts"):
        service.serve(encode_request(header, two, context=context), requester="lab")
    one = two[:1]
    with pytest.raises(CryptoError, match="Galois"):  # keys the layout needs are missing
        service.serve(encode_request(header, one, context=context), requester="lab")
    wrong = RequestHeader(
        model_hash, parameter_set_for("cnn2d").name, body_hash(context), PackingLayout.IM2COL, 1
    )
    with pytest.raises(CryptoError, match="served under"):
        service.serve(encode_request(wrong, one, context=context), requester="lab")
    assert len(entries) <= before + 1  # nothing recorded for refused requests
