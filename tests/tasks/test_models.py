from __future__ import annotations

import numpy as np
import pytest
import torch

from veracity.errors import InputError
from veracity.tasks.spec import (
    ModelFamily,
    ModelSpec,
    predict_logits,
    scattering_bank,
    scattering_features,
)
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
    "cnn2d-one-conv-square-digits": ModelSpec(
        ModelFamily.CNN2D,
        n_features=64,
        input_shape=(1, 8, 8),
        classes=10,
        filters=(4,),
        kernel=3,
        conv_activation="square",
    ),
    "cnn2d-one-conv-relu-odd": ModelSpec(
        ModelFamily.CNN2D, n_features=2 * 35, input_shape=(2, 5, 7), filters=(6,), kernel=3
    ),
    "cnn1d-one-conv": ModelSpec(
        ModelFamily.CNN1D, n_features=33, input_shape=(3, 11), classes=3, filters=(5,)
    ),
    "cnn2d-scattering-digits": ModelSpec(
        ModelFamily.CNN2D, n_features=64, input_shape=(1, 8, 8), classes=10, stem="scattering"
    ),
    "cnn2d-scattering-rgb-odd": ModelSpec(
        ModelFamily.CNN2D,
        n_features=3 * 63,
        input_shape=(3, 9, 7),
        kernel=3,
        stem="scattering",
        orientations=4,
    ),
}


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_numpy_logits_match_the_torch_model(spec: ModelSpec) -> None:
    model = build_model(spec, seed=3)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, spec.n_features)).astype(np.float32)
    with torch.no_grad():  # GroupNorm's scale and shift away from their initial 1 and 0
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.as_tensor(rng.normal(size=parameter.shape)))
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
        expected = 1 if spec.scattering else len(spec.filters)
        assert sum(isinstance(m, torch.nn.GroupNorm) for m in modules) == expected


def test_one_convolution_networks_have_one_layer_and_a_dense_head() -> None:
    # Conv -> square -> average pool -> dense: a polynomial of degree 2 in the pixels.
    spec = SPECS["cnn2d-one-conv-square-digits"]
    assert spec.to_dict()["filters"] == [4]
    assert spec.weight_shapes() == {
        "conv1.weight": (4, 1, 3, 3),
        "conv1.bias": (4,),
        "fc.weight": (10, 4 * 4 * 4),
        "fc.bias": (10,),
    }
    convolutions = [m for m in build_model(spec).modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convolutions) == 1
    assert SPECS["cnn1d-one-conv"].weight_shapes()["fc.weight"] == (3, 5)


def test_two_convolution_models_list_their_tensors_in_the_same_order() -> None:
    # The order state_dict gives (and every hash over it) is what it was.
    model = build_model(SPECS["cnn2d-10-classes"])
    assert list(model.state_dict()) == [
        "conv1.weight",
        "conv1.bias",
        "conv2.weight",
        "conv2.bias",
        "norm1.weight",
        "norm1.bias",
        "norm2.weight",
        "norm2.bias",
        "fc.weight",
        "fc.bias",
    ]


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
        ({"family": "cnn2d", "input_shape": [1, 8, 8], "stem": "gabor"}, "'scattering'"),
        ({"family": "cnn1d", "input_shape": [3, 10], "stem": "scattering"}, "only cnn2d"),
        (
            {"family": "cnn2d", "input_shape": [1, 8, 8], "stem": "scattering", "filters": [4, 4]},
            "filters belong to the learned stem",
        ),
        (
            {"family": "cnn2d", "input_shape": [1, 8, 8], "stem": "scattering", "activation": "x"},
            "activation belong to the learned stem",
        ),
        (
            {"family": "cnn2d", "input_shape": [1, 8, 8], "stem": "scattering", "orientations": 0},
            "1 to 32",
        ),
        ({"family": "cnn2d", "input_shape": [1, 1, 8], "stem": "scattering"}, "too small"),
        ({"family": "cnn2d", "input_shape": [1, 8, 8], "filters": [2, 4, 8]}, "one or two"),
        ({"family": "cnn2d", "input_shape": [1, 8, 8], "filters": []}, "one or two"),
        ({"family": "cnn2d", "input_shape": [1, 3, 8], "filters": [4, 8]}, "pool twice"),
        ({"family": "cnn2d", "input_shape": [1, 1, 8], "filters": [4]}, "pool once"),
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


def test_learned_cnn2d_describes_itself_as_before() -> None:
    # Studies of the learned stem keep their hashes: no "stem" key in their descriptions.
    described = SPECS["cnn2d-10-classes"].to_dict()
    assert "stem" not in described
    assert "orientations" not in described
    assert described["filters"] == [8, 16]


def test_a_square_scattering_stem_is_refused() -> None:
    with pytest.raises(InputError, match="modulus"):
        ModelSpec(
            ModelFamily.CNN2D,
            n_features=64,
            input_shape=(1, 8, 8),
            stem="scattering",
            conv_activation="square",
        )


def test_the_scattering_filters_are_a_low_pass_and_zero_mean_unit_wavelets() -> None:
    bank = scattering_bank(5, 8)
    assert bank.shape == (17, 5, 5)
    assert bank[0].sum() == pytest.approx(1.0)
    assert np.all(bank[0] > 0)
    wavelets = bank[1::2] + 1j * bank[2::2]
    np.testing.assert_allclose(np.abs(wavelets.sum(axis=(1, 2))), 0.0, atol=1e-12)
    np.testing.assert_allclose((np.abs(wavelets) ** 2).sum(axis=(1, 2)), 1.0)


@pytest.mark.parametrize(("stripes", "orientation"), [("vertical", 0), ("horizontal", 4)])
def test_the_scattering_stem_answers_most_to_strokes_across_its_orientation(
    stripes: str, orientation: int
) -> None:
    # Stripes whose intensity changes along the columns (vertical strokes) excite the
    # wavelet of orientation 0 most; along the rows, the one at pi / 2 (index 4 of 8).
    spec = SPECS["cnn2d-scattering-digits"]
    wave = np.cos(3 * np.pi / 4 * np.arange(8))
    image = np.tile(wave, (8, 1)) if stripes == "vertical" else np.tile(wave[:, None], (1, 8))
    maps = scattering_features(spec, image.reshape(1, 64))[0]
    moduli = maps[1:, 1:3, 1:3].mean(axis=(1, 2))  # inner blocks: no zero padding
    assert int(np.argmax(moduli)) == orientation


def test_the_scattering_stem_is_fixed_and_only_the_head_trains() -> None:
    spec = SPECS["cnn2d-scattering-digits"]
    a, b = build_model(spec, seed=1), build_model(spec, seed=2)
    trained = ["norm.weight", "norm.bias", "fc.weight", "fc.bias"]
    assert list(a.state_dict()) == trained == list(spec.weight_shapes())
    assert [name for name, _ in a.named_parameters()] == trained
    bank = torch.as_tensor(scattering_bank(spec.kernel, spec.orientations), dtype=torch.float32)
    for model in (a, b):
        torch.testing.assert_close(model.get_buffer("bank")[:, 0], bank)
    x = torch.as_tensor(np.random.default_rng(0).normal(size=(4, 64)), dtype=torch.float32)
    torch.autograd.backward(torch.nn.functional.cross_entropy(a(x), torch.tensor([0, 1, 2, 3])))
    torch.testing.assert_close(a.get_buffer("bank")[:, 0], bank)


def test_the_scattering_stem_has_finite_input_gradients_where_wavelets_are_silent() -> None:
    # A blank image (the centre of the scaling, integrated gradients' baseline) gives every
    # wavelet a zero response; the square root's derivative there must not become NaN.
    model = build_model(SPECS["cnn2d-scattering-digits"], seed=0)
    x = torch.zeros(2, 64, requires_grad=True)
    torch.autograd.backward(model(x)[:, 3].sum())
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
