from __future__ import annotations

import numpy as np
import pytest
import torch

from veracity.errors import InputError
from veracity.tasks.spec import ModelFamily, ModelSpec, predict_logits
from veracity.tasks.torch_models import build_model, load_weights, model_weights

SPECS = {
    "logistic": ModelSpec(ModelFamily.LOGISTIC, n_features=30),
    "poly_mlp": ModelSpec(ModelFamily.POLY_MLP, n_features=30),
    "logistic-3-classes": ModelSpec(ModelFamily.LOGISTIC, n_features=30, classes=3),
    "poly_mlp-4-classes": ModelSpec(ModelFamily.POLY_MLP, n_features=30, classes=4),
    "cnn1d": ModelSpec(ModelFamily.CNN1D, n_features=30, input_shape=(3, 10)),
    "cnn1d-3-classes-odd-steps": ModelSpec(
        ModelFamily.CNN1D, n_features=33, input_shape=(3, 11), classes=3
    ),
    "cnn2d-10-classes": ModelSpec(
        ModelFamily.CNN2D, n_features=64, input_shape=(1, 8, 8), classes=10, kernel=3
    ),
    "cnn2d-square-rgb": ModelSpec(
        ModelFamily.CNN2D, n_features=3 * 81, input_shape=(3, 9, 9), conv_activation="square"
    ),
}


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_numpy_logits_match_the_torch_model(spec: ModelSpec) -> None:
    model = build_model(spec, seed=3)
    x = np.random.default_rng(1).normal(size=(50, spec.n_features)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = predict_logits(spec, model_weights(model), x)
    assert got.shape == ((50,) if spec.classes == 2 else (50, spec.classes))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_spec_initial_weights_fit_the_torch_model(spec: ModelSpec) -> None:
    model = build_model(spec)
    load_weights(model, spec.initial_weights(5))
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == spec.weight_shapes()
    assert ModelSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_no_model_uses_batch_norm(spec: ModelSpec) -> None:
    # BatchNorm mixes the samples of a batch: per-sample gradients (DP-SGD) would not exist.
    modules = list(build_model(spec).modules())
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in modules)
    if spec.family.convolutional and spec.conv_activation == "relu":
        assert sum(isinstance(m, torch.nn.GroupNorm) for m in modules) == 2


def test_square_variant_is_a_polynomial_network() -> None:
    spec = SPECS["cnn2d-square-rgb"]
    kinds = {type(m).__name__ for m in build_model(spec).modules()}
    assert "GroupNorm" not in kinds
    assert "ReLU" not in kinds
    assert "MaxPool2d" not in kinds
    assert "AvgPool2d" in kinds


def test_two_class_specs_describe_themselves_as_before() -> None:
    # Binary studies keep their hashes: no "classes" key in a two-class description.
    assert ModelSpec(ModelFamily.LOGISTIC, n_features=3).to_dict() == {
        "family": "logistic",
        "n_features": 3,
    }


@pytest.mark.parametrize(
    ("described", "problem"),
    [
        ({"family": "cnn1d", "input_shape": [3, 10], "n_features": 31}, "not n_features"),
        ({"family": "cnn2d", "input_shape": [1, 8]}, "input_shape"),
        ({"family": "cnn1d", "input_shape": [3, 10], "kernel": 4}, "odd"),
        ({"family": "logistic", "n_features": 3, "classes": 1}, "2 to"),
        ({"family": "cnn1d", "input_shape": [3, 10], "activation": "tanh"}, "relu"),
    ],
)
def test_malformed_specs_are_refused(described: dict[str, object], problem: str) -> None:
    with pytest.raises(InputError, match=problem):
        ModelSpec.from_dict(described)


def test_same_seed_gives_same_initial_weights() -> None:
    spec = ModelSpec(ModelFamily.POLY_MLP, n_features=4, hidden=3)
    a, b = model_weights(build_model(spec, seed=7)), model_weights(build_model(spec, seed=7))
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_spec_round_trips_through_its_dict() -> None:
    spec = ModelSpec(ModelFamily.POLY_MLP, n_features=30, hidden=8, activation=(0.25, 0.5, 0.0))
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_weights_of_the_wrong_shape_are_refused() -> None:
    model = build_model(ModelSpec(ModelFamily.LOGISTIC, n_features=3))
    with pytest.raises(InputError):
        load_weights(
            model,
            {"linear.weight": np.zeros((1, 4), np.float32), "linear.bias": np.zeros(1, np.float32)},
        )
