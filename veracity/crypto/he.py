"""CKKS contexts and encrypted evaluation: the TenSEAL adapter (``tenseal.sealapi``, SEAL 4.1).

Two types keep the secret key where it belongs:

:class:`SecretContext`
    The requester's. It holds the SEAL secret key, encrypts (symmetric, seeded: half-size
    ciphertexts), decrypts, and writes its :meth:`~SecretContext.public_context`: an envelope
    with the encryption parameters and, only for the ``replicated`` layout, Galois and
    relinearisation keys. Nothing it writes contains the secret key.
:class:`PublicContext`
    The server's. It can only be made from bytes by :meth:`PublicContext.from_bytes`, which
    refuses secret keys (in a part of our envelope, as a raw SEAL secret key or inside a
    TenSEAL context), parameter sets below 128-bit security and parameters that are not
    exactly those of a known set. Every evaluation function takes a ``PublicContext``, so
    mypy rejects server code that would pass a ``SecretContext``.

Evaluation follows the field note: column packing without rotations, lazy rescaling, no
relinearisation in the batched ``poly_mlp`` path (the requester's decryptor handles the
three-part result), a single prime and no keys at all for logistic regression.

Threads: TenSEAL's bindings hold the GIL; scale with processes, not threads.
"""

from __future__ import annotations

import functools
import math
import os
import struct
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import tenseal.sealapi as sa

from veracity.crypto.he_circuit import Circuit, LinearCircuit, QuadraticCircuit
from veracity.crypto.he_packing import (
    CoefficientGeometry,
    ReplicatedGeometry,
    coefficients_from_slots,
    pack_column,
    pack_column_complex,
    slots_from_coefficients,
    unpack_column,
    unpack_column_complex,
)
from veracity.crypto.he_params import (
    MAX_LOG_Q_128,
    PARAMETER_SETS,
    CKKSParameterSet,
    PackingLayout,
    check_security,
    he_params_hash,
    parameter_set_named,
)
from veracity.crypto.he_wire import (
    DEFAULT_LIMITS,
    KIND_CONTEXT,
    MAGIC,
    WireLimits,
    body_hash,
    decode_envelope,
    encode_envelope,
)
from veracity.errors import CryptoError, InputError

__all__ = [
    "SecretContext",
    "PublicContext",
    "RandomBytes",
    "seal_primes",
    "evaluate",
]

#: Source of uniformly random bytes (masks); injectable for deterministic tests.
RandomBytes = Callable[[int], bytes]

_SEAL_ERRORS = (ValueError, RuntimeError, IndexError, OverflowError, TypeError)
_SEAL_HEADER = struct.Struct("<HBBBBHQ")
_SEAL_MAGIC = 0xA15E
_SECRET_PART_NAMES = {"secret_key", "secretkey", "sk", "private_key", "private_context"}
_KEY_PARTS = {"galois_keys", "relin_keys"}


class _Saveable(Protocol):
    def save(self, path: str) -> None: ...


class _ScratchFile:
    """A file SEAL can save to and load from by path, kept in memory where possible.

    SEAL's Python bindings serialise only through paths. On Linux this is an anonymous
    ``memfd`` (never on disk); elsewhere a file in a private temporary directory.
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
        os.ftruncate(self._fd, 0)
        obj.save(self.path)
        size = os.fstat(self._fd).st_size
        return os.pread(self._fd, size, 0)

    def stage(self, data: bytes) -> str:
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        return self.path


_local = threading.local()


def _scratch() -> _ScratchFile:
    scratch: _ScratchFile | None = getattr(_local, "scratch", None)
    if scratch is None:
        scratch = _ScratchFile()
        _local.scratch = scratch
    return scratch


def _check_seal_blob(data: bytes, what: str, *, max_bytes: int) -> None:
    """Refuse data that is not one complete SEAL object before SEAL parses it."""
    if len(data) > max_bytes:
        raise InputError(f"{what} of {len(data)} bytes exceeds the limit of {max_bytes}")
    if len(data) < _SEAL_HEADER.size:
        raise InputError(f"{what} is truncated ({len(data)} bytes)")
    magic, header_size, major, _minor, compression, _reserved, size = _SEAL_HEADER.unpack_from(data)
    if magic != _SEAL_MAGIC or header_size != _SEAL_HEADER.size:
        raise InputError(f"{what} is not a SEAL object")
    if major != 4 or compression > 2:
        raise InputError(f"{what} has an unsupported SEAL version or compression")
    if size != len(data):
        raise InputError(f"{what} is truncated or padded: declares {size} bytes, has {len(data)}")


@dataclass(frozen=True)
class _Runtime:
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
def _runtime(name: str) -> _Runtime:
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
    return _Runtime(
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
    return _runtime(parameter_set.name).primes


def _encode(runtime: _Runtime, values: Any, parms_id: Any, scale: float) -> Any:
    plaintext = sa.Plaintext()
    try:
        runtime.encoder.encode(values, parms_id, scale, plaintext)
    except _SEAL_ERRORS as err:
        raise CryptoError(f"cannot encode at scale 2**{math.log2(scale):.1f}: {err}") from err
    return plaintext


class SecretContext:
    """The requester's CKKS context: it holds the secret key and never lets it out.

    Make one with :meth:`generate`. Encryption is symmetric (with the secret key) and
    seeded, so each ciphertext serialises at half size.
    """

    def __init__(self, runtime: _Runtime) -> None:
        self._runtime = runtime
        self._keygen = sa.KeyGenerator(runtime.context)
        self._secret_key = self._keygen.secret_key()
        self._encryptor = sa.Encryptor(runtime.context, self._secret_key)
        self._decryptor = sa.Decryptor(runtime.context, self._secret_key)
        self._public: dict[tuple[int, ...], tuple[bytes, str]] = {}

    @classmethod
    def generate(cls, parameter_set: CKKSParameterSet) -> SecretContext:
        """A new secret key for ``parameter_set``.

        Raises
        ------
        CryptoError
            If SEAL refuses the parameter set.
        """
        return cls(_runtime(parameter_set.name))

    @property
    def parameter_set(self) -> CKKSParameterSet:
        """The CKKS parameter set."""
        return self._runtime.parameter_set

    @property
    def he_params_hash(self) -> str:
        """Hash of the exact parameters (``inference.served``'s ``he_params_hash``)."""
        return self._runtime.params_hash

    def public_context(self, *, rotation_steps: Sequence[int] = ()) -> bytes:
        """The public-context envelope the server may receive (never the secret key).

        Parameters
        ----------
        rotation_steps
            Left rotations to make Galois keys for (with relinearisation keys); only the
            ``replicated`` layout needs them. Empty: the parameters alone.
        """
        return self._public_context(rotation_steps)[0]

    def _public_context(self, rotation_steps: Sequence[int]) -> tuple[bytes, str]:
        steps = tuple(sorted({int(s) for s in rotation_steps}))
        cached = self._public.get(steps)
        if cached is not None:
            return cached
        scratch = _scratch()
        parts = [("encryption_parameters", scratch.save(self._runtime.parms))]
        if steps:
            tool = self._runtime.context.key_context_data().galois_tool()
            elements = [tool.get_elt_from_step(step) for step in steps]
            parts.append(("galois_keys", scratch.save(self._keygen.create_galois_keys(elements))))
            parts.append(("relin_keys", scratch.save(self._keygen.create_relin_keys())))
        envelope = encode_envelope(
            KIND_CONTEXT, {"parameter_set": self.parameter_set.name, "scheme": "ckks"}, parts
        )
        self._public[steps] = (envelope, body_hash(envelope))
        return self._public[steps]

    def context_hash(self, *, rotation_steps: Sequence[int] = ()) -> str:
        """SHA-256 of :meth:`public_context` (how requests name an uploaded context)."""
        return self._public_context(rotation_steps)[1]

    def public(self, *, rotation_steps: Sequence[int] = ()) -> PublicContext:
        """The server's view of this context, made from the public bytes alone."""
        return PublicContext.from_bytes(self.public_context(rotation_steps=rotation_steps))

    def secret_key_bytes(self) -> bytes:
        """The serialised secret key, for leak checks on outgoing bytes only.

        Never send or store these bytes; tests and audits search outgoing requests for
        chunks of them.
        """
        return _scratch().save(self._secret_key)

    def _encrypt_values(self, values: Any) -> bytes:
        runtime = self._runtime
        plaintext = sa.Plaintext()
        try:
            runtime.encoder.encode(values, runtime.parameter_set.input_scale, plaintext)
            return _scratch().save(self._encryptor.encrypt_symmetric(plaintext))
        except _SEAL_ERRORS as err:
            raise CryptoError(f"cannot encrypt: {err}") from err

    def encrypt(
        self, layout: PackingLayout, features: npt.ArrayLike, *, hidden: int = 0
    ) -> list[bytes]:
        """Encrypt standardised ``features`` (patients x features) in ``layout``.

        Raises
        ------
        InputError
            If the features are not finite, exceed the parameter set's input bound or do
            not fit the layout.
        """
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 1:
            raise InputError(
                f"features must be a non-empty (patients, features) array, got {x.shape}"
            )
        if not np.all(np.isfinite(x)):
            raise InputError("features hold NaN or infinite values")
        bound = self.parameter_set.input_bound
        if np.abs(x).max() > bound:
            raise InputError(f"a standardised feature exceeds the input bound of +-{bound:g}")
        slots = self.parameter_set.slots
        if layout is PackingLayout.COLUMN_COMPLEX:
            return [self._encrypt_values(row.tolist()) for row in pack_column_complex(x, slots)]
        if layout is PackingLayout.COLUMN:
            return [self._encrypt_values(row.tolist()) for row in pack_column(x, slots)]
        if layout is PackingLayout.COEFFICIENT:
            geometry = CoefficientGeometry(x.shape[1], self.parameter_set.poly_modulus_degree)
            return [
                self._encrypt_values(slots_from_coefficients(c).tolist()) for c in geometry.pack(x)
            ]
        replicated = ReplicatedGeometry(x.shape[1], hidden, slots)
        return [self._encrypt_values(row.tolist()) for row in replicated.pack(x)]

    def _decrypt_values(self, data: bytes, index: int) -> npt.NDArray[np.complex128]:
        runtime = self._runtime
        _check_seal_blob(data, f"result {index}", max_bytes=_max_ciphertext_bytes(runtime, 3))
        ciphertext = sa.Ciphertext()
        try:
            ciphertext.load(runtime.context, _scratch().stage(data))
            plaintext = sa.Plaintext()
            self._decryptor.decrypt(ciphertext, plaintext)
            return np.asarray(runtime.encoder.decode_complex(plaintext), dtype=np.complex128)
        except _SEAL_ERRORS as err:
            raise CryptoError(f"result {index} does not decrypt under this context: {err}") from err

    def decrypt(
        self,
        layout: PackingLayout,
        results: Sequence[bytes],
        *,
        batch_size: int,
        n_features: int,
        hidden: int = 0,
    ) -> npt.NDArray[np.float64]:
        """Decrypt result ciphertexts of ``layout`` into ``batch_size`` logits.

        Raises
        ------
        CryptoError
            If a result does not decrypt under this context.
        InputError
            If the number of results does not match the layout and batch size.
        """
        slots = self.parameter_set.slots
        values = [self._decrypt_values(data, i) for i, data in enumerate(results)]
        if layout in (PackingLayout.COLUMN_COMPLEX, PackingLayout.COLUMN):
            if len(values) != 1:
                raise InputError(f"a {layout} response carries one result, got {len(values)}")
            if layout is PackingLayout.COLUMN_COMPLEX:
                return unpack_column_complex(values[0], batch_size)
            return unpack_column(values[0], batch_size)
        if layout is PackingLayout.COEFFICIENT:
            geometry = CoefficientGeometry(n_features, self.parameter_set.poly_modulus_degree)
            per = geometry.patients_per_ciphertext
        else:
            replicated = ReplicatedGeometry(n_features, hidden, slots)
            per = replicated.patients_per_ciphertext
        if len(values) != -(-batch_size // per):
            raise InputError(f"expected {-(-batch_size // per)} results, got {len(values)}")
        if layout is PackingLayout.COEFFICIENT:
            return geometry.unpack(coefficients_from_slots(np.stack(values)), batch_size)
        return replicated.unpack(np.stack(values), batch_size)


def _max_ciphertext_bytes(runtime: _Runtime, size: int) -> int:
    """Upper bound on a serialised ciphertext of ``size`` polynomials (uncompressed)."""
    data_primes = len(runtime.parameter_set.data_prime_bits)
    return 1024 + size * runtime.parameter_set.poly_modulus_degree * data_primes * 8


def _load_as_secret_key(runtime: _Runtime, data: bytes) -> bool:
    """Whether ``data`` loads as a SEAL secret key for ``runtime``'s parameters."""
    try:
        sa.SecretKey().load(runtime.context, _scratch().stage(data))
    except _SEAL_ERRORS:
        return False
    return True


def _refuse_foreign_secret(data: bytes, max_bytes: int) -> None:
    """Refuse a context that is not our envelope but holds a secret key (or is TenSEAL's)."""
    if len(data) > max_bytes or data[:3] == MAGIC[:3]:
        return
    if len(data) >= _SEAL_HEADER.size and _SEAL_HEADER.unpack_from(data)[0] == _SEAL_MAGIC:
        for name in PARAMETER_SETS:
            if _load_as_secret_key(_runtime(name), data):
                raise CryptoError("refused: this is a SEAL secret key; send the public context")
        return
    import tenseal as ts  # the high-level API parses TenSEAL's context protobuf

    try:
        foreign = ts.context_from(data)
    except _SEAL_ERRORS:
        return
    if foreign.has_secret_key() or foreign.is_private():
        raise CryptoError(
            "refused: this TenSEAL context holds a secret key; the server never accepts one"
        )
    raise CryptoError("TenSEAL contexts are not accepted; send a Veracity public context")


class PublicContext:
    """The server's CKKS context: parameters and, at most, Galois and relinearisation keys.

    Only :meth:`from_bytes` makes one, from what a requester sent.
    """

    def __init__(
        self,
        runtime: _Runtime,
        *,
        context_hash: str,
        galois_keys: Any | None,
        relin_keys: Any | None,
    ) -> None:
        self._runtime = runtime
        self.context_hash = context_hash
        self._galois_keys = galois_keys
        self._relin_keys = relin_keys

    @property
    def parameter_set(self) -> CKKSParameterSet:
        """The CKKS parameter set."""
        return self._runtime.parameter_set

    @property
    def he_params_hash(self) -> str:
        """Hash of the exact parameters (``inference.served``'s ``he_params_hash``)."""
        return self._runtime.params_hash

    @property
    def has_rotation_keys(self) -> bool:
        """Whether Galois and relinearisation keys came with the context."""
        return self._galois_keys is not None and self._relin_keys is not None

    @classmethod
    def from_bytes(cls, data: bytes, *, limits: WireLimits = DEFAULT_LIMITS) -> PublicContext:
        """Load a requester's public context, refusing anything unsafe.

        Raises
        ------
        CryptoError
            If it carries a secret key (in any form we can recognise), is a TenSEAL
            context, uses parameters below 128-bit security, or parameters other than
            exactly those of the parameter set it names; or if its keys do not load.
        InputError
            If it is malformed, truncated or larger than ``limits.max_context_bytes``.
        """
        _refuse_foreign_secret(data, limits.max_context_bytes)
        envelope = decode_envelope(
            data, kind=KIND_CONTEXT, max_bytes=limits.max_context_bytes, limits=limits
        )
        names = [name for name, _ in envelope.parts]
        secret = _SECRET_PART_NAMES & {name.lower() for name in names}
        if secret:
            raise CryptoError(
                f"refused: the public context carries a secret key (part {sorted(secret)[0]!r}); "
                "the server never accepts one"
            )
        if set(envelope.header) != {"parameter_set", "scheme"}:
            raise InputError("context header must have exactly the fields parameter_set, scheme")
        if envelope.header["scheme"] != "ckks":
            raise CryptoError(f"unsupported scheme {envelope.header['scheme']!r}; expected ckks")
        name = envelope.header["parameter_set"]
        if not isinstance(name, str):
            raise InputError("context field 'parameter_set' must be a string")
        runtime = _runtime(parameter_set_named(name).name)
        unknown = set(names) - {"encryption_parameters"} - _KEY_PARTS
        if unknown or len(names) != len(set(names)):
            raise InputError(f"context parts must be distinct and known, got {names}")
        _check_parameters(runtime, envelope.single_part("encryption_parameters"))
        galois = relin = None
        if "galois_keys" in names or "relin_keys" in names:
            galois = _load_key(runtime, envelope.single_part("galois_keys"), "galois_keys")
            relin = _load_key(runtime, envelope.single_part("relin_keys"), "relin_keys")
        return cls(runtime, context_hash=body_hash(data), galois_keys=galois, relin_keys=relin)

    def check_rotations(self, steps: Sequence[int]) -> None:
        """Require Galois keys for every step in ``steps`` and relinearisation keys.

        Raises
        ------
        CryptoError
            Naming what is missing.
        """
        if self._galois_keys is None or self._relin_keys is None:
            raise CryptoError(
                "this layout needs a public context with Galois and relinearisation keys"
            )
        tool = self._runtime.context.key_context_data().galois_tool()
        missing = [s for s in steps if not self._galois_keys.has_key(tool.get_elt_from_step(s))]
        if missing:
            raise CryptoError(f"the public context lacks Galois keys for rotations {missing}")

    # -- evaluation helpers (server side) -------------------------------------------------
    def _load_inputs(self, ciphertexts: Sequence[bytes]) -> list[Any]:
        runtime = self._runtime
        top = runtime.top_parms_id
        expected_scale = runtime.parameter_set.input_scale
        limit = _max_ciphertext_bytes(runtime, 2)
        loaded = []
        for index, data in enumerate(ciphertexts):
            _check_seal_blob(data, f"ciphertext {index}", max_bytes=limit)
            ciphertext = sa.Ciphertext()
            try:
                ciphertext.load(runtime.context, _scratch().stage(data))
            except _SEAL_ERRORS as err:
                raise CryptoError(
                    f"ciphertext {index} is not valid for {runtime.parameter_set.name}: {err}"
                ) from err
            if (
                ciphertext.size() != 2
                or ciphertext.parms_id() != top
                or not ciphertext.is_ntt_form()
            ):
                raise CryptoError(
                    f"ciphertext {index} is not a fresh ciphertext at the top level of "
                    f"{runtime.parameter_set.name}"
                )
            if not math.isclose(ciphertext.scale, expected_scale, rel_tol=1e-9):
                raise CryptoError(
                    f"ciphertext {index} has scale 2**{math.log2(ciphertext.scale):.2f}; "
                    f"{runtime.parameter_set.name} encodes inputs at 2**"
                    f"{runtime.parameter_set.input_scale_bits}"
                )
            loaded.append(ciphertext)
        return loaded


def _check_parameters(runtime: _Runtime, data: bytes) -> None:
    parms = sa.EncryptionParameters(sa.SCHEME_TYPE.CKKS)
    try:
        _check_seal_blob(data, "encryption parameters", max_bytes=64 * 1024)
        parms.load(_scratch().stage(data))
    except (InputError, *_SEAL_ERRORS) as err:
        if _load_as_secret_key(runtime, data):
            raise CryptoError("refused: the 'encryption_parameters' part is a secret key") from err
        if isinstance(err, InputError):
            raise
        raise InputError(f"malformed encryption parameters: {err}") from err
    if parms.scheme() != sa.SCHEME_TYPE.CKKS:
        raise CryptoError("the context's encryption parameters are not CKKS")
    degree = int(parms.poly_modulus_degree())
    primes = tuple(int(q.value()) for q in parms.coeff_modulus())
    bits = sum(int(q.bit_count()) for q in parms.coeff_modulus())
    limit = MAX_LOG_Q_128.get(degree)
    if limit is None or bits > limit:
        raise CryptoError(
            f"refused: N={degree} with a {bits}-bit modulus is below 128-bit security"
        )
    expected = runtime.parameter_set
    if degree != expected.poly_modulus_degree or primes != runtime.primes:
        raise CryptoError(
            f"context parameters (N={degree}, {len(primes)} primes, {bits} bits) are not those "
            f"of {expected.name} (N={expected.poly_modulus_degree}, "
            f"{list(expected.coeff_modulus_bits)})"
        )


def _load_key(runtime: _Runtime, data: bytes, name: str) -> Any:
    key = sa.GaloisKeys() if name == "galois_keys" else sa.RelinKeys()
    try:
        _check_seal_blob(data, name, max_bytes=32 * 1024 * 1024)
        key.load(runtime.context, _scratch().stage(data))
    except (InputError, *_SEAL_ERRORS) as err:
        if _load_as_secret_key(runtime, data):
            raise CryptoError(f"refused: the {name!r} part is a secret key") from err
        if isinstance(err, InputError):
            raise
        raise CryptoError(f"{name} do not load under {runtime.parameter_set.name}: {err}") from err
    return key


# ---- evaluation ------------------------------------------------------------------------------


def _multiply_accumulate(
    runtime: _Runtime, inputs: Sequence[Any], weights: npt.NDArray[np.float64], scale: float
) -> Any:
    """``sum_j weights[j] * inputs[j]`` at ``input scale * scale`` (zero weights skipped)."""
    evaluator = runtime.evaluator
    parms_id = inputs[0].parms_id()
    accumulator = None
    product = sa.Ciphertext()
    for ciphertext, weight in zip(inputs, weights, strict=True):
        if weight == 0.0:
            continue
        plaintext = _encode(runtime, float(weight), parms_id, scale)
        if accumulator is None:
            accumulator = sa.Ciphertext()
            evaluator.multiply_plain(ciphertext, plaintext, accumulator)
        else:
            evaluator.multiply_plain(ciphertext, plaintext, product)
            evaluator.add_inplace(accumulator, product)
    if accumulator is None:
        raise CryptoError("a layer has only zero weights; the model is constant")
    return accumulator


def _evaluate_column_complex(
    context: PublicContext, circuit: LinearCircuit, inputs: Sequence[Any]
) -> list[Any]:
    runtime = context._runtime
    accumulator = _multiply_accumulate(runtime, inputs, circuit.weights, circuit.weight_scale)
    # Both packed patients (real and imaginary part) need the bias: add b + ib.
    bias = _encode(
        runtime, complex(circuit.bias, circuit.bias), accumulator.parms_id(), accumulator.scale
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


def _evaluate_coefficient(
    context: PublicContext,
    circuit: LinearCircuit,
    inputs: Sequence[Any],
    random_bytes: RandomBytes,
) -> list[Any]:
    runtime = context._runtime
    degree = runtime.parameter_set.poly_modulus_degree
    geometry = CoefficientGeometry(circuit.n_features, degree)
    parms_id = inputs[0].parms_id()
    weights = _encode(
        runtime,
        slots_from_coefficients(geometry.weight_polynomial(circuit.weights)).tolist(),
        parms_id,
        circuit.weight_scale,
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
        first[outputs] = circuit.bias
        for part in (first, second):
            plaintext = _encode(runtime, slots_from_coefficients(part).tolist(), parms_id, scale)
            runtime.evaluator.add_plain_inplace(result, plaintext)
        results.append(result)
    return results


def _evaluate_column_quadratic(
    context: PublicContext, circuit: QuadraticCircuit, inputs: Sequence[Any]
) -> list[Any]:
    runtime = context._runtime
    evaluator = runtime.evaluator
    output = None
    for unit in np.flatnonzero(circuit.output_weights):
        hidden = _multiply_accumulate(
            runtime, inputs, circuit.hidden_weights[unit], circuit.hidden_weight_scale
        )
        bias = _encode(runtime, float(circuit.hidden_bias[unit]), hidden.parms_id(), hidden.scale)
        evaluator.add_plain_inplace(hidden, bias)
        evaluator.rescale_to_next_inplace(hidden)  # one rescale per unit: lazy rescaling
        evaluator.square_inplace(hidden)  # three parts; relinearised by the decryptor
        weight = _encode(
            runtime,
            float(circuit.output_weights[unit]),
            hidden.parms_id(),
            circuit.output_weight_scale,
        )
        evaluator.multiply_plain_inplace(hidden, weight)
        if output is None:
            output = hidden
        else:
            evaluator.add_inplace(output, hidden)
    if output is None:
        raise CryptoError("the model has no hidden units")
    constant = _encode(runtime, circuit.output_bias, output.parms_id(), output.scale)
    evaluator.add_plain_inplace(output, constant)
    return [output]


def _evaluate_replicated(
    context: PublicContext, circuit: QuadraticCircuit, inputs: Sequence[Any]
) -> list[Any]:
    runtime = context._runtime
    evaluator = runtime.evaluator
    geometry = ReplicatedGeometry(circuit.n_features, circuit.hidden, runtime.parameter_set.slots)
    steps = geometry.rotation_steps()
    context.check_rotations(steps)
    inner = [s for s in steps if s < geometry.block_width]
    outer = [s for s in steps if s >= geometry.block_width]
    first = _encode(
        runtime,
        geometry.first_layer_vector(circuit.hidden_weights, circuit.hidden_bias).tolist(),
        inputs[0].parms_id(),
        circuit.hidden_weight_scale,
    )
    selector = constant = None
    results = []
    rotated = sa.Ciphertext()
    for ciphertext in inputs:
        value = sa.Ciphertext()
        evaluator.multiply_plain(ciphertext, first, value)
        for step in inner:
            evaluator.rotate_vector(value, step, context._galois_keys, rotated)
            evaluator.add_inplace(value, rotated)
        evaluator.rescale_to_next_inplace(value)
        evaluator.square_inplace(value)
        evaluator.relinearize_inplace(value, context._relin_keys)
        if selector is None:
            selector = _encode(
                runtime,
                geometry.output_selector(circuit.output_weights).tolist(),
                value.parms_id(),
                circuit.output_weight_scale,
            )
        evaluator.multiply_plain_inplace(value, selector)
        for step in outer:
            evaluator.rotate_vector(value, step, context._galois_keys, rotated)
            evaluator.add_inplace(value, rotated)
        if constant is None:
            constant = _encode(
                runtime,
                geometry.output_constant(circuit.output_bias).tolist(),
                value.parms_id(),
                value.scale,
            )
        evaluator.add_plain_inplace(value, constant)
        results.append(value)
    return results


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
        The compiled model (:func:`veracity.crypto.he_circuit.compile_circuit`).
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
    inputs = context._load_inputs(ciphertexts)
    try:
        if isinstance(circuit, LinearCircuit):
            if layout is PackingLayout.COLUMN_COMPLEX:
                outputs = _evaluate_column_complex(context, circuit, inputs)
            elif layout is PackingLayout.COEFFICIENT:
                outputs = _evaluate_coefficient(context, circuit, inputs, random_bytes)
            else:
                raise CryptoError(f"layout {layout} does not serve logistic regression")
        elif layout is PackingLayout.COLUMN:
            outputs = _evaluate_column_quadratic(context, circuit, inputs)
        elif layout is PackingLayout.REPLICATED:
            outputs = _evaluate_replicated(context, circuit, inputs)
        else:
            raise CryptoError(f"layout {layout} does not serve poly_mlp")
    except _SEAL_ERRORS as err:
        raise CryptoError(f"encrypted evaluation failed: {err}") from err
    scratch = _scratch()
    return [scratch.save(output) for output in outputs]
