"""The model families Veracity trains and serves, described without any framework.

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

This module is pure NumPy: the coordinator, the ledger and the admin API describe, check,
initialise and evaluate models without importing torch. The torch modules that sites train
are in :mod:`veracity.tasks.torch_models`, with the same tensor names and shapes
(:meth:`ModelSpec.weight_shapes`).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from veracity.errors import InputError
from veracity.tasks.weights import Weights

__all__ = ["ModelFamily", "ModelSpec", "check_weights", "predict_logits"]


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

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's name and shape, as the torch module's ``state_dict`` has them."""
        if self.family is ModelFamily.LOGISTIC:
            return {"linear.weight": (1, self.n_features), "linear.bias": (1,)}
        return {
            "fc1.weight": (self.hidden, self.n_features),
            "fc1.bias": (self.hidden,),
            "fc2.weight": (1, self.hidden),
            "fc2.bias": (1,),
        }

    def initial_weights(self, seed: int) -> dict[str, npt.NDArray[np.float32]]:
        """Deterministic initial weights for ``seed`` (a study's public ``model_seed``).

        Each layer's weight and bias are drawn uniformly from ``[-1/sqrt(fan_in),
        1/sqrt(fan_in)]``, the bounds of torch's default ``nn.Linear`` initialisation, from
        NumPy's PCG64 seeded with ``seed``: the same seed gives the same model on any
        machine, with or without torch.
        """
        generator = np.random.Generator(np.random.PCG64(seed))
        weights: dict[str, npt.NDArray[np.float32]] = {}
        for name, shape in self.weight_shapes().items():
            layer = name.rsplit(".", 1)[0]
            fan_in = self.weight_shapes()[f"{layer}.weight"][1]
            bound = 1.0 / math.sqrt(fan_in)
            weights[name] = generator.uniform(-bound, bound, size=shape).astype(np.float32)
        return weights


def check_weights(spec: ModelSpec, weights: Weights, *, what: str = "weights") -> None:
    """Check that ``weights`` hold exactly ``spec``'s tensors, floating point and finite.

    Raises
    ------
    InputError
        Naming the first tensor that is missing, extra, of another shape or dtype, or
        holds a non-finite value.
    """
    expected = spec.weight_shapes()
    given: object = weights
    if not hasattr(given, "keys") or set(weights) != set(expected):
        names = sorted(weights) if hasattr(given, "keys") else []
        raise InputError(f"{what} have tensors {names}, the model has {sorted(expected)}")
    for name, shape in expected.items():
        array = np.asarray(weights[name])
        if not np.issubdtype(array.dtype, np.floating):
            raise InputError(f"{what} {name!r} are {array.dtype}, not floating point")
        if array.shape != shape:
            raise InputError(f"{what} {name!r} have shape {array.shape}, expected {shape}")
        if not np.all(np.isfinite(array)):
            raise InputError(f"{what} {name!r} hold non-finite values")


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
