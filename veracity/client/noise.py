"""The site's source of DP noise and Poisson samples: a ChaCha20 keystream (a CSPRNG).

Opacus's ``secure_mode`` needs torchcsprng, which has no build for this torch, and
torch's own generator is a Mersenne Twister, which is not cryptographically secure: its
state can be recovered from its outputs. So a site draws every random number DP-SGD needs
from ChaCha20 (RFC 8439, OpenSSL through ``cryptography``) under a 256-bit key from
``os.urandom``:

* uniforms in (0, 1): 53 random bits each, ``(k + 0.5) / 2**53``, never 0 or 1;
* Poisson-sampling coin flips: a 32-bit word below ``floor(q * 2**32)``, so the rate is
  ``q`` rounded down to a multiple of ``2**-32`` (never above the accounted rate);
* standard normals: Box-Muller in float64 on two such uniforms;
* Gaussian noise of standard deviation ``s``: ``s * (z1 + z2 + z3 + z4) / 2`` in float64,
  the sum of four independent standard normals (variance 4, halved in scale), which is the
  defence against floating-point attacks that Opacus's secure mode uses (Holohan & Braghin,
  arXiv:2107.10138, section 5.1; the attack on Opacus is arXiv:2112.05307): a single
  Box-Muller draw reaches only a sparse, input-dependent subset of the floats, the sum of
  four does not. The noise is added to the clipped gradient sum in float64 and the result
  rounded once to the parameter's dtype.

The draws are torch tensors (the module is part of the training adapter; torch's float64
``log``, ``sqrt``, ``cos`` and ``sin`` are three times faster than NumPy's here). One
stream serves one purpose of one trainer (noise or sampling), each under its own key.
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
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from veracity.errors import InputError

__all__ = ["GENERATOR_NAME", "ROUND_SEED_GENERATOR_NAME", "SEEDED_GENERATOR_NAME", "ChaCha20Source"]

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
#: ... and with keys derived from the site's secret per-round seed (what a site trains with:
#: the seed itself comes from ``os.urandom``; see :meth:`ChaCha20Source.from_round_seed`).
ROUND_SEED_GENERATOR_NAME = (
    "chacha20 (keys by HKDF-SHA256 from the site's secret 256-bit round seed, from "
    "os.urandom); uniforms of 53 bits; gaussian: box-muller in float64, sum of 4 draws / 2"
)

_KEY_DOMAIN = b"veracity.noise-key.v1\x00"
_ROUND_KEY_SALT = b"veracity.round-seed-keys.v1"
#: Unit noise values drawn at a time (a few steps of a small model).
_BLOCK = 4096
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
        #: Whether the key came from a site's secret round seed (secure, and replayable).
        self.round_seeded = False
        # 16-byte "nonce" in cryptography's API: 4-byte block counter (0) + 12-byte nonce.
        cipher = Cipher(algorithms.ChaCha20(chosen, bytes(16)), mode=None)
        self._stream = cipher.encryptor()
        self._spare = torch.zeros(0, dtype=torch.float64)

    @classmethod
    def from_seed(cls, seed: int, purpose: str) -> ChaCha20Source:
        """A source whose key is derived from ``seed`` and ``purpose`` (tests only)."""
        material = _KEY_DOMAIN + seed.to_bytes(16, "big", signed=True) + purpose.encode()
        return cls(hashlib.sha256(material).digest())

    @classmethod
    def from_round_seed(cls, seed: bytes, purpose: str) -> ChaCha20Source:
        """A source keyed by HKDF-SHA256 (RFC 5869) from a site's secret round seed.

        ``seed`` is 32 bytes from ``os.urandom`` that never leave the site; each purpose
        (``"sampling"``, ``"noise"``) gets its own key. HKDF is a PRF in the seed, so the
        keys are as unpredictable as the seed: to whoever does not hold the seed the
        keystreams are those of ChaCha20 under random keys, and the DP noise is as
        strong as with a key straight from the OS. Holding the seed, the site can
        regenerate the same draws to replay the round.

        Raises
        ------
        InputError
            If the seed is not 32 bytes.
        """
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        if len(seed) != 32:
            raise InputError("a round seed is 32 bytes")
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=_ROUND_KEY_SALT, info=purpose.encode()
        ).derive(seed)
        source = cls(key)
        source.seeded = False
        source.round_seeded = True
        return source

    @property
    def name(self) -> str:
        """How a receipt names this source."""
        if self.round_seeded:
            return ROUND_SEED_GENERATOR_NAME
        return SEEDED_GENERATOR_NAME if self.seeded else GENERATOR_NAME

    def _words(self, count: int) -> npt.NDArray[np.uint64]:
        data = self._stream.update(bytes(8 * count))
        return np.frombuffer(data, dtype="<u8")

    def uniform(self, count: int) -> torch.Tensor:
        """``count`` independent uniforms in the open interval (0, 1), float64."""
        if count < 0:
            raise InputError("cannot draw a negative number of values")
        bits = (self._words(count) >> np.uint64(11)).astype(np.float64)
        return torch.from_numpy((bits + 0.5) * 2.0**-53)

    def bernoulli(self, count: int, probability: float) -> torch.Tensor:
        """``count`` independent coin flips, each True with probability ``floor(p 2^32) / 2^32``.

        That is ``probability`` rounded down to a multiple of ``2**-32`` (a Poisson sample
        rate never exceeds the accounted one). Four keystream bytes per flip.

        Raises
        ------
        InputError
            If ``probability`` is not in [0, 1].
        """
        if not 0.0 <= probability <= 1.0:
            raise InputError("a probability lies in [0, 1]")
        threshold = math.floor(probability * 2**32)
        words = np.frombuffer(self._stream.update(bytes(4 * count)), dtype="<u4")
        return torch.from_numpy(words.astype(np.int64) < threshold)

    def standard_normal(self, count: int) -> torch.Tensor:
        """``count`` independent standard normals (Box-Muller, float64)."""
        pairs = (count + 1) // 2
        both = self.uniform(2 * pairs)
        # In place and into one output: the same arithmetic as
        # cat([r cos(a), r sin(a)]) with r = sqrt(-2 log u1), a = 2 pi u2, without the copies.
        radius = torch.log(both[:pairs]).mul_(-2.0).sqrt_()
        angle = both[pairs:].mul_(_TWO_PI)
        normals = torch.empty(2 * pairs, dtype=torch.float64)
        torch.cos(angle, out=normals[:pairs]).mul_(radius)
        torch.sin(angle, out=normals[pairs:]).mul_(radius)
        return normals[:count]

    def _unit_noise(self, count: int) -> torch.Tensor:
        """``count`` values of ``(z1 + z2 + z3 + z4) / 2``, served from a buffer.

        The buffer is refilled a block at a time (at least :data:`_BLOCK` values), so a
        small model's step costs a slice, not a dozen tensor operations.
        """
        if count > self._spare.numel():
            fresh = max(count - self._spare.numel(), _BLOCK)
            draws = self.standard_normal(4 * fresh).reshape(4, fresh).sum(dim=0) / 2.0
            self._spare = torch.cat([self._spare, draws])
        taken, self._spare = self._spare[:count], self._spare[count:]
        return taken

    def gaussian(self, shape: tuple[int, ...], std: float) -> torch.Tensor:
        """Noise of standard deviation ``std`` and shape ``shape``: ``std * sum of 4 / 2``.

        Float64.

        Raises
        ------
        InputError
            If ``std`` is negative or not finite.
        """
        if not (math.isfinite(std) and std >= 0):
            raise InputError("the noise standard deviation must be finite and non-negative")
        if std == 0:
            return torch.zeros(shape, dtype=torch.float64)
        return (std * self._unit_noise(math.prod(shape))).reshape(shape)
