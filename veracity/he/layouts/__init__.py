"""Packing layouts as strategies: one class per layout, the ``LAYOUTS`` table, ``evaluate``.

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

The package holds one module per layout family: :mod:`.coefficient` (``column_coefficient``,
``coefficient``), :mod:`.slots` (``column``, ``replicated``) and :mod:`.im2col`, on what they
share in :mod:`.base` (:class:`ModelShape`, the :class:`Layout` protocol, common steps).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from veracity.errors import InputError
from veracity.he.circuit import Circuit, ConvCircuit, QuadraticCircuit
from veracity.he.layouts.base import Layout, ModelShape
from veracity.he.layouts.coefficient import CoefficientLayout, ColumnCoefficientLayout
from veracity.he.layouts.im2col import Im2colLayout
from veracity.he.layouts.slots import ColumnLayout, ReplicatedLayout
from veracity.he.params import CKKSParameterSet, PackingLayout
from veracity.he.public_context import PublicContext
from veracity.he.seal import RandomBytes, scratch, seal_errors

__all__ = [
    "ModelShape",
    "Layout",
    "ColumnCoefficientLayout",
    "CoefficientLayout",
    "ColumnLayout",
    "ReplicatedLayout",
    "Im2colLayout",
    "LAYOUTS",
    "layout_for",
    "circuit_shape",
    "evaluate",
    "evaluate_loaded",
]

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
