"""``im2col`` layout geometry: one image per ciphertext, the convolutions as slot products.

Pure NumPy (no TenSEAL): the requester packs an image with :meth:`ImageGeometry.pack`, the
server lays out its weight plaintexts with the other methods, and :meth:`ImageGeometry.simulate`
runs the server's slot program in plain arithmetic (``np.roll`` for rotations), which the
tests compare with :meth:`~veracity.he.circuit.ConvCircuit.forward`.

Slots (for the digits CNN: 8x8 images, 4 then 8 filters of 3x3, 10 classes; N = 8192,
4096 slots): a *block* of ``B = next_pow2(next_pow2(F1) * H * W)`` slots (256) holds one
value per first-layer unit (filter f at sub-block ``f * H * W``); there are
``T = slots / B`` blocks (16).

1. The requester packs, in block t = (channel, kernel tap), the image shifted by that tap,
   zero where the tap falls outside the image, once per filter (im2col: the convolution's
   windows are in the slots). The server multiplies by the first layer's weights (one
   plaintext), sums the blocks with ``log2 T`` rotations, so every block holds the first
   convolution, adds its bias, squares, and pools (rotations by 1 and W).
2. Block o computes output channel o of the second convolution: for each tap, the pooled
   maps rotated by the tap's offset times a plaintext holding ``w2[o, c, tap]`` at channel
   c's sub-block, zero where the tap leaves the map (baby-step/giant-step: rotations by
   the column offsets, plaintexts pre-rotated, then by the row offsets), then the
   sub-blocks are summed (rotations by H*W, 2*H*W, ...). Bias, square, pool (2 and 2W).
3. Dense layer: logit k collects its products in the slots congruent to k modulo
   ``m = next_pow2(outputs)`` (16): product ``fc[k, u] * p2[u]`` moves from slot u to
   slot ``u + j`` with ``j = (k - u) mod m`` (baby-step/giant-step over j, weight plaintexts
   zero outside the pooled values, so no other slot contributes), then every slot sums its
   residue class with rotations by m, 2m, ..., slots/2.

A network with one convolution (``filters`` of one count) skips step 2: the dense layer
reads the pooled first-layer maps of block 0 (every block holds a copy).

The result: slot s holds logit ``s mod m`` (plus the dense bias) when ``s mod m < outputs``,
and zero otherwise. Every slot is a copy of a declared logit or zero; nothing else about
the image or the model is in the response.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from veracity.errors import InputError

if TYPE_CHECKING:
    from veracity.he.circuit import ConvCircuit

__all__ = ["ImageGeometry"]

FloatArray = npt.NDArray[np.float64]


def _pow2(value: int) -> int:
    return 1 << max(0, (int(value) - 1).bit_length())


def _second_layer(circuit: ConvCircuit) -> tuple[FloatArray, FloatArray]:
    """The second convolution's matrix and bias.

    Raises
    ------
    InputError
        If the network has one convolution.
    """
    if circuit.conv2 is None or circuit.bias2 is None:
        raise InputError("the network has one convolution: it has no second layer")
    return circuit.conv2, circuit.bias2


@dataclass(frozen=True)
class ImageGeometry:
    """Where one image and the network's units sit among ``slots`` slots.

    Raises
    ------
    InputError
        On construction, if the network does not fit one ciphertext this way.
    """

    input_shape: tuple[int, int, int]
    filters: tuple[int, ...]
    kernel: int
    outputs: int
    slots: int

    def __post_init__(self) -> None:
        channels, height, width = self.input_shape
        if len(self.filters) not in (1, 2):
            raise InputError("the im2col layout serves cnn2d with one or two convolutions")
        second = self.filters[-1] if self.two_layers else 0
        side = 4 if self.two_layers else 2
        if self.kernel % 2 != 1 or height % side or width % side:
            raise InputError(f"the im2col layout needs an odd kernel and sides divisible by {side}")
        if self.block * 2 > self.slots or self.blocks < max(channels * self.kernel**2, second):
            raise InputError(
                f"a {self.input_shape} image with {self.filters} filters does not fit "
                f"{self.slots} slots in the im2col layout"
            )
        if self.modulus > self.block:
            raise InputError("too many classes for the im2col layout")

    @property
    def two_layers(self) -> bool:
        """Whether the network has a second convolution."""
        return len(self.filters) == 2

    @property
    def area(self) -> int:
        """Pixels per channel (the sub-block stride)."""
        return self.input_shape[1] * self.input_shape[2]

    @property
    def block(self) -> int:
        """Slots per block."""
        return _pow2(_pow2(self.filters[0]) * self.area)

    @property
    def blocks(self) -> int:
        """Blocks per ciphertext."""
        return self.slots // self.block

    @property
    def modulus(self) -> int:
        """Residue classes of the output (``next_pow2(outputs)``)."""
        return _pow2(self.outputs)

    @property
    def _baby(self) -> int:
        return 1 << ((self.modulus.bit_length() - 1) // 2)

    def _taps(self) -> list[tuple[int, int, int]]:
        pad = self.kernel // 2
        return [
            (c, di, dj)
            for c in range(self.input_shape[0])
            for di in range(-pad, pad + 1)
            for dj in range(-pad, pad + 1)
        ]

    # ---- rotations --------------------------------------------------------------------

    def first_sum_steps(self) -> tuple[int, ...]:
        """Sum the blocks (every block then holds the first convolution)."""
        return tuple(self.block << i for i in range(self.blocks.bit_length() - 1))

    def pool1_steps(self) -> tuple[int, ...]:
        """2x2 pooling of the first layer's squares."""
        return (1, self.input_shape[2])

    def conv2_baby_steps(self) -> tuple[int, ...]:
        """Column offsets of the second convolution's taps."""
        if not self.two_layers:
            return ()
        pad = self.kernel // 2
        return tuple(2 * dj for dj in range(-pad, pad + 1) if dj)

    def conv2_giant_steps(self) -> tuple[int, ...]:
        """Row offsets of the second convolution's taps."""
        if not self.two_layers:
            return ()
        pad = self.kernel // 2
        return tuple(2 * self.input_shape[2] * di for di in range(-pad, pad + 1) if di)

    def channel_sum_steps(self) -> tuple[int, ...]:
        """Sum the first layer's sub-blocks (input channels of the second convolution)."""
        if not self.two_layers:
            return ()
        return tuple(self.area << i for i in range(_pow2(self.filters[0]).bit_length() - 1))

    def pool2_steps(self) -> tuple[int, ...]:
        """2x2 pooling of the second layer's squares."""
        return (2, 2 * self.input_shape[2]) if self.two_layers else ()

    @property
    def baby(self) -> int:
        """Baby steps of the dense layer (moves by 0 .. baby - 1)."""
        return self._baby

    def dense_baby_steps(self) -> tuple[int, ...]:
        """Moves right by 1, chained (the input moved by 1, 2, ..., baby - 1)."""
        return (-1,)

    def dense_giant_steps(self) -> tuple[int, ...]:
        """Moves right by ``baby``, Horner-style over the giant steps."""
        return (-self._baby,) if self.modulus > self._baby else ()

    def class_sum_steps(self) -> tuple[int, ...]:
        """Sum every residue class modulo ``m``."""
        return tuple(
            self.modulus << i for i in range((self.slots // self.modulus).bit_length() - 1)
        )

    def rotation_steps(self) -> tuple[int, ...]:
        """Every rotation the server performs (the Galois keys a context must hold)."""
        steps = (
            self.first_sum_steps()
            + self.pool1_steps()
            + self.conv2_baby_steps()
            + self.conv2_giant_steps()
            + self.channel_sum_steps()
            + self.pool2_steps()
            + self.dense_baby_steps()
            + self.dense_giant_steps()
            + self.class_sum_steps()
        )
        return tuple(sorted(set(steps)))

    # ---- the requester's side ---------------------------------------------------------

    def pack(self, image: npt.ArrayLike) -> FloatArray:
        """Slot values of one flat image (channels x height x width): its windows."""
        channels, height, width = self.input_shape
        x = np.asarray(image, dtype=np.float64).reshape(channels, height, width)
        values = np.zeros(self.slots, dtype=np.float64)
        padded = np.pad(x, self._pad())
        pad = self.kernel // 2
        for t, (c, di, dj) in enumerate(self._taps()):
            window = padded[c, pad + di : pad + di + height, pad + dj : pad + dj + width]
            for f in range(self.filters[0]):
                start = t * self.block + f * self.area
                values[start : start + self.area] = window.reshape(-1)
        return values

    def _pad(self) -> tuple[tuple[int, int], ...]:
        pad = self.kernel // 2
        return ((0, 0), (pad, pad), (pad, pad))

    def unpack(self, values: npt.ArrayLike) -> FloatArray:
        """The logits from a decrypted result (the mean of their copies)."""
        real = np.real(np.asarray(values)).reshape(-1, self.modulus)
        return np.asarray(real.mean(axis=0)[: self.outputs], dtype=np.float64)

    def output_mask(self) -> npt.NDArray[np.bool_]:
        """Slots that hold a copy of a logit (all others decrypt to zero)."""
        return np.arange(self.slots) % self.modulus < self.outputs

    # ---- the server's plaintexts ------------------------------------------------------

    def first_weights(self, circuit: ConvCircuit) -> FloatArray:
        """The first convolution's weight at each packed window value."""
        _, height, width = self.input_shape
        values = np.zeros(self.slots, dtype=np.float64)
        ii, jj = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
        p = (ii * width + jj).reshape(-1)
        for t, (c, di, dj) in enumerate(self._taps()):
            si, sj = (ii + di).reshape(-1), (jj + dj).reshape(-1)
            valid = (si >= 0) & (si < height) & (sj >= 0) & (sj < width)
            source = c * self.area + np.clip(si, 0, height - 1) * width + np.clip(sj, 0, width - 1)
            for f in range(self.filters[0]):
                weights = circuit.conv1[f * self.area + p, source] * valid
                values[t * self.block + f * self.area + p] = weights
        return values

    def first_bias(self, circuit: ConvCircuit) -> FloatArray:
        """The first convolution's bias in every block."""
        block = np.zeros(self.block, dtype=np.float64)
        block[: self.filters[0] * self.area] = circuit.bias1
        return np.tile(block, self.blocks)

    def _grid2(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        _, height, width = self.input_shape
        a, b = np.meshgrid(np.arange(height // 2), np.arange(width // 2), indexing="ij")
        return a.reshape(-1), b.reshape(-1)

    def conv2_weights(self, circuit: ConvCircuit) -> dict[tuple[int, int], FloatArray]:
        """Per tap (di, dj): the plaintext for the baby-step (dj) rotation, pre-rotated by di."""
        _, height, width = self.input_shape
        h2, v2 = height // 2, width // 2
        conv2, _ = _second_layer(circuit)
        first, second = self.filters
        a, b = self._grid2()
        pos = 2 * a * width + 2 * b
        pad = self.kernel // 2
        out: dict[tuple[int, int], FloatArray] = {}
        for di in range(-pad, pad + 1):
            for dj in range(-pad, pad + 1):
                values = np.zeros(self.slots, dtype=np.float64)
                sa, sb = a + di, b + dj
                valid = (sa >= 0) & (sa < h2) & (sb >= 0) & (sb < v2)
                for o in range(second):
                    for c in range(first):
                        source = c * h2 * v2 + np.clip(sa, 0, h2 - 1) * v2 + np.clip(sb, 0, v2 - 1)
                        weights = conv2[o * h2 * v2 + a * v2 + b, source] * valid
                        values[o * self.block + c * self.area + pos] = weights
                # The giant step rotates left by 2*W*di after the product: pre-rotate right.
                out[(di, dj)] = np.roll(values, 2 * width * di)
        return out

    def second_bias(self, circuit: ConvCircuit) -> FloatArray:
        """The second convolution's bias at each output unit's slot."""
        width = self.input_shape[2]
        a, b = self._grid2()
        pos = 2 * a * width + 2 * b
        values = np.zeros(self.slots, dtype=np.float64)
        count = len(pos)
        _, bias2 = _second_layer(circuit)
        for o in range(self.filters[1]):
            values[o * self.block + pos] = bias2[o * count : (o + 1) * count]
        return values

    def _dense_inputs(self) -> npt.NDArray[np.int64]:
        """Slot of each dense input (flat (channel, row, column) order).

        Two convolutions: output channel o's pooled map in block o (stride 4). One: the
        pooled first-layer maps of block 0 (channel f at sub-block f, stride 2).
        """
        _, height, width = self.input_shape
        if not self.two_layers:
            a, b = np.meshgrid(np.arange(height // 2), np.arange(width // 2), indexing="ij")
            pos = (2 * a * width + 2 * b).reshape(-1)
            return np.concatenate([f * self.area + pos for f in range(self.filters[0])])
        a, b = np.meshgrid(np.arange(height // 4), np.arange(width // 4), indexing="ij")
        pos = (4 * a * width + 4 * b).reshape(-1)
        return np.concatenate([o * self.block + pos for o in range(self.filters[1])])

    def dense_weights(self, circuit: ConvCircuit) -> dict[tuple[int, int], FloatArray]:
        """Per (giant g, baby b): the plaintext multiplying the input rotated right by b."""
        slots, m = self.slots, self.modulus
        inputs = self._dense_inputs()
        residues = inputs % m
        out: dict[tuple[int, int], FloatArray] = {}
        for j in range(m):
            values = np.zeros(slots, dtype=np.float64)
            classes = (residues + j) % m
            live = classes < self.outputs
            values[inputs[live]] = circuit.fc[classes[live], np.flatnonzero(live)]
            giant, baby = divmod(j, self._baby)
            # Moved right by j = g*baby + b in total: the product is taken after the baby
            # move (so the weights move right by b too), the giant move comes after.
            out[(giant, baby)] = np.roll(values, baby)
        return out

    def dense_bias(self, circuit: ConvCircuit) -> FloatArray:
        """The dense bias of logit k at every slot congruent to k."""
        values = np.zeros(self.modulus, dtype=np.float64)
        values[: self.outputs] = circuit.fc_bias
        return np.tile(values, self.slots // self.modulus)

    # ---- the slot program in plain arithmetic -----------------------------------------

    def simulate(self, circuit: ConvCircuit, image: npt.ArrayLike) -> FloatArray:
        """The server's slot program on one image without encryption (all slots)."""

        def rot(v: FloatArray, step: int) -> FloatArray:
            return np.roll(v, -step)

        def summed(v: FloatArray, steps: tuple[int, ...]) -> FloatArray:
            for step in steps:
                v = v + rot(v, step)
            return v

        v = self.pack(image) * self.first_weights(circuit)
        v = summed(v, self.first_sum_steps()) + self.first_bias(circuit)
        v = summed(v * v, self.pool1_steps())
        if self.two_layers:
            v = self._simulate_second(circuit, v, rot, summed)
        dense = self.dense_weights(circuit)
        moved = [v]
        for _ in range(1, self._baby):
            moved.append(rot(moved[-1], -1))
        z = np.zeros(self.slots)
        for giant in reversed(range(self.modulus // self._baby)):
            inner = sum(moved[b] * dense[(giant, b)] for b in range(self._baby))
            z = rot(z, -self._baby) + np.asarray(inner)
        return np.asarray(summed(z, self.class_sum_steps()) + self.dense_bias(circuit))

    def _simulate_second(
        self,
        circuit: ConvCircuit,
        v: FloatArray,
        rot: Callable[[FloatArray, int], FloatArray],
        summed: Callable[[FloatArray, tuple[int, ...]], FloatArray],
    ) -> FloatArray:
        """Step 2 of :meth:`simulate`: the second convolution, its squares and pool."""
        conv2 = self.conv2_weights(circuit)
        pad = self.kernel // 2
        rotated = {dj: rot(v, 2 * dj) for dj in range(-pad, pad + 1)}
        s = np.zeros(self.slots)
        width = self.input_shape[2]
        for di in range(-pad, pad + 1):
            inner = sum(rotated[dj] * conv2[(di, dj)] for dj in range(-pad, pad + 1))
            s = s + rot(np.asarray(inner), 2 * width * di)
        v = summed(s, self.channel_sum_steps()) + self.second_bias(circuit)
        return summed(v * v, self.pool2_steps())
