"""The slot layouts (``column``, ``replicated``): ``poly_mlp`` models, and ``cnn2d`` by column.

They multiply by plaintexts that are zero outside the declared patients' output slots, so
every other slot decrypts to zero, and flood every slot with ``+-FLOOD`` last.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import tenseal.sealapi as sa

from veracity.errors import CryptoError, InputError
from veracity.he import residues
from veracity.he.circuit import Circuit, ConvCircuit, QuadraticCircuit
from veracity.he.layouts.base import (
    ColumnOf,
    GroupsOf,
    check_width,
    multiply_accumulate,
    rotate_and_add,
    slot_flood,
)
from veracity.he.packing import (
    ComplexArray,
    FloatArray,
    ReplicatedGeometry,
    pack_column,
    unpack_column,
)
from veracity.he.params import PackingLayout
from veracity.he.public_context import LoadedInputs, PublicContext
from veracity.he.seal import (
    RandomBytes,
    Runtime,
    ciphertext_from_residues,
    ciphertext_residues,
    encode,
    loaded_ciphertext_residues,
    seal_integer,
    seal_integers,
)

__all__ = ["ColumnLayout", "ReplicatedLayout"]

UInt64Array = npt.NDArray[np.uint64]
IntArray = npt.NDArray[np.int64]

#: Bits the replicated layout moves from the first-layer weights to the inputs before its
#: replication rotations (measured on the breast-cancer MLP: 0 bits, max logit error 4e-4;
#: 4 bits, 3e-5; 8 bits, 2e-4 as the weights lose precision).
_REPLICATION_LIFT_BITS = 4


def _quadratic(circuit: Circuit, layout: PackingLayout) -> QuadraticCircuit:
    if not isinstance(circuit, QuadraticCircuit):
        raise CryptoError(f"layout {layout} serves poly_mlp only")
    return circuit


def _sum_of_squares(runtime: Runtime, units: Sequence[Any]) -> Any:
    """``sum(units)`` into a new ciphertext (the pool of squared units)."""
    evaluator = runtime.evaluator
    total = sa.Ciphertext()
    evaluator.add(units[0], units[1], total)  # a 2x2 window: four units
    for unit in units[2:]:
        evaluator.add_inplace(total, unit)
    return total


def _squared_unit(
    runtime: Runtime, inputs: Sequence[Any], weights: FloatArray, scale: float, bias: float
) -> Any:
    """``(weights . inputs + bias)**2``, rescaled once before the square (not relinearised)."""
    evaluator = runtime.evaluator
    unit = multiply_accumulate(runtime, inputs, weights, scale)
    evaluator.add_plain_inplace(unit, encode(runtime, float(bias), unit.parms_id(), unit.scale))
    evaluator.rescale_to_next_inplace(unit)
    evaluator.square_inplace(unit)
    return unit


def _evaluate_conv(
    runtime: Runtime, conv: ConvCircuit, inputs: Sequence[Any], live: int
) -> list[Any]:
    """The square-activation CNN on one-pixel-per-ciphertext inputs (column layout).

    Pools are sums of squared units computed window by window (a unit is used by one
    window only), so at most one window's units and the pooled maps are held at a time.
    A network with one convolution goes to :func:`_evaluate_one_conv`.
    """
    if conv.conv2 is None or conv.bias2 is None or conv.pool2 is None:
        return _evaluate_one_conv(runtime, conv, inputs, live)
    conv2, bias2, pool2 = conv.conv2, conv.bias2, conv.pool2
    pooled1 = [
        _sum_of_squares(
            runtime,
            [
                _squared_unit(
                    runtime, inputs, conv.conv1[u], conv.conv1_scale, float(conv.bias1[u])
                )
                for u in window
            ],
        )
        for window in conv.pool1
    ]
    pooled2 = [
        _sum_of_squares(
            runtime,
            [
                _squared_unit(runtime, pooled1, conv2[u], conv.conv2_scale, float(bias2[u]))
                for u in window
            ],
        )
        for window in pool2
    ]
    del pooled1
    return _dense_outputs(runtime, conv, pooled2, live)


def _evaluate_one_conv(
    runtime: Runtime,
    conv: ConvCircuit,
    inputs: Sequence[Any],
    live: int,
    *,
    kernels: bool | None = None,
) -> list[Any]:
    """One convolution, squares, pool and the dense layer (levels: ``_one_conv_scales``).

    The inputs first lose their top data prime (exact: SEAL drops the prime, the message
    fits the rest), so the convolution's products, by far the most work, run on one prime
    fewer. Nothing is rescaled before the output selector: the units are squared at the
    product scale, the four squares of a pooling window summed, and the dense layer reads
    the sums as they are. No step before the selector needs a transform, so, where the
    residue kernels are built (``kernels`` None: whenever they are), each layer is one
    call on the ciphertexts' residues (:func:`_one_conv_on_residues`) instead of one SEAL
    call per product and sum; both give the same residues.
    """
    evaluator = runtime.evaluator
    if residues.available() if kernels is None else kernels:
        return _masked(runtime, _one_conv_on_residues(runtime, conv, inputs), live)
    lowered = []
    for value in inputs:
        lower = sa.Ciphertext()
        evaluator.mod_switch_to_next(value, lower)
        lowered.append(lower)
    pooled = []
    for window in conv.pool1:
        units = []
        for u in window:
            unit = multiply_accumulate(runtime, lowered, conv.conv1[u], conv.conv1_scale)
            bias = encode(runtime, float(conv.bias1[u]), unit.parms_id(), unit.scale)
            evaluator.add_plain_inplace(unit, bias)
            evaluator.square_inplace(unit)  # three parts, not relinearised
            units.append(unit)
        pooled.append(_sum_of_squares(runtime, units))
    del lowered
    return _dense_outputs(runtime, conv, pooled, live)


#: Pooling windows whose units the residue path holds at once (64 units: ~70 MB at
#: N = 16384 and four primes).
_WINDOWS_PER_PASS = 16


def _one_conv_on_residues(runtime: Runtime, conv: ConvCircuit, inputs: Sequence[Any]) -> list[Any]:
    """The dense layer's outputs (before the selector), computed on residues.

    The same residues as SEAL's calls in :func:`_evaluate_one_conv`: every weight and bias
    is the integer SEAL's encoder makes of it at the same scale, products and sums are
    exact modulo each prime, and the outputs' scales are the same products of scales. The
    inputs are read without their top prime (what SEAL's drop of it leaves), from the bytes
    they were loaded from where the request's ciphertexts are seeded (their second part
    expanded from its seed as SEAL does), else through SEAL.
    """
    first = sa.Ciphertext()
    runtime.evaluator.mod_switch_to_next(inputs[0], first)  # the level the layers run at
    count = first.coeff_modulus_size()
    primes = runtime.primes[:count]
    x = _input_residues(runtime, inputs, count)
    unit_scale = first.scale * conv.conv1_scale
    pooled_parts = []
    for start in range(0, len(conv.pool1), _WINDOWS_PER_PASS):
        windows = conv.pool1[start : start + _WINDOWS_PER_PASS]
        units = windows.reshape(-1)
        biases = [seal_integer(float(conv.bias1[u]), unit_scale) for u in units]
        weights = seal_integers(conv.conv1[units], conv.conv1_scale)
        z = residues.linear(x, weights, primes, biases)
        local = np.arange(len(units), dtype=np.int64).reshape(-1, 4)
        pooled_parts.append(residues.pooled_squares(z, local, primes))
    del x
    pooled = np.concatenate(pooled_parts)
    del pooled_parts
    output_scale = unit_scale * unit_scale * conv.fc_scale
    biases = [seal_integer(float(bias), output_scale) for bias in conv.fc_bias]
    dense = residues.linear(pooled, seal_integers(conv.fc, conv.fc_scale), primes, biases)
    return [
        ciphertext_from_residues(runtime, output, first.parms_id(), output_scale)
        for output in dense
    ]


def _input_residues(runtime: Runtime, inputs: Sequence[Any], count: int) -> UInt64Array:
    """The request's ciphertexts as residues on their first ``count`` primes.

    ``(len(inputs), 2, count, N)``: read from the bytes they were loaded from where they are
    seeded (their second part expanded from its seed as SEAL does), else through SEAL
    (dropping primes as SEAL's ``mod_switch_to_next`` does).

    Raises
    ------
    CryptoError
        If the ciphertexts are not all at the same scale (SEAL's additions refuse that).
    """
    if any(value.scale != inputs[0].scale for value in inputs):
        raise CryptoError("the request's ciphertexts are not all at the same scale")
    blobs = inputs.blobs if isinstance(inputs, LoadedInputs) else [None] * len(inputs)
    x = np.empty((len(inputs), 2, count, runtime.parameter_set.poly_modulus_degree), np.uint64)
    for index, (value, blob) in enumerate(zip(inputs, blobs, strict=True)):
        read = None if blob is None else loaded_ciphertext_residues(runtime, blob, count)
        if read is None:
            lower = value
            while lower.coeff_modulus_size() > count:
                dropped = sa.Ciphertext()
                runtime.evaluator.mod_switch_to_next(lower, dropped)
                lower = dropped
            read = ciphertext_residues(runtime, lower)
        x[index] = read
    return x


def _hidden_units(
    runtime: Runtime, inputs: Sequence[Any], quadratic: QuadraticCircuit, units: IntArray
) -> list[Any] | None:
    """``W1 x + b1'`` for each of ``units``, on residues (None: the weights exceed the kernels).

    The same ciphertexts as ``multiply_accumulate`` and the bias's ``add_plain``: one
    kernel call for the whole hidden layer instead of one SEAL call per product and sum.
    """
    weights = seal_integers(quadratic.hidden_weights[units], quadratic.hidden_weight_scale)
    if not residues.available() or not residues.fits(weights):
        return None
    first = inputs[0]
    count = first.coeff_modulus_size()
    scale = first.scale * quadratic.hidden_weight_scale
    biases = [seal_integer(float(quadratic.hidden_bias[u]), scale) for u in units]
    x = _input_residues(runtime, inputs, count)
    hidden = residues.linear(x, weights, runtime.primes[:count], biases)
    return [ciphertext_from_residues(runtime, h, first.parms_id(), scale) for h in hidden]


def _dense_outputs(
    runtime: Runtime, conv: ConvCircuit, pooled: Sequence[Any], live: int
) -> list[Any]:
    """The dense layer on the last pooled maps, each logit masked to the declared images."""
    evaluator = runtime.evaluator
    outputs = []
    for weights, bias in zip(conv.fc, conv.fc_bias, strict=True):
        output = multiply_accumulate(runtime, pooled, weights, conv.fc_scale)
        evaluator.add_plain_inplace(
            output, encode(runtime, float(bias), output.parms_id(), output.scale)
        )
        outputs.append(output)
    return _masked(runtime, outputs, live)


def _masked(runtime: Runtime, outputs: Sequence[Any], live: int) -> list[Any]:
    """Each output times a 0/1 selector of the ``live`` declared images, rescaled.

    The selector is encoded at the scale of the next prime and rescaled by it, so its
    encoding error is ~2**-40 of a logit (a selector folded into the dense weights would
    be encoded at their small scale instead).
    """
    evaluator = runtime.evaluator
    slots = runtime.parameter_set.slots
    selector = np.zeros(slots, dtype=np.float64)
    selector[:live] = 1.0
    mask = None
    for output in outputs:
        if mask is None:
            prime = runtime.context.get_context_data(output.parms_id()).parms().coeff_modulus()[-1]
            mask = encode(runtime, selector.tolist(), output.parms_id(), float(prime.value()))
        evaluator.multiply_plain_inplace(output, mask)
        evaluator.rescale_to_next_inplace(output)
    return list(outputs)


@dataclass(frozen=True)
class ColumnLayout(ColumnOf):
    """``column``: one ciphertext per feature, one patient per slot (``poly_mlp``, ``cnn2d``).

    For ``cnn2d`` a feature is a pixel (flat ``(channels, height, width)`` order), so
    ciphertext j holds pixel j of up to N/2 images; the network is evaluated as in
    :func:`_evaluate_conv`, with no keys at all (squares are not relinearised: the first
    gives three-part, the second five-part ciphertexts, which the requester's decryptor
    handles).

    ``y = sum_k alpha_k (W1 x + b1')_k**2 + gamma``: each hidden unit's products are summed
    at the product scale and rescaled once (lazy rescaling); squares are not relinearised
    (the requester's decryptor handles the three-part result). For a batch smaller than
    the slots, ``alpha_k`` and ``gamma`` are plaintexts that are zero beyond the declared
    patients, so every other slot decrypts to zero.
    """

    name: ClassVar[PackingLayout] = PackingLayout.COLUMN
    family: ClassVar[str] = "poly_mlp"

    def capacity(self) -> int:
        """One patient per slot."""
        return self.parameter_set.slots

    def _column(self, value: ComplexArray, batch_size: int) -> FloatArray:
        """The first ``batch_size`` real slot values."""
        return unpack_column(value, batch_size)

    def pack(self, features: FloatArray) -> list[Any]:
        """Row j: feature j of every patient."""
        x = check_width(features, self.shape)
        return list(pack_column(x, self.parameter_set.slots))

    def evaluate(
        self,
        context: PublicContext,
        circuit: Circuit,
        inputs: Sequence[Any],
        *,
        batch_size: int,
        random_bytes: RandomBytes,
    ) -> list[Any]:
        """h·n scalar products, h rescales, h squares, h (masked) output products."""
        runtime = context.runtime
        evaluator = runtime.evaluator
        slots = self.parameter_set.slots
        live = min(batch_size, slots)
        selector = np.zeros(slots, dtype=np.float64)
        selector[:live] = 1.0

        def masked(value: float) -> Any:
            # A scalar where every slot is declared, else zero beyond the declared patients.
            return float(value) if live == slots else (value * selector).tolist()

        if isinstance(circuit, ConvCircuit):
            results = _evaluate_conv(runtime, circuit, inputs, live)
            for result in results:
                slot_flood(runtime, result, random_bytes)
            return results
        quadratic = _quadratic(circuit, self.name)
        outputs: list[Any] = [None] * quadratic.outputs
        product = sa.Ciphertext()
        units = np.flatnonzero(np.any(quadratic.output_weights, axis=0))
        # The hidden layer is one kernel call on the inputs' residues where the residue
        # kernels are built and its weights fit them, else SEAL calls; the same ciphertexts.
        computed = _hidden_units(runtime, inputs, quadratic, units)
        for index, unit in enumerate(units):
            if computed is not None:
                hidden = computed[index]
            else:
                hidden = multiply_accumulate(
                    runtime, inputs, quadratic.hidden_weights[unit], quadratic.hidden_weight_scale
                )
                bias = encode(
                    runtime, float(quadratic.hidden_bias[unit]), hidden.parms_id(), hidden.scale
                )
                evaluator.add_plain_inplace(hidden, bias)
            evaluator.rescale_to_next_inplace(hidden)  # one rescale per unit: lazy rescaling
            evaluator.square_inplace(hidden)  # three parts; relinearised by the decryptor
            for c, alpha in enumerate(quadratic.output_weights[:, unit]):
                if alpha == 0.0:
                    continue
                weight = encode(
                    runtime, masked(alpha), hidden.parms_id(), quadratic.output_weight_scale
                )
                if outputs[c] is None:
                    outputs[c] = sa.Ciphertext()
                    evaluator.multiply_plain(hidden, weight, outputs[c])
                else:
                    evaluator.multiply_plain(hidden, weight, product)
                    evaluator.add_inplace(outputs[c], product)
        results = []
        for output, gamma in zip(outputs, quadratic.output_bias, strict=True):
            if output is None:
                raise CryptoError("the model has an output without hidden units")
            constant = encode(runtime, masked(gamma), output.parms_id(), output.scale)
            evaluator.add_plain_inplace(output, constant)
            slot_flood(runtime, output, random_bytes)
            results.append(output)
        return results


@dataclass(frozen=True)
class ReplicatedLayout(GroupsOf):
    """``replicated``: a few patients per ciphertext, replicated per hidden unit (``poly_mlp``).

    See :class:`~veracity.he.packing.ReplicatedGeometry`: the server replicates each
    patient's features into every unit's block itself (so every unit sees the same input),
    applies the first layer to declared patients only, adds the first-layer bias itself,
    squares, keeps declared patients' block starts and sums over units. Needs Galois and
    relinearisation keys.

    Raises
    ------
    InputError
        On construction, if the network does not fit the layout.
    """

    name: ClassVar[PackingLayout] = PackingLayout.REPLICATED
    family: ClassVar[str] = "poly_mlp"

    @property
    def geometry(self) -> ReplicatedGeometry:
        """Where patients and units sit among the slots."""
        return ReplicatedGeometry(
            self.shape.n_features, self.shape.hidden, self.parameter_set.slots
        )

    def _per_ciphertext(self) -> int:
        """``P``."""
        return self.geometry.patients_per_ciphertext

    def _group(self, values: ComplexArray, batch_size: int) -> FloatArray:
        """Slot ``p * s`` of the results."""
        return self.geometry.unpack(values, batch_size)

    def rotation_steps(self) -> tuple[int, ...]:
        """Replication, block sums, then sums over units."""
        return self.geometry.rotation_steps()

    def pack(self, features: FloatArray) -> list[Any]:
        """Each patient's features in unit 0's block."""
        x = check_width(features, self.shape)
        return list(self.geometry.pack(x))

    def evaluate(
        self,
        context: PublicContext,
        circuit: Circuit,
        inputs: Sequence[Any],
        *,
        batch_size: int,
        random_bytes: RandomBytes,
    ) -> list[Any]:
        """Per ciphertext: rotations, 1 plaintext product, 1 relinearisation, 1 product."""
        quadratic = _quadratic(circuit, self.name)
        runtime = context.runtime
        evaluator = runtime.evaluator
        geometry = ReplicatedGeometry(
            quadratic.n_features, quadratic.hidden, runtime.parameter_set.slots
        )
        galois_keys, relin_keys = context.rotation_keys(geometry.rotation_steps())
        per = geometry.patients_per_ciphertext
        lift = encode(runtime, 1.0, inputs[0].parms_id(), 2.0**_REPLICATION_LIFT_BITS)
        encoded: dict[tuple[str, int], Any] = {}

        def plaintext(
            key: tuple[str, int], values: Callable[[], FloatArray], at: Any, scale: float
        ) -> Any:
            # Every ciphertext but the last holds P live patients: encode once per count.
            if key not in encoded:
                encoded[key] = encode(runtime, values().tolist(), at.parms_id(), scale)
            return encoded[key]

        results = []
        rotated = sa.Ciphertext()
        for index, ciphertext in enumerate(inputs):
            live = min(per, batch_size - index * per)
            if live < 1:
                raise InputError(f"ciphertext {index} carries no declared patient")
            value = ciphertext  # loaded for this request: evaluated in place
            # Raise the scale by an exact integer factor first: the replication's key
            # switching adds a fixed absolute noise, which this makes 2**LIFT times smaller
            # relative to the features; the first layer gives those bits back.
            evaluator.multiply_plain_inplace(value, lift)
            rotate_and_add(runtime, value, geometry.replication_steps(), galois_keys, rotated)
            first = plaintext(
                ("first", live),
                partial(geometry.first_layer_vector, quadratic.hidden_weights, live),
                value,
                quadratic.hidden_weight_scale / 2.0**_REPLICATION_LIFT_BITS,
            )
            evaluator.multiply_plain_inplace(value, first)
            rotate_and_add(runtime, value, geometry.block_sum_steps(), galois_keys, rotated)
            bias = plaintext(
                ("bias", live),
                partial(geometry.bias_vector, quadratic.hidden_bias, live),
                value,
                value.scale,
            )
            evaluator.add_plain_inplace(value, bias)
            evaluator.rescale_to_next_inplace(value)
            evaluator.square_inplace(value)
            evaluator.relinearize_inplace(value, relin_keys)
            for c in range(quadratic.outputs):
                selector = plaintext(
                    (f"selector-{c}", live),
                    partial(geometry.output_selector, quadratic.output_weights[c], live),
                    value,
                    quadratic.output_weight_scale,
                )
                output = sa.Ciphertext()
                evaluator.multiply_plain(value, selector, output)
                rotate_and_add(runtime, output, geometry.unit_sum_steps(), galois_keys, rotated)
                constant = plaintext(
                    (f"constant-{c}", live),
                    partial(geometry.output_constant, float(quadratic.output_bias[c]), live),
                    output,
                    output.scale,
                )
                evaluator.add_plain_inplace(output, constant)
                slot_flood(runtime, output, random_bytes)
                results.append(output)
        return results
