"""DP-SGD for k classes and for the convolutional families: clipped exactly, GroupNorm only."""

from __future__ import annotations

import warnings
from typing import Any, cast

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from torch import nn

from veracity.client.training import PrivateTrainer, _PerSampleGradients, effective_clipping
from veracity.errors import ConfigError, InputError
from veracity.tasks.spec import ModelFamily, ModelSpec, predict_classes
from veracity.tasks.torch_models import build_model, model_weights

SPECS = {
    "logistic-3": ModelSpec(ModelFamily.LOGISTIC, 6, classes=3),
    "poly_mlp-4": ModelSpec(ModelFamily.POLY_MLP, 6, hidden=5, classes=4),
    "cnn1d-2": ModelSpec(ModelFamily.CNN1D, 2 * 12, input_shape=(2, 12), filters=(4, 4), kernel=3),
    "cnn1d-3": ModelSpec(
        ModelFamily.CNN1D, 2 * 12, input_shape=(2, 12), filters=(4, 8), kernel=3, classes=3
    ),
    "cnn2d-3": ModelSpec(
        ModelFamily.CNN2D, 64, input_shape=(1, 8, 8), filters=(4, 4), kernel=3, classes=3
    ),
    "cnn2d-square": ModelSpec(
        ModelFamily.CNN2D,
        64,
        input_shape=(1, 8, 8),
        filters=(2, 4),
        kernel=3,
        conv_activation="square",
    ),
    "cnn2d-scattering": ModelSpec(
        ModelFamily.CNN2D, 64, input_shape=(1, 8, 8), kernel=3, classes=3, stem="scattering"
    ),
}


def _flat(weights: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(weights[k], np.float64).ravel() for k in sorted(weights)])


def _data(spec: ModelSpec, rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, spec.classes, rows)
    x = rng.normal(size=(rows, spec.n_features)) + y[:, None]
    return (3.0 * x).astype(np.float32), y.astype(np.int64)


def _explicit_clipped_mean(
    spec: ModelSpec, start: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, norm: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-example gradients by plain autograd, one at a time, clipped as Opacus does."""
    model = build_model(spec)
    model.load_state_dict({k: torch.as_tensor(v) for k, v in start.items()})
    names = sorted(dict(model.named_parameters()))
    grads = []
    for row, label in zip(x, y, strict=True):
        logits = model(torch.as_tensor(row[None, :]))
        if spec.classes == 2:
            loss = nn.functional.binary_cross_entropy_with_logits(
                logits, torch.tensor([float(label)])
            )
        else:
            loss = nn.functional.cross_entropy(logits, torch.tensor([int(label)]))
        params = dict(model.named_parameters())
        one = torch.autograd.grad(loss, [params[n] for n in names])
        grads.append(np.concatenate([g.numpy().ravel() for g in one]))
    g = np.array(grads, dtype=np.float64)
    norms = np.linalg.norm(g, axis=1)
    return (g * np.minimum(1.0, norm / (norms + 1e-6))[:, None]).mean(0), norms


def _trainer(spec: ModelSpec, x: np.ndarray, y: np.ndarray, **terms: Any) -> PrivateTrainer:
    settings: dict[str, Any] = {
        "noise_multiplier": 0.0,
        "max_grad_norm": 0.3,
        "batch_size": len(y),
        "learning_rate": 1.0,
        "seed": 5,
    }
    settings.update(terms)
    return PrivateTrainer(spec, x, y, **settings)


@pytest.mark.training
@pytest.mark.parametrize("clipping", ["linear-ghost", "opacus-hooks"])
@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_update_is_the_mean_of_clipped_per_example_gradients(
    spec: ModelSpec, clipping: str
) -> None:
    start = model_weights(build_model(spec, seed=2))
    x, y = _data(spec, 16)
    trainer = _trainer(spec, x, y, clipping=clipping)
    assert trainer.sampling.sample_rate == 1.0
    moved = _flat(trainer.train_round(start, epochs=1).weights) - _flat(start)
    clipped_mean, norms = _explicit_clipped_mean(spec, start, x, y, 0.3)
    assert (norms > 0.3).sum() >= 4  # clipping is active
    np.testing.assert_allclose(moved, -clipped_mean, atol=5e-6)


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_convolutional_families_clip_with_opacus_hooks(spec: ModelSpec) -> None:
    expected = "opacus-hooks" if spec.family.convolutional else "linear-ghost"
    assert effective_clipping(spec, "linear-ghost") == expected
    assert effective_clipping(spec, "opacus-hooks") == "opacus-hooks"


@pytest.mark.training
def test_a_three_class_cnn_learns_under_dp() -> None:
    # Class c is a tone of c + 1 cycles per window on both channels, at a random phase.
    spec = SPECS["cnn1d-3"]
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    t = np.arange(12) / 12
    phase = rng.uniform(0, 2 * np.pi, size=(300, 2, 1))
    tones = np.sin(2 * np.pi * (y[:, None, None] + 1) * t + phase)
    x = (tones + 0.3 * rng.normal(size=tones.shape)).reshape(300, -1).astype(np.float32)
    trainer = _trainer(
        spec, x, y, noise_multiplier=0.8, max_grad_norm=1.0, batch_size=50, learning_rate=2.0
    )
    weights = spec.initial_weights(0)
    for _ in range(40):
        weights = trainer.train_round(weights, epochs=1).weights
    accuracy = float(np.mean(predict_classes(spec, weights, x) == y))
    assert accuracy > 0.8  # chance is 1/3


def test_labels_outside_the_models_classes_are_refused() -> None:
    spec = SPECS["logistic-3"]
    x, y = _data(spec, 10)
    y[3] = 3
    with pytest.raises(InputError, match=r"class indices 0\.\.2"):
        _trainer(spec, x, y)


def _per_sample_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[Any]:
    model.zero_grad(set_to_none=True)
    logits = model(x)
    if logits.dim() == 1:
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y.float())
    else:
        loss = nn.functional.cross_entropy(logits, y)
    torch.autograd.backward(loss)
    return [cast(Any, p).grad_sample.detach().clone() for p in model.parameters()]


@pytest.mark.training
@pytest.mark.parametrize("rows", [0, 1, 7])
@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_the_hooks_engine_gives_opacus_per_sample_gradients(spec: ModelSpec, rows: int) -> None:
    # The trainer's own hooks (Linear, Conv1d, Conv2d, GroupNorm) against Opacus's
    # GradSampleModule on the same weights and batch, empty batch included.
    start = {k: torch.as_tensor(v) for k, v in model_weights(build_model(spec, seed=3)).items()}
    x, y = _data(spec, 7, seed=1)
    xb, yb = torch.as_tensor(x[:rows]), torch.as_tensor(y[:rows])
    ours = build_model(spec)
    ours.load_state_dict(start)
    assert _PerSampleGradients.supports(ours)
    _PerSampleGradients(ours)
    reference = build_model(spec)
    reference.load_state_dict(start)
    opacus = GradSampleModule(reference)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook", category=UserWarning)
        expected = _per_sample_gradients(opacus, xb, yb)
    got = _per_sample_gradients(ours, xb, yb)
    assert all(g.shape[0] == rows for g in got)  # Opacus gives some layers one zero row
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g.sum(0), e.sum(0), rtol=1e-5, atol=1e-6)
        if rows:
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_the_convolutional_families_train_on_the_trainers_own_hooks() -> None:
    spec = SPECS["cnn2d-3"]
    x, y = _data(spec, 8)
    trainer = _trainer(spec, x, y, clipping="opacus-hooks")
    assert trainer._forward is trainer.model  # no Opacus GradSampleModule wrapper
    grouped = nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.Flatten(), nn.Linear(2, 1))
    assert not _PerSampleGradients.supports(grouped)  # Opacus's hooks take these
    assert not _PerSampleGradients.supports(nn.Sequential(nn.Embedding(3, 2)))


def test_a_layer_applied_twice_in_one_step_is_refused() -> None:
    layer = nn.Linear(2, 2)
    _PerSampleGradients(layer)
    out = layer(layer(torch.ones(3, 2)))
    with pytest.raises(ConfigError, match="each layer used once"):
        torch.autograd.backward(out.sum())
