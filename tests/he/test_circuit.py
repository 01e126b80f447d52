"""Folding models into CKKS circuits: same logits in plain arithmetic, scales that fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hypothesis_examples import examples
from veracity.errors import CryptoError
from veracity.he.circuit import (
    LinearCircuit,
    QuadraticCircuit,
    compile_circuit,
    compile_conv_circuit,
)
from veracity.he.params import (
    CNN_IMAGE_PARAMETERS,
    CNN_PARAMETERS,
    LOGISTIC_PARAMETERS,
    POLY_MLP_PARAMETERS,
)
from veracity.tasks.spec import ModelFamily, ModelSpec, predict_logits
from veracity.tasks.torch_models import build_model, model_weights

# Primes of the right sizes (what SEAL picks lies within a factor of two of these).
LR_PRIMES = (2**60 - 93,)
MLP_PRIMES = (2**60 - 93, 2**60 - 173, 2**30 - 35, 2**60 - 257)
CNN_PRIMES = (2**60 - 93, 2**60 - 173, 2**40 - 87, 2**45 - 55, 2**30 - 35, 2**60 - 257)
#: Stand-ins of the image set's sizes (49, 49, 48, 22; special 49 bits).
IMAGE_PRIMES = (2**49 - 1, 2**49 - 3, 2**48 - 5, 2**22 - 3, 2**49 - 7)


@settings(max_examples=examples(25), deadline=None)
@given(
    a=st.floats(0.1, 2.0) | st.floats(-2.0, -0.1),
    b=st.floats(-1.0, 1.0),
    c=st.floats(-2.0, 2.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_quadratic_circuit_computes_the_poly_mlp_logits(
    a: float, b: float, c: float, seed: int
) -> None:
    spec = ModelSpec(ModelFamily.POLY_MLP, n_features=7, hidden=5, activation=(a, b, c))
    weights = model_weights(build_model(spec, seed=seed))
    circuit = compile_circuit(
        "poly_mlp",
        weights,
        parameter_set=POLY_MLP_PARAMETERS,
        primes=MLP_PRIMES,
        n_features=7,
        hidden=5,
        activation=spec.activation,
    )
    assert isinstance(circuit, QuadraticCircuit)
    x = np.random.default_rng(seed).normal(size=(20, 7))
    u = x @ circuit.hidden_weights.T + circuit.hidden_bias
    folded = (u * u) @ circuit.output_weights[0] + circuit.output_bias[0]
    np.testing.assert_allclose(folded, predict_logits(spec, weights, x), rtol=1e-6, atol=1e-6)


def test_logistic_scale_keeps_the_worst_case_logit_below_the_modulus() -> None:
    spec = ModelSpec(ModelFamily.LOGISTIC, n_features=30)
    weights = model_weights(build_model(spec, seed=1))
    circuit = compile_circuit(
        "logistic", weights, parameter_set=LOGISTIC_PARAMETERS, primes=LR_PRIMES, n_features=30
    )
    assert isinstance(circuit, LinearCircuit)
    worst = math.sqrt(2) * circuit.logit_bound * LOGISTIC_PARAMETERS.input_scale
    assert worst * circuit.weight_scale < LR_PRIMES[0] / 2
    assert circuit.weight_scale >= 2**LOGISTIC_PARAMETERS.min_weight_scale_bits


def test_mlp_output_scale_keeps_the_worst_case_logit_below_the_remaining_modulus() -> None:
    spec = ModelSpec(ModelFamily.POLY_MLP, n_features=30)
    weights = model_weights(build_model(spec, seed=2))
    circuit = compile_circuit(
        "poly_mlp",
        weights,
        parameter_set=POLY_MLP_PARAMETERS,
        primes=MLP_PRIMES,
        n_features=30,
        hidden=16,
        activation=spec.activation,
    )
    assert isinstance(circuit, QuadraticCircuit)
    s_z = POLY_MLP_PARAMETERS.input_scale * circuit.hidden_weight_scale / MLP_PRIMES[2]
    final_scale = s_z * s_z * circuit.output_weight_scale
    assert final_scale * circuit.logit_bound < MLP_PRIMES[0] * MLP_PRIMES[1] / 2


def test_weights_too_large_for_the_parameter_set_are_refused() -> None:
    weights = {
        "linear.weight": np.full((1, 30), 1e9, dtype=np.float32),
        "linear.bias": np.zeros(1, dtype=np.float32),
    }
    with pytest.raises(CryptoError, match="weight scale"):
        compile_circuit(
            "logistic", weights, parameter_set=LOGISTIC_PARAMETERS, primes=LR_PRIMES, n_features=30
        )


def test_a_zero_quadratic_coefficient_is_refused() -> None:
    spec = ModelSpec(ModelFamily.POLY_MLP, n_features=3, hidden=2, activation=(0.0, 1.0, 0.0))
    with pytest.raises(CryptoError, match="quadratic coefficient"):
        compile_circuit(
            "poly_mlp",
            model_weights(build_model(spec, seed=0)),
            parameter_set=POLY_MLP_PARAMETERS,
            primes=MLP_PRIMES,
            n_features=3,
            hidden=2,
            activation=spec.activation,
        )


def test_non_finite_or_misshapen_weights_are_refused() -> None:
    weights = {
        "linear.weight": np.array([[np.nan, 1.0]], dtype=np.float32),
        "linear.bias": np.zeros(1, dtype=np.float32),
    }
    with pytest.raises(CryptoError, match="NaN"):
        compile_circuit(
            "logistic", weights, parameter_set=LOGISTIC_PARAMETERS, primes=LR_PRIMES, n_features=2
        )
    with pytest.raises(CryptoError, match="shape"):
        compile_circuit(
            "logistic", weights, parameter_set=LOGISTIC_PARAMETERS, primes=LR_PRIMES, n_features=3
        )


def test_a_family_served_by_another_parameter_set_is_refused() -> None:
    spec = ModelSpec(ModelFamily.LOGISTIC, n_features=3)
    with pytest.raises(CryptoError, match="serves poly_mlp"):
        compile_circuit(
            "logistic",
            model_weights(build_model(spec, seed=0)),
            parameter_set=POLY_MLP_PARAMETERS,
            primes=MLP_PRIMES,
            n_features=3,
        )


def test_a_hidden_unit_without_inputs_folds_into_the_constant() -> None:
    spec = ModelSpec(ModelFamily.POLY_MLP, n_features=4, hidden=3)
    weights = model_weights(build_model(spec, seed=5))
    weights["fc1.weight"][1] = 0.0
    circuit = compile_circuit(
        "poly_mlp",
        weights,
        parameter_set=POLY_MLP_PARAMETERS,
        primes=MLP_PRIMES,
        n_features=4,
        hidden=3,
        activation=spec.activation,
    )
    assert isinstance(circuit, QuadraticCircuit)
    assert circuit.output_weights[0, 1] == 0.0
    x = np.random.default_rng(0).normal(size=(10, 4))
    u = x @ circuit.hidden_weights.T + circuit.hidden_bias
    folded = (u * u) @ circuit.output_weights[0] + circuit.output_bias[0]
    np.testing.assert_allclose(folded, predict_logits(spec, weights, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["logistic", "poly_mlp"])
def test_a_k_class_circuit_computes_every_class_logit(family: str) -> None:
    spec = ModelSpec(ModelFamily(family), n_features=6, hidden=4, classes=5)
    weights = model_weights(build_model(spec, seed=7))
    parameter_set = LOGISTIC_PARAMETERS if family == "logistic" else POLY_MLP_PARAMETERS
    circuit = compile_circuit(
        family,
        weights,
        parameter_set=parameter_set,
        primes=LR_PRIMES if family == "logistic" else MLP_PRIMES,
        n_features=6,
        hidden=4,
        activation=spec.activation,
        outputs=5,
    )
    assert circuit.outputs == 5
    x = np.random.default_rng(1).normal(size=(12, 6))
    if isinstance(circuit, LinearCircuit):
        folded = x @ circuit.weights.T + circuit.bias
    else:
        u = x @ circuit.hidden_weights.T + circuit.hidden_bias
        folded = (u * u) @ circuit.output_weights.T + circuit.output_bias
    np.testing.assert_allclose(folded, predict_logits(spec, weights, x), rtol=1e-5, atol=1e-5)


@settings(max_examples=examples(10), deadline=None)
@given(
    shape=st.sampled_from([(1, 8, 8), (2, 6, 9), (3, 5, 4)]),
    kernel=st.sampled_from([1, 3, 5]),
    filters=st.sampled_from([(2, 3), (3,)]),
    seed=st.integers(0, 2**31 - 1),
)
def test_the_conv_circuit_computes_the_square_cnn2d_logits(
    shape: tuple[int, int, int], kernel: int, filters: tuple[int, ...], seed: int
) -> None:
    # im2col matrices, pools as sums of squares with their 1/4 folded forward: the same
    # logits as the NumPy forward pass (odd sizes drop a trailing row as torch does).
    spec = ModelSpec(
        ModelFamily.CNN2D,
        math.prod(shape),
        classes=3,
        input_shape=shape,
        filters=filters,
        kernel=kernel,
        conv_activation="square",
    )
    weights = spec.initial_weights(seed)
    circuit = compile_conv_circuit(
        weights,
        parameter_set=CNN_PARAMETERS,
        primes=CNN_PRIMES,
        input_shape=shape,
        filters=filters,
        kernel=kernel,
        outputs=3,
    )
    x = np.random.default_rng(seed).normal(size=(7, spec.n_features))
    np.testing.assert_allclose(
        circuit.forward(x), predict_logits(spec, weights, x), rtol=1e-9, atol=1e-9
    )


def test_conv_circuit_scales_keep_every_level_below_its_modulus() -> None:
    spec = ModelSpec(
        ModelFamily.CNN2D,
        64,
        classes=10,
        input_shape=(1, 8, 8),
        filters=(4, 8),
        kernel=3,
        conv_activation="square",
    )
    circuit = compile_conv_circuit(
        spec.initial_weights(3),
        parameter_set=CNN_PARAMETERS,
        primes=CNN_PRIMES,
        input_shape=(1, 8, 8),
        filters=(4, 8),
        kernel=3,
        outputs=10,
    )
    q = [float(p) for p in CNN_PRIMES[:-1]]
    level1 = CNN_PARAMETERS.input_scale * circuit.conv1_scale / q[-1]
    level2 = level1 * level1 * circuit.conv2_scale / q[-2]
    # The logits, at their worst, fit what is left once the selector's prime is rescaled away.
    assert level2 * level2 * circuit.fc_scale * circuit.logit_bound < q[0] * q[1] / 2
    assert circuit.fc_scale >= 2**CNN_PARAMETERS.min_weight_scale_bits


def test_one_convolution_scales_keep_every_level_below_its_modulus() -> None:
    spec = ModelSpec(
        ModelFamily.CNN2D,
        64,
        classes=10,
        input_shape=(1, 8, 8),
        filters=(4,),
        kernel=3,
        conv_activation="square",
    )
    weights = spec.initial_weights(3)
    column = compile_conv_circuit(
        weights,
        parameter_set=CNN_PARAMETERS,
        primes=CNN_PRIMES,
        input_shape=(1, 8, 8),
        filters=(4,),
        kernel=3,
        outputs=10,
    )
    assert column.conv2 is None
    assert column.filters == (4,)
    q = [float(p) for p in CNN_PRIMES[:-1]]
    # Inputs lose q4; squares and dense products at their scale under q0..q3, no rescale.
    square = (CNN_PARAMETERS.input_scale * column.conv1_scale) ** 2
    assert square * 2**3 < q[0] * q[1] * q[2] * q[3]
    # The logits, at their worst, fit what is left once the selector's prime is rescaled away.
    assert square * column.fc_scale * column.logit_bound < q[0] * q[1] * q[2] / 2
    assert column.fc_scale >= 2**CNN_PARAMETERS.min_weight_scale_bits
    image_primes = [float(p) for p in IMAGE_PRIMES[:-1]]
    image = compile_conv_circuit(
        weights,
        parameter_set=CNN_IMAGE_PARAMETERS,
        primes=IMAGE_PRIMES,
        input_shape=(1, 8, 8),
        filters=(4,),
        kernel=3,
        outputs=10,
    )
    level1 = CNN_IMAGE_PARAMETERS.input_scale * image.conv1_scale / image_primes[3]
    # The pooled maps fit q0 q1 (q2 is dropped before the dense rotations); after the dense
    # rescale by q1 the logits fit q0 alone (the reply keeps one prime).
    assert level1**2 * image.fc_scale * image.logit_bound < image_primes[0] * image_primes[1] / 2
    assert level1**2 * image.fc_scale / image_primes[1] * image.logit_bound < image_primes[0] / 2


def test_a_cnn_too_large_for_the_parameter_set_is_refused() -> None:
    weights = {
        "conv1.weight": np.full((2, 1, 3, 3), 1e6),
        "conv1.bias": np.zeros(2),
        "conv2.weight": np.full((2, 2, 3, 3), 1e6),
        "conv2.bias": np.zeros(2),
        "fc.weight": np.ones((3, 8)),
        "fc.bias": np.zeros(3),
    }
    with pytest.raises(CryptoError, match="cnn2d"):
        compile_conv_circuit(
            weights,
            parameter_set=CNN_PARAMETERS,
            primes=CNN_PRIMES,
            input_shape=(1, 8, 8),
            filters=(2, 2),
            kernel=3,
            outputs=3,
        )
