"""DP-SGD really clips, really noises, samples Poisson batches, and both clipping engines agree."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn

from veracity.client.budget import Segment
from veracity.client.training import (
    NOISE_GENERATOR,
    NOISE_GENERATOR_SEEDED,
    PrivateTrainer,
    _LinearGhostClipping,
    configure_threads,
    standardise,
)
from veracity.errors import ConfigError, InputError
from veracity.tasks.spec import ModelFamily, ModelSpec
from veracity.tasks.torch_models import build_model, model_weights

ENGINES = ["linear-ghost", "opacus-hooks"]
FAMILIES = [ModelFamily.LOGISTIC, ModelFamily.POLY_MLP]


def _spec(family: ModelFamily, width: int, hidden: int = 8) -> ModelSpec:
    return ModelSpec(family, width, hidden=hidden)


def _flat(weights: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate(
        [np.asarray(weights[name], np.float64).ravel() for name in sorted(weights)]
    )


def _data(
    rows: int, width: int, seed: int = 0, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(rows, width)) * scale).astype(np.float32)
    y = (x[:, 0] + 0.3 * rng.normal(size=rows) > 0).astype(np.int64)
    return x, y


def _trainer(spec: ModelSpec, x: np.ndarray, y: np.ndarray, **terms: Any) -> PrivateTrainer:
    settings: dict[str, Any] = {
        "noise_multiplier": 0.0,
        "max_grad_norm": 1.0,
        "batch_size": len(y),
        "learning_rate": 1.0,
        "seed": 5,
    }
    settings.update(terms)
    return PrivateTrainer(spec, x, y, **settings)


@pytest.mark.training
@pytest.mark.parametrize("clipping", ENGINES)
@pytest.mark.parametrize("family", FAMILIES)
def test_one_example_moves_the_model_by_at_most_the_clipping_norm(
    family: ModelFamily, clipping: str
) -> None:
    spec = _spec(family, 6)
    start = model_weights(build_model(spec, seed=1))
    norm = 2.0  # above any gradient of the bias alone (at most 1)
    for scale, clipped in ((100.0, True), (0.001, False)):
        x, _ = _data(1, 6, scale=scale)
        with torch.no_grad():
            logit = float(build_model(spec, seed=1)(torch.as_tensor(x))[0])
        y = np.array([int(logit < 0)], dtype=np.int64)  # the wrong label: a large gradient
        trainer = _trainer(spec, x, y, max_grad_norm=norm, clipping=clipping)
        assert trainer.sampling.sample_rate == 1.0  # one record, always in the batch
        moved = _flat(trainer.train_round(start, epochs=1).weights) - _flat(start)
        step = float(np.linalg.norm(moved))  # learning rate 1, expected batch 1
        assert step <= norm * (1 + 1e-5)
        if clipped:
            assert step == pytest.approx(norm, rel=1e-4)
        else:
            assert step < norm / 2


def _explicit_clipped_mean(
    spec: ModelSpec, start: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, norm: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-example gradients by plain autograd, one example at a time, clipped as Opacus does."""
    model = build_model(spec)
    model.load_state_dict({k: torch.as_tensor(v) for k, v in start.items()})
    names = sorted(dict(model.named_parameters()))
    per_example = []
    for row, label in zip(x, y, strict=True):
        logit = model(torch.as_tensor(row[None, :]))
        loss = nn.functional.binary_cross_entropy_with_logits(logit, torch.tensor([float(label)]))
        params = dict(model.named_parameters())
        one = torch.autograd.grad(loss, [params[n] for n in names])
        per_example.append(np.concatenate([g.numpy().ravel() for g in one]))
    grads = np.array(per_example, dtype=np.float64)
    norms = np.linalg.norm(grads, axis=1)
    factors = np.minimum(1.0, norm / (norms + 1e-6))
    return (grads * factors[:, None]).mean(0), grads.mean(0), norms


@pytest.mark.training
@pytest.mark.parametrize("clipping", ENGINES)
@pytest.mark.parametrize("family", FAMILIES)
def test_update_equals_the_mean_of_explicitly_clipped_per_example_gradients(
    family: ModelFamily, clipping: str
) -> None:
    spec = _spec(family, 6)
    start = model_weights(build_model(spec, seed=2))
    x, y = _data(20, 6, scale=3.0)
    norm = 0.3
    trainer = _trainer(spec, x, y, max_grad_norm=norm, clipping=clipping)
    moved = _flat(trainer.train_round(start, epochs=1).weights) - _flat(start)
    clipped_mean, raw_mean, norms = _explicit_clipped_mean(spec, start, x, y, norm)
    assert (norms > norm).sum() >= 5  # clipping is active for several examples
    np.testing.assert_allclose(moved, -clipped_mean, atol=2e-6)
    assert np.abs(moved + raw_mean).max() > 1e-2  # and it changed the update


@pytest.mark.training
@pytest.mark.parametrize("clipping", ENGINES)
def test_same_seed_with_and_without_noise_differs_by_gaussian_noise_of_the_right_scale(
    clipping: str,
) -> None:
    spec = _spec(ModelFamily.POLY_MLP, 30, hidden=64)  # 2049 parameters
    start = model_weights(build_model(spec, seed=3))
    x, y = _data(40, 30)
    sigma, norm, lr = 1.5, 1.0, 0.5
    quiet = _trainer(spec, x, y, noise_multiplier=0.0, learning_rate=lr, clipping=clipping)
    noisy = _trainer(spec, x, y, noise_multiplier=sigma, learning_rate=lr, clipping=clipping)
    twin = _trainer(spec, x, y, noise_multiplier=sigma, learning_rate=lr, clipping=clipping)
    other = _trainer(
        spec, x, y, noise_multiplier=sigma, learning_rate=lr, clipping=clipping, seed=6
    )
    base = _flat(quiet.train_round(start, epochs=1).weights)
    noised = _flat(noisy.train_round(start, epochs=1).weights)
    difference = noised - base
    expected_std = lr * sigma * norm / noisy.sampling.expected_batch_size
    assert difference.std() == pytest.approx(expected_std, rel=0.1)
    assert abs(difference.mean()) < 4 * expected_std / np.sqrt(difference.size)
    np.testing.assert_array_equal(_flat(twin.train_round(start, epochs=1).weights), noised)
    assert not np.array_equal(_flat(other.train_round(start, epochs=1).weights), noised)


@pytest.mark.training
@pytest.mark.parametrize("clipping", ENGINES)
def test_batches_are_poisson_sampled_and_empty_batches_still_count(clipping: str) -> None:
    spec = _spec(ModelFamily.LOGISTIC, 4)
    x, y = _data(60, 4)
    trainer = _trainer(spec, x, y, noise_multiplier=1.0, batch_size=1, clipping=clipping)
    assert isinstance(trainer.loader.batch_sampler, UniformWithReplacementSampler)
    assert trainer.sampling.sample_rate == 1 / 60
    sizes = [len(batch_y) for _, batch_y in trainer.loader]
    assert len(sizes) == 60
    assert 0 in sizes
    assert max(sizes) >= 2
    result = trainer.train_round(model_weights(build_model(spec)), epochs=2)
    assert result.steps == 120
    assert trainer.accountant_history() == (Segment(1.0, 1 / 60, 120),)


@pytest.mark.training
@pytest.mark.parametrize("family", FAMILIES)
def test_linear_ghost_and_opacus_hooks_give_the_same_training(family: ModelFamily) -> None:
    spec = _spec(family, 10)
    start = model_weights(build_model(spec, seed=4))
    x, y = _data(60, 10, scale=2.0)
    results = [
        _trainer(spec, x, y, batch_size=16, learning_rate=0.3, clipping=clipping).train_round(
            start, epochs=2
        )
        for clipping in ENGINES
    ]
    assert results[0].steps == results[1].steps == 8
    np.testing.assert_allclose(_flat(results[0].weights), _flat(results[1].weights), atol=1e-6)
    assert results[0].mean_loss == pytest.approx(results[1].mean_loss, rel=1e-6)


@pytest.mark.training
def test_accountant_starts_from_the_loaded_history_and_adds_the_round() -> None:
    spec = _spec(ModelFamily.LOGISTIC, 4)
    x, y = _data(60, 4)
    trainer = _trainer(spec, x, y, noise_multiplier=2.0, batch_size=20)
    earlier = (Segment(3.0, 0.5, 7), Segment(2.0, 1 / 3, 6))
    trainer.load_history(earlier)
    trainer.train_round(model_weights(build_model(spec)), epochs=1)
    assert trainer.accountant_history() == (Segment(3.0, 0.5, 7), Segment(2.0, 1 / 3, 9))
    assert trainer.planned_segment(2) == Segment(2.0, 1 / 3, 6)


@pytest.mark.parametrize("clipping", ENGINES)
def test_noise_and_samples_come_from_chacha20_never_from_torchs_generators(
    clipping: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torch.normal / torch.rand / torch.randn are torch's Mersenne Twister (Opacus's noise
    # and sampler used them): any call during training is a failure.
    def forbidden(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("training drew from torch's Mersenne Twister")

    spec = _spec(ModelFamily.LOGISTIC, 4)
    x, y = _data(40, 4)
    trainer = _trainer(
        spec, x, y, noise_multiplier=1.0, batch_size=10, seed=None, clipping=clipping
    )
    for name in ("normal", "rand", "randn", "randint", "bernoulli"):
        monkeypatch.setattr(torch, name, forbidden)
    result = trainer.train_round(model_weights(build_model(spec)), epochs=2)

    assert result.steps == 8
    assert trainer.noise_generator == NOISE_GENERATOR
    assert trainer.noise_generator.startswith("chacha20 (key from os.urandom)")
    assert trainer.secure_mode is True


def test_seeded_trainers_repeat_and_say_so() -> None:
    spec = _spec(ModelFamily.LOGISTIC, 4)
    x, y = _data(40, 4)
    initial = model_weights(build_model(spec, seed=0))
    runs = [
        _trainer(spec, x, y, noise_multiplier=1.0, batch_size=10, seed=seed).train_round(
            initial, epochs=1
        )
        for seed in (3, 3, 4)
    ]
    assert _flat(runs[0].weights).tolist() == _flat(runs[1].weights).tolist()
    assert _flat(runs[0].weights).tolist() != _flat(runs[2].weights).tolist()
    seeded = _trainer(spec, x, y, seed=3)
    assert seeded.noise_generator == NOISE_GENERATOR_SEEDED
    assert seeded.secure_mode is False


def test_a_seed_cannot_be_injected_in_secure_mode() -> None:
    x, y = _data(20, 4)
    with pytest.raises(ConfigError, match="seed"):
        _trainer(_spec(ModelFamily.LOGISTIC, 4), x, y, secure_mode=True, seed=1)


def test_linear_ghost_refuses_models_with_other_parameters() -> None:
    with pytest.raises(ConfigError, match="opacus-hooks"):
        _LinearGhostClipping(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)))


def test_non_finite_global_weights_are_refused() -> None:
    spec = _spec(ModelFamily.LOGISTIC, 4)
    x, y = _data(20, 4)
    weights = model_weights(build_model(spec))
    weights["linear.bias"][0] = np.inf
    with pytest.raises(InputError, match="non-finite"):
        _trainer(spec, x, y).train_round(weights, epochs=1)


def test_standardise_uses_the_public_scaling_and_checks_its_width() -> None:
    x = np.array([[1.0, 10.0], [3.0, 14.0]])
    np.testing.assert_allclose(standardise(x, ((2.0, 1.0), (12.0, 2.0))), [[-1, -1], [1, 1]])
    with pytest.raises(InputError, match="scaling"):
        standardise(x, ((0.0, 1.0),))


def test_thread_count_is_set_deliberately() -> None:
    before = torch.get_num_threads()
    try:
        configure_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError):
        configure_threads(0)
