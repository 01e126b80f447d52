"""Packing layouts: where each patient's features sit in CKKS plaintexts (pure NumPy).

Both ends of the wire use these functions: the requester to pack features before it encrypts
and to unpack scores after it decrypts, the server to lay out its weight plaintexts the same
way. Nothing here touches TenSEAL; see docs/inference-wire.md for the pictures.

Slots and coefficients
    A CKKS plaintext is a polynomial of degree < N; SEAL's encoder maps N/2 complex *slots*
    to it through the canonical embedding, slot i being the polynomial's value at
    ``zeta**(3**i mod 2N)`` with ``zeta = exp(i*pi/N)``. :func:`slots_from_coefficients`
    and :func:`coefficients_from_slots` are that map and its inverse, so a caller can hand
    the encoder slot values that encode exactly the coefficients it wants (used by the
    coefficient layout).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from veracity.errors import InputError

__all__ = [
    "FloatArray",
    "ComplexArray",
    "slots_from_coefficients",
    "coefficients_from_slots",
    "pack_column",
    "unpack_column",
    "pack_column_coefficients",
    "unpack_column_coefficients",
    "CoefficientGeometry",
    "ReplicatedGeometry",
]

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]

_EXPONENT_CACHE: dict[int, npt.NDArray[np.int64]] = {}


def _slot_exponent_indices(n: int) -> npt.NDArray[np.int64]:
    """For slot i, the index l with ``zeta**(1 + 2l) == zeta**(3**i mod 2N)``."""
    cached = _EXPONENT_CACHE.get(n)
    if cached is None:
        slots = n // 2
        exponents = np.empty(slots, dtype=np.int64)
        value = 1
        for i in range(slots):
            exponents[i] = value
            value = (value * 3) % (2 * n)
        cached = (exponents - 1) // 2
        _EXPONENT_CACHE[n] = cached
    return cached


_TWIST_CACHE: dict[int, npt.NDArray[np.complex128]] = {}


def _twist(n: int) -> npt.NDArray[np.complex128]:
    """``zeta**k`` for k < n, ``zeta = exp(i*pi/n)`` (read-only, cached per degree)."""
    cached = _TWIST_CACHE.get(n)
    if cached is None:
        cached = np.exp(1j * np.pi * np.arange(n) / n)
        cached.setflags(write=False)
        _TWIST_CACHE[n] = cached
    return cached


def _check_degree(n: int) -> None:
    if n < 4 or n & (n - 1):
        raise InputError(f"ring degree {n} is not a power of two >= 4")


def slots_from_coefficients(coefficients: npt.ArrayLike) -> ComplexArray:
    """Slot values whose encoding is the polynomial with these real ``coefficients``.

    ``coefficients`` has length N; the result has N / 2 complex values.
    """
    c = np.asarray(coefficients, dtype=np.float64)
    n = c.shape[-1]
    _check_degree(n)
    values = np.fft.ifft(c * _twist(n), axis=-1) * n  # values[l] = c(zeta**(1 + 2l))
    return np.asarray(values[..., _slot_exponent_indices(n)], dtype=np.complex128)


def coefficients_from_slots(slots: npt.ArrayLike) -> FloatArray:
    """The real polynomial coefficients (length N) whose canonical embedding is ``slots``."""
    z = np.asarray(slots, dtype=np.complex128)
    n = 2 * z.shape[-1]
    _check_degree(n)
    index = _slot_exponent_indices(n)
    values = np.zeros((*z.shape[:-1], n), dtype=np.complex128)
    values[..., index] = z
    values[..., n - 1 - index] = np.conj(z)  # zeta**(2N - e) is the conjugate root
    coefficients = np.fft.fft(values, axis=-1) / n * np.conj(_twist(n))
    return np.asarray(coefficients.real, dtype=np.float64)


def _patients(features: npt.ArrayLike, capacity: int) -> FloatArray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise InputError(f"features must be a non-empty (patients, features) array, got {x.shape}")
    if x.shape[0] > capacity:
        raise InputError(f"{x.shape[0]} patients exceed the layout's capacity of {capacity}")
    return x


def pack_column(features: npt.ArrayLike, slots: int) -> FloatArray:
    """``column`` layout: row j is feature j of every patient, zero-padded to ``slots``."""
    x = _patients(features, slots)
    packed = np.zeros((x.shape[1], slots), dtype=np.float64)
    packed[:, : x.shape[0]] = x.T
    return packed


def unpack_column(values: npt.ArrayLike, batch_size: int) -> FloatArray:
    """The first ``batch_size`` real slot values of a ``column`` result."""
    return np.asarray(np.real(np.asarray(values))[:batch_size], dtype=np.float64)


def pack_column_coefficients(features: npt.ArrayLike, degree: int) -> FloatArray:
    """``column_coefficient`` layout: row j holds feature j of patient p at coefficient p.

    Each row is a polynomial of degree < ``degree`` (one ciphertext per feature).
    """
    _check_degree(degree)
    x = _patients(features, degree)
    packed = np.zeros((x.shape[1], degree), dtype=np.float64)
    packed[:, : x.shape[0]] = x.T
    return packed


def unpack_column_coefficients(coefficients: npt.ArrayLike, batch_size: int) -> FloatArray:
    """The first ``batch_size`` coefficients of a ``column_coefficient`` result."""
    return np.asarray(np.asarray(coefficients, dtype=np.float64)[:batch_size], dtype=np.float64)


@dataclass(frozen=True)
class CoefficientGeometry:
    """``coefficient`` layout: patient p's feature j is coefficient ``p * n + j``.

    Multiplying by the server's weight polynomial ``sum_j w_j X**(-j)`` leaves patient p's
    dot product in coefficient ``p * n`` (no other patient's terms can reach it, because
    feature offsets differ by less than ``n``); the server hides every other coefficient
    under a uniformly random mask.
    """

    n_features: int
    poly_modulus_degree: int

    def __post_init__(self) -> None:
        _check_degree(self.poly_modulus_degree)
        if not 1 <= self.n_features <= self.poly_modulus_degree:
            raise InputError(
                f"{self.n_features} features do not fit the coefficient layout at N="
                f"{self.poly_modulus_degree}"
            )

    @property
    def patients_per_ciphertext(self) -> int:
        """How many patients one ciphertext holds."""
        return self.poly_modulus_degree // self.n_features

    def output_positions(self) -> npt.NDArray[np.int64]:
        """Coefficients that carry a patient's logit (one per possible patient)."""
        return np.arange(self.patients_per_ciphertext, dtype=np.int64) * self.n_features

    def pack(self, features: npt.ArrayLike) -> FloatArray:
        """One coefficient vector (length N) per ciphertext, patients in order."""
        per = self.patients_per_ciphertext
        x = _patients(features, per * 2**20)
        if x.shape[1] != self.n_features:
            raise InputError(f"expected {self.n_features} features, got {x.shape[1]}")
        count = -(-x.shape[0] // per)
        packed = np.zeros((count, self.poly_modulus_degree), dtype=np.float64)
        flat = np.zeros(count * per * self.n_features, dtype=np.float64)
        flat[: x.size] = x.reshape(-1)
        packed[:, : per * self.n_features] = flat.reshape(count, per * self.n_features)
        return packed

    def weight_polynomial(self, weights: npt.ArrayLike) -> FloatArray:
        """Coefficients of ``sum_j w_j X**(-j)`` in the negacyclic ring (X**N = -1)."""
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (self.n_features,):
            raise InputError(f"expected {self.n_features} weights, got shape {w.shape}")
        poly = np.zeros(self.poly_modulus_degree, dtype=np.float64)
        poly[0] = w[0]
        if self.n_features > 1:
            # X**(-j) = -X**(N - j) for 0 < j < N.
            poly[self.poly_modulus_degree - np.arange(1, self.n_features)] = -w[1:]
        return poly

    def unpack(self, coefficients: npt.ArrayLike, batch_size: int) -> FloatArray:
        """Logits of the first ``batch_size`` patients from decrypted coefficient vectors."""
        c = np.atleast_2d(np.asarray(coefficients, dtype=np.float64))
        positions = self.output_positions()
        return np.asarray(c[:, positions].reshape(-1)[:batch_size], dtype=np.float64)


def _next_power_of_two(value: int) -> int:
    return 1 << max(0, (value - 1).bit_length())


@dataclass(frozen=True)
class ReplicatedGeometry:
    """``replicated`` layout for ``poly_mlp`` (small batches).

    With ``s = next_pow2(n)``, ``H = next_pow2(hidden)`` and ``P = slots / (H * s)``
    patients per ciphertext, slot ``(k * P + p) * s + j`` is feature j of patient p in the
    block of hidden unit k. The requester fills the blocks of unit 0 only; the server

    1. replicates them into every unit's blocks with right rotations by P*s, 2P*s, ...,
       (H/2)*P*s (a cyclic sum, so every unit sees the sum of whatever the requester put in
       the H blocks: one input per patient, never one per unit);
    2. multiplies by the first-layer weights of the declared (live) patients only, sums each
       block of s slots into its first slot with left rotations by 1, 2, ..., s/2 and adds
       the first-layer bias there;
    3. after the square, keeps only block starts of live patients (weighted by the output
       layer) and sums over units with left rotations by P*s, ..., (H/2)*P*s, so every
       block start of patient p holds patient p's logit, and adds the output constant there.

    Nothing but live patients' logits is left; the requester reads slot ``p * s``.
    """

    n_features: int
    hidden: int
    slots: int

    def __post_init__(self) -> None:
        if self.n_features < 1 or self.hidden < 1:
            raise InputError("the replicated layout needs features and hidden units")
        if self.block_width * self.hidden_blocks > self.slots:
            raise InputError(
                f"a {self.n_features}-{self.hidden} network does not fit the replicated "
                f"layout in {self.slots} slots"
            )

    @property
    def block_width(self) -> int:
        """``s``: slots per (hidden unit, patient) block."""
        return _next_power_of_two(self.n_features)

    @property
    def hidden_blocks(self) -> int:
        """``H``: hidden units rounded up to a power of two."""
        return _next_power_of_two(self.hidden)

    @property
    def patients_per_ciphertext(self) -> int:
        """``P``: patients one ciphertext holds."""
        return self.slots // (self.block_width * self.hidden_blocks)

    @property
    def unit_stride(self) -> int:
        """Slots between the blocks of consecutive units (``P * s``)."""
        return self.patients_per_ciphertext * self.block_width

    def replication_steps(self) -> tuple[int, ...]:
        """Right rotations (negative steps) copying unit 0's blocks to every unit."""
        return tuple(-(self.unit_stride << r) for r in range(self.hidden_blocks.bit_length() - 1))

    def block_sum_steps(self) -> tuple[int, ...]:
        """Left rotations summing each block into its first slot."""
        return tuple(1 << r for r in range(self.block_width.bit_length() - 1))

    def unit_sum_steps(self) -> tuple[int, ...]:
        """Left rotations summing over units."""
        return tuple(self.unit_stride << r for r in range(self.hidden_blocks.bit_length() - 1))

    def rotation_steps(self) -> tuple[int, ...]:
        """Every rotation the server performs (and needs Galois keys for), in order."""
        return self.replication_steps() + self.block_sum_steps() + self.unit_sum_steps()

    def _slot(self, k: npt.ArrayLike, p: npt.ArrayLike, j: npt.ArrayLike) -> npt.NDArray[np.int64]:
        k_, p_, j_ = (np.asarray(v, dtype=np.int64) for v in (k, p, j))
        return (k_ * self.patients_per_ciphertext + p_) * self.block_width + j_

    def _live(self, live: int) -> int:
        if not 1 <= live <= self.patients_per_ciphertext:
            raise InputError(
                f"a replicated ciphertext holds 1 to {self.patients_per_ciphertext} patients, "
                f"not {live}"
            )
        return live

    def pack(self, features: npt.ArrayLike) -> FloatArray:
        """One slot vector per ciphertext: each patient's features in unit 0's block."""
        per = self.patients_per_ciphertext
        x = _patients(features, per * 2**20)
        if x.shape[1] != self.n_features:
            raise InputError(f"expected {self.n_features} features, got {x.shape[1]}")
        count = -(-x.shape[0] // per)
        padded = np.zeros((count * per, self.n_features), dtype=np.float64)
        padded[: x.shape[0]] = x
        p, j = np.meshgrid(np.arange(per), np.arange(self.n_features), indexing="ij")
        packed = np.zeros((count, self.slots), dtype=np.float64)
        for ct in range(count):
            packed[ct, self._slot(0, p, j)] = padded[ct * per + p, j]
        return packed

    def first_layer_vector(self, weights: npt.ArrayLike, live: int) -> FloatArray:
        """First-layer weights in the blocks of the first ``live`` patients, zero elsewhere."""
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (self.hidden, self.n_features):
            raise InputError("first-layer weights do not match the replicated geometry")
        k, p, j = np.meshgrid(
            np.arange(self.hidden),
            np.arange(self._live(live)),
            np.arange(self.n_features),
            indexing="ij",
        )
        vector = np.zeros(self.slots, dtype=np.float64)
        vector[self._slot(k, p, j)] = w[k, j]
        return vector

    def _block_starts(self, values: FloatArray, units: int, live: int) -> FloatArray:
        k, p = np.meshgrid(np.arange(units), np.arange(self._live(live)), indexing="ij")
        vector = np.zeros(self.slots, dtype=np.float64)
        vector[self._slot(k, p, 0)] = values[k]
        return vector

    def bias_vector(self, bias: npt.ArrayLike, live: int) -> FloatArray:
        """Unit k's first-layer bias at the block starts of the first ``live`` patients."""
        b = np.asarray(bias, dtype=np.float64)
        if b.shape != (self.hidden,):
            raise InputError("first-layer biases do not match the replicated geometry")
        return self._block_starts(b, self.hidden, live)

    def output_selector(self, output_weights: npt.ArrayLike, live: int) -> FloatArray:
        """Unit k's output weight at the block starts of live patients, zero elsewhere."""
        a = np.asarray(output_weights, dtype=np.float64)
        if a.shape != (self.hidden,):
            raise InputError("output weights do not match the replicated geometry")
        return self._block_starts(a, self.hidden, live)

    def output_constant(self, constant: float, live: int) -> FloatArray:
        """``constant`` at every block start of live patients (where logits end up)."""
        return self._block_starts(np.full(self.hidden_blocks, constant), self.hidden_blocks, live)

    def output_positions(self, live: int) -> npt.NDArray[np.int64]:
        """Slots that hold a live patient's logit after evaluation (every unit's copy)."""
        k, p = np.meshgrid(
            np.arange(self.hidden_blocks), np.arange(self._live(live)), indexing="ij"
        )
        return np.sort(self._slot(k, p, 0).reshape(-1))

    def unpack(self, values: npt.ArrayLike, batch_size: int) -> FloatArray:
        """Logits of the first ``batch_size`` patients from decrypted slot vectors."""
        v = np.atleast_2d(np.real(np.asarray(values)))
        positions = self._slot(0, np.arange(self.patients_per_ciphertext), 0)
        return np.asarray(v[:, positions].reshape(-1)[:batch_size], dtype=np.float64)
