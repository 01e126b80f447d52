"""Packing layouts as strategies: one class per layout, the ``Layout`` protocol, ``evaluate``.

A layout decides where each patient's features sit in the request's plaintexts (``pack``,
on the requester's side), how the server evaluates a circuit on the ciphertexts
(``evaluate``, with public material only) and where the outputs sit in the decrypted
results (``unpack``). :func:`layout_for` maps a :class:`~veracity.he.params.PackingLayout`
to its implementation (the ``LAYOUTS`` table); a new layout is one class and one entry.

Layouts are built for a model shape (:class:`ModelShape`): input width, hidden units and
outputs per patient. Every layout here serves one output per patient; ``outputs`` is part
of the shape so that k-class models and convolutional layouts fit the same protocol.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt
import tenseal.sealapi as sa

from veracity.errors import CryptoError, InputError
from veracity.he.circuit import Circuit, LinearCircuit, QuadraticCircuit
from veracity.he.packing import (
    CoefficientGeometry,
    ComplexArray,
    FloatArray,
    ReplicatedGeometry,
    coefficients_from_slots,
    pack_column,
    pack_column_complex,
    slots_from_coefficients,
    unpack_column,
    unpack_column_complex,
)
from veracity.he.params import CKKSParameterSet, PackingLayout
from veracity.he.seal import Runtime, encode, scratch, seal_errors

if TYPE_CHECKING:
    from veracity.he.contexts import PublicContext

__all__ = [
    "RandomBytes",
    "ModelShape",
    "Layout",
    "ColumnComplexLayout",
    "CoefficientLayout",
    "ColumnLayout",
    "ReplicatedLayout",
    "LAYOUTS",
    "layout_for",
    "circuit_shape",
    "evaluate",
]

#: Source of uniformly random bytes (masks); injectable for deterministic tests.
RandomBytes = Callable[[int], bytes]


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
        Outputs per patient (classes); 1 for the binary models served today.
    """

    n_features: int
    hidden: int = 0
    outputs: int = 1


class Layout(Protocol):
    """One packing layout for one model shape under one parameter set."""

    #: The wire name of the layout.
    name: ClassVar[PackingLayout]
    #: The model family whose circuits it evaluates (a ``ModelFamily`` value).
    family: ClassVar[str]

    def capacity(self) -> int:
        """The most patients one request may carry."""
        ...

    def rotation_steps(self) -> tuple[int, ...]:
        """Rotations the server performs (Galois keys the public context must hold)."""
        ...

    def ciphertext_count(self, batch_size: int) -> int:
        """Input ciphertexts of a request for ``batch_size`` patients."""
        ...

    def pack(self, features: FloatArray) -> list[Any]:
        """Slot values to encode and encrypt, one entry per input ciphertext."""
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
        random_bytes: RandomBytes,
    ) -> list[Any]:
        """The result ciphertexts of ``circuit`` on the loaded input ciphertexts."""
        ...


def _multiply_accumulate(
    runtime: Runtime, inputs: Sequence[Any], weights: npt.NDArray[np.float64], scale: float
) -> Any:
    """``sum_j weights[j] * inputs[j]`` at ``input scale * scale`` (zero weights skipped)."""
    evaluator = runtime.evaluator
    parms_id = inputs[0].parms_id()
    accumulator = None
    product = sa.Ciphertext()
    for ciphertext, weight in zip(inputs, weights, strict=True):
        if weight == 0.0:
            continue
        plaintext = encode(runtime, float(weight), parms_id, scale)
        if accumulator is None:
            accumulator = sa.Ciphertext()
            evaluator.multiply_plain(ciphertext, plaintext, accumulator)
        else:
            evaluator.multiply_plain(ciphertext, plaintext, product)
            evaluator.add_inplace(accumulator, product)
    if accumulator is None:
        raise CryptoError("a layer has only zero weights; the model is constant")
    return accumulator


def _single(values: Sequence[ComplexArray], layout: PackingLayout) -> ComplexArray:
    if len(values) != 1:
        raise InputError(f"a {layout} response carries one result, got {len(values)}")
    return values[0]


def _linear(circuit: Circuit, layout: PackingLayout) -> LinearCircuit:
    if not isinstance(circuit, LinearCircuit):
        raise CryptoError(f"layout {layout} does not serve poly_mlp")
    return circuit


def _quadratic(circuit: Circuit, layout: PackingLayout) -> QuadraticCircuit:
    if not isinstance(circuit, QuadraticCircuit):
        raise CryptoError(f"layout {layout} does not serve logistic regression")
    return circuit


@dataclass(frozen=True)
class ColumnComplexLayout:
    """``column_complex``: one ciphertext per feature, two patients per slot (logistic).

    Patient i sits in slot i's real part, patient ``slots + i`` in its imaginary part; the
    server computes ``sum_j w_j * ct_j + (b + ib)``.
    """

    name: ClassVar[PackingLayout] = PackingLayout.COLUMN_COMPLEX
    family: ClassVar[str] = "logistic"
    parameter_set: CKKSParameterSet
    shape: ModelShape

    def capacity(self) -> int:
        """Two patients per slot."""
        return 2 * self.parameter_set.slots

    def rotation_steps(self) -> tuple[int, ...]:
        """None."""
        return ()

    def ciphertext_count(self, batch_size: int) -> int:
        """One ciphertext per feature."""
        return self.shape.n_features

    def pack(self, features: FloatArray) -> list[Any]:
        """Row j: feature j of every patient, complex-packed."""
        return list(pack_column_complex(features, self.parameter_set.slots))

    def unpack(self, values: Sequence[ComplexArray], batch_size: int) -> FloatArray:
        """Real parts, then imaginary parts."""
        return unpack_column_complex(_single(values, self.name), batch_size)

    def evaluate(
        self,
        context: PublicContext,
        circuit: Circuit,
        inputs: Sequence[Any],
        *,
        random_bytes: RandomBytes,
    ) -> list[Any]:
        """``sum_j w_j * ct_j + (b + ib)``."""
        linear = _linear(circuit, self.name)
        runtime = context.runtime
        accumulator = _multiply_accumulate(runtime, inputs, linear.weights, linear.weight_scale)
        # Both packed patients (real and imaginary part) need the bias: add b + ib.
        bias = encode(
            runtime, complex(linear.bias, linear.bias), accumulator.parms_id(), accumulator.scale
        )
        runtime.evaluator.add_plain_inplace(accumulator, bias)
        return [accumulator]


def _uniform_mod(prime: int, count: int, random_bytes: RandomBytes) -> npt.NDArray[np.int64]:
    """``count`` integers uniform modulo ``prime`` (< 2**61), centred in (-p/2, p/2]."""
    raw = np.frombuffer(random_bytes(8 * count), dtype="<u8")
    # 2**64 mod p / 2**64 < 2**-3 * 2**-40 for a 60-bit p: the bias is negligible.
    reduced = (raw % np.uint64(prime)).astype(np.int64)
    reduced[reduced > prime // 2] -= prime
    return reduced


@dataclass(frozen=True)
class CoefficientLayout:
    """``coefficient``: patient p's feature j is coefficient ``p * n + j`` (logistic).

    The server multiplies by ``sum_j w_j X**(-j)``, adds the bias at the output
    coefficients and a uniformly random mask modulo q at every other coefficient.
    """

    name: ClassVar[PackingLayout] = PackingLayout.COEFFICIENT
    family: ClassVar[str] = "logistic"
    parameter_set: CKKSParameterSet
    shape: ModelShape

    def __post_init__(self) -> None:
        _ = self.geometry  # refuse a model that does not fit now

    @property
    def geometry(self) -> CoefficientGeometry:
        """Where patients sit among the coefficients."""
        return CoefficientGeometry(self.shape.n_features, self.parameter_set.poly_modulus_degree)

    def capacity(self) -> int:
        """The measured crossover with the batch layout."""
        return self.parameter_set.small_batch_max

    def rotation_steps(self) -> tuple[int, ...]:
        """None."""
        return ()

    def ciphertext_count(self, batch_size: int) -> int:
        """``ceil(batch / floor(N / n))``."""
        return -(-batch_size // self.geometry.patients_per_ciphertext)

    def pack(self, features: FloatArray) -> list[Any]:
        """Slot values that encode the coefficient vectors."""
        return [slots_from_coefficients(c) for c in self.geometry.pack(features)]

    def unpack(self, values: Sequence[ComplexArray], batch_size: int) -> FloatArray:
        """The output coefficients of the first ``batch_size`` patients."""
        expected = self.ciphertext_count(batch_size)
        if len(values) != expected:
            raise InputError(f"expected {expected} results, got {len(values)}")
        return self.geometry.unpack(coefficients_from_slots(np.stack(values)), batch_size)

    def evaluate(
        self,
        context: PublicContext,
        circuit: Circuit,
        inputs: Sequence[Any],
        *,
        random_bytes: RandomBytes,
    ) -> list[Any]:
        """One plaintext product and two mask additions per ciphertext."""
        linear = _linear(circuit, self.name)
        runtime = context.runtime
        degree = runtime.parameter_set.poly_modulus_degree
        geometry = CoefficientGeometry(linear.n_features, degree)
        parms_id = inputs[0].parms_id()
        weights = encode(
            runtime,
            slots_from_coefficients(geometry.weight_polynomial(linear.weights)).tolist(),
            parms_id,
            linear.weight_scale,
        )
        prime = runtime.primes[0]
        outputs = geometry.output_positions()
        results = []
        for ciphertext in inputs:
            result = sa.Ciphertext()
            runtime.evaluator.multiply_plain(ciphertext, weights, result)
            scale = result.scale
            # Every coefficient but the logits gets a uniformly random mask modulo q, so the
            # requester learns the dot products and nothing else (not the weights' shifts).
            mask = _uniform_mod(prime, degree, random_bytes)
            mask[outputs] = 0
            half = mask // 2
            first = half.astype(np.float64) / scale
            second = (mask - half).astype(np.float64) / scale
            first[outputs] = linear.bias
            for part in (first, second):
                plaintext = encode(runtime, slots_from_coefficients(part).tolist(), parms_id, scale)
                runtime.evaluator.add_plain_inplace(result, plaintext)
            results.append(result)
        return results


@dataclass(frozen=True)
class ColumnLayout:
    """``column``: one ciphertext per feature, one patient per slot (``poly_mlp``).

    ``y = sum_k alpha_k (W1 x + b1')_k**2 + gamma``: each hidden unit's products are summed
    at the product scale and rescaled once (lazy rescaling); squares are not relinearised
    (the requester's decryptor handles the three-part result).
    """

    name: ClassVar[PackingLayout] = PackingLayout.COLUMN
    family: ClassVar[str] = "poly_mlp"
    parameter_set: CKKSParameterSet
    shape: ModelShape

    def capacity(self) -> int:
        """One patient per slot."""
        return self.parameter_set.slots

    def rotation_steps(self) -> tuple[int, ...]:
        """None."""
        return ()

    def ciphertext_count(self, batch_size: int) -> int:
        """One ciphertext per feature."""
        return self.shape.n_features

    def pack(self, features: FloatArray) -> list[Any]:
        """Row j: feature j of every patient."""
        return list(pack_column(features, self.parameter_set.slots))

    def unpack(self, values: Sequence[ComplexArray], batch_size: int) -> FloatArray:
        """The first ``batch_size`` real slot values."""
        return unpack_column(_single(values, self.name), batch_size)

    def evaluate(
        self,
        context: PublicContext,
        circuit: Circuit,
        inputs: Sequence[Any],
        *,
        random_bytes: RandomBytes,
    ) -> list[Any]:
        """h·n scalar products, h rescales, h squares, h scalar products."""
        quadratic = _quadratic(circuit, self.name)
        runtime = context.runtime
        evaluator = runtime.evaluator
        output = None
        for unit in np.flatnonzero(quadratic.output_weights):
            hidden = _multiply_accumulate(
                runtime, inputs, quadratic.hidden_weights[unit], quadratic.hidden_weight_scale
            )
            bias = encode(
                runtime, float(quadratic.hidden_bias[unit]), hidden.parms_id(), hidden.scale
            )
            evaluator.add_plain_inplace(hidden, bias)
            evaluator.rescale_to_next_inplace(hidden)  # one rescale per unit: lazy rescaling
            evaluator.square_inplace(hidden)  # three parts; relinearised by the decryptor
            weight = encode(
                runtime,
                float(quadratic.output_weights[unit]),
                hidden.parms_id(),
                quadratic.output_weight_scale,
            )
            evaluator.multiply_plain_inplace(hidden, weight)
            if output is None:
                output = hidden
            else:
                evaluator.add_inplace(output, hidden)
        if output is None:
            raise CryptoError("the model has no hidden units")
        constant = encode(runtime, quadratic.output_bias, output.parms_id(), output.scale)
        evaluator.add_plain_inplace(output, constant)
        return [output]


@dataclass(frozen=True)
class ReplicatedLayout:
    """``replicated``: a few patients per ciphertext, replicated per hidden unit (``poly_mlp``).

    See :class:`~veracity.he.packing.ReplicatedGeometry`: one plaintext product, rotations
    summing each block, a rescale, a square with relinearisation, the output weights at
    block starts and rotations summing over units. Needs Galois and relinearisation keys.

    Raises
    ------
    InputError
        On construction, if the network does not fit the layout.
    """

    name: ClassVar[PackingLayout] = PackingLayout.REPLICATED
    family: ClassVar[str] = "poly_mlp"
    parameter_set: CKKSParameterSet
    shape: ModelShape

    def __post_init__(self) -> None:
        _ = self.geometry  # refuse a network that does not fit now

    @property
    def geometry(self) -> ReplicatedGeometry:
        """Where patients and units sit among the slots."""
        return ReplicatedGeometry(
            self.shape.n_features, self.shape.hidden, self.parameter_set.slots
        )

    def capacity(self) -> int:
        """The measured crossover with the batch layout."""
        return self.parameter_set.small_batch_max

    def rotation_steps(self) -> tuple[int, ...]:
        """Block sums, then sums over units."""
        return self.geometry.rotation_steps()

    def ciphertext_count(self, batch_size: int) -> int:
        """``ceil(batch / P)``."""
        return -(-batch_size // self.geometry.patients_per_ciphertext)

    def pack(self, features: FloatArray) -> list[Any]:
        """Features plus the constant 1, replicated per unit."""
        return list(self.geometry.pack(features))

    def unpack(self, values: Sequence[ComplexArray], batch_size: int) -> FloatArray:
        """Patient p's logit from slot ``p * s``."""
        expected = self.ciphertext_count(batch_size)
        if len(values) != expected:
            raise InputError(f"expected {expected} results, got {len(values)}")
        return self.geometry.unpack(np.stack(values), batch_size)

    def evaluate(
        self,
        context: PublicContext,
        circuit: Circuit,
        inputs: Sequence[Any],
        *,
        random_bytes: RandomBytes,
    ) -> list[Any]:
        """1 plaintext product, rotations, 1 relinearisation per ciphertext."""
        quadratic = _quadratic(circuit, self.name)
        runtime = context.runtime
        evaluator = runtime.evaluator
        geometry = ReplicatedGeometry(
            quadratic.n_features, quadratic.hidden, runtime.parameter_set.slots
        )
        steps = geometry.rotation_steps()
        galois_keys, relin_keys = context.rotation_keys(steps)
        inner = [s for s in steps if s < geometry.block_width]
        outer = [s for s in steps if s >= geometry.block_width]
        first = encode(
            runtime,
            geometry.first_layer_vector(quadratic.hidden_weights, quadratic.hidden_bias).tolist(),
            inputs[0].parms_id(),
            quadratic.hidden_weight_scale,
        )
        selector = constant = None
        results = []
        rotated = sa.Ciphertext()
        for ciphertext in inputs:
            value = sa.Ciphertext()
            evaluator.multiply_plain(ciphertext, first, value)
            for step in inner:
                evaluator.rotate_vector(value, step, galois_keys, rotated)
                evaluator.add_inplace(value, rotated)
            evaluator.rescale_to_next_inplace(value)
            evaluator.square_inplace(value)
            evaluator.relinearize_inplace(value, relin_keys)
            if selector is None:
                selector = encode(
                    runtime,
                    geometry.output_selector(quadratic.output_weights).tolist(),
                    value.parms_id(),
                    quadratic.output_weight_scale,
                )
            evaluator.multiply_plain_inplace(value, selector)
            for step in outer:
                evaluator.rotate_vector(value, step, galois_keys, rotated)
                evaluator.add_inplace(value, rotated)
            if constant is None:
                constant = encode(
                    runtime,
                    geometry.output_constant(quadratic.output_bias).tolist(),
                    value.parms_id(),
                    value.scale,
                )
            evaluator.add_plain_inplace(value, constant)
            results.append(value)
        return results


#: Every packing layout's implementation.
LAYOUTS: dict[PackingLayout, Callable[[CKKSParameterSet, ModelShape], Layout]] = {
    PackingLayout.COLUMN_COMPLEX: ColumnComplexLayout,
    PackingLayout.COEFFICIENT: CoefficientLayout,
    PackingLayout.COLUMN: ColumnLayout,
    PackingLayout.REPLICATED: ReplicatedLayout,
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
        return ModelShape(circuit.n_features, circuit.hidden)
    return ModelShape(circuit.n_features)


def evaluate(
    context: PublicContext,
    circuit: Circuit,
    layout: PackingLayout,
    ciphertexts: Sequence[bytes],
    *,
    random_bytes: RandomBytes = os.urandom,
) -> list[bytes]:
    """Evaluate ``circuit`` on a request's ciphertexts; return the result ciphertexts.

    Parameters
    ----------
    context
        The requester's public context (never a secret one).
    circuit
        The compiled model (:func:`veracity.he.circuit.compile_circuit`).
    layout
        How the ciphertexts pack patients; must suit the circuit.
    ciphertexts
        Serialised input ciphertexts, already counted against the layout by the caller.
    random_bytes
        Source of the coefficient layout's masks (``os.urandom``; injectable for tests).

    Raises
    ------
    CryptoError
        If a ciphertext is not a fresh top-level ciphertext of the context's parameter set,
        the layout does not suit the circuit, or keys the layout needs are missing.
    InputError
        If a ciphertext is truncated or not a SEAL object.
    """
    inputs = context.load_inputs(ciphertexts)
    strategy = layout_for(layout, context.parameter_set, circuit_shape(circuit))
    with seal_errors("encrypted evaluation failed"):
        outputs = strategy.evaluate(context, circuit, inputs, random_bytes=random_bytes)
    file = scratch()
    return [file.save(output) for output in outputs]
