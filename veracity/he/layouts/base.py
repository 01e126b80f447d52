"""What every packing layout shares: the model shape, the ``Layout`` protocol, common steps.

:class:`ModelShape` and :class:`Layout` are what :mod:`veracity.he.layouts` maps layouts by;
:class:`ColumnOf` and :class:`GroupsOf` are the bases of the column (one ciphertext per
feature) and the small-batch (a few patients per ciphertext) layouts; the functions are the
evaluation steps and checks more than one layout family uses, and :data:`FLOOD` the flooding
amplitude every layout but ``im2col`` adds last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt
import tenseal.sealapi as sa

from veracity.errors import CryptoError, InputError
from veracity.he.circuit import Circuit
from veracity.he.packing import ComplexArray, FloatArray
from veracity.he.params import CKKSParameterSet, PackingLayout
from veracity.he.public_context import PublicContext
from veracity.he.seal import RandomBytes, Runtime, encode

__all__ = [
    "FLOOD",
    "ModelShape",
    "Layout",
    "ColumnOf",
    "GroupsOf",
    "by_patient",
    "check_count",
    "check_width",
    "multiply_accumulate",
    "products",
    "rotate_and_add",
    "slot_flood",
]

#: Amplitude of the flooding noise added to every response, in output (logit) units.
FLOOD = 2.0**-17


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


def check_width(features: FloatArray, shape: ModelShape) -> FloatArray:
    """``features`` as a float array, if it is ``(patients, shape.n_features)``.

    Raises
    ------
    InputError
        If it is not.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != shape.n_features:
        raise InputError(
            f"the model takes {shape.n_features} features per patient, got array of shape {x.shape}"
        )
    return x


def multiply_accumulate(
    runtime: Runtime, inputs: Sequence[Any], weights: npt.NDArray[np.float64], scale: float
) -> Any:
    """``sum_j weights[j] * inputs[j]`` at ``input scale * scale`` (zero weights skipped)."""
    parms_id = inputs[0].parms_id()
    accumulator = products(
        runtime,
        [
            (ciphertext, None if weight == 0.0 else encode(runtime, float(weight), parms_id, scale))
            for ciphertext, weight in zip(inputs, weights, strict=True)
        ],
    )
    if accumulator is None:
        raise CryptoError("a layer has only zero weights; the model is constant")
    return accumulator


def products(runtime: Runtime, pairs: Sequence[tuple[Any, Any | None]]) -> Any | None:
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


def rotate_and_add(
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


def check_count(values: Sequence[ComplexArray], expected: int) -> None:
    """Raise ``InputError`` unless there are exactly ``expected`` results."""
    if len(values) != expected:
        raise InputError(f"expected {expected} results, got {len(values)}")


def by_patient(per_output: FloatArray) -> FloatArray:
    """``(outputs, batch)`` logits as ``(batch,)`` for one output, else ``(batch, outputs)``."""
    if per_output.shape[0] == 1:
        return np.asarray(per_output[0], dtype=np.float64)
    return np.asarray(per_output.T, dtype=np.float64)


def _grouped(values: Sequence[ComplexArray], outputs: int) -> list[list[ComplexArray]]:
    """Results ``[group * outputs + c]`` as ``[c][group]``."""
    return [list(values[c::outputs]) for c in range(outputs)]


def slot_flood(
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
class ColumnOf:
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
        check_count(values, self.shape.outputs)
        return by_patient(np.stack([self._column(v, batch_size) for v in values]))


@dataclass(frozen=True)
class GroupsOf:
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
        check_count(values, self.ciphertext_count(batch_size) * self.shape.outputs)
        return by_patient(
            np.stack(
                [
                    self._group(np.stack(group), batch_size)
                    for group in _grouped(values, self.shape.outputs)
                ]
            )
        )
