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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import tenseal.sealapi as sa

from veracity.errors import CryptoError, InputError, VeracityError
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
    "encode",
    "max_ciphertext_bytes",
]

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
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
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
