"""The ``im2col`` layout: one image per ciphertext (``cnn2d``), and its weight plaintext cache."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import numpy as np
import tenseal.sealapi as sa

from veracity.errors import CryptoError, InputError
from veracity.he.circuit import Circuit, ConvCircuit
from veracity.he.image import ImageGeometry
from veracity.he.layouts.base import (
    ModelShape,
    by_patient,
    check_count,
    check_width,
    products,
    rotate_and_add,
    slot_flood,
)
from veracity.he.packing import ComplexArray, FloatArray
from veracity.he.params import CKKSParameterSet, PackingLayout
from veracity.he.public_context import PublicContext
from veracity.he.seal import RandomBytes, Runtime, encode

__all__ = ["IMAGE_FLOOD", "Im2colLayout"]

#: Flooding of the ``im2col`` layout's response, in logit units: its logits sit at ~2**19,
#: where rescaling rounding and the encoding rounding of the dense weights' zeros leave a
#: residue of rms ~5e-3 in every slot (measured on the digits CNN); this flood (rms 0.036)
#: is seven times that. The requester averages each logit's 256 copies (rms 2.3e-3 left).
IMAGE_FLOOD = 2.0**-4


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
        if len(shape.input_shape) != 3 or len(shape.filters) not in (1, 2) or shape.kernel < 1:
            raise InputError("the im2col layout serves cnn2d models only")
        channels, height, width = (int(d) for d in shape.input_shape)
        return ImageGeometry(
            (channels, height, width),
            tuple(int(f) for f in shape.filters),
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
        x = check_width(features, self.shape)
        if x.shape[0] > self.capacity():
            raise InputError(f"at most {self.capacity()} images per {self.name} request")
        geometry = self.geometry
        return [geometry.pack(row) for row in x]

    def unpack(self, values: Sequence[ComplexArray], batch_size: int) -> FloatArray:
        """Each image's logits (the mean of their copies)."""
        check_count(values, batch_size)
        geometry = self.geometry
        logits = np.stack([geometry.unpack(v) for v in values])
        return by_patient(logits.T)

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
            rotate_and_add(runtime, value, steps, galois_keys, rotated)

        def rotate(value: Any, step: int) -> Any:
            out = sa.Ciphertext()
            evaluator.rotate_vector(value, step, galois_keys, out)
            return out

        def square(value: Any) -> None:
            evaluator.square_inplace(value)
            evaluator.relinearize_inplace(value, relin_keys)

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
            if geometry.two_layers:
                layer = self._second_layer(
                    runtime, circuit, geometry, value, plain, galois_keys, (summed, rotate, square)
                )
            else:
                # One convolution leaves a level unused: the pooled maps lose it now (exact:
                # _one_conv_scales sized them to fit), so the dense rotations act on two
                # primes, and the logits end under one, as after two convolutions.
                evaluator.mod_switch_to_next_inplace(value)
                layer = value
            moved = [layer]
            for _ in range(1, baby):
                moved.append(rotate(moved[-1], -1))
            output = None
            for giant in reversed(range(geometry.modulus // baby)):
                inner = products(
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
            slot_flood(runtime, output, random_bytes, IMAGE_FLOOD)
            results.append(output)
        return results

    def _second_layer(
        self,
        runtime: Runtime,
        circuit: ConvCircuit,
        geometry: ImageGeometry,
        value: Any,
        plain: _PlaintextCache,
        galois_keys: Any,
        steps: tuple[
            Callable[[Any, Sequence[int]], None],
            Callable[[Any, int], Any],
            Callable[[Any], None],
        ],
    ) -> Any:
        """Step 2 of the slot program: the second convolution, its squares and pool.

        ``steps`` are :meth:`evaluate`'s rotate-and-sum, rotation and relinearised square.
        """
        summed, rotate, square = steps
        evaluator = runtime.evaluator
        pad = circuit.kernel // 2
        width = circuit.input_shape[2]

        shifted = {dj: (value if dj == 0 else rotate(value, 2 * dj)) for dj in range(-pad, pad + 1)}
        layer = None
        for di in range(-pad, pad + 1):
            inner = products(
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
        return layer


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
