"""Packing layouts as strategies: one class per layout, the ``Layout`` protocol, ``evaluate``.

A layout decides where each patient's features sit in the request's plaintexts (``pack``,
on the requester's side), how the server evaluates a circuit on the ciphertexts
(``evaluate``, with public material only) and where the outputs sit in the decrypted
results (``unpack``). :func:`layout_for` maps a :class:`~veracity.he.params.PackingLayout`
to its implementation (the ``LAYOUTS`` table); a new layout is one class and one entry.

Layouts are built for a model shape (:class:`ModelShape`): input width, hidden units and
outputs per patient (one for a two-class model, one per class otherwise). A layout answers
with one result ciphertext per output and input group (results ordered group by group,
class by class within a group); ``unpack`` gives ``(batch,)`` logits for one output and
``(batch, outputs)`` otherwise. Softmax and argmax happen at the requester.

Only the prediction leaves the server. Every layout evaluates for the *declared* batch:

* coefficient layouts (``column_coefficient``, ``coefficient``) put each declared patient's
  logit in one coefficient and add, at every other coefficient, an integer uniform modulo
  the ciphertext modulus: the requester learns those logits and nothing else;
* slot layouts (``column``, ``replicated``) multiply by plaintexts that are zero outside
  the declared patients' output slots, so every other slot decrypts to zero;
* every response is flooded: a fresh random polynomial (uniform ``+-FLOOD`` per output in
  coefficient layouts, uniform ``+-FLOOD`` in the real and imaginary part of every slot in
  slot layouts) is added last, so the low-order noise the requester could otherwise
  relate to its own (known) encryption noise is drowned.

What the requester is charged for is :meth:`Layout.carried`: the patients the request's
ciphertexts can carry, whatever it declares.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt
import tenseal.sealapi as sa

from veracity.errors import CryptoError, InputError
from veracity.he.circuit import Circuit, ConvCircuit, LinearCircuit, QuadraticCircuit
from veracity.he.image import ImageGeometry
from veracity.he.packing import (
    CoefficientGeometry,
    ComplexArray,
    FloatArray,
    ReplicatedGeometry,
    coefficients_from_slots,
    pack_column,
    pack_column_coefficients,
    slots_from_coefficients,
    unpack_column,
    unpack_column_coefficients,
)
from veracity.he.params import CKKSParameterSet, PackingLayout
from veracity.he.seal import (
    RandomBytes,
    Runtime,
    add_coefficients,
    bounded_integers,
    encode,
    residues_of,
    scratch,
    seal_errors,
    uniform_residues,
)

if TYPE_CHECKING:
    from veracity.he.contexts import PublicContext

__all__ = [
    "FLOOD",
    "RandomBytes",
    "ModelShape",
    "Layout",
    "ColumnCoefficientLayout",
    "CoefficientLayout",
    "ColumnLayout",
    "ReplicatedLayout",
    "Im2colLayout",
    "IMAGE_FLOOD",
    "LAYOUTS",
    "layout_for",
    "circuit_shape",
    "evaluate",
    "evaluate_loaded",
]

#: Amplitude of the flooding noise added to every response, in output (logit) units.
FLOOD = 2.0**-17
#: Flooding of the ``im2col`` layout's response, in logit units: its logits sit at ~2**19,
#: where rescaling rounding and the encoding rounding of the dense weights' zeros leave a
#: residue of rms ~5e-3 in every slot (measured on the digits CNN); this flood (rms 0.036)
#: is seven times that. The requester averages each logit's 256 copies (rms 2.3e-3 left).
IMAGE_FLOOD = 2.0**-4
#: Bits the replicated layout moves from the first-layer weights to the inputs before its
#: replication rotations (measured on the breast-cancer MLP: 0 bits, max logit error 4e-4;
#: 4 bits, 3e-5; 8 bits, 2e-4 as the weights lose precision).
_REPLICATION_LIFT_BITS = 4


@dataclass(frozen=True)
class ModelShape:
    """What a layout needs to know about a model.

    Attributes
    ----------
    n_features
        Input width.
    hidden
        Hidden units (``poly_mlp``; 0 for linear models).
    outputs
        Outputs per patient: 1 for a two-class model, else the number of classes.
    """

    n_features: int
    hidden: int = 0
    outputs: int = 1
    #: ``cnn2d`` only: (channels, height, width), the two filter counts and the kernel.
    input_shape: tuple[int, ...] = ()
    filters: tuple[int, ...] = ()
    kernel: int = 0


class Layout(Protocol):
    """One packing layout for one model shape under one parameter set."""

    #: The wire name of the layout.
    name: ClassVar[PackingLayout]
    #: The model family whose circuits it evaluates (a ``ModelFamily`` value).
    family: ClassVar[str]

    def capacity(self) -> int:
        """The most patients one request may declare."""
        ...

    def rotation_steps(self) -> tuple[int, ...]:
        """Rotations the server performs (Galois keys the public context must hold)."""
        ...

    def ciphertext_count(self, batch_size: int) -> int:
        """Input ciphertexts of a request for ``batch_size`` patients."""
        ...

    def carried(self, ciphertexts: int) -> int:
        """Patients that many input ciphertexts can carry: what a request is charged."""
        ...

    def pack(self, features: FloatArray) -> list[Any]:
        """Slot values to encode and encrypt, one entry per input ciphertext.

        Raises
        ------
        InputError
            If the features do not have the shape's width or exceed the capacity.
        """
        ...

    def unpack(self, values: Sequence[ComplexArray], batch_size: int) -> FloatArray:
        """The outputs of ``batch_size`` patients from the decrypted results' slots.

        Raises
        ------
        InputError
            If the number of results does not fit the layout.
        """
        ...

    def evaluate(
        self,
        context: PublicContext,
        circuit: Circuit,
        inputs: Sequence[Any],
        *,
        batch_size: int,
        random_bytes: RandomBytes,
    ) -> list[Any]:
        """The result ciphertexts of ``circuit`` for the ``batch_size`` declared patients."""
        ...


def _check_width(features: FloatArray, shape: ModelShape) -> FloatArray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != shape.n_features:
        raise InputError(
            f"the model takes {shape.n_features} features per patient, got array of shape {x.shape}"
        )
    return x


def _multiply_accumulate(
    runtime: Runtime, inputs: Sequence[Any], weights: npt.NDArray[np.float64], scale: float
) -> Any:
    """``sum_j weights[j] * inputs[j]`` at ``input scale * scale`` (zero weights skipped)."""
    parms_id = inputs[0].parms_id()
    accumulator = _products(
        runtime,
        [
            (ciphertext, None if weight == 0.0 else encode(runtime, float(weight), parms_id, scale))
            for ciphertext, weight in zip(inputs, weights, strict=True)
        ],
    )
    if accumulator is None:
        raise CryptoError("a layer has only zero weights; the model is constant")
    return accumulator


def _products(runtime: Runtime, pairs: Sequence[tuple[Any, Any | None]]) -> Any | None:
    """``sum(ciphertext * plaintext)`` into a new ciphertext (None: all plaintexts zero)."""
    evaluator = runtime.evaluator
    total = None
    product = sa.Ciphertext()
    for ciphertext, plaintext in pairs:
        if plaintext is None:
            continue
        if total is None:
            total = sa.Ciphertext()
            evaluator.multiply_plain(ciphertext, plaintext, total)
        else:
            evaluator.multiply_plain(ciphertext, plaintext, product)
            evaluator.add_inplace(total, product)
    return total


def _rotate_and_add(
    runtime: Runtime, value: Any, steps: Sequence[int], galois_keys: Any, rotated: Any
) -> None:
    """``value += rotate(value, step)`` for each step in turn (``rotated``: scratch)."""
    evaluator = runtime.evaluator
    for step in steps:
        evaluator.rotate_vector(value, step, galois_keys, rotated)
        evaluator.add_inplace(value, rotated)


def _single(values: Sequence[ComplexArray], layout: PackingLayout) -> ComplexArray:
    if len(values) != 1:
        raise InputError(f"a {layout} response carries one result, got {len(values)}")
    return values[0]


def _count(values: Sequence[ComplexArray], expected: int) -> None:
    if len(values) != expected:
        raise InputError(f"expected {expected} results, got {len(values)}")


def _by_patient(per_output: FloatArray) -> FloatArray:
    """``(outputs, batch)`` logits as ``(batch,)`` for one output, else ``(batch, outputs)``."""
    if per_output.shape[0] == 1:
        return np.asarray(per_output[0], dtype=np.float64)
    return np.asarray(per_output.T, dtype=np.float64)


def _grouped(values: Sequence[ComplexArray], outputs: int) -> list[list[ComplexArray]]:
    """Results ``[group * outputs + c]`` as ``[c][group]``."""
    return [list(values[c::outputs]) for c in range(outputs)]


def _linear(circuit: Circuit, layout: PackingLayout) -> LinearCircuit:
    if not isinstance(circuit, LinearCircuit):
        raise CryptoError(f"layout {layout} does not serve poly_mlp")
    return circuit


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
    unit = _multiply_accumulate(runtime, inputs, weights, scale)
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
    Each output is finally multiplied by a 0/1 selector of the ``live`` declared images,
    encoded at the scale of the next prime and rescaled by it, so its encoding error is
    ~2**-40 of a logit (a selector folded into the dense weights would be encoded at their
    small scale instead).
    """
    evaluator = runtime.evaluator
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
                _squared_unit(
                    runtime, pooled1, conv.conv2[u], conv.conv2_scale, float(conv.bias2[u])
                )
                for u in window
            ],
        )
        for window in conv.pool2
    ]
    del pooled1
    slots = runtime.parameter_set.slots
    selector = np.zeros(slots, dtype=np.float64)
    selector[:live] = 1.0
    mask = None
    results = []
    for weights, bias in zip(conv.fc, conv.fc_bias, strict=True):
        output = _multiply_accumulate(runtime, pooled2, weights, conv.fc_scale)
        evaluator.add_plain_inplace(
            output, encode(runtime, float(bias), output.parms_id(), output.scale)
        )
        if mask is None:
            prime = runtime.context.get_context_data(output.parms_id()).parms().coeff_modulus()[-1]
            mask = encode(runtime, selector.tolist(), output.parms_id(), float(prime.value()))
        evaluator.multiply_plain_inplace(output, mask)
        evaluator.rescale_to_next_inplace(output)
        results.append(output)
    return results


def _masked_outputs(
    runtime: Runtime,
    outputs: npt.NDArray[np.int64],
    value: float,
    scale: float,
    random_bytes: RandomBytes,
) -> npt.NDArray[np.uint64]:
    """Residues of the polynomial a coefficient layout adds to one result ciphertext.

    ``value`` (the bias) plus flooding at the ``outputs`` coefficients; an integer uniform
    modulo q at every other coefficient.
    """
    primes = runtime.primes[:1]
    degree = runtime.parameter_set.poly_modulus_degree
    if outputs.size < degree:
        residues = uniform_residues(primes, degree, random_bytes)
    else:  # every coefficient is a declared output: nothing to mask
        residues = np.empty((1, degree), dtype=np.uint64)
    flood = bounded_integers(math.floor(FLOOD * scale), outputs.size, random_bytes)
    residues[:, outputs] = residues_of(flood + round(value * scale), primes)
    return residues


def _slot_flood(
    runtime: Runtime, ciphertext: Any, random_bytes: RandomBytes, amplitude: float = FLOOD
) -> None:
    """Add uniform ``+-amplitude`` noise to the real and imaginary part of every slot."""
    slots = runtime.parameter_set.slots
    raw = np.frombuffer(random_bytes(16 * slots), dtype="<u8").reshape(2, slots)
    unit = raw.astype(np.float64) / 2.0**63 - 1.0  # uniform in [-1, 1)
    noise = amplitude * (unit[0] + 1j * unit[1])
    plaintext = encode(runtime, noise.tolist(), ciphertext.parms_id(), ciphertext.scale)
    runtime.evaluator.add_plain_inplace(ciphertext, plaintext)


@dataclass(frozen=True)
class _ColumnOf:
    """A column layout: one ciphertext per feature, a full column carried."""

    name: ClassVar[PackingLayout]
    parameter_set: CKKSParameterSet
    shape: ModelShape

    def capacity(self) -> int:
        """One patient per coefficient or slot."""
        raise NotImplementedError

    def rotation_steps(self) -> tuple[int, ...]:
        """None."""
        return ()

    def ciphertext_count(self, batch_size: int) -> int:
        """One ciphertext per feature."""
        return self.shape.n_features

    def carried(self, ciphertexts: int) -> int:
        """A full column: :meth:`capacity` patients."""
        return self.capacity()

    def _column(self, value: ComplexArray, batch_size: int) -> FloatArray:
        """The first ``batch_size`` patients' outputs in one decrypted result."""
        raise NotImplementedError

    def unpack(self, values: Sequence[ComplexArray], batch_size: int) -> FloatArray:
        """The first ``batch_size`` patients' outputs of each output's result."""
        if self.shape.outputs == 1:
            values = [_single(values, self.name)]
        _count(values, self.shape.outputs)
        return _by_patient(np.stack([self._column(v, batch_size) for v in values]))


@dataclass(frozen=True)
class _GroupsOf:
    """A small-batch layout: a few patients per ciphertext.

    Construction refuses a model that does not fit.
    """

    parameter_set: CKKSParameterSet
    shape: ModelShape

    def __post_init__(self) -> None:
        _ = self._per_ciphertext()  # refuse a model that does not fit now

    def _per_ciphertext(self) -> int:
        """Patients per ciphertext (raises ``InputError`` if the model does not fit)."""
        raise NotImplementedError

    def _group(self, values: ComplexArray, batch_size: int) -> FloatArray:
        """One output's values of the first ``batch_size`` patients from its results."""
        raise NotImplementedError

    def capacity(self) -> int:
        """The measured crossover with the batch layout."""
        return self.parameter_set.small_batch_max

    def ciphertext_count(self, batch_size: int) -> int:
        """``ceil(batch / patients per ciphertext)``."""
        return -(-batch_size // self._per_ciphertext())

    def carried(self, ciphertexts: int) -> int:
        """Every patient place of the ciphertexts."""
        return ciphertexts * self._per_ciphertext()

    def unpack(self, values: Sequence[ComplexArray], batch_size: int) -> FloatArray:
        """Each output's values of the first ``batch_size`` patients, group by group."""
        _count(values, self.ciphertext_count(batch_size) * self.shape.outputs)
        return _by_patient(
            np.stack(
                [
                    self._group(np.stack(group), batch_size)
                    for group in _grouped(values, self.shape.outputs)
                ]
            )
        )


@dataclass(frozen=True)
class ColumnCoefficientLayout(_ColumnOf):
    """``column_coefficient``: one ciphertext per feature, patient p at coefficient p.

    Batched logistic regression. The server computes ``sum_j w_j * ct_j`` (scalar
    products act coefficient-wise), then adds one integer polynomial: the bias and
    flooding at the declared patients' coefficients, a uniform mask modulo q elsewhere.
    """

    name: ClassVar[PackingLayout] = PackingLayout.COLUMN_COEFFICIENT
    family: ClassVar[str] = "logistic"

    def capacity(self) -> int:
        """One patient per coefficient."""
        return self.parameter_set.poly_modulus_degree

    def _column(self, value: ComplexArray, batch_size: int) -> FloatArray:
        """The first ``batch_size`` coefficients."""
        return unpack_column_coefficients(coefficients_from_slots(value), batch_size)

    def pack(self, features: FloatArray) -> list[Any]:
        """Row j: the slot values that encode feature j of every patient as coefficients."""
        x = _check_width(features, self.shape)
        rows = pack_column_coefficients(x, self.parameter_set.poly_modulus_degree)
        return [slots_from_coefficients(row) for row in rows]

    def evaluate(
        self,
        context: PublicContext,
        circuit: Circuit,
        inputs: Sequence[Any],
        *,
        batch_size: int,
        random_bytes: RandomBytes,
    ) -> list[Any]:
        """Per output: scalar products and additions, then one exact polynomial addition."""
        linear = _linear(circuit, self.name)
        runtime = context.runtime
        live = np.arange(min(batch_size, self.capacity()), dtype=np.int64)
        results = []
        for weights, bias in zip(linear.weights, linear.bias, strict=True):
            accumulator = _multiply_accumulate(runtime, inputs, weights, linear.weight_scale)
            residues = _masked_outputs(runtime, live, float(bias), accumulator.scale, random_bytes)
            add_coefficients(runtime, accumulator, residues)
            results.append(accumulator)
        return results


@dataclass(frozen=True)
class CoefficientLayout(_GroupsOf):
    """``coefficient``: patient p's feature j is coefficient ``p * n + j`` (logistic).

    Small batches. The server multiplies by ``sum_j w_j X**(-j)`` (patient p's dot product
    lands in coefficient ``p * n``), then adds the bias and flooding at the declared
    patients' output coefficients and a uniform mask modulo q at every other coefficient,
    undeclared patients' outputs included.

    Raises
    ------
    InputError
        On construction, if the model is wider than the ring.
    """

    name: ClassVar[PackingLayout] = PackingLayout.COEFFICIENT
    family: ClassVar[str] = "logistic"

    @property
    def geometry(self) -> CoefficientGeometry:
        """Where patients sit among the coefficients."""
        return CoefficientGeometry(self.shape.n_features, self.parameter_set.poly_modulus_degree)

    def _per_ciphertext(self) -> int:
        """``floor(N / n)``."""
        return self.geometry.patients_per_ciphertext

    def _group(self, values: ComplexArray, batch_size: int) -> FloatArray:
        """The output coefficients."""
        return self.geometry.unpack(coefficients_from_slots(values), batch_size)

    def rotation_steps(self) -> tuple[int, ...]:
        """None."""
        return ()

    def pack(self, features: FloatArray) -> list[Any]:
        """Slot values that encode the coefficient vectors."""
        x = _check_width(features, self.shape)
        return [slots_from_coefficients(c) for c in self.geometry.pack(x)]

    def evaluate(
        self,
        context: PublicContext,
        circuit: Circuit,
        inputs: Sequence[Any],
        *,
        batch_size: int,
        random_bytes: RandomBytes,
    ) -> list[Any]:
        """Per ciphertext and output: one plaintext product and one exact addition."""
        linear = _linear(circuit, self.name)
        runtime = context.runtime
        degree = runtime.parameter_set.poly_modulus_degree
        geometry = CoefficientGeometry(linear.n_features, degree)
        polynomials = [
            encode(
                runtime,
                slots_from_coefficients(geometry.weight_polynomial(row)).tolist(),
                inputs[0].parms_id(),
                linear.weight_scale,
            )
            for row in linear.weights
        ]
        per = geometry.patients_per_ciphertext
        outputs = geometry.output_positions()
        results = []
        for index, ciphertext in enumerate(inputs):
            live = outputs[: max(0, min(per, batch_size - index * per))]
            for weights, bias in zip(polynomials, linear.bias, strict=True):
                result = sa.Ciphertext()
                runtime.evaluator.multiply_plain(ciphertext, weights, result)
                residues = _masked_outputs(runtime, live, float(bias), result.scale, random_bytes)
                add_coefficients(runtime, result, residues)
                results.append(result)
        return results


@dataclass(frozen=True)
class ColumnLayout(_ColumnOf):
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
        x = _check_width(features, self.shape)
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
                _slot_flood(runtime, result, random_bytes)
            return results
        quadratic = _quadratic(circuit, self.name)
        outputs: list[Any] = [None] * quadratic.outputs
        product = sa.Ciphertext()
        for unit in np.flatnonzero(np.any(quadratic.output_weights, axis=0)):
            hidden = _multiply_accumulate(
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
            _slot_flood(runtime, output, random_bytes)
            results.append(output)
        return results


@dataclass(frozen=True)
class ReplicatedLayout(_GroupsOf):
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
        x = _check_width(features, self.shape)
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
            _rotate_and_add(runtime, value, geometry.replication_steps(), galois_keys, rotated)
            first = plaintext(
                ("first", live),
                partial(geometry.first_layer_vector, quadratic.hidden_weights, live),
                value,
                quadratic.hidden_weight_scale / 2.0**_REPLICATION_LIFT_BITS,
            )
            evaluator.multiply_plain_inplace(value, first)
            _rotate_and_add(runtime, value, geometry.block_sum_steps(), galois_keys, rotated)
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
                _rotate_and_add(runtime, output, geometry.unit_sum_steps(), galois_keys, rotated)
                constant = plaintext(
                    (f"constant-{c}", live),
                    partial(geometry.output_constant, float(quadratic.output_bias[c]), live),
                    output,
                    output.scale,
                )
                evaluator.add_plain_inplace(output, constant)
                _slot_flood(runtime, output, random_bytes)
                results.append(output)
        return results


@dataclass(frozen=True)
class Im2colLayout:
    """``im2col``: one image per ciphertext, its convolution windows packed by the requester.

    See :mod:`veracity.he.image` for where everything sits. Per image the server performs
    one plaintext product per layer and tap group, two squares (relinearised) and ~28
    rotations (Galois keys sent once, cached by hash). The result holds, in every slot,
    a copy of one declared logit or zero; it is flooded with ``IMAGE_FLOOD``.

    Raises
    ------
    InputError
        On construction, if the network does not fit one ciphertext.
    """

    name: ClassVar[PackingLayout] = PackingLayout.IM2COL
    family: ClassVar[str] = "cnn2d"
    parameter_set: CKKSParameterSet
    shape: ModelShape

    def __post_init__(self) -> None:
        _ = self.geometry  # refuse a network that does not fit now

    @property
    def geometry(self) -> ImageGeometry:
        """Where the image and the units sit among the slots."""
        shape = self.shape
        if len(shape.input_shape) != 3 or len(shape.filters) != 2 or shape.kernel < 1:
            raise InputError("the im2col layout serves cnn2d models only")
        channels, height, width = (int(d) for d in shape.input_shape)
        first, second = (int(f) for f in shape.filters)
        return ImageGeometry(
            (channels, height, width),
            (first, second),
            shape.kernel,
            shape.outputs,
            self.parameter_set.slots,
        )

    def capacity(self) -> int:
        """The most images per request (each has its own ciphertext)."""
        return self.parameter_set.small_batch_max

    def rotation_steps(self) -> tuple[int, ...]:
        """See :meth:`ImageGeometry.rotation_steps`."""
        return self.geometry.rotation_steps()

    def ciphertext_count(self, batch_size: int) -> int:
        """One ciphertext per image."""
        return batch_size

    def carried(self, ciphertexts: int) -> int:
        """One image per ciphertext."""
        return ciphertexts

    def pack(self, features: FloatArray) -> list[Any]:
        """Each image's windows."""
        x = _check_width(features, self.shape)
        if x.shape[0] > self.capacity():
            raise InputError(f"at most {self.capacity()} images per {self.name} request")
        geometry = self.geometry
        return [geometry.pack(row) for row in x]

    def unpack(self, values: Sequence[ComplexArray], batch_size: int) -> FloatArray:
        """Each image's logits (the mean of their copies)."""
        _count(values, batch_size)
        geometry = self.geometry
        logits = np.stack([geometry.unpack(v) for v in values])
        return _by_patient(logits.T)

    def evaluate(
        self,
        context: PublicContext,
        circuit: Circuit,
        inputs: Sequence[Any],
        *,
        batch_size: int,
        random_bytes: RandomBytes,
    ) -> list[Any]:
        """Per image: the slot program of :meth:`ImageGeometry.simulate`, encrypted."""
        if not isinstance(circuit, ConvCircuit):
            raise CryptoError(f"layout {self.name} serves cnn2d only")
        runtime = context.runtime
        evaluator = runtime.evaluator
        geometry = ImageGeometry(
            circuit.input_shape,
            circuit.filters,
            circuit.kernel,
            circuit.outputs,
            runtime.parameter_set.slots,
        )
        galois_keys, relin_keys = context.rotation_keys(geometry.rotation_steps())
        plain = _PlaintextCache(runtime, circuit)
        rotated = sa.Ciphertext()

        def summed(value: Any, steps: Sequence[int]) -> None:
            _rotate_and_add(runtime, value, steps, galois_keys, rotated)

        def rotate(value: Any, step: int) -> Any:
            out = sa.Ciphertext()
            evaluator.rotate_vector(value, step, galois_keys, out)
            return out

        def square(value: Any) -> None:
            evaluator.square_inplace(value)
            evaluator.relinearize_inplace(value, relin_keys)

        pad = circuit.kernel // 2
        width = circuit.input_shape[2]
        baby = geometry.baby
        results = []
        for value in inputs:
            evaluator.multiply_plain_inplace(
                value,
                plain("w1", lambda: geometry.first_weights(circuit), value, circuit.conv1_scale),
            )
            summed(value, geometry.first_sum_steps())
            evaluator.add_plain_inplace(
                value, plain("b1", lambda: geometry.first_bias(circuit), value, value.scale)
            )
            evaluator.rescale_to_next_inplace(value)
            square(value)
            summed(value, geometry.pool1_steps())
            shifted = {
                dj: (value if dj == 0 else rotate(value, 2 * dj)) for dj in range(-pad, pad + 1)
            }
            layer = None
            for di in range(-pad, pad + 1):
                inner = _products(
                    runtime,
                    [
                        (
                            shifted[dj],
                            plain(
                                f"w2-{di}-{dj}",
                                partial(_entry, geometry.conv2_weights, circuit, (di, dj)),
                                value,
                                circuit.conv2_scale,
                            ),
                        )
                        for dj in range(-pad, pad + 1)
                    ],
                )
                if inner is None:
                    continue
                if di:
                    evaluator.rotate_vector_inplace(inner, 2 * width * di, galois_keys)
                if layer is None:
                    layer = inner
                else:
                    evaluator.add_inplace(layer, inner)
            if layer is None:
                raise CryptoError("the second convolution has only zero weights")
            summed(layer, geometry.channel_sum_steps())
            evaluator.add_plain_inplace(
                layer, plain("b2", lambda: geometry.second_bias(circuit), layer, layer.scale)
            )
            evaluator.rescale_to_next_inplace(layer)
            square(layer)
            summed(layer, geometry.pool2_steps())
            moved = [layer]
            for _ in range(1, baby):
                moved.append(rotate(moved[-1], -1))
            output = None
            for giant in reversed(range(geometry.modulus // baby)):
                inner = _products(
                    runtime,
                    [
                        (
                            moved[b],
                            plain(
                                f"fc-{giant}-{b}",
                                partial(_entry, geometry.dense_weights, circuit, (giant, b)),
                                layer,
                                circuit.fc_scale,
                            ),
                        )
                        for b in range(baby)
                    ],
                )
                if output is not None:  # Horner: the sum so far moves right by one giant step
                    evaluator.rotate_vector_inplace(output, -baby, galois_keys)
                    if inner is not None:
                        evaluator.add_inplace(output, inner)
                else:
                    output = inner
            if output is None:
                raise CryptoError("the dense layer has only zero weights")
            summed(output, geometry.class_sum_steps())
            evaluator.add_plain_inplace(
                output, plain("fc-b", lambda: geometry.dense_bias(circuit), output, output.scale)
            )
            evaluator.rescale_to_next_inplace(output)
            _slot_flood(runtime, output, random_bytes, IMAGE_FLOOD)
            results.append(output)
        return results


def _entry(
    maker: Callable[[ConvCircuit], dict[tuple[int, int], FloatArray]],
    circuit: ConvCircuit,
    key: tuple[int, int],
) -> FloatArray:
    return maker(circuit)[key]


class _PlaintextCache:
    """Weight plaintexts of one circuit, encoded once per (name, level, scale).

    Kept across requests (the most recent ``_PLAINTEXT_CACHE_SIZE``); each entry holds its
    circuit, so an id is never reused for another model while its entry lives.
    """

    def __init__(self, runtime: Runtime, circuit: ConvCircuit) -> None:
        self._runtime = runtime
        self._circuit = circuit

    def __call__(
        self, name: str, values: Callable[[], FloatArray], at: Any, scale: float
    ) -> Any | None:
        """The plaintext of ``values()`` at ``at``'s level and ``scale`` (None: all zero)."""
        key = (id(self._runtime), id(self._circuit), name, tuple(at.parms_id()), float(scale))
        found = _PLAINTEXTS.get(key)
        if found is not None and found[0] is self._circuit:
            _PLAINTEXTS.move_to_end(key)
            return found[1]
        vector = values()
        plaintext = (
            None
            if not np.any(vector)
            else encode(self._runtime, vector.tolist(), at.parms_id(), scale)
        )
        _PLAINTEXTS[key] = (self._circuit, plaintext)
        while len(_PLAINTEXTS) > _PLAINTEXT_CACHE_SIZE:
            _PLAINTEXTS.popitem(last=False)
        return plaintext


#: Weight plaintexts kept (about 30 per served image model, ~0.4 MiB each at N = 8192).
_PLAINTEXT_CACHE_SIZE = 128
_PLAINTEXTS: OrderedDict[tuple[Any, ...], tuple[ConvCircuit, Any | None]] = OrderedDict()


#: Every packing layout's implementation.
LAYOUTS: dict[PackingLayout, Callable[[CKKSParameterSet, ModelShape], Layout]] = {
    PackingLayout.COLUMN_COEFFICIENT: ColumnCoefficientLayout,
    PackingLayout.COEFFICIENT: CoefficientLayout,
    PackingLayout.COLUMN: ColumnLayout,
    PackingLayout.REPLICATED: ReplicatedLayout,
    PackingLayout.IM2COL: Im2colLayout,
}


def layout_for(layout: PackingLayout, parameter_set: CKKSParameterSet, shape: ModelShape) -> Layout:
    """The implementation of ``layout`` for a model of ``shape`` under ``parameter_set``.

    Raises
    ------
    InputError
        If the model does not fit the layout.
    """
    return LAYOUTS[layout](parameter_set, shape)


def circuit_shape(circuit: Circuit) -> ModelShape:
    """The model shape a compiled circuit evaluates."""
    if isinstance(circuit, QuadraticCircuit):
        return ModelShape(circuit.n_features, circuit.hidden, circuit.outputs)
    if isinstance(circuit, ConvCircuit):
        return ModelShape(
            circuit.n_features,
            outputs=circuit.outputs,
            input_shape=circuit.input_shape,
            filters=circuit.filters,
            kernel=circuit.kernel,
        )
    return ModelShape(circuit.n_features, outputs=circuit.outputs)


def evaluate_loaded(
    context: PublicContext,
    circuit: Circuit,
    layout: PackingLayout,
    inputs: Sequence[Any],
    *,
    batch_size: int,
    random_bytes: RandomBytes = os.urandom,
) -> list[bytes]:
    """Evaluate ``circuit`` on ciphertexts already loaded by ``context.load_inputs``.

    Raises
    ------
    CryptoError
        If the layout does not suit the circuit or keys it needs are missing.
    InputError
        If ``batch_size`` does not fit the ciphertexts.
    """
    strategy = layout_for(layout, context.parameter_set, circuit_shape(circuit))
    expected = strategy.ciphertext_count(batch_size) if batch_size >= 1 else 0
    if expected != len(inputs) or batch_size > strategy.carried(len(inputs)):
        raise InputError(
            f"a {layout} batch of {batch_size} needs {expected} ciphertexts, got {len(inputs)}"
        )
    with seal_errors("encrypted evaluation failed"):
        outputs = strategy.evaluate(
            context, circuit, inputs, batch_size=batch_size, random_bytes=random_bytes
        )
    file = scratch()
    return [file.save(output) for output in outputs]


def evaluate(
    context: PublicContext,
    circuit: Circuit,
    layout: PackingLayout,
    ciphertexts: Sequence[bytes],
    *,
    batch_size: int,
    random_bytes: RandomBytes = os.urandom,
) -> list[bytes]:
    """Evaluate ``circuit`` for ``batch_size`` declared patients; return the results.

    Parameters
    ----------
    context
        The requester's public context (never a secret one).
    circuit
        The compiled model (:func:`veracity.he.circuit.compile_circuit`).
    layout
        How the ciphertexts pack patients; must suit the circuit.
    ciphertexts
        Serialised input ciphertexts.
    batch_size
        The declared patients: only their outputs leave the server.
    random_bytes
        Source of masks and flooding (``os.urandom``; injectable for tests).

    Raises
    ------
    CryptoError
        If a ciphertext is not a fresh top-level ciphertext of the context's parameter set,
        the layout does not suit the circuit, or keys the layout needs are missing.
    InputError
        If a ciphertext is truncated or not a SEAL object, or ``batch_size`` does not fit
        the ciphertexts.
    """
    strategy = layout_for(layout, context.parameter_set, circuit_shape(circuit))
    expected = strategy.ciphertext_count(batch_size) if batch_size >= 1 else 0
    if expected != len(ciphertexts):
        raise InputError(
            f"a {layout} batch of {batch_size} needs {expected} ciphertexts, got {len(ciphertexts)}"
        )
    inputs = context.load_inputs(ciphertexts)
    return evaluate_loaded(
        context, circuit, layout, inputs, batch_size=batch_size, random_bytes=random_bytes
    )
