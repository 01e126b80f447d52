"""The coefficient layouts (``column_coefficient``, ``coefficient``): logistic models.

Each declared patient's logit sits in one coefficient of a result; the server adds, at every
other coefficient, an integer uniform modulo the ciphertext modulus (and ``+-FLOOD`` at the
declared ones), so the requester learns those logits and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import tenseal.sealapi as sa

from veracity.errors import CryptoError
from veracity.he.circuit import Circuit, LinearCircuit
from veracity.he.layouts.base import FLOOD, ColumnOf, GroupsOf, check_width, multiply_accumulate
from veracity.he.packing import (
    CoefficientGeometry,
    ComplexArray,
    FloatArray,
    coefficients_from_slots,
    pack_column_coefficients,
    slots_from_coefficients,
    unpack_column_coefficients,
)
from veracity.he.params import PackingLayout
from veracity.he.public_context import PublicContext
from veracity.he.seal import (
    RandomBytes,
    Runtime,
    add_coefficients,
    bounded_integers,
    encode,
    residues_of,
    uniform_residues,
)

__all__ = ["ColumnCoefficientLayout", "CoefficientLayout"]


def _linear(circuit: Circuit, layout: PackingLayout) -> LinearCircuit:
    if not isinstance(circuit, LinearCircuit):
        raise CryptoError(f"layout {layout} does not serve poly_mlp")
    return circuit


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


@dataclass(frozen=True)
class ColumnCoefficientLayout(ColumnOf):
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
        x = check_width(features, self.shape)
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
            accumulator = multiply_accumulate(runtime, inputs, weights, linear.weight_scale)
            residues = _masked_outputs(runtime, live, float(bias), accumulator.scale, random_bytes)
            add_coefficients(runtime, accumulator, residues)
            results.append(accumulator)
        return results


@dataclass(frozen=True)
class CoefficientLayout(GroupsOf):
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
        x = check_width(features, self.shape)
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
