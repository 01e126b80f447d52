"""The site's source of DP noise and Poisson samples: a ChaCha20 keystream (a CSPRNG).

Opacus's ``secure_mode`` needs torchcsprng, which has no build for this torch, and
torch's own generator is a Mersenne Twister, which is not cryptographically secure: its
state can be recovered from its outputs. So a site draws every random number DP-SGD needs
from ChaCha20 (RFC 8439, OpenSSL through ``cryptography``) under a 256-bit key from
``os.urandom``:

* uniforms in (0, 1): 53 random bits each, ``(k + 0.5) / 2**53``, never 0 or 1;
* standard normals: Box-Muller in float64 on two such uniforms;
* Gaussian noise of standard deviation ``s``: ``s * (z1 + z2 + z3 + z4) / 2`` in float64,
  the sum of four independent standard normals (variance 4, halved in scale), which is the
  defence against floating-point attacks that Opacus's secure mode uses (Holohan & Braghin,
  arXiv:2107.10138, section 5.1; the attack on Opacus is arXiv:2112.05307): a single
  Box-Muller draw reaches only a sparse, input-dependent subset of the floats, the sum of
  four does not. The noise is added to the clipped gradient sum in float64 and the result
  rounded once to the parameter's dtype.

One stream serves one purpose of one trainer (noise or sampling), each under its own key.
The keystream position is a 32-bit block counter (256 GiB of keystream per key), far more
than any site's training draws. Tests derive keys from a seed (:meth:`ChaCha20Source.from_seed`);
receipts then name the generator as seeded, and a site whose study asks for secure mode
refuses seeds altogether.
"""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from veracity.errors import InputError

__all__ = ["GENERATOR_NAME", "SEEDED_GENERATOR_NAME", "ChaCha20Source"]

#: How receipts name the noise source (key from the OS).
GENERATOR_NAME = (
    "chacha20 (key from os.urandom); uniforms of 53 bits; gaussian: box-muller in float64, "
    "sum of 4 draws / 2"
)
#: ... and with a key derived from an injected seed (tests only).
SEEDED_GENERATOR_NAME = (
    "chacha20 (key derived from an injected seed: tests only); uniforms of 53 bits; gaussian: "
    "box-muller in float64, sum of 4 draws / 2"
)

_KEY_DOMAIN = b"veracity.noise-key.v1\x00"
_TWO_PI = 2.0 * math.pi


class ChaCha20Source:
    """Uniforms and Gaussians from one ChaCha20 keystream (see the module docstring).

    Parameters
    ----------
    key
        32 bytes; ``None`` draws a fresh key from ``os.urandom``.

    Raises
    ------
    InputError
        If the key is not 32 bytes.
    """

    def __init__(self, key: bytes | None = None) -> None:
        chosen = os.urandom(32) if key is None else key
        if len(chosen) != 32:
            raise InputError("a ChaCha20 key is 32 bytes")
        self.seeded = key is not None
        # 16-byte "nonce" in cryptography's API: 4-byte block counter (0) + 12-byte nonce.
        cipher = Cipher(algorithms.ChaCha20(chosen, bytes(16)), mode=None)
        self._stream = cipher.encryptor()

    @classmethod
    def from_seed(cls, seed: int, purpose: str) -> ChaCha20Source:
        """A source whose key is derived from ``seed`` and ``purpose`` (tests only)."""
        material = _KEY_DOMAIN + seed.to_bytes(16, "big", signed=True) + purpose.encode()
        return cls(hashlib.sha256(material).digest())

    @property
    def name(self) -> str:
        """How a receipt names this source."""
        return SEEDED_GENERATOR_NAME if self.seeded else GENERATOR_NAME

    def _words(self, count: int) -> npt.NDArray[np.uint64]:
        data = self._stream.update(bytes(8 * count))
        return np.frombuffer(data, dtype="<u8").astype(np.uint64, copy=False)

    def uniform(self, count: int) -> npt.NDArray[np.float64]:
        """``count`` independent uniforms in the open interval (0, 1)."""
        if count < 0:
            raise InputError("cannot draw a negative number of values")
        bits = (self._words(count) >> np.uint64(11)).astype(np.float64)
        return (bits + 0.5) * 2.0**-53

    def standard_normal(self, count: int) -> npt.NDArray[np.float64]:
        """``count`` independent standard normals (Box-Muller, float64)."""
        pairs = (count + 1) // 2
        u1, u2 = self.uniform(pairs), self.uniform(pairs)
        radius = np.sqrt(-2.0 * np.log(u1))
        angle = _TWO_PI * u2
        return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]

    def gaussian(self, shape: tuple[int, ...], std: float) -> npt.NDArray[np.float64]:
        """Noise of standard deviation ``std`` and shape ``shape``: ``std * sum of 4 / 2``.

        Raises
        ------
        InputError
            If ``std`` is negative or not finite.
        """
        if not (math.isfinite(std) and std >= 0):
            raise InputError("the noise standard deviation must be finite and non-negative")
        count = math.prod(shape)
        if std == 0:
            return np.zeros(shape, dtype=np.float64)
        draws = self.standard_normal(4 * count).reshape(4, count)
        noise: npt.NDArray[np.float64] = (std * draws.sum(axis=0) / 2.0).reshape(shape)
        return noise
