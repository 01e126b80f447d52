"""Encrypted evaluation against plaintext, and what the server accepts (TenSEAL / SEAL)."""

from __future__ import annotations

import itertools
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from veracity.errors import CryptoError, InputError
from veracity.he.circuit import compile_circuit, compile_conv_circuit
from veracity.he.contexts import SecretContext
from veracity.he.layouts import ModelShape, circuit_shape, evaluate, layout_for
from veracity.he.packing import ReplicatedGeometry, coefficients_from_slots
from veracity.he.params import (
    CNN_IMAGE_PARAMETERS,
    CNN_PARAMETERS,
    LOGISTIC_PARAMETERS,
    POLY_MLP_PARAMETERS,
    CKKSParameterSet,
    PackingLayout,
)
from veracity.he.public_context import PublicContext
from veracity.he.seal import seal_primes
from veracity.he.wire import KIND_CONTEXT, decode_envelope, encode_envelope
from veracity.tasks.spec import predict_logits

REPO = Path(__file__).resolve().parents[2]


def _circuit(parameter_set: CKKSParameterSet, spec: Any, weights: dict[str, Any]) -> Any:
    return compile_circuit(
        spec.family.value,
        weights,
        parameter_set=parameter_set,
        primes=seal_primes(parameter_set),
        n_features=spec.n_features,
        hidden=spec.hidden,
        activation=spec.activation,
    )


def secret_key_chunks(secret: SecretContext, count: int = 50, size: int = 64) -> list[bytes]:
    """``count`` chunks of the serialised secret key, spread over its length (the note's check)."""
    key = secret.secret_key_bytes()
    step = max(1, (len(key) - size) // count)
    return [key[i : i + size] for i in range(0, len(key) - size, step)][:count]


CASES = [
    ("logistic", LOGISTIC_PARAMETERS, PackingLayout.COLUMN_COEFFICIENT),
    ("logistic", LOGISTIC_PARAMETERS, PackingLayout.COEFFICIENT),
    ("poly_mlp", POLY_MLP_PARAMETERS, PackingLayout.COLUMN),
    ("poly_mlp", POLY_MLP_PARAMETERS, PackingLayout.REPLICATED),
]


@pytest.mark.parametrize(("family", "parameter_set", "layout"), CASES)
def test_encrypted_scores_match_plaintext_on_breast_cancer(
    family: str,
    parameter_set: CKKSParameterSet,
    layout: PackingLayout,
    breast_cancer: Any,
    trained_models: dict[str, Any],
) -> None:
    spec, weights = trained_models[family]
    x = breast_cancer.test_x
    expected = predict_logits(spec, weights, x)
    secret = SecretContext.generate(parameter_set)
    steps = ReplicatedGeometry(30, spec.hidden, parameter_set.slots).rotation_steps()
    public = secret.public(rotation_steps=steps if layout is PackingLayout.REPLICATED else ())
    circuit = _circuit(parameter_set, spec, weights)

    ciphertexts = secret.encrypt(layout, x, hidden=spec.hidden)
    results = evaluate(public, circuit, layout, ciphertexts, batch_size=len(x))
    logits = secret.decrypt(layout, results, batch_size=len(x), n_features=30, hidden=spec.hidden)

    error = float(np.abs(logits - expected).max())
    sys.stderr.write(
        f"\n{family} {layout}: max abs logit error {error:.3g} over {len(x)} patients\n"
    )
    assert error < 1e-3
    assert np.array_equal(logits > 0, expected > 0)  # every test patient's decision agrees
    accuracy = float(((logits > 0) == breast_cancer.test_y).mean())
    assert accuracy > 0.9


def _ten_class_logits(
    family: str,
    parameter_set: CKKSParameterSet,
    layout: PackingLayout,
    x: Any,
    digits_models: dict[str, Any],
) -> tuple[Any, Any]:
    """Encrypted and plaintext logits of the ten-class digits model for the rows ``x``."""
    spec, weights = digits_models[family]
    expected = predict_logits(spec, weights, x)
    secret = SecretContext.generate(parameter_set)
    steps = ReplicatedGeometry(64, spec.hidden, parameter_set.slots).rotation_steps()
    public = secret.public(rotation_steps=steps if layout is PackingLayout.REPLICATED else ())
    circuit = compile_circuit(
        family,
        weights,
        parameter_set=parameter_set,
        primes=seal_primes(parameter_set),
        n_features=64,
        hidden=spec.hidden,
        activation=spec.activation,
        outputs=10,
    )

    ciphertexts = secret.encrypt(layout, x, hidden=spec.hidden)
    results = evaluate(public, circuit, layout, ciphertexts, batch_size=len(x))
    logits = secret.decrypt(
        layout, results, batch_size=len(x), n_features=64, hidden=spec.hidden, outputs=10
    )
    assert logits.shape == (len(x), 10)
    error = float(np.abs(logits - expected).max())
    sys.stderr.write(f"\n{family} {layout} 10 classes: max abs logit error {error:.3g}\n")
    assert error < 1e-3
    return logits, expected


#: The replicated layout holds four digits images per ciphertext and pays rotations for
#: each: 150 images are ~5 CPU-s, so the edit loop runs it on three ciphertexts instead
#: (:func:`test_ten_class_replicated_scores_match_plaintext_on_three_ciphertexts`).
TEN_CLASS_CASES = [
    case
    if case[2] is not PackingLayout.REPLICATED
    else pytest.param(*case, marks=pytest.mark.slow, id=f"{case[0]}-parameter_set{i}-{case[2]}")
    for i, case in enumerate(CASES)
]


@pytest.mark.parametrize(("family", "parameter_set", "layout"), TEN_CLASS_CASES)
def test_ten_class_scores_match_plaintext_on_digits(
    family: str,
    parameter_set: CKKSParameterSet,
    layout: PackingLayout,
    digits: Any,
    digits_models: dict[str, Any],
) -> None:
    x = digits.test_x[:150]
    logits, expected = _ten_class_logits(family, parameter_set, layout, x, digits_models)

    # Every test image's decision (argmax) agrees with the plaintext NumPy forward pass.
    assert np.array_equal(logits.argmax(axis=1), expected.argmax(axis=1))
    assert float((logits.argmax(axis=1) == digits.test_y[: len(x)]).mean()) > 0.9


def test_ten_class_replicated_scores_match_plaintext_on_three_ciphertexts(
    digits: Any, digits_models: dict[str, Any]
) -> None:
    # Nine images: two full ciphertexts of four and one carrying a single declared image.
    spec = digits_models["poly_mlp"][0]
    per = ReplicatedGeometry(64, spec.hidden, POLY_MLP_PARAMETERS.slots).patients_per_ciphertext
    x = digits.test_x[: 2 * per + 1]
    logits, expected = _ten_class_logits(
        "poly_mlp", POLY_MLP_PARAMETERS, PackingLayout.REPLICATED, x, digits_models
    )

    assert np.array_equal(logits.argmax(axis=1), expected.argmax(axis=1))


@pytest.fixture(scope="module", params=["two convolutions", "one convolution"])
def cnn(request: pytest.FixtureRequest) -> tuple[Any, dict[str, Any]]:
    """Each digits CNN: conv, conv, dense (``digits_cnn``) and conv, dense (``digits_cnn_one``)."""
    name = "digits_cnn" if request.param == "two convolutions" else "digits_cnn_one"
    found: tuple[Any, dict[str, Any]] = request.getfixturevalue(name)
    return found


@pytest.mark.slow  # ~0.1 CPU-s per image, 450 images: in `make test`, not the edit loop
def test_the_digits_cnn_one_image_per_ciphertext_agrees_with_plaintext_on_every_test_image(
    digits: Any, cnn: tuple[Any, dict[str, Any]]
) -> None:
    spec, weights = cnn
    x = digits.test_x
    expected = predict_logits(spec, weights, x)
    ps = CNN_IMAGE_PARAMETERS
    circuit = compile_conv_circuit(
        weights,
        parameter_set=ps,
        primes=seal_primes(ps),
        input_shape=spec.input_shape,
        filters=spec.filters,
        kernel=spec.kernel,
        outputs=10,
    )
    shape = circuit_shape(circuit)
    steps = layout_for(PackingLayout.IM2COL, ps, shape).rotation_steps()
    secret = SecretContext.generate(ps)
    public = secret.public(rotation_steps=steps)
    assert public.has_rotation_keys  # Galois keys: sent once, cached by hash
    logits = np.empty_like(expected)
    for start in range(0, len(x), ps.small_batch_max):
        batch = x[start : start + ps.small_batch_max]
        ciphertexts = secret.encrypt(PackingLayout.IM2COL, batch, shape=shape)
        assert all(len(c) < 200 * 1024 for c in ciphertexts)  # one image: < 200 KiB up
        results = evaluate(
            public, circuit, PackingLayout.IM2COL, ciphertexts, batch_size=len(batch)
        )
        assert len(results) == len(batch)  # one result per image
        logits[start : start + len(batch)] = secret.decrypt(
            PackingLayout.IM2COL, results, batch_size=len(batch), n_features=64, shape=shape
        )

    error = float(np.abs(logits - expected).max())
    sys.stderr.write(f"\ncnn2d im2col: max abs logit error {error:.3g} over {len(x)} images\n")
    assert error < 0.1
    assert np.array_equal(logits.argmax(axis=1), expected.argmax(axis=1))
    assert float((logits.argmax(axis=1) == digits.test_y).mean()) > 0.9


def test_the_im2col_layout_refuses_an_image_of_another_shape(
    digits_cnn: tuple[Any, dict[str, Any]],
) -> None:
    secret = SecretContext.generate(CNN_IMAGE_PARAMETERS)
    shape = ModelShape(64, outputs=10, input_shape=(1, 8, 8), filters=(4, 8), kernel=3)
    with pytest.raises(InputError, match="64 features"):
        secret.encrypt(PackingLayout.IM2COL, np.zeros((1, 63)), shape=shape)
    with pytest.raises(InputError, match="at most 16 images"):
        secret.encrypt(PackingLayout.IM2COL, np.zeros((17, 64)), shape=shape)


@pytest.mark.slow  # ~10 CPU-s at N=16384: in `make test`, not the edit loop
def test_the_digits_cnn_under_encryption_agrees_with_plaintext_on_every_test_image(
    digits: Any, cnn: tuple[Any, dict[str, Any]]
) -> None:
    spec, weights = cnn
    x = digits.test_x  # 450 images, one request of the column layout
    expected = predict_logits(spec, weights, x)
    secret = SecretContext.generate(CNN_PARAMETERS)
    public = secret.public()  # parameters only: no Galois or relinearisation keys
    assert not public.has_rotation_keys
    circuit = compile_conv_circuit(
        weights,
        parameter_set=CNN_PARAMETERS,
        primes=seal_primes(CNN_PARAMETERS),
        input_shape=spec.input_shape,
        filters=spec.filters,
        kernel=spec.kernel,
        outputs=10,
    )

    ciphertexts = secret.encrypt(PackingLayout.COLUMN, x)
    results = evaluate(public, circuit, PackingLayout.COLUMN, ciphertexts, batch_size=len(x))
    logits = secret.decrypt(
        PackingLayout.COLUMN, results, batch_size=len(x), n_features=64, outputs=10
    )

    error = float(np.abs(logits - expected).max())
    sys.stderr.write(f"\ncnn2d column: max abs logit error {error:.3g} over {len(x)} images\n")
    assert error < 0.05
    assert np.array_equal(logits.argmax(axis=1), expected.argmax(axis=1))
    assert float((logits.argmax(axis=1) == digits.test_y).mean()) > 0.9


def test_no_secret_key_bytes_in_public_contexts_or_ciphertexts(breast_cancer: Any) -> None:
    secret = SecretContext.generate(POLY_MLP_PARAMETERS)
    chunks = secret_key_chunks(secret)
    assert len(chunks) == 50
    blob_with_key = b"prefix" + secret.secret_key_bytes()
    assert sum(chunk in blob_with_key for chunk in chunks) == 50  # the check can see a leak
    steps = ReplicatedGeometry(30, 16, POLY_MLP_PARAMETERS.slots).rotation_steps()
    outgoing = [
        secret.public_context(),
        secret.public_context(rotation_steps=steps),
        *secret.encrypt(PackingLayout.COLUMN, breast_cancer.test_x[:5]),
        *secret.encrypt(PackingLayout.REPLICATED, breast_cancer.test_x[:5], hidden=16),
    ]
    for blob in outgoing:
        assert not any(chunk in blob for chunk in chunks)


def test_no_secret_key_bytes_leave_the_client_of_an_image_model(digits: Any) -> None:
    secret = SecretContext.generate(CNN_PARAMETERS)
    chunks = secret_key_chunks(secret)
    assert len(chunks) == 50
    outgoing = [secret.public_context(), *secret.encrypt(PackingLayout.COLUMN, digits.test_x[:3])]
    for blob in outgoing:
        assert not any(chunk in blob for chunk in chunks)
    assert not secret.public().has_rotation_keys  # the server gets the parameters alone


def test_server_context_cannot_decrypt_and_is_not_a_secret_context() -> None:
    secret = SecretContext.generate(LOGISTIC_PARAMETERS)
    public = secret.public()
    assert isinstance(public, PublicContext)
    assert not hasattr(public, "decrypt")
    assert not hasattr(public, "secret_key_bytes")


def _context_with(
    parts: list[tuple[str, bytes]], parameter_set: str = LOGISTIC_PARAMETERS.name
) -> bytes:
    return encode_envelope(KIND_CONTEXT, {"parameter_set": parameter_set, "scheme": "ckks"}, parts)


def _parts(context: bytes) -> list[tuple[str, bytes]]:
    return list(decode_envelope(context, kind=KIND_CONTEXT, max_bytes=2**26).parts)


def test_a_context_part_carrying_the_secret_key_is_refused() -> None:
    secret = SecretContext.generate(LOGISTIC_PARAMETERS)
    leaky = _context_with(
        [*_parts(secret.public_context()), ("secret_key", secret.secret_key_bytes())]
    )
    with pytest.raises(CryptoError, match="secret key"):
        PublicContext.from_bytes(leaky)


def test_a_secret_key_disguised_as_parameters_or_keys_is_refused() -> None:
    secret = SecretContext.generate(POLY_MLP_PARAMETERS)
    key = secret.secret_key_bytes()
    with pytest.raises(CryptoError, match="secret key"):
        PublicContext.from_bytes(
            _context_with([("encryption_parameters", key)], POLY_MLP_PARAMETERS.name)
        )
    steps = ReplicatedGeometry(30, 16, POLY_MLP_PARAMETERS.slots).rotation_steps()
    parts = _parts(secret.public_context(rotation_steps=steps))
    swapped = [(name, key if name == "relin_keys" else data) for name, data in parts]
    with pytest.raises(CryptoError, match="secret key"):
        PublicContext.from_bytes(_context_with(swapped, POLY_MLP_PARAMETERS.name))


def test_a_raw_seal_secret_key_is_refused() -> None:
    secret = SecretContext.generate(LOGISTIC_PARAMETERS)
    with pytest.raises(CryptoError, match="secret key"):
        PublicContext.from_bytes(secret.secret_key_bytes())


def test_tenseal_contexts_are_refused_and_private_ones_say_why() -> None:
    import tenseal as ts

    context = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    with pytest.raises(CryptoError, match="holds a secret key"):
        PublicContext.from_bytes(context.serialize(save_secret_key=True))
    with pytest.raises(CryptoError, match="not accepted"):
        PublicContext.from_bytes(context.serialize(save_secret_key=False, save_galois_keys=False))


def _parameters_blob(degree: int, bits: list[int]) -> bytes:
    import tenseal.sealapi as sa

    from veracity.he.seal import scratch

    parms = sa.EncryptionParameters(sa.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(degree)
    parms.set_coeff_modulus(sa.CoeffModulus.Create(degree, bits))
    return scratch().save(parms)


def test_parameters_below_128_bit_security_are_refused() -> None:
    weak = _context_with([("encryption_parameters", _parameters_blob(4096, [60, 60]))])
    with pytest.raises(CryptoError, match="below 128-bit security"):
        PublicContext.from_bytes(weak)


def test_parameters_other_than_the_named_set_are_refused() -> None:
    other = _context_with([("encryption_parameters", _parameters_blob(4096, [50]))])
    with pytest.raises(CryptoError, match="not those of ckks-lr-n4096-v1"):
        PublicContext.from_bytes(other)
    mislabelled = _context_with(
        [("encryption_parameters", _parameters_blob(4096, [60]))], POLY_MLP_PARAMETERS.name
    )
    with pytest.raises(CryptoError, match="not those of ckks-mlp"):
        PublicContext.from_bytes(mislabelled)


def test_malformed_and_truncated_contexts_are_input_errors() -> None:
    context = SecretContext.generate(LOGISTIC_PARAMETERS).public_context()
    for broken in (b"", b"garbage" * 10, context[:-1], context + b"x", context[:20]):
        with pytest.raises(InputError):
            PublicContext.from_bytes(broken)


def test_ciphertexts_of_other_parameters_or_scales_are_refused(
    breast_cancer: Any, trained_models: dict[str, Any]
) -> None:
    spec, weights = trained_models["logistic"]
    secret = SecretContext.generate(LOGISTIC_PARAMETERS)
    circuit = _circuit(LOGISTIC_PARAMETERS, spec, weights)
    mlp_ciphertexts = SecretContext.generate(POLY_MLP_PARAMETERS).encrypt(
        PackingLayout.COLUMN, breast_cancer.test_x[:3]
    )
    layout = PackingLayout.COLUMN_COEFFICIENT
    public = secret.public()
    with pytest.raises((CryptoError, InputError)):
        evaluate(public, circuit, layout, mlp_ciphertexts, batch_size=3)
    good = secret.encrypt(layout, breast_cancer.test_x[:3])
    with pytest.raises(InputError, match="truncated"):
        evaluate(public, circuit, layout, [good[0][:-10], *good[1:]], batch_size=3)
    wrong_scale = _reencrypt_at_scale(secret, 2.0**30)
    with pytest.raises(CryptoError, match="scale"):
        evaluate(public, circuit, layout, [wrong_scale, *good[1:]], batch_size=3)
    assert len(evaluate(public, circuit, layout, good, batch_size=3)) == 1


def _reencrypt_at_scale(secret: SecretContext, scale: float) -> bytes:
    import tenseal.sealapi as sa

    from veracity.he.seal import scratch

    runtime = secret._runtime
    plaintext = sa.Plaintext()
    runtime.encoder.encode([0.5] * runtime.parameter_set.slots, scale, plaintext)
    return scratch().save(secret._encryptor.encrypt_symmetric(plaintext))


def test_a_layout_that_does_not_suit_the_model_is_refused(
    breast_cancer: Any, trained_models: dict[str, Any]
) -> None:
    spec, weights = trained_models["poly_mlp"]
    secret = SecretContext.generate(POLY_MLP_PARAMETERS)
    circuit = _circuit(POLY_MLP_PARAMETERS, spec, weights)
    ciphertexts = secret.encrypt(PackingLayout.COLUMN, breast_cancer.test_x[:2])
    with pytest.raises(CryptoError, match="does not serve poly_mlp"):
        evaluate(
            secret.public(), circuit, PackingLayout.COLUMN_COEFFICIENT, ciphertexts, batch_size=2
        )
    replicated = secret.encrypt(PackingLayout.REPLICATED, breast_cancer.test_x[:2], hidden=16)
    with pytest.raises(CryptoError, match="Galois and relinearisation keys"):
        evaluate(secret.public(), circuit, PackingLayout.REPLICATED, replicated, batch_size=2)


def test_coefficient_layout_masks_everything_but_the_logits(
    breast_cancer: Any, trained_models: dict[str, Any]
) -> None:
    spec, weights = trained_models["logistic"]
    secret = SecretContext.generate(LOGISTIC_PARAMETERS)
    circuit = _circuit(LOGISTIC_PARAMETERS, spec, weights)
    layout = PackingLayout.COEFFICIENT
    (result,) = evaluate(
        secret.public(),
        circuit,
        layout,
        secret.encrypt(layout, breast_cancer.test_x[:10]),
        batch_size=10,
    )
    # Raw coefficients of the decrypted result, in units of q.
    prime = seal_primes(LOGISTIC_PARAMETERS)[0]
    scale = LOGISTIC_PARAMETERS.input_scale * circuit.weight_scale
    raw = coefficients_from_slots(secret._decrypt_values(result, 0)) * scale / prime
    outputs = np.arange(10) * 30  # the declared patients' logits
    others = np.setdiff1d(np.arange(4096), outputs)
    assert np.abs(raw[outputs]).max() < 0.01  # logits sit far below q / 2
    # Uniform on (-1/2, 1/2]: about half beyond 1/4; an unmasked product would be tiny.
    beyond = float((np.abs(raw[others]) > 0.25).mean())
    assert 0.45 < beyond < 0.55


def test_masks_come_from_the_injected_randomness(
    breast_cancer: Any, trained_models: dict[str, Any]
) -> None:
    spec, weights = trained_models["logistic"]
    secret = SecretContext.generate(LOGISTIC_PARAMETERS)
    circuit = _circuit(LOGISTIC_PARAMETERS, spec, weights)
    layout = PackingLayout.COEFFICIENT
    ciphertexts = secret.encrypt(layout, breast_cancer.test_x[:3])
    counter = itertools.count()

    def fixed(n: int) -> bytes:
        return b"".join(
            struct.pack("<Q", next(counter) * 0x9E3779B97F4A7C15 % 2**64) for _ in range(n // 8)
        )

    (result,) = evaluate(
        secret.public(), circuit, layout, ciphertexts, batch_size=3, random_bytes=fixed
    )
    assert next(counter) == 4096 + 3  # a word per coefficient, one more per declared logit
    logits = secret.decrypt(layout, [result], batch_size=3, n_features=30)
    np.testing.assert_allclose(
        logits, predict_logits(spec, weights, breast_cancer.test_x[:3]), atol=1e-3
    )


@pytest.mark.slow
def test_mypy_rejects_a_secret_context_where_server_code_expects_a_public_one(
    tmp_path: Path,
) -> None:
    from mypy import api

    snippet = tmp_path / "server_misuse.py"
    snippet.write_text(
        "from veracity.he.contexts import SecretContext\n"
        "from veracity.he.layouts import evaluate\n"
        "from veracity.he.circuit import LinearCircuit\n"
        "from veracity.he.params import LOGISTIC_PARAMETERS, PackingLayout\n"
        "def serve(secret: SecretContext, circuit: LinearCircuit) -> None:\n"
        "    evaluate(secret, circuit, PackingLayout.COLUMN_COEFFICIENT, [], batch_size=1)\n"
    )
    stdout, _, status = api.run(
        [
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--follow-imports",
            "silent",
            str(snippet),
        ]
    )
    assert status == 1
    assert 'incompatible type "SecretContext"; expected "PublicContext"' in stdout
