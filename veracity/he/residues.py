"""Whole layers on the RNS residues of CKKS ciphertexts, exactly, in one call each.

A ciphertext in NTT form is, per part (polynomial) and prime ``q``, ``N`` residues modulo
``q``: an array of shape ``(parts, primes, N)``. A product by an integer constant and a sum
act on each residue alone, and so does the square of a two-part ciphertext (three
coefficient-wise products), so a layer of a network needs no transform: SEAL's evaluator
does it one product or sum per call, each a pass over a whole ciphertext (about a
millisecond at N = 16384), while :func:`linear` and :func:`pooled_squares` run the layer in
one call of the C kernels in ``veracity/he/_residues.c``, reducing each result once. The
residues are exactly the ones SEAL's sequence of calls gives (``tests/he/test_residues.py``
compares both).

Pure NumPy around the compiled module; :func:`available` says whether it was built (it is
by ``pip install``, which needs a C compiler). Getting residues out of SEAL and back is the
adapter's (:func:`veracity.he.seal.ciphertext_residues`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType

import numpy as np
import numpy.typing as npt

from veracity.errors import CryptoError

__all__ = [
    "MAX_WEIGHT",
    "MAX_WEIGHT_SUM",
    "fits",
    "available",
    "use_vector_kernel",
    "vector_kernel",
    "linear",
    "pooled_squares",
    "seal_prng_stream",
    "uniform_residues_from",
]

UInt64Array = npt.NDArray[np.uint64]
IntArray = npt.NDArray[np.int64]

#: Each integer weight is below this in absolute value (a signed 32-bit product operand).
MAX_WEIGHT = 2**31
#: Each output's integer weights sum, in absolute value, below this (the kernel sums each
#: 30-bit half of a 60-bit residue's products exactly in 64 bits).
MAX_WEIGHT_SUM = 2**33
#: Largest prime the kernels take (SEAL's primes have at most 60 bits).
_MAX_MODULUS = 2**60
#: The kernels work on groups of this many residues.
_LANES = 16

_native: ModuleType | None
try:
    from veracity.he import _residues as _native
except ImportError:  # pragma: no cover - an install without a C compiler
    _native = None


def available() -> bool:
    """Whether the compiled kernels are installed."""
    return _native is not None


def vector_kernel() -> str:
    """``"avx2"`` or ``"portable"``: the inner loop this machine runs.

    Raises
    ------
    CryptoError
        If the kernels are not installed.
    """
    return str(_module().vector_kernel())


def _module() -> ModuleType:
    if _native is None:
        raise CryptoError("the residue kernels are not built (install with a C compiler)")
    return _native


def use_vector_kernel(name: str) -> None:
    """Run ``"portable"`` or ``"avx2"`` from now on (tests check both give the same).

    Raises
    ------
    CryptoError
        If this machine has no such kernel or the kernels are not built.
    """
    try:
        _module().use_vector_kernel(name)
    except ValueError as err:
        raise CryptoError(f"no {name!r} residue kernel here: {err}") from err


def _native_call(what: str, call: Callable[[], object]) -> None:
    """Run a kernel, its refusals (``ValueError``, ``RuntimeError``) as ``CryptoError``."""
    try:
        call()
    except (ValueError, RuntimeError) as err:
        raise CryptoError(f"{what}: {err}") from err


def _moduli(moduli: Sequence[int], degree: int) -> UInt64Array:
    values = [int(q) for q in moduli]
    if any(q < 3 or q >= _MAX_MODULUS or q % 2 == 0 for q in values):
        raise CryptoError("residue kernels take odd moduli below 2**60")
    if degree % _LANES:
        raise CryptoError(f"residue kernels take a multiple of {_LANES} residues per row")
    return np.asarray(values, dtype=np.uint64)


def _residue_array(values: UInt64Array, what: str, parts: int | None = None) -> UInt64Array:
    if values.dtype != np.uint64 or values.ndim != 4:
        raise CryptoError(f"{what} must be uint64 residues of shape (count, parts, primes, N)")
    if parts is not None and values.shape[1] != parts:
        raise CryptoError(f"{what} must have {parts} parts, not {values.shape[1]}")
    return np.ascontiguousarray(values)


def fits(weights: IntArray) -> bool:
    """Whether :func:`linear` computes with these integer weights (see the bounds above)."""
    w = np.asarray(weights)
    if w.size == 0:
        return True
    if int(w.min()) <= -MAX_WEIGHT or int(w.max()) >= MAX_WEIGHT:
        return False
    return bool(np.all(np.abs(w.astype(np.int64)).sum(axis=-1) < MAX_WEIGHT_SUM))


def linear(
    inputs: UInt64Array,
    weights: IntArray,
    moduli: Sequence[int],
    constants: Sequence[int] | None = None,
) -> UInt64Array:
    """``out[o] = sum_i weights[o, i] * inputs[i]`` modulo each prime, for every part.

    ``inputs`` has shape ``(n_in, parts, primes, N)`` (residues below their prime),
    ``weights`` ``(n_out, n_in)`` integers (a ciphertext times a constant encoded at a scale:
    the constant's rounded integer), ``moduli`` one prime per row of ``primes``. Output o's
    part 0 also gets the integer ``constants[o]`` at every residue (a plaintext scalar: a
    bias encoded at the output's scale), folded into the one reduction.

    Raises
    ------
    CryptoError
        If the shapes do not match, the kernels are not built, or a weight or an output's
        weight is ``2**31`` or more in absolute value or an output's weights sum to ``2**33``.
    """
    module = _module()
    x = _residue_array(inputs, "inputs")
    n_in, parts, primes, degree = x.shape
    q = _moduli(moduli, degree)
    w = np.asarray(weights)
    if (
        w.ndim != 2
        or w.shape[0] < 1
        or w.shape[1] != n_in
        or not np.issubdtype(w.dtype, np.integer)
    ):
        raise CryptoError(f"weights must be integers of shape (outputs >= 1, {n_in})")
    if len(q) != primes:
        raise CryptoError(f"{len(q)} moduli for {primes} primes")
    added = np.zeros((w.shape[0], parts, primes), dtype=np.uint64)
    if constants is not None:
        if len(constants) != w.shape[0]:
            raise CryptoError(f"{len(constants)} constants for {w.shape[0]} outputs")
        added[:, 0] = [[int(c) % int(m) for m in q] for c in constants]
    if not fits(w):
        raise CryptoError(
            "a weight is 2**31 or more in absolute value, or an output's weights sum to 2**33"
        )
    w = w.astype(np.int64)
    rows, cols = np.nonzero(w)
    starts = np.zeros(w.shape[0] + 1, dtype=np.int32)
    starts[1:] = np.cumsum(np.count_nonzero(w, axis=1))
    out = np.empty((w.shape[0], parts, primes, degree), dtype=np.uint64)
    _native_call(
        "the linear kernel refused its arguments",
        lambda: module.linear(
            x,
            n_in,
            parts * primes,
            degree,
            np.ascontiguousarray(w[rows, cols], dtype=np.int32),
            np.ascontiguousarray(cols, dtype=np.int32),
            starts,
            np.tile(q, parts),
            added,
            out,
        ),
    )
    return out


def pooled_squares(
    units: UInt64Array, windows: npt.NDArray[np.int64], moduli: Sequence[int]
) -> UInt64Array:
    """Per window of four units: the sum of their squares as three-part ciphertexts.

    ``units`` has shape ``(count, 2, primes, N)`` (two-part ciphertexts); ``windows``
    ``(n_windows, 4)`` indices into them. Part 0 of a square is ``c0*c0``, part 1
    ``2*c0*c1``, part 2 ``c1*c1`` (SEAL's square, not relinearised).

    Raises
    ------
    CryptoError
        If the shapes do not match, an index is out of range or the kernels are not built.
    """
    module = _module()
    z = _residue_array(units, "units", parts=2)
    count, _, primes, degree = z.shape
    q = _moduli(moduli, degree)
    index = np.asarray(windows)
    if index.ndim != 2 or index.shape[1] != 4:
        raise CryptoError("windows must have shape (count, 4)")
    if len(q) != primes:
        raise CryptoError(f"{len(q)} moduli for {primes} primes")
    if index.size and (index.min() < 0 or index.max() >= count):
        raise CryptoError("a window's unit index is out of range")
    if index.shape[0] < 1:
        raise CryptoError("at least one window is needed")
    out = np.empty((index.shape[0], 3, primes, degree), dtype=np.uint64)
    _native_call(
        "the squares kernel refused its arguments",
        lambda: module.pooled_squares(
            z, count, primes, degree, np.ascontiguousarray(index, dtype=np.int32), q, out
        ),
    )
    return out


def seal_prng_stream(seed: bytes, length: int) -> bytes:
    """The first ``length`` bytes SEAL's ``Blake2xbPRNG`` gives for the 64-byte ``seed``.

    ``blake2xb`` (4,096 bytes, input the counter as 8 bytes little-endian, keyed by the
    seed) for counter 0, 1, 2, ..., concatenated; ``length`` is rounded up to 4,096.

    Raises
    ------
    CryptoError
        If the seed is not 64 bytes or the kernels are not built.
    """
    if len(seed) != 64:
        raise CryptoError(f"a SEAL PRNG seed has 64 bytes, not {len(seed)}")
    rounded = -(-max(0, length) // 4096) * 4096
    module = _module()
    produced: list[bytes] = []
    _native_call(
        "the PRNG kernel failed",
        lambda: produced.append(bytes(module.blake2xb_stream(seed, rounded))),
    )
    return produced[0][:length]


def uniform_residues_from(seed: bytes, moduli: Sequence[int], degree: int) -> UInt64Array:
    """SEAL's ``sample_poly_uniform`` from a seeded PRNG: ``(len(moduli), degree)`` residues.

    SEAL draws ``len(moduli) * degree`` 64-bit words at once, then, prime by prime and in
    order, replaces each word at or above the largest multiple of the prime below 2**64
    (minus one) by the next word of the stream, and reduces it modulo the prime. A seeded
    ciphertext's second part is this, for its level's primes.

    Raises
    ------
    CryptoError
        As :func:`seal_prng_stream`.
    """
    count = len(moduli) * degree
    spare = 1024  # words for rejected draws; each is rejected with probability < q / 2**64
    stream = seal_prng_stream(seed, 8 * (count + spare))
    words = np.frombuffer(stream, dtype="<u8").astype(np.uint64)
    values = words[:count].reshape(len(moduli), degree).copy()
    cursor = count
    for row, modulus in enumerate(int(m) for m in moduli):
        limit = np.uint64(2**64 - 1 - ((2**64 - 1) % modulus) - 1)
        for position in np.flatnonzero(values[row] >= limit):
            while True:
                if cursor == len(words):  # more rejections than ever seen: draw further
                    stream = seal_prng_stream(seed, 2 * 8 * len(words))
                    words = np.frombuffer(stream, dtype="<u8").astype(np.uint64)
                draw = words[cursor]
                cursor += 1
                if draw < limit:
                    values[row, position] = draw
                    break
        values[row] %= np.uint64(modulus)
    return values
