"""Model weights rewritten as the circuits CKKS evaluates, with scales that cannot overflow.

Pure NumPy. :func:`compile_circuit` takes a model family's weights (the tensors of
``veracity.tasks.spec``), a parameter set and the primes SEAL chose for it, and returns
what the evaluator needs: folded weights and the encoding scale of each layer. The scales are
derived from worst-case bounds for inputs with ``|x| <= input_bound``, so no admissible input
can wrap around the ciphertext modulus; a model whose bounds do not fit is refused.

``poly_mlp`` folding
    ``a*z**2 + b*z + c = a*(z + b/(2a))**2 + (c - b**2/(4a))``: the shift ``b/(2a)`` joins the
    first-layer bias, ``a`` joins the output weights and the constants join the output bias,
    so the circuit is ``y = sum_k alpha_k * u_k**2 + gamma`` with ``u = W1 x + b1'``: one
    lazily rescaled linear layer, one square per hidden unit, one plaintext product each.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from veracity.errors import CryptoError
from veracity.he.params import CKKSParameterSet, PackingLayout

__all__ = [
    "LinearCircuit",
    "QuadraticCircuit",
    "ConvCircuit",
    "Circuit",
    "compile_circuit",
    "compile_conv_circuit",
    "contributions_circuit",
    "conv_matrix",
    "pool_groups",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Largest worst-case value kept below modulus / 2**_HEADROOM_BITS (noise, flooding).
_HEADROOM_BITS = 3
#: The dense layer's weight scale the CNN's second level is sized for (bits).
_DENSE_BITS = 20
#: A one-convolution network's integer weights (``|w| * scale``) sum below ``2**31`` per
#: unit, so each unit's products with 30-bit halves of residues sum exactly in 64 bits
#: (the residue kernels of ``veracity.he.residues``).
EXACT_SUM_BITS = 31


@dataclass(frozen=True)
class LinearCircuit:
    """``logits = W x + b`` with weights encoded at ``weight_scale``.

    Attributes
    ----------
    weights
        Shape ``(outputs, n_features)``: one row per output (one for a two-class model,
        one per class otherwise).
    bias
        Shape ``(outputs,)``.
    logit_bound
        Worst-case ``|logit|`` over admissible inputs and outputs.
    """

    weights: FloatArray
    bias: FloatArray
    weight_scale: float
    logit_bound: float

    @property
    def n_features(self) -> int:
        """Input width."""
        return int(self.weights.shape[1])

    @property
    def outputs(self) -> int:
        """Outputs per patient."""
        return int(self.weights.shape[0])


def contributions_circuit(linear: LinearCircuit) -> LinearCircuit:
    """The per-feature contributions of ``linear`` as a linear circuit of k * d outputs.

    Output ``c * d + j`` is ``w[c, j] * x_j`` (weight row ``w[c, j] * e_j``, bias 0), at the
    model's own weight scale, so every layout that serves ``linear`` evaluates it and masks
    everything but the declared patients' outputs exactly as for a prediction. The
    contributions of a patient sum to its logit minus the bias.

    Raises
    ------
    CryptoError
        If a weight is zero at the model's weight scale: its contribution would be a
        ciphertext that does not depend on the input (SEAL calls it transparent and refuses
        it, and it would tell the requester the weight is exactly zero).
    """
    zero = np.argwhere(linear.weights == 0.0)
    if zero.size:
        output, feature = (int(v) for v in zero[0])
        raise CryptoError(
            f"feature {feature}'s weight (output {output}) is zero at the model's encoding "
            "scale; per-feature contributions are not served for this model"
        )
    outputs, width = linear.weights.shape
    weights = np.zeros((outputs * width, width), dtype=np.float64)
    rows = np.arange(outputs * width)
    weights[rows, rows % width] = linear.weights.reshape(-1)
    # |w_j x_j| <= input_bound * sum_j |w_j| <= the model's own logit bound.
    return LinearCircuit(
        weights, np.zeros(outputs * width), linear.weight_scale, linear.logit_bound
    )


@dataclass(frozen=True)
class QuadraticCircuit:
    """``logit_c = sum_k alpha_ck * (W1 x + b1')_k**2 + gamma_c`` for every output c.

    Units with ``alpha_k == 0`` are skipped by the evaluator but keep their place, so the
    ``replicated`` layout's geometry follows the architecture, not the weights.

    Attributes
    ----------
    output_weights / output_bias
        ``alpha`` of shape ``(outputs, hidden)`` and ``gamma`` of shape ``(outputs,)``.
    hidden_weight_scale
        Scale of the first-layer weights (and of the shifted bias, at the product scale).
    output_weight_scale
        Scale of ``alpha``; chosen per model as large as the headroom allows.
    hidden_bound / logit_bound
        Worst-case ``|u_k|`` and ``|logit|`` over admissible inputs.
    """

    hidden_weights: FloatArray
    hidden_bias: FloatArray
    output_weights: FloatArray
    output_bias: FloatArray
    hidden_weight_scale: float
    output_weight_scale: float
    hidden_bound: float
    logit_bound: float

    @property
    def n_features(self) -> int:
        """Input width."""
        return int(self.hidden_weights.shape[1])

    @property
    def hidden(self) -> int:
        """Hidden units."""
        return int(self.hidden_weights.shape[0])

    @property
    def outputs(self) -> int:
        """Outputs per patient."""
        return int(self.output_weights.shape[0])


@dataclass(frozen=True)
class ConvCircuit:
    """``cnn2d`` with square activations as linear maps on flat vectors.

    ``conv1`` and ``conv2`` are the convolutions as matrices (im2col unrolled: output unit
    ``f*h*w + i*w + j`` takes input ``c*h*w + ii*w + jj`` with the kernel's weight, zero where
    the kernel does not reach), so the circuit is, for a flat image ``x``::

        z1 = conv1 @ x + bias1;  p1[g] = sum(z1[pool1[g]]**2)
        z2 = conv2 @ p1 + bias2; p2[g] = sum(z2[pool2[g]]**2)
        logits = fc @ p2 + fc_bias

    A network with one convolution (``filters`` of one count) has no second layer
    (``conv2``, ``bias2`` and ``pool2`` are ``None``) and ``logits = fc @ p1 + fc_bias``.
    Average pooling is a sum of four squares; its 1/4 is folded into the next layer.
    Units that no pooling window covers (a trailing odd row or column) are never computed.

    Attributes
    ----------
    conv1_scale / conv2_scale / fc_scale
        Encoding scales of the three weight matrices.
    logit_bound
        Worst-case ``|logit|`` over admissible inputs.
    """

    input_shape: tuple[int, int, int]
    conv1: FloatArray
    bias1: FloatArray
    pool1: IntArray
    conv2: FloatArray | None
    bias2: FloatArray | None
    pool2: IntArray | None
    fc: FloatArray
    fc_bias: FloatArray
    conv1_scale: float
    conv2_scale: float
    fc_scale: float
    logit_bound: float
    kernel: int = 3

    @property
    def filters(self) -> tuple[int, ...]:
        """Filters of each convolution (one or two counts)."""
        _, height, width = self.input_shape
        first = len(self.bias1) // (height * width)
        if self.bias2 is None:
            return (first,)
        return (first, len(self.bias2) // ((height // 2) * (width // 2)))

    @property
    def n_features(self) -> int:
        """Input width (channels x height x width)."""
        return int(self.conv1.shape[1])

    @property
    def outputs(self) -> int:
        """Outputs per image."""
        return int(self.fc.shape[0])

    def forward(self, features: npt.ArrayLike) -> FloatArray:
        """The circuit in plain arithmetic, ``(n, outputs)``: what CKKS evaluates."""
        x = np.asarray(features, dtype=np.float64)
        z1 = x @ self.conv1.T + self.bias1
        pooled = (z1 * z1)[:, self.pool1].sum(axis=2)
        if self.conv2 is not None and self.bias2 is not None and self.pool2 is not None:
            z2 = pooled @ self.conv2.T + self.bias2
            pooled = (z2 * z2)[:, self.pool2].sum(axis=2)
        return np.asarray(pooled @ self.fc.T + self.fc_bias, dtype=np.float64)


Circuit = LinearCircuit | QuadraticCircuit | ConvCircuit


def conv_matrix(weight: npt.ArrayLike, height: int, width: int) -> FloatArray:
    """A 'same' 2-D convolution (odd kernel, zero padding, stride 1) as a dense matrix.

    ``weight`` has shape ``(filters, channels, k, k)``; the result maps a flat
    ``(channels, height, width)`` input to a flat ``(filters, height, width)`` output.
    """
    w = np.asarray(weight, dtype=np.float64)
    filters, channels, k, _ = w.shape
    pad = k // 2
    matrix = np.zeros((filters, height, width, channels, height, width), dtype=np.float64)
    for i in range(height):
        for j in range(width):
            for di in range(k):
                for dj in range(k):
                    ii, jj = i + di - pad, j + dj - pad
                    if 0 <= ii < height and 0 <= jj < width:
                        matrix[:, i, j, :, ii, jj] = w[:, :, di, dj]
    return matrix.reshape(filters * height * width, channels * height * width)


def pool_groups(channels: int, height: int, width: int) -> IntArray:
    """The four flat indices of each 2x2 pooling window (stride 2, trailing odd row dropped).

    Shape ``(channels * (height // 2) * (width // 2), 4)``, windows in flat C order.
    """
    c, a, b = np.meshgrid(
        np.arange(channels), np.arange(height // 2), np.arange(width // 2), indexing="ij"
    )
    corners = [
        c * height * width + (2 * a + da) * width + (2 * b + db) for da in (0, 1) for db in (0, 1)
    ]
    return np.stack([corner.reshape(-1) for corner in corners], axis=1).astype(np.int64)


def compile_conv_circuit(
    weights: Mapping[str, npt.ArrayLike],
    *,
    parameter_set: CKKSParameterSet,
    primes: Sequence[int],
    input_shape: tuple[int, ...],
    filters: tuple[int, ...],
    kernel: int,
    outputs: int,
) -> ConvCircuit:
    """Fold a square-activation ``cnn2d`` into a :class:`ConvCircuit` and choose its scales.

    ``filters`` has one count per convolution: two, or one (see :func:`_one_conv_scales`
    for the levels of a network with one convolution).

    Levels (data primes ``q_0 .. q_{L-1}``, inputs at ``2**input_scale_bits``): the first
    convolution's products are rescaled once by ``q_{L-1}``; the squares are summed (the
    pool) and the second convolution's products rescaled once by ``q_{L-2}``; the second
    squares are summed and the dense layer's products are left at their scale; the
    server's output selector is encoded at ``q_{L-3}`` and rescaled away, so the logits sit
    at the dense layer's scale under ``q_0 ... q_{L-4}``. Every scale is checked against
    worst-case values for inputs with ``|x| <= input_bound``.

    Raises
    ------
    CryptoError
        If the tensors do not match the architecture or hold non-finite values, a unit has
        only zero weights, or the worst-case values do not fit the parameter set.
    """
    if parameter_set.family != "cnn2d":
        raise CryptoError(f"parameter set {parameter_set.name} serves {parameter_set.family}")
    if len(input_shape) != 3:
        raise CryptoError("cnn2d takes (channels, height, width) inputs")
    channels, height, width = (int(d) for d in input_shape)
    if len(filters) not in (1, 2):
        raise CryptoError("cnn2d has one or two convolutions")
    first = int(filters[0])
    data_primes = [float(q) for q in primes[:-1]]
    if len(data_primes) != len(parameter_set.data_prime_bits) or len(data_primes) < 4:
        raise CryptoError(f"primes do not match parameter set {parameter_set.name}")
    w1 = _as_float(weights, "conv1.weight", (first, channels, kernel, kernel))
    b1 = _as_float(weights, "conv1.bias", (first,))
    if len(filters) == 1:
        return _one_conv_circuit(
            weights,
            parameter_set,
            data_primes,
            (channels, height, width),
            (w1, b1),
            kernel,
            outputs,
        )
    second = int(filters[1])
    w2 = _as_float(weights, "conv2.weight", (second, first, kernel, kernel))
    b2 = _as_float(weights, "conv2.bias", (second,))
    h2, v2 = height // 2, width // 2
    wfc = _as_float(weights, "fc.weight", (outputs, second * (h2 // 2) * (v2 // 2)))
    bfc = _as_float(weights, "fc.bias", (outputs,))

    conv1 = conv_matrix(w1, height, width)
    bias1 = np.repeat(b1, height * width)
    pool1 = pool_groups(first, height, width)
    conv2 = conv_matrix(w2, h2, v2) / 4.0
    bias2 = np.repeat(b2, h2 * v2)
    pool2 = pool_groups(second, h2, v2)
    fc = wfc / 4.0

    # Worst-case magnitudes, unit by unit.
    bound = parameter_set.input_bound
    z1 = np.abs(bias1) + bound * np.abs(conv1).sum(axis=1)
    p1 = (z1 * z1)[pool1].sum(axis=1)
    z2 = np.abs(bias2) + np.abs(conv2) @ p1
    p2 = (z2 * z2)[pool2].sum(axis=1)
    logits = np.abs(bfc) + np.abs(fc) @ p2
    logit_bound = float(logits.max())

    headroom = 2.0**_HEADROOM_BITS
    s_in = parameter_set.input_scale
    s1 = float(2**parameter_set.hidden_weight_scale_bits)
    if s_in * s1 * float(z1[pool1].max()) * headroom > math.prod(data_primes):
        raise CryptoError(f"cnn2d: the first convolution overflows {parameter_set.name}")
    if parameter_set.batch_layout is PackingLayout.IM2COL:
        bits2, bits3 = _im2col_scale_bits(
            parameter_set,
            data_primes,
            s_in * s1,
            float(z2[pool2].max()),
            float(p2.max()),
            logit_bound,
        )
        return _conv_circuit(
            (channels, height, width),
            kernel,
            (conv1, bias1, pool1, conv2, bias2, pool2, fc, bfc),
            (s1, float(2**bits2), float(2**bits3)),
            logit_bound,
        )
    level1 = s_in * s1 / data_primes[-1]  # scale after the first rescale
    # The second convolution's scale: as large as the dense layer allows while keeping its
    # weights at 2**_DENSE_BITS (the second rescale acts on a three-part ciphertext, whose
    # rounding noise grows with the secret key's square: a larger scale drowns it).
    remaining = math.prod(data_primes[:-1])
    rest = math.prod(data_primes[:-3])  # q_{L-3} is the output selector's (see layouts)
    level2_max = math.sqrt(rest / headroom / (2.0**_DENSE_BITS * max(logit_bound, 1.0)))
    target = level2_max * data_primes[-2] / (level1 * level1)
    fit = remaining / headroom / (level1 * level1 * max(float(z2[pool2].max()), 1.0))
    bits2 = _scale_bits(min(target, fit), parameter_set, "cnn2d second convolution")
    s2 = float(2**bits2)
    level2 = level1 * level1 * s2 / data_primes[-2]
    bits3 = _scale_bits(
        rest / headroom / (level2 * level2 * max(logit_bound, 1.0)), parameter_set, "cnn2d dense"
    )
    return _conv_circuit(
        (channels, height, width),
        kernel,
        (conv1, bias1, pool1, conv2, bias2, pool2, fc, bfc),
        (s1, s2, float(2**bits3)),
        logit_bound,
    )


def _one_conv_circuit(
    weights: Mapping[str, npt.ArrayLike],
    parameter_set: CKKSParameterSet,
    data_primes: Sequence[float],
    input_shape: tuple[int, int, int],
    first_layer: tuple[FloatArray, FloatArray],
    kernel: int,
    outputs: int,
) -> ConvCircuit:
    """:func:`compile_conv_circuit` for a network with one convolution."""
    channels, height, width = input_shape
    w1, b1 = first_layer
    first = len(b1)
    wfc = _as_float(weights, "fc.weight", (outputs, first * (height // 2) * (width // 2)))
    bfc = _as_float(weights, "fc.bias", (outputs,))
    conv1 = conv_matrix(w1, height, width)
    bias1 = np.repeat(b1, height * width)
    pool1 = pool_groups(first, height, width)
    fc = wfc / 4.0
    bound = parameter_set.input_bound
    z1 = np.abs(bias1) + bound * np.abs(conv1).sum(axis=1)
    p1 = (z1 * z1)[pool1].sum(axis=1)
    logit_bound = float((np.abs(bfc) + np.abs(fc) @ p1).max())
    # The column layout computes on residues (veracity.he.residues): its integer weights
    # must sum below 2**EXACT_SUM_BITS per unit; im2col encodes vectors and needs no bound.
    column = parameter_set.batch_layout is PackingLayout.COLUMN
    bits1 = parameter_set.hidden_weight_scale_bits
    s1 = float(2 ** (_exact_sum_bits(conv1, bits1, parameter_set) if column else bits1))
    product_scale = parameter_set.input_scale * s1
    bits3 = _one_conv_scales(
        parameter_set,
        data_primes,
        product_scale,
        float(z1[pool1].max()),
        float(p1.max()),
        logit_bound,
    )
    if column:
        bits3 = _exact_sum_bits(fc, bits3, parameter_set)
    fc = _drop_unrepresentable(fc, float(2**bits3))
    conv1 = _drop_unrepresentable(conv1, s1)
    if not np.all(np.any(conv1[np.unique(pool1)], axis=1)):
        raise CryptoError("cnn2d: a unit of the first convolution has only zero weights")
    if not np.all(np.any(fc, axis=1)):
        raise CryptoError("cnn2d: a unit of the dense layer has only zero weights")
    return ConvCircuit(
        input_shape=(channels, height, width),
        conv1=conv1,
        bias1=bias1,
        pool1=pool1,
        conv2=None,
        bias2=None,
        pool2=None,
        fc=fc,
        fc_bias=bfc,
        conv1_scale=s1,
        conv2_scale=1.0,
        fc_scale=float(2**bits3),
        logit_bound=logit_bound,
        kernel=kernel,
    )


def _exact_sum_bits(matrix: FloatArray, bits: int, parameter_set: CKKSParameterSet) -> int:
    """``bits``, lowered until every row's integer weights sum below ``2**EXACT_SUM_BITS``.

    Raises
    ------
    CryptoError
        If that leaves less than the parameter set's minimum weight scale.
    """
    largest = float(np.abs(matrix).sum(axis=1).max())
    if largest > 0.0:
        # One bit of margin for the rounding of each weight to an integer.
        bits = min(bits, EXACT_SUM_BITS - 2 - math.floor(math.log2(largest)))
    if bits < parameter_set.min_weight_scale_bits:
        raise CryptoError(
            f"cnn2d: weights as large as {largest:.3g} per unit leave a scale of 2**{bits}, below "
            f"the 2**{parameter_set.min_weight_scale_bits} {parameter_set.name} needs"
        )
    return bits


def _one_conv_scales(
    parameter_set: CKKSParameterSet,
    data_primes: Sequence[float],
    product_scale: float,
    z1_bound: float,
    p1_bound: float,
    logit_bound: float,
) -> int:
    """The dense layer's weight scale (bits) of a one-convolution network, levels checked.

    Data primes ``q_0 .. q_{L-1}``, the convolution's products at ``product_scale``.

    * ``column`` (the batch layout): the server first drops ``q_{L-1}`` from the inputs
      (exact: the message fits the rest), so everything runs on ``L - 1`` primes; the
      units are squared without a rescale (scale ``product_scale**2``), pooled, and the
      dense products left at their scale, so until the output no step needs a number
      theoretic transform (every step is a product or a sum of residues); the output
      selector is encoded at ``q_{L-2}`` and rescaled away: the logits sit under
      ``q_0 ... q_{L-3}``.
    * ``im2col`` (four data primes): the convolution is rescaled by ``q_3``, squared and
      pooled; the pooled maps lose ``q_2`` (exact: they fit ``q_0 q_1``), so the dense
      layer's rotations act on two primes; it is rescaled by ``q_1`` and the logits sit
      under ``q_0`` alone.

    Raises
    ------
    CryptoError
        If the worst-case values do not fit the parameter set.
    """
    headroom = 2.0**_HEADROOM_BITS
    name = parameter_set.name
    if parameter_set.batch_layout is PackingLayout.IM2COL:
        q0, q1, _, q3 = data_primes[:4]
        if product_scale * max(z1_bound, 1.0) * headroom > math.prod(data_primes):
            raise CryptoError(f"cnn2d: the convolution overflows {name}")
        square = (product_scale / q3) ** 2
        # The pooled squares lose q2 (so the dense layer's rotations run on two primes).
        if square * max(p1_bound, 1.0) * headroom > q0 * q1:
            raise CryptoError(f"cnn2d: the squares overflow {name}")
        # The dense products fit q0 q1, and after the rescale by q1 the logits fit q0.
        fit = q0 * q1 / headroom / (square * max(logit_bound, 1.0))
        return _scale_bits(fit, parameter_set, "cnn2d dense layer")
    kept = data_primes[:-1]  # q_{L-1} is dropped from the inputs
    square = product_scale * product_scale
    if square * max(p1_bound, 1.0) * headroom > math.prod(kept):
        raise CryptoError(f"cnn2d: the convolution's squares overflow {name}")
    rest = math.prod(kept[:-1])  # q_{L-2} is the output selector's (see layouts)
    return _scale_bits(
        rest / headroom / (square * max(logit_bound, 1.0)), parameter_set, "cnn2d dense"
    )


def _conv_circuit(
    input_shape: tuple[int, int, int],
    kernel: int,
    maps: tuple[
        FloatArray, FloatArray, IntArray, FloatArray, FloatArray, IntArray, FloatArray, FloatArray
    ],
    scales: tuple[float, float, float],
    logit_bound: float,
) -> ConvCircuit:
    conv1, bias1, pool1, conv2, bias2, pool2, fc, bfc = maps
    s1, s2, s3 = scales
    conv1 = _drop_unrepresentable(conv1, s1)
    conv2 = _drop_unrepresentable(conv2, s2)
    fc = _drop_unrepresentable(fc, s3)
    for name, matrix, used in (
        ("first convolution", conv1, np.unique(pool1)),
        ("second convolution", conv2, np.unique(pool2)),
        ("dense layer", fc, np.arange(fc.shape[0])),
    ):
        if not np.all(np.any(matrix[used], axis=1)):
            raise CryptoError(f"cnn2d: a unit of the {name} has only zero weights")
    return ConvCircuit(
        input_shape=input_shape,
        conv1=conv1,
        bias1=bias1,
        pool1=pool1,
        conv2=conv2,
        bias2=bias2,
        pool2=pool2,
        fc=fc,
        fc_bias=bfc,
        conv1_scale=s1,
        conv2_scale=s2,
        fc_scale=s3,
        logit_bound=logit_bound,
        kernel=kernel,
    )


def _im2col_scale_bits(
    parameter_set: CKKSParameterSet,
    data_primes: Sequence[float],
    product_scale: float,
    z2_bound: float,
    p2_bound: float,
    logit_bound: float,
) -> tuple[int, int]:
    """Weight scales of the second convolution and the dense layer in the ``im2col`` chain.

    Data primes ``q_0 .. q_3``: the first convolution is rescaled by ``q_3``, the second
    by ``q_2``, the dense layer by ``q_1``; the logits stay under ``q_0``. The second
    convolution's scale is the largest the set allows whose worst case fits; the dense
    layer's the largest for which the worst-case logits fit under ``q_0`` (and the product
    under ``q_0 q_1``), both with the usual headroom.
    """
    headroom = 2.0**_HEADROOM_BITS
    q0, q1, q2, q3 = data_primes[:4]
    level1 = product_scale / q3
    fit2 = q0 * q1 * q2 / headroom / (level1 * level1 * max(z2_bound, 1.0))
    bits2 = _scale_bits(fit2, parameter_set, "cnn2d second convolution")
    level2 = level1 * level1 * 2.0**bits2 / q2
    square = level2 * level2
    if square * max(p2_bound, 1.0) * headroom > q0 * q1:
        raise CryptoError(f"cnn2d: the second layer's squares overflow {parameter_set.name}")
    # The dense products, and after the rescale by q1 the logits, fit under q0 * q1.
    fit3 = q0 * q1 / headroom / (square * max(logit_bound, 1.0))
    bits3 = _scale_bits(fit3, parameter_set, "cnn2d dense layer")
    return bits2, bits3


def _as_float(
    weights: Mapping[str, npt.ArrayLike], name: str, shape: tuple[int, ...]
) -> FloatArray:
    try:
        array = np.asarray(weights[name], dtype=np.float64)
    except KeyError as err:
        raise CryptoError(f"model weights lack tensor {name!r}") from err
    if array.shape != shape:
        raise CryptoError(f"model tensor {name!r} has shape {array.shape}, expected {shape}")
    if not np.all(np.isfinite(array)):
        raise CryptoError(f"model tensor {name!r} holds NaN or infinite values")
    return array


def _drop_unrepresentable(values: FloatArray, scale: float) -> FloatArray:
    """Zero the weights that round to zero at ``scale`` (SEAL refuses all-zero products)."""
    kept = values.copy()
    kept[np.abs(kept) * scale < 1.0] = 0.0
    return kept


def _scale_bits(limit: float, parameter_set: CKKSParameterSet, what: str) -> int:
    """Largest power-of-two exponent <= log2(limit), within the set's weight-scale range."""
    if limit <= 0 or not math.isfinite(limit):
        raise CryptoError(f"{what}: model's worst-case values do not fit {parameter_set.name}")
    bits = min(parameter_set.max_weight_scale_bits, math.floor(math.log2(limit)))
    if bits < parameter_set.min_weight_scale_bits:
        raise CryptoError(
            f"{what}: the model's worst-case values leave a weight scale of 2**{bits}, below "
            f"the 2**{parameter_set.min_weight_scale_bits} that {parameter_set.name} needs for "
            f"precision; shrink the weights or the input bound"
        )
    return bits


def compile_circuit(
    family: str,
    weights: Mapping[str, npt.ArrayLike],
    *,
    parameter_set: CKKSParameterSet,
    primes: Sequence[int],
    n_features: int,
    hidden: int = 0,
    activation: tuple[float, float, float] = (0.0, 0.0, 0.0),
    outputs: int = 1,
) -> LinearCircuit | QuadraticCircuit:
    """Fold ``weights`` into the circuit for ``family`` and choose its scales.

    Parameters
    ----------
    family
        ``"logistic"`` or ``"poly_mlp"`` (a ``ModelFamily`` value).
    weights
        The model's tensors, keyed as in ``veracity.tasks.spec``.
    parameter_set, primes
        The CKKS parameter set and the exact primes of its modulus chain (key level,
        special prime last when there are several).
    n_features, hidden, activation, outputs
        The architecture (``hidden`` and ``activation`` for ``poly_mlp``; ``outputs`` is 1
        for a two-class model, the number of classes otherwise).

    Raises
    ------
    CryptoError
        If the tensors do not match the architecture, hold non-finite values, the family is
        not the one the parameter set serves, or the worst-case values cannot be encoded
        within the parameter set's modulus at the precision it promises.
    """
    if family != parameter_set.family:
        raise CryptoError(
            f"parameter set {parameter_set.name} serves {parameter_set.family}, not {family}"
        )
    data_primes = list(primes) if len(primes) == 1 else list(primes[:-1])
    if len(data_primes) != len(parameter_set.data_prime_bits):
        raise CryptoError(f"primes do not match parameter set {parameter_set.name}")
    bound = parameter_set.input_bound
    if outputs < 1:
        raise CryptoError(f"a model has at least one output, not {outputs}")
    if family == "logistic":
        w = _as_float(weights, "linear.weight", (outputs, n_features))
        b = _as_float(weights, "linear.bias", (outputs,))
        logit_bound = float((np.abs(b) + bound * np.abs(w).sum(axis=1)).max())
        # sqrt(2): headroom kept from the complex slot packing this set was sized for.
        limit = (
            data_primes[0]
            / 2**_HEADROOM_BITS
            / (math.sqrt(2) * max(logit_bound, 1.0) * parameter_set.input_scale)
        )
        bits = _scale_bits(limit, parameter_set, "logistic regression")
        kept = _drop_unrepresentable(w, float(2**bits))
        if not np.all(np.any(kept, axis=1)):
            raise CryptoError("logistic regression with all-zero weights is a constant")
        return LinearCircuit(kept, b, float(2**bits), logit_bound)
    if family != "poly_mlp":
        raise CryptoError(f"unknown model family {family!r}")
    a, b_lin, c = (float(v) for v in activation)
    if a == 0.0 or not all(math.isfinite(v) for v in (a, b_lin, c)):
        raise CryptoError("poly_mlp needs a finite, non-zero quadratic coefficient to be served")
    w1 = _as_float(weights, "fc1.weight", (hidden, n_features))
    b1 = _as_float(weights, "fc1.bias", (hidden,))
    w2 = _as_float(weights, "fc2.weight", (outputs, hidden))
    b2 = _as_float(weights, "fc2.bias", (outputs,))
    shift = b_lin / (2.0 * a)
    hidden_bias = b1 + shift
    alpha = a * w2
    gamma = np.sum(w2, axis=1) * (c - b_lin * b_lin / (4.0 * a)) + b2
    unit_bounds = np.abs(hidden_bias) + bound * np.abs(w1).sum(axis=1)
    hidden_bound = float(unit_bounds.max())
    logit_bound = float((np.abs(alpha) @ unit_bounds**2 + np.abs(gamma)).max())
    hidden_scale = float(2**parameter_set.hidden_weight_scale_bits)
    top = math.prod(float(q) for q in data_primes)
    product_scale = parameter_set.input_scale * hidden_scale
    if product_scale * max(hidden_bound, 1.0) * 2**_HEADROOM_BITS > top:
        raise CryptoError(f"poly_mlp: first layer overflows {parameter_set.name}")
    # After one rescale by the last data prime, the square sits at s_z**2; the output layer
    # multiplies by alpha at 2**bits and is summed without another rescale.
    s_z = product_scale / data_primes[-1]
    rest = math.prod(float(q) for q in data_primes[:-1])
    limit = rest / 2**_HEADROOM_BITS / (s_z * s_z * max(logit_bound, 1.0))
    bits = _scale_bits(limit, parameter_set, "poly_mlp output layer")
    w1 = _drop_unrepresentable(w1, hidden_scale)
    alpha = _drop_unrepresentable(alpha, float(2**bits))
    for unit in np.flatnonzero(~np.any(w1, axis=1)):
        # A unit without input weights is the constant alpha * bias**2: fold it into gamma.
        gamma += alpha[:, unit] * hidden_bias[unit] ** 2
        alpha[:, unit] = 0.0
    if not np.all(np.any(alpha, axis=1)):
        raise CryptoError("poly_mlp whose output does not depend on its inputs is a constant")
    return QuadraticCircuit(
        hidden_weights=w1,
        hidden_bias=hidden_bias,
        output_weights=alpha,
        output_bias=np.asarray(gamma, dtype=np.float64),
        hidden_weight_scale=hidden_scale,
        output_weight_scale=float(2**bits),
        hidden_bound=hidden_bound,
        logit_bound=logit_bound,
    )
