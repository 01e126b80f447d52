"""The requester's CKKS context, which holds the secret key (TenSEAL adapter).

:class:`SecretContext` holds the SEAL secret key, encrypts (symmetric, seeded: half-size
ciphertexts), decrypts, and writes its :meth:`~SecretContext.public_context`: an envelope
with the encryption parameters and, only for the ``replicated`` layout, Galois and
relinearisation keys. Nothing it writes contains the secret key. The server reads that
envelope as a :class:`~veracity.he.public_context.PublicContext`, a different type, so mypy
rejects server code that would pass a ``SecretContext``.

Packing and evaluation live in :mod:`veracity.he.layouts`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import tenseal.sealapi as sa

from veracity.errors import InputError
from veracity.he.layouts import ModelShape, layout_for
from veracity.he.params import CKKSParameterSet, PackingLayout
from veracity.he.public_context import PublicContext
from veracity.he.seal import Runtime, inflate, max_ciphertext_bytes, runtime, scratch, seal_errors
from veracity.he.wire import KIND_CONTEXT, body_hash, encode_envelope

__all__ = ["SecretContext"]


class SecretContext:
    """The requester's CKKS context: it holds the secret key and never lets it out.

    Make one with :meth:`generate`. Encryption is symmetric (with the secret key) and
    seeded, so each ciphertext serialises at half size.
    """

    def __init__(self, runtime: Runtime) -> None:
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
        return cls(runtime(parameter_set.name))

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
        file = scratch()
        parts = [("encryption_parameters", file.save(self._runtime.parms))]
        if steps:
            tool = self._runtime.context.key_context_data().galois_tool()
            elements = [tool.get_elt_from_step(step) for step in steps]
            parts.append(("galois_keys", file.save(self._keygen.create_galois_keys(elements))))
            parts.append(("relin_keys", file.save(self._keygen.create_relin_keys())))
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
        return scratch().save(self._secret_key)

    def _encrypt_values(self, values: Any) -> bytes:
        plaintext = sa.Plaintext()
        with seal_errors("cannot encrypt"):
            encoder = self._runtime.encoder
            encoder.encode(values, self._runtime.parameter_set.input_scale, plaintext)
            return scratch().save(self._encryptor.encrypt_symmetric(plaintext))

    def encrypt(
        self,
        layout: PackingLayout,
        features: npt.ArrayLike,
        *,
        hidden: int = 0,
        shape: ModelShape | None = None,
    ) -> list[bytes]:
        """Encrypt standardised ``features`` (patients x features) in ``layout``.

        ``shape`` describes the model where the layout needs more than the width (the
        ``im2col`` layout: the image shape, filters and kernel).

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
        strategy = layout_for(layout, self.parameter_set, shape or ModelShape(x.shape[1], hidden))
        return [self._encrypt_values(np.asarray(row).tolist()) for row in strategy.pack(x)]

    def _decrypt_values(self, data: bytes, index: int) -> npt.NDArray[np.complex128]:
        runtime = self._runtime
        limit = max_ciphertext_bytes(runtime, 5)  # the CNN's second square: five parts
        data = inflate(data, f"result {index}", max_bytes=limit, max_inflated=limit)
        ciphertext = sa.Ciphertext()
        with seal_errors(f"result {index} does not decrypt under this context"):
            ciphertext.load(runtime.context, scratch().stage(data))
            plaintext = sa.Plaintext()
            self._decryptor.decrypt(ciphertext, plaintext)
            return np.asarray(runtime.encoder.decode_complex(plaintext), dtype=np.complex128)

    def decrypt(
        self,
        layout: PackingLayout,
        results: Sequence[bytes],
        *,
        batch_size: int,
        n_features: int,
        hidden: int = 0,
        outputs: int = 1,
        shape: ModelShape | None = None,
    ) -> npt.NDArray[np.float64]:
        """Decrypt result ciphertexts of ``layout`` into ``batch_size`` patients' logits.

        Shape ``(batch_size,)`` for one output per patient, ``(batch_size, outputs)``
        otherwise.

        Raises
        ------
        CryptoError
            If a result does not decrypt under this context.
        InputError
            If the number of results does not match the layout and batch size.
        """
        strategy = layout_for(
            layout, self.parameter_set, shape or ModelShape(n_features, hidden, outputs)
        )
        values = [self._decrypt_values(data, i) for i, data in enumerate(results)]
        return strategy.unpack(values, batch_size)
