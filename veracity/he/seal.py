"""SEAL through ``tenseal.sealapi`` (SEAL 4.1): runtimes, serialisation and error mapping.

One :class:`Runtime` per parameter set holds the SEAL context, encoder and evaluator that
every context of that set shares. SEAL's Python bindings serialise only through paths;
:func:`scratch` gives each thread an in-memory file (``memfd`` on Linux) to save to and load
from. :func:`seal_errors` turns the exceptions SEAL raises into Veracity's error tree, once.

Threads: TenSEAL's bindings hold the GIL; scale with processes, not threads.
"""

from __future__ import annotations

import functools
import math
import os
import struct
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import tenseal.sealapi as sa
import zstandard

from veracity.errors import CryptoError, InputError, VeracityError
from veracity.he import residues as residue_kernels
from veracity.he.params import CKKSParameterSet, check_security, he_params_hash, parameter_set_named

__all__ = [
    "SEAL_EXCEPTIONS",
    "SEAL_HEADER",
    "SEAL_MAGIC",
    "Runtime",
    "runtime",
    "seal_primes",
    "seal_errors",
    "scratch",
    "check_seal_blob",
    "declared_inflated_size",
    "inflate",
    "encode",
    "max_ciphertext_bytes",
    "RandomBytes",
    "uniform_residues",
    "bounded_integers",
    "residues_of",
    "add_coefficients",
    "ciphertext_residues",
    "ciphertext_from_residues",
    "loaded_ciphertext_residues",
    "seal_integer",
    "seal_integers",
]

#: Source of uniformly random bytes (masks, flooding); injectable for deterministic tests.
RandomBytes = Callable[[int], bytes]

#: What SEAL's bindings raise on bad input or failed operations.
SEAL_EXCEPTIONS = (ValueError, RuntimeError, IndexError, OverflowError, TypeError)
#: A SEAL object's 16-byte header: magic, header size, version, compression, size.
SEAL_HEADER = struct.Struct("<HBBBBHQ")
SEAL_MAGIC = 0xA15E


@contextmanager
def seal_errors(message: str, error: type[VeracityError] = CryptoError) -> Iterator[None]:
    """Map SEAL's exceptions inside the block to ``error("{message}: {cause}")``.

    Veracity's own errors pass through unchanged.

    Raises
    ------
    VeracityError
        ``error`` (``CryptoError`` unless given) when SEAL raises.
    """
    try:
        yield
    except VeracityError:
        raise
    except SEAL_EXCEPTIONS as err:
        raise error(f"{message}: {err}") from err


class _Saveable(Protocol):
    def save(self, path: str) -> None: ...


class _ScratchFile:
    """A file SEAL can save to and load from by path, kept in memory where possible.

    On Linux this is an anonymous ``memfd`` (never on disk); elsewhere a file in a private
    temporary directory.
    """

    def __init__(self) -> None:
        self._directory: str | None = None
        memfd = getattr(os, "memfd_create", None)
        if memfd is not None and Path("/proc/self/fd").is_dir():
            self._fd = memfd("veracity-seal", os.MFD_CLOEXEC)
            self.path = f"/proc/self/fd/{self._fd}"
        else:  # pragma: no cover - non-Linux fallback
            self._directory = tempfile.mkdtemp(prefix="veracity-seal-")
            self.path = os.path.join(self._directory, "object")
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)

    def save(self, obj: _Saveable) -> bytes:
        """``obj`` serialised by SEAL."""
        os.ftruncate(self._fd, 0)
        obj.save(self.path)
        size = os.fstat(self._fd).st_size
        return os.pread(self._fd, size, 0)

    def stage(self, data: bytes) -> str:
        """Write ``data`` to the file; return the path for SEAL's ``load``."""
        # Overwrite in place and cut to length: emptying the file first would free and
        # fault in its pages again for every object.
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))
        return self.path


_local = threading.local()


def scratch() -> _ScratchFile:
    """The scratch file of the calling thread."""
    found: _ScratchFile | None = getattr(_local, "scratch", None)
    if found is None:
        found = _ScratchFile()
        _local.scratch = found
    return found


def check_seal_blob(data: bytes, what: str, *, max_bytes: int) -> None:
    """Refuse data that is not one complete SEAL object before SEAL parses it.

    Raises
    ------
    InputError
        If it is larger than ``max_bytes``, truncated, padded, not a SEAL 4 object or
        compressed in an unknown way.
    """
    if len(data) > max_bytes:
        raise InputError(f"{what} of {len(data)} bytes exceeds the limit of {max_bytes}")
    if len(data) < SEAL_HEADER.size:
        raise InputError(f"{what} is truncated ({len(data)} bytes)")
    magic, header_size, major, _minor, compression, _reserved, size = SEAL_HEADER.unpack_from(data)
    if magic != SEAL_MAGIC or header_size != SEAL_HEADER.size:
        raise InputError(f"{what} is not a SEAL object")
    if major != 4 or compression > 2:
        raise InputError(f"{what} has an unsupported SEAL version or compression")
    if size != len(data):
        raise InputError(f"{what} is truncated or padded: declares {size} bytes, has {len(data)}")


_NONE, _ZLIB, _ZSTD = 0, 1, 2


def _zstd() -> zstandard.ZstdDecompressor:
    """The zstd decompressor of the calling thread (one is not safe to share)."""
    found: zstandard.ZstdDecompressor | None = getattr(_local, "zstd", None)
    if found is None:
        found = zstandard.ZstdDecompressor()
        _local.zstd = found
    return found


def declared_inflated_size(data: bytes, what: str, *, max_bytes: int) -> int | None:
    """The uncompressed size a SEAL object declares, read from headers only.

    Nothing is decompressed. ``None`` when the object is compressed without declaring its
    size (a zlib stream, or a zstd frame written without its content size).

    Raises
    ------
    InputError
        As :func:`check_seal_blob`.
    """
    check_seal_blob(data, what, max_bytes=max_bytes)
    compression = SEAL_HEADER.unpack_from(data)[4]
    if compression == _NONE:
        return len(data) - SEAL_HEADER.size
    if compression == _ZSTD:
        try:
            declared = zstandard.frame_content_size(data[SEAL_HEADER.size :])
        except zstandard.ZstdError as err:
            raise InputError(f"{what} is not a valid zstd frame: {err}") from err
        return None if declared < 0 else int(declared)
    return None


def inflate(data: bytes, what: str, *, max_bytes: int, max_inflated: int) -> bytes:
    """``data`` as an uncompressed SEAL object, never holding more than ``max_inflated`` bytes.

    The declared sizes (the SEAL header's, the zstd frame's) are checked before anything is
    decompressed; then at most ``max_inflated + 1`` bytes are inflated, so a decompression
    bomb is refused after a bounded amount of work and memory. SEAL only ever sees the
    result, uncompressed.

    Raises
    ------
    InputError
        If the object is malformed, larger than ``max_bytes``, declares or inflates to more
        than ``max_inflated`` bytes, or its compressed stream is corrupt or incomplete.
    """
    declared = declared_inflated_size(data, what, max_bytes=max_bytes)
    if declared is not None and declared > max_inflated:
        raise InputError(
            f"{what} declares {declared} bytes uncompressed, more than the {max_inflated} "
            "it can hold"
        )
    magic, header_size, major, minor, compression, _reserved, _size = SEAL_HEADER.unpack_from(data)
    if compression == _NONE:
        return data
    payload = data[SEAL_HEADER.size :]
    try:
        if compression == _ZSTD and declared is not None:
            # One frame of known size: zstd inflates exactly that much or fails.
            inflated = _zstd().decompress(payload, max_output_size=declared)
            complete = len(inflated) == declared
        elif compression == _ZSTD:
            reader = zstandard.ZstdDecompressor().stream_reader(payload, read_across_frames=True)
            inflated = reader.read(max_inflated + 1)
            complete = len(inflated) <= max_inflated and reader.read(1) == b""
        else:
            stream = zlib.decompressobj()
            inflated = stream.decompress(payload, max_inflated + 1)
            complete = len(inflated) <= max_inflated and stream.eof and not stream.unconsumed_tail
    except (zstandard.ZstdError, zlib.error) as err:
        raise InputError(f"{what} does not decompress: {err}") from err
    if len(inflated) > max_inflated:
        raise InputError(f"{what} inflates to more than the {max_inflated} bytes it can hold")
    if not complete:
        raise InputError(f"{what} is a truncated compressed stream")
    size = SEAL_HEADER.size + len(inflated)
    return SEAL_HEADER.pack(magic, header_size, major, minor, _NONE, 0, size) + inflated


@dataclass(frozen=True)
class Runtime:
    """SEAL objects for one parameter set, shared by every context of that set."""

    parameter_set: CKKSParameterSet
    parms: Any
    context: Any
    encoder: Any
    evaluator: Any
    primes: tuple[int, ...]
    params_hash: str

    @property
    def top_parms_id(self) -> Any:
        """The parameters id of fresh ciphertexts (the top of the modulus chain)."""
        return self.context.first_parms_id()


def _seal_parameters(parameter_set: CKKSParameterSet) -> Any:
    parms = sa.EncryptionParameters(sa.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(parameter_set.poly_modulus_degree)
    parms.set_coeff_modulus(
        sa.CoeffModulus.Create(
            parameter_set.poly_modulus_degree, list(parameter_set.coeff_modulus_bits)
        )
    )
    return parms


@functools.cache
def runtime(name: str) -> Runtime:
    """The shared runtime of the parameter set called ``name``.

    Raises
    ------
    CryptoError
        If the set is unknown, below 128-bit security or refused by SEAL.
    """
    parameter_set = parameter_set_named(name)
    check_security(parameter_set)
    parms = _seal_parameters(parameter_set)
    # TC128: SEAL itself refuses parameters below the HE standard's 128-bit bound.
    context = sa.SEALContext(parms, True, sa.SEC_LEVEL_TYPE.TC128)
    if not context.parameters_set():
        raise CryptoError(
            f"SEAL refuses parameter set {name}: {context.parameters_error_message()}"
        )
    primes = tuple(int(q.value()) for q in parms.coeff_modulus())
    return Runtime(
        parameter_set=parameter_set,
        parms=parms,
        context=context,
        encoder=sa.CKKSEncoder(context),
        evaluator=sa.Evaluator(context),
        primes=primes,
        params_hash=he_params_hash(parameter_set, primes),
    )


def seal_primes(parameter_set: CKKSParameterSet) -> tuple[int, ...]:
    """The exact primes SEAL uses for ``parameter_set`` (special prime last).

    Raises
    ------
    CryptoError
        If SEAL refuses the parameter set (for instance below 128-bit security).
    """
    return runtime(parameter_set.name).primes


def seal_integer(value: float, scale: float) -> int:
    """The integer SEAL's CKKS encoder makes of the scalar ``value`` at ``scale``.

    ``value * scale`` in double precision, rounded half away from zero (C's ``round``),
    exactly: a plaintext scalar is this integer modulo each prime.
    """
    scaled = float(value) * float(scale)
    whole = math.floor(abs(scaled))
    rounded = whole + (1 if abs(scaled) - whole >= 0.5 else 0)
    return -rounded if scaled < 0 else rounded


def seal_integers(values: npt.NDArray[np.float64], scale: float) -> npt.NDArray[np.int64]:
    """:func:`seal_integer` of each of ``values``.

    Raises
    ------
    CryptoError
        If a value times ``scale`` is not finite or does not fit 63 bits.
    """
    scaled = np.asarray(values, dtype=np.float64) * float(scale)
    if scaled.size and not float(np.abs(scaled).max()) < 2.0**63:
        raise CryptoError("a weight times its scale does not fit 63 bits")
    whole = np.floor(np.abs(scaled))
    rounded = whole + (np.abs(scaled) - whole >= 0.5)
    return np.asarray(np.where(scaled < 0, -rounded, rounded), dtype=np.int64)


def encode(runtime: Runtime, values: Any, parms_id: Any, scale: float) -> Any:
    """A plaintext of ``values`` (a scalar or slot values) at ``parms_id`` and ``scale``.

    Raises
    ------
    CryptoError
        If SEAL cannot encode them (for instance the scale is too large for the level).
    """
    plaintext = sa.Plaintext()
    with seal_errors(f"cannot encode at scale 2**{math.log2(scale):.1f}"):
        runtime.encoder.encode(values, parms_id, scale, plaintext)
    return plaintext


def max_ciphertext_bytes(runtime: Runtime, size: int) -> int:
    """Upper bound on a serialised ciphertext of ``size`` polynomials (uncompressed)."""
    data_primes = len(runtime.parameter_set.data_prime_bits)
    return 1024 + size * runtime.parameter_set.poly_modulus_degree * data_primes * 8


def uniform_residues(
    primes: Sequence[int], count: int, random_bytes: RandomBytes
) -> npt.NDArray[np.uint64]:
    """RNS residues ``(len(primes), count)`` of integers uniform modulo ``prod(primes)``.

    Independent uniform residues modulo each prime are, by the Chinese remainder theorem,
    one integer uniform modulo the product. The reduction of 64 random bits modulo a prime
    below 2**61 is biased by less than 2**-3 * 2**-40 (negligible).
    """
    raw = np.frombuffer(random_bytes(8 * count * len(primes)), dtype="<u8").reshape(
        len(primes), count
    )
    moduli = np.asarray(primes, dtype=np.uint64)[:, None]
    return np.asarray(raw % moduli, dtype=np.uint64)


def bounded_integers(bound: int, count: int, random_bytes: RandomBytes) -> npt.NDArray[np.int64]:
    """``count`` integers uniform in ``[-bound, bound]`` (``bound < 2**62``)."""
    if not 0 <= bound < 2**62:
        raise CryptoError(f"a flooding bound of {bound} does not fit 62 bits")
    raw = np.frombuffer(random_bytes(8 * count), dtype="<u8")
    return np.asarray((raw % np.uint64(2 * bound + 1)).astype(np.int64) - bound, dtype=np.int64)


def residues_of(values: npt.NDArray[np.int64], primes: Sequence[int]) -> npt.NDArray[np.uint64]:
    """RNS residues ``(len(primes), len(values))`` of signed 64-bit ``values``."""
    return np.stack([np.asarray(values % np.int64(q), dtype=np.uint64) for q in primes]).astype(
        np.uint64
    )


@functools.cache
def _seal_version() -> tuple[int, int]:
    header = SEAL_HEADER.unpack_from(scratch().save(sa.EncryptionParameters(sa.SCHEME_TYPE.CKKS)))
    return int(header[2]), int(header[3])


_CIPHERTEXT_FIELDS = struct.Struct("<4QB3QdQ")


def add_coefficients(runtime: Runtime, ciphertext: Any, residues: npt.NDArray[np.uint64]) -> None:
    """Add, exactly, the integer polynomial with these RNS ``residues`` to ``ciphertext``.

    ``residues`` has one row per prime of the ciphertext's level, each value below its
    prime. The polynomial is added to the ciphertext's first component (a plaintext
    addition in coefficient form, with no rounding from the canonical embedding): what the
    coefficient layouts use for their masks, biases and flooding.

    Raises
    ------
    CryptoError
        If the residues do not match the ciphertext's level or SEAL refuses them.
    """
    degree = runtime.parameter_set.poly_modulus_degree
    primes = ciphertext.coeff_modulus_size()
    if residues.shape != (primes, degree):
        raise CryptoError(f"residues of shape {residues.shape} do not fit ({primes}, {degree})")
    polynomials = np.zeros((2, primes, degree), dtype="<u8")
    polynomials[0] = residues
    blob = _ciphertext_blob(polynomials, ciphertext.parms_id(), ciphertext.scale, ntt_form=False)
    addend = sa.Ciphertext()
    evaluator = runtime.evaluator
    with seal_errors("cannot add a coefficient polynomial"):
        addend.load(runtime.context, scratch().stage(blob))
        # SEAL refuses to NTT a ciphertext whose second part is zero ("transparent"), so
        # the sum is formed in coefficient form and transformed back.
        evaluator.transform_from_ntt_inplace(ciphertext)
        evaluator.add_inplace(ciphertext, addend)
        evaluator.transform_to_ntt_inplace(ciphertext)


def _ciphertext_blob(
    polynomials: npt.NDArray[np.uint64], parms_id: Sequence[int], scale: float, *, ntt_form: bool
) -> bytes:
    """A serialised, uncompressed SEAL ciphertext of ``(parts, primes, N)`` residues."""
    parts, primes, degree = polynomials.shape
    major, minor = _seal_version()
    array = struct.pack("<Q", polynomials.size) + np.ascontiguousarray(polynomials, "<u8").tobytes()
    array_header = SEAL_HEADER.pack(
        SEAL_MAGIC, SEAL_HEADER.size, major, minor, 0, 0, 16 + len(array)
    )
    fields = _CIPHERTEXT_FIELDS.pack(
        *parms_id, int(ntt_form), parts, degree, primes, float(scale), 1
    )
    body = fields + array_header + array
    return SEAL_HEADER.pack(SEAL_MAGIC, SEAL_HEADER.size, major, minor, 0, 0, 16 + len(body)) + body


def ciphertext_residues(runtime: Runtime, ciphertext: Any) -> npt.NDArray[np.uint64]:
    """The residues of ``ciphertext``, shape ``(parts, primes, N)`` (a copy).

    SEAL's bindings give no view of a ciphertext's memory: it is saved (SEAL compresses it)
    and read back.

    Raises
    ------
    CryptoError
        If SEAL cannot save it or the saved object is not a ciphertext of that shape.
    """
    with seal_errors("cannot read a ciphertext's residues"):
        saved = scratch().save(ciphertext)
        parts, primes = ciphertext.size(), ciphertext.coeff_modulus_size()
    degree = runtime.parameter_set.poly_modulus_degree
    count = parts * primes * degree
    limit = 1024 + 8 * count
    try:
        data = inflate(saved, "a saved ciphertext", max_bytes=limit, max_inflated=limit)
    except InputError as err:
        raise CryptoError(f"cannot read a ciphertext's residues: {err}") from err
    offset = SEAL_HEADER.size + _CIPHERTEXT_FIELDS.size + SEAL_HEADER.size + 8
    if len(data) != offset + 8 * count:
        raise CryptoError(f"a saved ciphertext of {len(data)} bytes does not hold {count} residues")
    return (
        np.frombuffer(data, dtype="<u8", count=count, offset=offset)
        .reshape(parts, primes, degree)
        .astype(np.uint64)
    )


def ciphertext_from_residues(
    runtime: Runtime, residues: npt.NDArray[np.uint64], parms_id: Sequence[int], scale: float
) -> Any:
    """A SEAL ciphertext in NTT form of ``(parts, primes, N)`` ``residues`` at ``parms_id``.

    Raises
    ------
    CryptoError
        If SEAL refuses it (a residue not below its prime, a level or shape that does not
        match ``parms_id``).
    """
    blob = _ciphertext_blob(residues, parms_id, scale, ntt_form=True)
    ciphertext = sa.Ciphertext()
    with seal_errors("residues do not make a ciphertext"):
        ciphertext.load(runtime.context, scratch().stage(blob))
    return ciphertext


#: ``prng_type::blake2xb`` in a saved ``UniformRandomGeneratorInfo``.
_BLAKE2XB = 1


def _uncompressed_header(data: bytes, at: int, body: int) -> bool:
    """Whether an uncompressed SEAL object of ``body`` bytes after its header starts at ``at``."""
    if len(data) < at + SEAL_HEADER.size:
        return False
    magic, header_size, major, _minor, compression, _reserved, size = SEAL_HEADER.unpack_from(
        data, at
    )
    return bool(
        magic == SEAL_MAGIC
        and header_size == SEAL_HEADER.size
        and major == 4
        and compression == _NONE
        and size == SEAL_HEADER.size + body
    )


def loaded_ciphertext_residues(
    runtime: Runtime, data: bytes, primes: int
) -> npt.NDArray[np.uint64] | None:
    """The residues of a two-part ciphertext from the uncompressed bytes SEAL loaded it from.

    ``(2, primes, N)``: its first ``primes`` primes (what dropping the others gives). A
    seeded ciphertext (the requester's, at the top level) holds its first part and the seed
    of its second: the second is expanded as SEAL expands it (SEAL's ``Blake2xbPRNG`` and
    ``sample_poly_uniform``), without SEAL serialising it again. ``None`` where the bytes
    are not that (another PRNG, another shape): read the loaded ciphertext instead.

    Call it only on bytes SEAL has loaded (``PublicContext.load_inputs``): SEAL validated
    them; this only reads them, and checks the layout it reads.

    Raises
    ------
    CryptoError
        If the seed cannot be expanded (the kernels are not built).
    """
    degree = runtime.parameter_set.poly_modulus_degree
    fields_at = SEAL_HEADER.size
    array_at = fields_at + _CIPHERTEXT_FIELDS.size
    words_at = array_at + SEAL_HEADER.size + 8
    if len(data) < words_at:
        return None
    fields = _CIPHERTEXT_FIELDS.unpack_from(data, fields_at)
    size, ciphertext_degree, level_primes = fields[5], fields[6], fields[7]
    if size != 2 or ciphertext_degree != degree or not 0 < primes <= level_primes:
        return None
    polynomial = level_primes * degree
    (count,) = struct.unpack_from("<Q", data, words_at - 8)
    if not _uncompressed_header(data, array_at, 8 + 8 * count):
        return None
    if count == 2 * polynomial and len(data) == words_at + 8 * count:
        full = np.frombuffer(data, dtype="<u8", count=count, offset=words_at)
        return full.reshape(2, level_primes, degree)[:, :primes].astype(np.uint64)
    info_header_at = words_at + 8 * polynomial
    info_at = info_header_at + SEAL_HEADER.size
    if (
        count != polynomial
        or len(data) != info_at + 1 + 64
        or not _uncompressed_header(data, info_header_at, 1 + 64)
        or data[info_at] != _BLAKE2XB
    ):
        return None
    level = runtime.context.get_context_data(list(fields[:4]))
    if level is None:
        return None
    moduli = [int(q.value()) for q in level.parms().coeff_modulus()]
    values = np.empty((2, primes, degree), dtype=np.uint64)
    first = np.frombuffer(data, dtype="<u8", count=polynomial, offset=words_at)
    values[0] = first.reshape(level_primes, degree)[:primes]
    seed = bytes(data[info_at + 1 : info_at + 65])
    values[1] = residue_kernels.uniform_residues_from(seed, moduli, degree)[:primes]
    return values
