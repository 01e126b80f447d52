"""The torch modules sites train, one per family of :mod:`veracity.tasks.spec`.

Their ``state_dict`` names and shapes are exactly :meth:`ModelSpec.weight_shapes`, so
weights move between torch (training) and NumPy (aggregation, the registry, encrypted
inference) by name. Only the site's training code and the benchmarks import this module.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from veracity.errors import InputError
from veracity.tasks.spec import MODULUS_FLOOR, ModelFamily, ModelSpec, scattering_bank
from veracity.tasks.weights import Weights

__all__ = [
    "QuadraticActivation",
    "LogisticRegression",
    "PolyMLP",
    "ConvNet",
    "ScatteringNet",
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


def _logits(out: torch.Tensor, outputs: int) -> torch.Tensor:
    """``(batch,)`` for one logit, ``(batch, classes)`` otherwise."""
    return out.squeeze(-1) if outputs == 1 else out


class LogisticRegression(nn.Module):
    """One linear layer to one logit (two classes) or one logit per class."""

    def __init__(self, n_features: int, outputs: int = 1) -> None:
        super().__init__()
        self.outputs = outputs
        self.linear = nn.Linear(n_features, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(batch,)`` or ``(batch, classes)``."""
        return _logits(self.linear(x), self.outputs)


class PolyMLP(nn.Module):
    """``Linear(n, h) -> quadratic -> Linear(h, 1)``."""

    def __init__(
        self,
        n_features: int,
        hidden: int,
        activation: tuple[float, float, float],
        outputs: int = 1,
    ) -> None:
        super().__init__()
        self.outputs = outputs
        self.fc1 = nn.Linear(n_features, hidden)
        self.act = QuadraticActivation(*activation)
        self.fc2 = nn.Linear(hidden, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(batch,)`` or ``(batch, classes)``."""
        return _logits(self.fc2(self.act(self.fc1(x))), self.outputs)


class _Square(nn.Module):
    """``z**2`` elementwise (the encrypted-inference variant's activation)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Square each element."""
        return z * z


class ConvNet(nn.Module):
    """``cnn1d`` or ``cnn2d`` of :mod:`veracity.tasks.spec` (GroupNorm, never BatchNorm).

    Takes flat rows of ``n_features`` values and reshapes them to the spec's input shape.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        two_d = spec.family is ModelFamily.CNN2D
        conv: type[nn.Conv1d] | type[nn.Conv2d] = nn.Conv2d if two_d else nn.Conv1d
        pool: type[nn.Module]
        if spec.normalised:
            pool = nn.MaxPool2d if two_d else nn.MaxPool1d
        else:
            pool = nn.AvgPool2d if two_d else nn.AvgPool1d
        padding = spec.kernel // 2
        self.input_shape = spec.input_shape
        self.two_d = two_d
        self.outputs = spec.outputs
        self.layers = len(spec.filters)
        inputs = spec.input_shape[0]
        # conv1, conv2, ... then norm1, norm2, ...: the names weight_shapes() gives, in the
        # order state_dict has always listed them.
        for index, maps in enumerate(spec.filters, start=1):
            self.add_module(f"conv{index}", conv(inputs, maps, spec.kernel, padding=padding))
            inputs = maps
        if spec.normalised:
            for index, maps in enumerate(spec.filters, start=1):
                self.add_module(f"norm{index}", nn.GroupNorm(math.gcd(maps, 4), maps))
        self.act: nn.Module = nn.ReLU() if spec.normalised else _Square()
        self.pool = pool(2)
        fc_in = inputs
        if two_d:
            _, height, width = spec.input_shape
            shrink = 2 ** len(spec.filters)
            fc_in = inputs * (height // shrink) * (width // shrink)
        self.fc = nn.Linear(fc_in, spec.outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(batch,)`` or ``(batch, classes)``."""
        h = x.reshape(x.shape[0], *self.input_shape)
        if not self.two_d:
            h = h - h.mean(dim=2, keepdim=True)  # each channel's offset (gravity) removed
        modules = dict(self.named_children())
        for index in range(1, self.layers + 1):
            h = modules[f"conv{index}"](h)
            if f"norm{index}" in modules:
                h = modules[f"norm{index}"](h)
            h = self.act(h)
            if index < self.layers:
                h = self.pool(h)
        flat = self.pool(h).flatten(1) if self.two_d else h.mean(dim=2)
        return _logits(self.fc(flat), self.outputs)


class ScatteringNet(nn.Module):
    """``cnn2d`` with the fixed scattering stem (:func:`veracity.tasks.spec.scattering_bank`).

    The filter bank is a non-persistent buffer: it is not a weight (``state_dict`` holds
    the GroupNorm's scale and shift and the linear head only), receives no gradient and is
    rebuilt from the spec.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        _, height, width = spec.input_shape
        bank = torch.tensor(scattering_bank(spec.kernel, spec.orientations), dtype=torch.float32)
        self.register_buffer("bank", bank.unsqueeze(1), persistent=False)
        self.input_shape = spec.input_shape
        self.padding = spec.kernel // 2
        self.filters = 1 + 2 * spec.orientations
        self.outputs = spec.outputs
        self.maps = spec.scattering_channels
        self.norm = nn.GroupNorm(1, self.maps)
        self.fc = nn.Linear(self.maps * (height // 2) * (width // 2), spec.outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(batch,)`` or ``(batch, classes)``."""
        channels, height, width = self.input_shape
        n = x.shape[0]
        images = x.reshape(n * channels, 1, height, width)
        out = nn.functional.conv2d(images, self.get_buffer("bank"), padding=self.padding)
        out = out.reshape(n, channels, self.filters, height, width)
        squared = out[:, :, 1::2] ** 2 + out[:, :, 2::2] ** 2
        modulus = torch.sqrt(torch.clamp(squared, min=MODULUS_FLOOR))
        maps = torch.cat([out[:, :, :1], modulus], dim=2).reshape(n, self.maps, height, width)
        features = self.norm(nn.functional.avg_pool2d(maps, 2))
        return _logits(self.fc(features.flatten(1)), self.outputs)


def build_model(spec: ModelSpec, *, seed: int | None = None) -> nn.Module:
    """A freshly initialised torch model for ``spec`` (deterministic when ``seed`` is set)."""
    generator_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        if spec.family is ModelFamily.LOGISTIC:
            return LogisticRegression(spec.n_features, spec.outputs)
        if spec.family is ModelFamily.POLY_MLP:
            return PolyMLP(spec.n_features, spec.hidden, spec.activation, spec.outputs)
        if spec.scattering:
            return ScatteringNet(spec)
        return ConvNet(spec)
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
