"""The model families Veracity trains and serves.

Both are chosen so that federated training (Opacus DP-SGD at every site) trains exactly
the architecture that encrypted inference (CKKS, column packing) evaluates:

``logistic``
    One linear layer, one logit: ``w . x + b``. Linear, so it needs no relinearisation or
    Galois keys under CKKS.
``poly_mlp``
    ``x -> Linear(n, h) -> a*z**2 + b*z + c -> Linear(h, 1)``: a polynomial activation of
    degree 2, so the encrypted circuit has multiplicative depth 2 plus rescales and needs
    only relinearisation keys. The default coefficients ``a=1/8, b=1/2, c=0`` are the
    second-order Taylor expansion of softplus (its constant ``ln 2`` is absorbed by the
    output bias).

Inputs are standardised with the study's published scaling (``(x - mean) / std``) before
the model, on the data holder's side, and a model emits one logit for the positive class.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from veracity.errors import InputError
from veracity.tasks.weights import Weights

__all__ = [
    "ModelFamily",
    "ModelSpec",
    "QuadraticActivation",
    "LogisticRegression",
    "PolyMLP",
    "build_model",
    "model_weights",
    "load_weights",
    "predict_logits",
]


class ModelFamily(enum.StrEnum):
    """The architectures training and encrypted inference agree on."""

    LOGISTIC = "logistic"
    POLY_MLP = "poly_mlp"


@dataclass(frozen=True)
class ModelSpec:
    """An architecture: family, input width, and for ``poly_mlp`` its hidden layer."""

    family: ModelFamily
    n_features: int
    hidden: int = 16
    activation: tuple[float, float, float] = field(default=(0.125, 0.5, 0.0))

    def __post_init__(self) -> None:
        if self.n_features < 1:
            raise InputError("a model needs at least one feature")
        if self.family is ModelFamily.POLY_MLP and self.hidden < 1:
            raise InputError("poly_mlp needs a hidden layer of at least one unit")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (what the ledger and model cards record)."""
        described: dict[str, Any] = {"family": self.family.value, "n_features": self.n_features}
        if self.family is ModelFamily.POLY_MLP:
            described["hidden"] = self.hidden
            described["activation"] = list(self.activation)
        return described

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Parse :meth:`to_dict` output.

        Raises
        ------
        InputError
            If the family is unknown or a field is missing or of the wrong type.
        """
        try:
            family = ModelFamily(data["family"])
            n_features = int(data["n_features"])
            if family is ModelFamily.POLY_MLP:
                a, b, c = (float(v) for v in data.get("activation", (0.125, 0.5, 0.0)))
                return cls(family, n_features, int(data.get("hidden", 16)), (a, b, c))
            return cls(family, n_features)
        except (KeyError, ValueError, TypeError) as err:
            raise InputError(f"invalid model spec: {err}") from err


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


def predict_logits(
    spec: ModelSpec, weights: Weights, features: npt.NDArray[np.floating]
) -> npt.NDArray[np.float64]:
    """Plaintext logits for standardised ``features`` (shape ``(patients, n_features)``).

    Raises
    ------
    InputError
        If the feature width or the weights do not match ``spec``.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != spec.n_features:
        raise InputError(f"expected features of shape (n, {spec.n_features}), got {x.shape}")
    w = {name: np.asarray(value, dtype=np.float64) for name, value in weights.items()}
    try:
        if spec.family is ModelFamily.LOGISTIC:
            logits = x @ w["linear.weight"][0] + w["linear.bias"][0]
        else:
            a, b, c = spec.activation
            z = x @ w["fc1.weight"].T + w["fc1.bias"]
            hidden = a * z * z + b * z + c
            logits = hidden @ w["fc2.weight"][0] + w["fc2.bias"][0]
    except KeyError as err:
        raise InputError(f"weights lack tensor {err}") from err
    return np.asarray(logits, dtype=np.float64)
