from __future__ import annotations

import numpy as np
import pytest
import torch

from veracity.errors import InputError
from veracity.tasks.spec import ModelFamily, ModelSpec, predict_logits
from veracity.tasks.torch_models import build_model, load_weights, model_weights


@pytest.mark.parametrize("family", list(ModelFamily))
def test_numpy_logits_match_the_torch_model(family: ModelFamily) -> None:
    spec = ModelSpec(family, n_features=30)
    model = build_model(spec, seed=3)
    x = np.random.default_rng(1).normal(size=(50, 30)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = predict_logits(spec, model_weights(model), x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


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
