"""The server's CKKS context and its admission checks (TenSEAL adapter).

:class:`PublicContext` can only be made from bytes by :meth:`PublicContext.from_bytes`, which
refuses secret keys (in a part of our envelope, as a raw SEAL secret key or inside a TenSEAL
context), parameter sets below 128-bit security and parameters that are not exactly those of
a known set. Every evaluation function (:mod:`veracity.he.layouts`) takes a ``PublicContext``,
so mypy rejects server code that would pass the requester's
:class:`~veracity.he.contexts.SecretContext`.

This module imports nothing from the layouts (they name ``PublicContext`` in their
signatures), nor from :mod:`veracity.he.contexts` (which makes a ``PublicContext`` of its own
public bytes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import tenseal.sealapi as sa

from veracity.errors import CryptoError, InputError
from veracity.he.params import MAX_LOG_Q_128, PARAMETER_SETS, CKKSParameterSet, parameter_set_named
from veracity.he.seal import (
    SEAL_HEADER,
    SEAL_MAGIC,
    Runtime,
    inflate,
    max_ciphertext_bytes,
    runtime,
    scratch,
    seal_errors,
)
from veracity.he.wire import (
    DEFAULT_LIMITS,
    KIND_CONTEXT,
    MAGIC,
    WireLimits,
    body_hash,
    decode_envelope,
)

__all__ = ["PublicContext"]

_SECRET_PART_NAMES = {"secret_key", "secretkey", "sk", "private_key", "private_context"}
_KEY_PARTS = {"galois_keys", "relin_keys"}
#: Most Galois keys a context may carry (the replicated layout of a 30-16 network uses 13).
MAX_GALOIS_KEYS = 24
_PARAMETERS_BYTES = 64 * 1024


def _key_switching_bytes(shared: Runtime) -> int:
    """Uncompressed bytes of one key-switching key (a relinearisation or Galois key)."""
    ps = shared.parameter_set
    digits = len(ps.data_prime_bits)
    return digits * (2 * ps.poly_modulus_degree * len(ps.coeff_modulus_bits) * 8 + 1024)


def _inflated_limit(shared: Runtime, part: str) -> int:
    """The most bytes a part may hold once uncompressed, from the parameter set alone."""
    ps = shared.parameter_set
    if part == "relin_keys":
        return _key_switching_bytes(shared) + 4096
    if part == "galois_keys":  # plus 8 bytes per possible Galois element (empty entries)
        return MAX_GALOIS_KEYS * _key_switching_bytes(shared) + 16 * ps.poly_modulus_degree + 4096
    if part == "secret_key":
        return ps.poly_modulus_degree * len(ps.coeff_modulus_bits) * 8 + 1024
    return _PARAMETERS_BYTES


def _loads_as_secret_key(shared: Runtime, data: bytes) -> bool:
    """Whether ``data`` loads as a SEAL secret key for ``shared``'s parameters."""
    limit = _inflated_limit(shared, "secret_key")
    try:
        blob = inflate(data, "a secret key", max_bytes=max(limit, len(data)), max_inflated=limit)
        with seal_errors("not a secret key"):
            sa.SecretKey().load(shared.context, scratch().stage(blob))
    except (CryptoError, InputError):
        return False
    return True


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while offset < len(data) and shift < 64:
        byte = data[offset]
        value |= (byte & 0x7F) << shift
        offset += 1
        if not byte & 0x80:
            return value, offset
        shift += 7
    raise ValueError("not a protobuf varint")


def _protobuf_fields(data: bytes) -> dict[int, list[bytes | int]] | None:
    """The top-level fields of a protobuf message (bytes or integers), or None if it is not one.

    Parsing only: nothing inside is decompressed or handed to SEAL.
    """
    fields: dict[int, list[bytes | int]] = {}
    offset = 0
    try:
        while offset < len(data):
            key, offset = _varint(data, offset)
            number, wire = key >> 3, key & 7
            value: bytes | int
            if number == 0:
                return None
            if wire == 0:
                value, offset = _varint(data, offset)
            elif wire == 2:
                length, offset = _varint(data, offset)
                if offset + length > len(data):
                    return None
                value, offset = data[offset : offset + length], offset + length
            elif wire in (1, 5):
                width = 8 if wire == 1 else 4
                value, offset = data[offset : offset + width], offset + width
            else:
                return None
            fields.setdefault(number, []).append(value)
    except ValueError:
        return None
    return fields if offset == len(data) else None


def _tenseal_context(data: bytes) -> bool | None:
    """Whether ``data`` is a TenSEAL context with a secret key (None: not a TenSEAL context).

    Read from TenSEAL's ``TenSEALContextProto`` (field 1: SEAL encryption parameters,
    2: public members, 3: private members whose field 1 is the secret key) without
    TenSEAL or SEAL parsing anything.
    """
    fields = _protobuf_fields(data)
    if not fields or not set(fields) <= {1, 2, 3, 4}:
        return None
    parameters = fields.get(1, [b""])[0]
    if not isinstance(parameters, bytes) or parameters[:2] != SEAL_MAGIC.to_bytes(2, "little"):
        return None
    private = fields.get(3, [b""])[0]
    secret = _protobuf_fields(private) if isinstance(private, bytes) else None
    key = (secret or {}).get(1, [b""])[0]
    return isinstance(key, bytes) and len(key) > 0


def _refuse_foreign_secret(data: bytes, max_bytes: int) -> None:
    """Refuse a context that is not our envelope but holds a secret key (or is TenSEAL's)."""
    if len(data) > max_bytes or data[:3] == MAGIC[:3]:
        return
    if len(data) >= SEAL_HEADER.size and SEAL_HEADER.unpack_from(data)[0] == SEAL_MAGIC:
        for name in PARAMETER_SETS:
            if _loads_as_secret_key(runtime(name), data):
                raise CryptoError("refused: this is a SEAL secret key; send the public context")
        return
    private = _tenseal_context(data)
    if private is None:
        return
    if private:
        raise CryptoError(
            "refused: this TenSEAL context holds a secret key; the server never accepts one"
        )
    raise CryptoError("TenSEAL contexts are not accepted; send a Veracity public context")


class LoadedInputs(tuple[Any, ...]):
    """A request's ciphertexts as SEAL loaded them, with the uncompressed bytes of each.

    A tuple of SEAL ciphertexts (fixed: the bytes stay paired with them); ``blobs[i]`` is
    what ``self[i]`` was loaded from (layouts that compute on residues read them there:
    ``seal.loaded_ciphertext_residues``).

    Raises
    ------
    CryptoError
        On construction, if there is not one blob per ciphertext.
    """

    blobs: tuple[bytes, ...]

    def __new__(cls, ciphertexts: Sequence[Any], blobs: Sequence[bytes]) -> LoadedInputs:
        if len(ciphertexts) != len(blobs):
            raise CryptoError(f"{len(blobs)} blobs for {len(ciphertexts)} ciphertexts")
        loaded = super().__new__(cls, ciphertexts)
        loaded.blobs = tuple(blobs)
        return loaded


class PublicContext:
    """The server's CKKS context: parameters and, at most, Galois and relinearisation keys.

    Only :meth:`from_bytes` makes one, from what a requester sent.
    """

    def __init__(
        self,
        runtime: Runtime,
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
    def runtime(self) -> Runtime:
        """The shared SEAL runtime of the parameter set (context, encoder, evaluator)."""
        return self._runtime

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
        shared = runtime(parameter_set_named(name).name)
        unknown = set(names) - {"encryption_parameters"} - _KEY_PARTS
        if unknown or len(names) != len(set(names)):
            raise InputError(f"context parts must be distinct and known, got {names}")
        # Every part's declared and inflated size is checked, and every part inflated
        # within its bound, before SEAL parses any of them.
        inflated: dict[str, bytes] = {}
        for part, blob in envelope.parts:
            try:
                inflated[part] = inflate(
                    blob, part, max_bytes=len(blob), max_inflated=_inflated_limit(shared, part)
                )
            except InputError as err:
                if _loads_as_secret_key(shared, blob):  # itself bounded to a key's size
                    raise CryptoError(f"refused: the {part!r} part is a secret key") from err
                raise
        if "encryption_parameters" not in inflated:
            raise InputError("a context must carry exactly one 'encryption_parameters' part")
        _check_parameters(shared, inflated["encryption_parameters"])
        galois = relin = None
        if "galois_keys" in names or "relin_keys" in names:
            if not set(inflated) >= _KEY_PARTS:
                raise InputError("a context with keys carries both galois_keys and relin_keys")
            galois = _load_key(shared, inflated["galois_keys"], "galois_keys")
            relin = _load_key(shared, inflated["relin_keys"], "relin_keys")
        return cls(shared, context_hash=body_hash(data), galois_keys=galois, relin_keys=relin)

    def rotation_keys(self, steps: Sequence[int]) -> tuple[Any, Any]:
        """The Galois and relinearisation keys, holding a key for every step in ``steps``.

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
        return self._galois_keys, self._relin_keys

    def load_inputs(self, ciphertexts: Sequence[bytes]) -> LoadedInputs:
        """Load a request's ciphertexts: fresh, two-part, top level, at the input scale.

        Raises
        ------
        InputError
            If one is truncated, padded or not a SEAL object.
        CryptoError
            If one does not load under this parameter set or is not a fresh ciphertext at
            the input scale.
        """
        shared = self._runtime
        top = shared.top_parms_id
        expected_scale = shared.parameter_set.input_scale
        limit = max_ciphertext_bytes(shared, 2)
        name = shared.parameter_set.name
        loaded = []
        blobs = []
        for index, data in enumerate(ciphertexts):
            data = inflate(data, f"ciphertext {index}", max_bytes=limit, max_inflated=limit)
            blobs.append(data)
            ciphertext = sa.Ciphertext()
            with seal_errors(f"ciphertext {index} is not valid for {name}"):
                ciphertext.load(shared.context, scratch().stage(data))
            if (
                ciphertext.size() != 2
                or ciphertext.parms_id() != top
                or not ciphertext.is_ntt_form()
            ):
                raise CryptoError(
                    f"ciphertext {index} is not a fresh ciphertext at the top level of {name}"
                )
            if not math.isclose(ciphertext.scale, expected_scale, rel_tol=1e-9):
                raise CryptoError(
                    f"ciphertext {index} has scale 2**{math.log2(ciphertext.scale):.2f}; "
                    f"{name} encodes inputs at 2**{shared.parameter_set.input_scale_bits}"
                )
            loaded.append(ciphertext)
        return LoadedInputs(loaded, blobs)


def _check_parameters(shared: Runtime, data: bytes) -> None:
    parms = sa.EncryptionParameters(sa.SCHEME_TYPE.CKKS)
    try:
        blob = inflate(
            data,
            "encryption parameters",
            max_bytes=_PARAMETERS_BYTES,
            max_inflated=_PARAMETERS_BYTES,
        )
        with seal_errors("malformed encryption parameters", InputError):
            parms.load(scratch().stage(blob))
    except InputError as err:
        if _loads_as_secret_key(shared, data):
            raise CryptoError("refused: the 'encryption_parameters' part is a secret key") from err
        raise
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
    expected = shared.parameter_set
    if degree != expected.poly_modulus_degree or primes != shared.primes:
        raise CryptoError(
            f"context parameters (N={degree}, {len(primes)} primes, {bits} bits) are not those "
            f"of {expected.name} (N={expected.poly_modulus_degree}, "
            f"{list(expected.coeff_modulus_bits)})"
        )


def _load_key(shared: Runtime, data: bytes, name: str) -> Any:
    key = sa.GaloisKeys() if name == "galois_keys" else sa.RelinKeys()
    limit = _inflated_limit(shared, name)
    try:
        blob = inflate(data, name, max_bytes=limit, max_inflated=limit)
        with seal_errors(f"{name} do not load under {shared.parameter_set.name}"):
            key.load(shared.context, scratch().stage(blob))
    except (InputError, CryptoError) as err:
        if _loads_as_secret_key(shared, data):
            raise CryptoError(f"refused: the {name!r} part is a secret key") from err
        raise
    count = int(key.size())
    if name == "relin_keys" and count != 1:
        raise CryptoError(f"relin_keys hold {count} keys; a context carries exactly one")
    if count > MAX_GALOIS_KEYS:
        raise CryptoError(f"galois_keys hold {count} keys, more than {MAX_GALOIS_KEYS}")
    return key
