"""The torch modules sites train, one per family of :mod:`veracity.tasks.spec`.

Their ``state_dict`` names and shapes are exactly :meth:`ModelSpec.weight_shapes`, so
weights move between torch (training) and NumPy (aggregation, the registry, encrypted
inference) by name. Only the site's training code and the benchmarks import this module.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from veracity.errors import InputError
from veracity.tasks.spec import ModelFamily, ModelSpec
from veracity.tasks.weights import Weights

__all__ = [
    "QuadraticActivation",
    "LogisticRegression",
    "PolyMLP",
    "build_model",
    "model_weights",
    "load_weights",
]


class QuadraticActivation(nn.Module):
    """``a*z**2 + b*z + c`` with fixed coefficients (CKKS evaluates it exactly)."""

    def __init__(self, a: float, b: float, c: float) -> None:
        super().__init__()
        self.a, self.b, self.c = a, b, c

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Apply the polynomial elementwise."""
        return self.a * z * z + self.b * z + self.c


class LogisticRegression(nn.Module):
    """One linear layer to one logit."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(batch,)``."""
        out: torch.Tensor = self.linear(x).squeeze(-1)
        return out


class PolyMLP(nn.Module):
    """``Linear(n, h) -> quadratic -> Linear(h, 1)``."""

    def __init__(
        self, n_features: int, hidden: int, activation: tuple[float, float, float]
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_features, hidden)
        self.act = QuadraticActivation(*activation)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(batch,)``."""
        out: torch.Tensor = self.fc2(self.act(self.fc1(x))).squeeze(-1)
        return out


def build_model(spec: ModelSpec, *, seed: int | None = None) -> nn.Module:
    """A freshly initialised torch model for ``spec`` (deterministic when ``seed`` is set)."""
    generator_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        if spec.family is ModelFamily.LOGISTIC:
            return LogisticRegression(spec.n_features)
        return PolyMLP(spec.n_features, spec.hidden, spec.activation)
    finally:
        if seed is not None:
            torch.random.set_rng_state(generator_state)


def model_weights(model: nn.Module) -> dict[str, npt.NDArray[np.float32]]:
    """The model's parameters as float32 NumPy arrays, keyed like ``state_dict``."""
    return {
        name: tensor.detach().cpu().numpy().astype(np.float32, copy=True)
        for name, tensor in model.state_dict().items()
    }


def load_weights(model: nn.Module, weights: Weights) -> None:
    """Copy ``weights`` into ``model`` in place.

    Raises
    ------
    InputError
        If names or shapes do not match the model.
    """
    expected = model.state_dict()
    if set(expected) != set(weights):
        raise InputError(
            f"weights have tensors {sorted(weights)}, model expects {sorted(expected)}"
        )
    for name, target in expected.items():
        if tuple(target.shape) != tuple(np.asarray(weights[name]).shape):
            raise InputError(f"weights {name!r} have shape {np.asarray(weights[name]).shape}")
    model.load_state_dict({name: torch.as_tensor(np.asarray(weights[name])) for name in expected})
