"""The model families Veracity trains and serves, described without any framework.

Every family is trained by Opacus DP-SGD at the sites; the first two are also what encrypted
inference (CKKS, column packing) evaluates:

``logistic``
    One linear layer: ``W x + b``. Linear, so it needs no relinearisation or Galois keys
    under CKKS.
``poly_mlp``
    ``x -> Linear(n, h) -> a*z**2 + b*z + c -> Linear(h, outputs)``: a polynomial activation
    of degree 2, so the encrypted circuit has multiplicative depth 2 plus rescales and needs
    only relinearisation keys. The default coefficients ``a=1/8, b=1/2, c=0`` are the
    second-order Taylor expansion of softplus (its constant ``ln 2`` is absorbed by the
    output bias).
``cnn1d``
    For signal windows of shape ``(channels, steps)``: each channel's mean over the window
    is removed first (the gravity an accelerometer sees through its orientation, which
    differs per patient and says nothing about movement), then ``Conv1d(k) -> GroupNorm ->
    ReLU -> MaxPool(2) -> Conv1d(k) -> GroupNorm -> ReLU -> mean over time -> Linear``.
    Temporal convolutions learn band-pass filters (a freeze of gait shows as power at
    3-8 Hz), and the mean over time makes the features shift-invariant.
``cnn2d``
    For images of shape ``(channels, height, width)``: ``Conv2d(k) -> GroupNorm -> ReLU ->
    MaxPool(2) -> Conv2d(k) -> GroupNorm -> ReLU -> MaxPool(2) -> flatten -> Linear``. With
    ``activation: "square"`` it is the variant meant for encrypted inference: ``z**2``
    instead of ReLU, average instead of max pooling, and no GroupNorm (its division by a
    standard deviation is not a polynomial), so the whole network is a polynomial of
    degree 4 in the pixels.

    ``filters`` lists one feature-map count per convolutional layer: two (the default) or
    one. With one, ``cnn2d`` is ``Conv2d(k) -> activation -> pool(2) -> flatten -> Linear``
    (a convolution, a square activation and a dense layer in the ``square`` variant: a
    polynomial of degree 2, the network issue "Encrypted inference" measures on the 8x8
    digits) and ``cnn1d`` is ``Conv1d(k) -> activation -> mean over time -> Linear``.

    With ``stem: "scattering"`` the first layers are fixed, not learned: each input channel
    is convolved with a data-independent filter bank (a Gaussian low-pass and ``L``
    complex Morlet wavelets at orientations ``pi * l / L``, :func:`scattering_bank`), the
    wavelet responses are replaced by their modulus, everything is averaged over 2x2 blocks
    and normalised per image (GroupNorm with one group, a learned scale and shift per map),
    and one ``Linear`` layer reads the result: a one-scale scattering transform with a linear head.
    Under DP-SGD only the head is trained, on features that already separate strokes by
    orientation, so the noise spreads over fewer, more useful parameters (Tramer & Boneh,
    "Differentially private learning needs better features (or much more data)", ICLR
    2021). The modulus is not a polynomial: encrypted inference serves the ``square``
    variant of the learned stem only.

Normalisation is always GroupNorm, never BatchNorm: BatchNorm mixes the samples of a batch,
so per-sample gradients (and DP-SGD's per-sample clipping) would not exist.

A model with ``classes == 2`` emits one logit for the positive class (probability
``sigmoid(logit)``); with ``k > 2`` classes it emits ``k`` logits (probabilities
``softmax``), trained with cross-entropy.

Table inputs are standardised with the study's published scaling (``(x - mean) / std``)
before the model, on the data holder's side; signals and images are scaled per channel.
Inputs always travel as flat rows of ``n_features`` values (a window or an image in C order);
the convolutional families reshape them to :attr:`ModelSpec.input_shape`.

This module is pure NumPy: the coordinator, the ledger and the admin API describe, check,
initialise and evaluate models without importing torch. The torch modules that sites train
are in :mod:`veracity.tasks.torch_models`, with the same tensor names and shapes
(:meth:`ModelSpec.weight_shapes`), and the tests check that both compute the same logits.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from veracity.errors import InputError
from veracity.tasks.weights import Weights

__all__ = [
    "ConvActivation",
    "ConvStem",
    "MODULUS_FLOOR",
    "ModelFamily",
    "ModelSpec",
    "check_weights",
    "predict_logits",
    "predict_probabilities",
    "predict_classes",
    "scattering_bank",
    "scattering_features",
]

#: The nonlinearity of a convolutional family.
ConvActivation = Literal["relu", "square"]
#: How a ``cnn2d`` model's first layers come about: trained, or a fixed scattering stem.
ConvStem = Literal["learned", "scattering"]

_MAX_CLASSES = 1000
_GROUPNORM_EPS = 1e-5
#: The squared modulus is floored here before its square root, so the modulus has a finite
#: gradient (zero) where a wavelet's response vanishes (integrated gradients reach it).
MODULUS_FLOOR = 1e-12


class ModelFamily(enum.StrEnum):
    """The architectures the sites train (and, for the first two, encrypted inference serves)."""

    LOGISTIC = "logistic"
    POLY_MLP = "poly_mlp"
    CNN1D = "cnn1d"
    CNN2D = "cnn2d"

    @property
    def convolutional(self) -> bool:
        """Whether the family takes windows or images rather than table rows."""
        return self in (ModelFamily.CNN1D, ModelFamily.CNN2D)


def _groups(channels: int) -> int:
    """GroupNorm's number of groups for ``channels`` feature maps (at most 4)."""
    return math.gcd(channels, 4)


@dataclass(frozen=True)
class ModelSpec:
    """An architecture: family, input width, classes, and the family's own terms.

    ``n_features`` is the width of one flat input row; for the convolutional families it is
    the product of ``input_shape`` (``(channels, steps)`` or ``(channels, height, width)``).
    ``hidden`` and ``activation`` are ``poly_mlp``'s; ``filters``, ``kernel`` and
    ``conv_activation`` are the convolutional families'. ``stem`` and ``orientations`` are
    ``cnn2d``'s: with the ``scattering`` stem, ``kernel`` is the size of the fixed filters,
    ``orientations`` their number of wavelet orientations, and ``filters`` and
    ``conv_activation`` do not apply.
    """

    family: ModelFamily
    n_features: int
    hidden: int = 16
    activation: tuple[float, float, float] = field(default=(0.125, 0.5, 0.0))
    classes: int = 2
    input_shape: tuple[int, ...] = ()
    filters: tuple[int, ...] = (8, 16)
    kernel: int = 5
    conv_activation: ConvActivation = "relu"
    stem: ConvStem = "learned"
    orientations: int = 8

    def __post_init__(self) -> None:
        if self.n_features < 1:
            raise InputError("a model needs at least one feature")
        if not 2 <= self.classes <= _MAX_CLASSES:
            raise InputError(f"a model has 2 to {_MAX_CLASSES} classes, not {self.classes}")
        if self.family is ModelFamily.POLY_MLP and self.hidden < 1:
            raise InputError("poly_mlp needs a hidden layer of at least one unit")
        if self.stem != "learned" and self.family is not ModelFamily.CNN2D:
            raise InputError("only cnn2d models have a scattering stem")
        if not self.family.convolutional:
            if self.input_shape:
                raise InputError(f"{self.family.value} takes table rows, not an input_shape")
            return
        rank = 2 if self.family is ModelFamily.CNN1D else 3
        if len(self.input_shape) != rank or any(d < 1 for d in self.input_shape):
            what = "(channels, steps)" if rank == 2 else "(channels, height, width)"
            raise InputError(f"{self.family.value} needs an input_shape {what}")
        if math.prod(self.input_shape) != self.n_features:
            raise InputError(
                f"input_shape {list(self.input_shape)} holds {math.prod(self.input_shape)} "
                f"values, not n_features {self.n_features}"
            )
        if len(self.filters) not in (1, 2) or any(f < 1 or f > 1024 for f in self.filters):
            raise InputError("filters must be one or two feature-map counts between 1 and 1024")
        if self.kernel < 1 or self.kernel % 2 == 0 or self.kernel > 63:
            raise InputError("kernel must be an odd size between 1 and 63")
        if self.conv_activation not in ("relu", "square"):
            raise InputError("activation of a convolutional model is 'relu' or 'square'")
        if self.stem not in ("learned", "scattering"):
            raise InputError("the stem of a cnn2d model is 'learned' or 'scattering'")
        spatial = self.input_shape[1:]
        if self.stem == "scattering":
            if self.conv_activation != "relu":
                raise InputError(
                    "a scattering stem takes the modulus, not a square activation (encrypted "
                    "inference serves the learned square variant)"
                )
            if not 1 <= self.orientations <= 32:
                raise InputError("a scattering stem has 1 to 32 orientations")
            if any(d < 2 for d in spatial):
                raise InputError(f"input_shape {list(self.input_shape)} is too small to pool")
            return
        pooled = 2 ** len(self.filters) if self.family is ModelFamily.CNN2D else 2
        if any(d < pooled for d in spatial):
            times = "once" if pooled == 2 else "twice"
            raise InputError(f"input_shape {list(self.input_shape)} is too small to pool {times}")

    @property
    def outputs(self) -> int:
        """Logits per input: 1 for two classes, else one per class."""
        return 1 if self.classes == 2 else self.classes

    @property
    def normalised(self) -> bool:
        """Whether the convolutional layers are followed by GroupNorm (not the square variant)."""
        return self.family.convolutional and self.conv_activation == "relu"

    @property
    def scattering(self) -> bool:
        """Whether this is a ``cnn2d`` with the fixed scattering stem."""
        return self.stem == "scattering"

    @property
    def scattering_channels(self) -> int:
        """Feature maps of the scattering stem: per input channel a low-pass and the moduli."""
        return self.input_shape[0] * (1 + self.orientations)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (what the ledger and model cards record).

        Two-class models leave ``classes`` out, so their descriptions (and the hashes of
        studies that contain them) are what they were before classes existed.
        """
        described: dict[str, Any] = {"family": self.family.value, "n_features": self.n_features}
        if self.family is ModelFamily.POLY_MLP:
            described["hidden"] = self.hidden
            described["activation"] = list(self.activation)
        if self.scattering:
            described["input_shape"] = list(self.input_shape)
            described["stem"] = self.stem
            described["orientations"] = self.orientations
            described["kernel"] = self.kernel
        elif self.family.convolutional:
            described["input_shape"] = list(self.input_shape)
            described["filters"] = list(self.filters)
            described["kernel"] = self.kernel
            described["activation"] = self.conv_activation
        if self.classes != 2:
            described["classes"] = self.classes
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
            classes = int(data.get("classes", 2))
            if family.convolutional and data.get("stem", "learned") != "learned":
                stem = str(data["stem"])
                if stem != "scattering":
                    raise InputError("the stem of a cnn2d model is 'learned' or 'scattering'")
                extra = sorted({"filters", "activation"} & set(data))
                if extra:
                    raise InputError(
                        f"a scattering stem is fixed: {' and '.join(extra)} belong to the "
                        "learned stem only"
                    )
                shape = tuple(int(d) for d in data["input_shape"])
                return cls(
                    family,
                    int(data.get("n_features", math.prod(shape))),
                    classes=classes,
                    input_shape=shape,
                    kernel=int(data.get("kernel", 5)),
                    stem="scattering",
                    orientations=int(data.get("orientations", 8)),
                )
            if family.convolutional:
                shape = tuple(int(d) for d in data["input_shape"])
                filters = tuple(int(f) for f in data.get("filters", (8, 16)))
                activation = str(data.get("activation", "relu"))
                if activation not in ("relu", "square"):
                    raise InputError("activation of a convolutional model is 'relu' or 'square'")
                conv: ConvActivation = "relu" if activation == "relu" else "square"
                return cls(
                    family,
                    int(data.get("n_features", math.prod(shape))),
                    classes=classes,
                    input_shape=shape,
                    filters=filters,
                    kernel=int(data.get("kernel", 5)),
                    conv_activation=conv,
                )
            n_features = int(data["n_features"])
            if family is ModelFamily.POLY_MLP:
                a, b, c = (float(v) for v in data.get("activation", (0.125, 0.5, 0.0)))
                return cls(family, n_features, int(data.get("hidden", 16)), (a, b, c), classes)
            return cls(family, n_features, classes=classes)
        except (KeyError, ValueError, TypeError) as err:
            raise InputError(f"invalid model spec: {err}") from err

    def _conv_shapes(self) -> dict[str, tuple[int, ...]]:
        if self.scattering:
            _, height, width = self.input_shape
            fc_in = self.scattering_channels * (height // 2) * (width // 2)
            return {
                "norm.weight": (self.scattering_channels,),
                "norm.bias": (self.scattering_channels,),
                "fc.weight": (self.outputs, fc_in),
                "fc.bias": (self.outputs,),
            }
        window = (self.kernel,) * (len(self.input_shape) - 1)
        shapes: dict[str, tuple[int, ...]] = {}
        inputs = self.input_shape[0]
        for index, maps in enumerate(self.filters, start=1):
            shapes |= {f"conv{index}.weight": (maps, inputs, *window), f"conv{index}.bias": (maps,)}
            if self.normalised:
                shapes |= {f"norm{index}.weight": (maps,), f"norm{index}.bias": (maps,)}
            inputs = maps
        fc_in = inputs
        if self.family is ModelFamily.CNN2D:
            _, height, width = self.input_shape
            shrink = 2 ** len(self.filters)
            fc_in = inputs * (height // shrink) * (width // shrink)
        shapes |= {"fc.weight": (self.outputs, fc_in), "fc.bias": (self.outputs,)}
        return shapes

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's name and shape, as the torch module's ``state_dict`` has them."""
        if self.family is ModelFamily.LOGISTIC:
            return {
                "linear.weight": (self.outputs, self.n_features),
                "linear.bias": (self.outputs,),
            }
        if self.family is ModelFamily.POLY_MLP:
            return {
                "fc1.weight": (self.hidden, self.n_features),
                "fc1.bias": (self.hidden,),
                "fc2.weight": (self.outputs, self.hidden),
                "fc2.bias": (self.outputs,),
            }
        return self._conv_shapes()

    def initial_weights(self, seed: int) -> dict[str, npt.NDArray[np.float32]]:
        """Deterministic initial weights for ``seed`` (a study's public ``model_seed``).

        Each linear or convolutional layer's weight and bias are drawn uniformly from
        ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]`` (``fan_in`` the inputs of one output unit:
        features, or channels times kernel size), the bounds of torch's default
        initialisation, from NumPy's PCG64 seeded with ``seed``: the same seed gives the same
        model on any machine, with or without torch. GroupNorm starts as torch's does, scale
        1 and shift 0.
        """
        generator = np.random.Generator(np.random.PCG64(seed))
        shapes = self.weight_shapes()
        weights: dict[str, npt.NDArray[np.float32]] = {}
        for name, shape in shapes.items():
            layer, kind = name.rsplit(".", 1)
            if layer.startswith("norm"):
                fill = 1.0 if kind == "weight" else 0.0
                weights[name] = np.full(shape, fill, dtype=np.float32)
                continue
            fan_in = math.prod(shapes[f"{layer}.weight"][1:])
            bound = 1.0 / math.sqrt(fan_in)
            weights[name] = generator.uniform(-bound, bound, size=shape).astype(np.float32)
        return weights


def scattering_bank(kernel: int, orientations: int) -> npt.NDArray[np.float64]:
    """The fixed filters of the scattering stem, shape ``(1 + 2 * orientations, k, k)``.

    Filter 0 is a Gaussian low-pass (width ``sigma = 0.8`` pixels, summing to 1); then, for
    each orientation ``theta_l = pi * l / orientations``, the real and imaginary parts of a
    Morlet wavelet ``exp(-|u|^2 / (2 sigma^2)) * (exp(i xi <u, e_l>) - beta)`` with
    ``xi = 3 pi / 4`` (the finest scale of Mallat's scattering transform, as kymatio sets
    it), ``beta`` chosen so that the wavelet sums to zero, and unit L2 norm. It depends on
    the two integers alone, never on data, so it costs no privacy.
    """
    sigma, xi = 0.8, 3.0 * math.pi / 4.0
    radius = kernel // 2
    rows, cols = np.mgrid[-radius : radius + 1, -radius : radius + 1].astype(np.float64)
    envelope = np.exp(-(rows * rows + cols * cols) / (2.0 * sigma * sigma))
    bank = [envelope / envelope.sum()]
    for index in range(orientations):
        theta = math.pi * index / orientations
        wave = np.exp(1j * xi * (cols * math.cos(theta) + rows * math.sin(theta)))
        beta = (envelope * wave).sum() / envelope.sum()
        morlet = envelope * (wave - beta)
        morlet /= np.sqrt((np.abs(morlet) ** 2).sum())
        bank += [morlet.real, morlet.imag]
    return np.stack(bank)


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


# ---------------------------------------------------------------- NumPy forward passes


def _conv(
    x: npt.NDArray[np.float64], w: npt.NDArray[np.float64], b: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """'Same' convolution (odd kernel, zero padding, stride 1) as torch's ``ConvNd``."""
    spatial = x.ndim - 2
    pad = w.shape[-1] // 2
    padded = np.pad(x, [(0, 0), (0, 0)] + [(pad, pad)] * spatial)
    windows = sliding_window_view(padded, w.shape[2:], axis=tuple(range(2, 2 + spatial)))
    if spatial == 1:
        out = np.einsum("nctk,fck->nft", windows, w, optimize=True)
        return np.asarray(out + b[None, :, None], dtype=np.float64)
    out = np.einsum("nchwij,fcij->nfhw", windows, w, optimize=True)
    return np.asarray(out + b[None, :, None, None], dtype=np.float64)


def _group_norm(
    x: npt.NDArray[np.float64], scale: npt.NDArray[np.float64], shift: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    n, channels = x.shape[:2]
    grouped = x.reshape(n, _groups(channels), -1)
    mean = grouped.mean(axis=2, keepdims=True)
    var = grouped.var(axis=2, keepdims=True)
    normed = ((grouped - mean) / np.sqrt(var + _GROUPNORM_EPS)).reshape(x.shape)
    affine = (channels,) + (1,) * (x.ndim - 2)
    return np.asarray(normed * scale.reshape(affine) + shift.reshape(affine), dtype=np.float64)


def _pool(x: npt.NDArray[np.float64], *, average: bool) -> npt.NDArray[np.float64]:
    """Pooling over 2 (or 2x2) with stride 2, dropping a trailing odd row, as torch does."""
    if x.ndim == 3:
        n, c, t = x.shape
        blocks = x[:, :, : t // 2 * 2].reshape(n, c, t // 2, 2)
        axes: tuple[int, ...] = (3,)
    else:
        n, c, h, w = x.shape
        blocks = x[:, :, : h // 2 * 2, : w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2)
        axes = (3, 5)
    pooled = blocks.mean(axis=axes) if average else blocks.max(axis=axes)
    return np.asarray(pooled, dtype=np.float64)


def scattering_features(spec: ModelSpec, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The scattering stem's fixed output for flat images ``x``, before its learned scale.

    Shape ``(n, channels * (1 + orientations), height // 2, width // 2)``: per input
    channel the low-pass and the modulus of each wavelet (its square floored at
    :data:`MODULUS_FLOOR`), 2x2 average pooled, each image's maps normalised together to
    mean 0 and variance 1 (GroupNorm with one group, before its per-map scale and shift).
    """
    channels, height, width = spec.input_shape
    n = x.shape[0]
    bank = scattering_bank(spec.kernel, spec.orientations)
    images = x.reshape(n * channels, 1, height, width)
    out = _conv(images, bank[:, None], np.zeros(len(bank))).reshape(
        n, channels, len(bank), height, width
    )
    modulus = np.sqrt(np.maximum(out[:, :, 1::2] ** 2 + out[:, :, 2::2] ** 2, MODULUS_FLOOR))
    maps = np.concatenate([out[:, :, :1], modulus], axis=2)
    pooled = _pool(maps.reshape(n, spec.scattering_channels, height, width), average=True)
    flat = pooled.reshape(n, -1)
    mean = flat.mean(axis=1, keepdims=True)
    var = flat.var(axis=1, keepdims=True)
    normed = (flat - mean) / np.sqrt(var + _GROUPNORM_EPS)
    return np.asarray(normed.reshape(pooled.shape), dtype=np.float64)


def _conv_logits(
    spec: ModelSpec, w: dict[str, npt.NDArray[np.float64]], x: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    if spec.scattering:
        maps = scattering_features(spec, x)
        maps = maps * w["norm.weight"][:, None, None] + w["norm.bias"][:, None, None]
        flat = maps.reshape(len(maps), -1)
        return np.asarray(flat @ w["fc.weight"].T + w["fc.bias"], dtype=np.float64)
    h = x.reshape(x.shape[0], *spec.input_shape)
    if spec.family is ModelFamily.CNN1D:
        h = h - h.mean(axis=2, keepdims=True)
    layers = len(spec.filters)
    for index in range(1, layers + 1):
        h = _conv(h, w[f"conv{index}.weight"], w[f"conv{index}.bias"])
        if spec.normalised:
            h = _group_norm(h, w[f"norm{index}.weight"], w[f"norm{index}.bias"])
            h = np.maximum(h, 0.0)
        else:
            h = h * h
        if index < layers or spec.family is ModelFamily.CNN2D:
            h = _pool(h, average=not spec.normalised)
    flat = h.mean(axis=2) if spec.family is ModelFamily.CNN1D else h.reshape(h.shape[0], -1)
    return np.asarray(flat @ w["fc.weight"].T + w["fc.bias"], dtype=np.float64)


def predict_logits(
    spec: ModelSpec, weights: Weights, features: npt.NDArray[np.floating]
) -> npt.NDArray[np.float64]:
    """Plaintext logits for standardised ``features`` (shape ``(n, n_features)``).

    Shape ``(n,)`` for a two-class model (the positive class's logit), ``(n, classes)``
    otherwise.

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
            logits = x @ w["linear.weight"].T + w["linear.bias"]
        elif spec.family is ModelFamily.POLY_MLP:
            a, b, c = spec.activation
            z = x @ w["fc1.weight"].T + w["fc1.bias"]
            hidden = a * z * z + b * z + c
            logits = hidden @ w["fc2.weight"].T + w["fc2.bias"]
        else:
            logits = _conv_logits(spec, w, x)
    except KeyError as err:
        raise InputError(f"weights lack tensor {err}") from err
    if spec.outputs == 1:
        logits = logits[:, 0]
    return np.asarray(logits, dtype=np.float64)


def predict_probabilities(
    spec: ModelSpec, weights: Weights, features: npt.NDArray[np.floating]
) -> npt.NDArray[np.float64]:
    """Class probabilities, shape ``(n, classes)`` (sigmoid for two classes, else softmax).

    Raises
    ------
    InputError
        As :func:`predict_logits`.
    """
    logits = predict_logits(spec, weights, features)
    if spec.outputs == 1:
        positive = 0.5 * (1.0 + np.tanh(0.5 * logits))  # sigmoid without overflow
        return np.column_stack([1.0 - positive, positive])
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True), dtype=np.float64)


def predict_classes(
    spec: ModelSpec, weights: Weights, features: npt.NDArray[np.floating]
) -> npt.NDArray[np.int64]:
    """The most probable class index of each row (two classes: logit above 0).

    Raises
    ------
    InputError
        As :func:`predict_logits`.
    """
    logits = predict_logits(spec, weights, features)
    if spec.outputs == 1:
        return np.asarray(logits > 0, dtype=np.int64)
    return np.asarray(np.argmax(logits, axis=1), dtype=np.int64)
