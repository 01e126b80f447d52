"""Ed25519 signing keys: generation, PEM files with 0600 permissions, signing, verification.

Private keys are PKCS#8 PEM files (``NAME.pem``, mode 0600); public keys are
SubjectPublicKeyInfo PEM files (``NAME.pub``). A key's id is the SHA-256 of its raw 32-byte
public key, in hex.

Verification gives exactly the verdict of ``cryptography`` (OpenSSL), the reference, at
about half its cost: libsodium (PyNaCl) is asked first, and only a signature it refuses is
put to OpenSSL. Both check the same cofactorless equation ``[S]B = R + [k]A`` with ``S <
L`` and compare the encoding of the computed ``R`` byte for byte; libsodium in addition
refuses a non-canonical ``A`` and a small-order ``A`` or ``R``, which OpenSSL accepts when
the equation holds. So every signature libsodium accepts, OpenSSL accepts too, and the
combination accepts exactly what OpenSSL accepts (``tests/crypto/test_ed25519_edges.py``
checks this on RFC 8032 vectors and on every class of small-order, mixed-order and
non-canonical input).
"""

from __future__ import annotations

import getpass
import hashlib
import os
import stat
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import nacl.bindings
import nacl.exceptions
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from veracity.errors import ConfigError, CryptoError, SignatureError

__all__ = [
    "SigningKey",
    "VerifyKey",
    "generate_signing_key",
    "write_key_pair",
    "load_signing_key",
    "load_verify_key",
    "private_key_path",
    "public_key_path",
    "key_passphrase",
    "new_key_passphrase",
    "PASSPHRASE_ENV",
    "SIGNATURE_SIZE",
]

#: The environment variable holding the passphrase of the private key files (written
#: encrypted when it is set; read with it, or a prompt at a terminal, when they are).
PASSPHRASE_ENV = "VERACITY_KEY_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret
_ENCRYPTED_PEM = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"

#: Bytes in an Ed25519 signature.
SIGNATURE_SIZE = 64


def _sodium_accepts(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Whether libsodium accepts the signature (a subset of what OpenSSL accepts)."""
    if len(signature) != SIGNATURE_SIZE:
        # crypto_sign_open reads the first 64 bytes of signature || message as the
        # signature: a shorter or longer one would be checked against other bytes.
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class VerifyKey:
    """An Ed25519 public key."""

    key: Ed25519PublicKey

    @classmethod
    def from_pem(cls, pem: str | bytes) -> VerifyKey:
        """Parse a PEM public key.

        Raises
        ------
        CryptoError
            If the text is not an Ed25519 public key in PEM form.
        """
        data = pem.encode() if isinstance(pem, str) else pem
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm) as err:  # a mangled OID is the latter
            raise CryptoError("not a PEM public key") from err
        if not isinstance(key, Ed25519PublicKey):
            raise CryptoError("public key is not Ed25519")
        return cls(key)

    @classmethod
    def from_raw(cls, raw: bytes) -> VerifyKey:
        """Build a key from its 32 raw bytes.

        Raises
        ------
        CryptoError
            If ``raw`` is not 32 bytes.
        """
        try:
            return cls(Ed25519PublicKey.from_public_bytes(raw))
        except ValueError as err:
            raise CryptoError("an Ed25519 public key is 32 bytes") from err

    @cached_property
    def raw(self) -> bytes:
        """The 32 raw public-key bytes."""
        return self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def key_id(self) -> str:
        """SHA-256 of the raw public key, hex."""
        return hashlib.sha256(self.raw).hexdigest()

    def pem(self) -> str:
        """The key as PEM text (SubjectPublicKeyInfo)."""
        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")

    def verify(self, signature: bytes, message: bytes) -> None:
        """Check ``signature`` over ``message``.

        libsodium answers first; a signature it refuses is checked again by OpenSSL, so the
        verdict is always OpenSSL's (see the module docstring).

        Raises
        ------
        SignatureError
            If the signature does not verify under this key.
        """
        if _sodium_accepts(self.raw, signature, message):
            return
        try:
            self.key.verify(signature, message)
        except InvalidSignature as err:
            raise SignatureError(f"signature does not verify under key {self.key_id[:16]}") from err

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyKey) and self.raw == other.raw

    def __hash__(self) -> int:
        return hash(self.raw)


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key."""

    key: Ed25519PrivateKey

    @cached_property
    def public(self) -> VerifyKey:
        """The matching public key."""
        return VerifyKey(self.key.public_key())

    @cached_property
    def _sodium_secret(self) -> bytes:
        """The key in libsodium's 64-byte form (seed || public key)."""
        _public, secret = nacl.bindings.crypto_sign_seed_keypair(self.key.private_bytes_raw())
        return bytes(secret)

    def sign(self, message: bytes) -> bytes:
        """Sign ``message``; returns the 64-byte signature.

        Ed25519 signatures are deterministic (RFC 8032), so libsodium makes exactly the
        bytes OpenSSL would, at about 60 % of its cost (16 vs 27 us here); the RFC 8032
        vectors check both (``tests/crypto``).
        """
        return nacl.bindings.crypto_sign(message, self._sodium_secret)[:64]

    def pem(self, *, passphrase: bytes | None = None) -> bytes:
        """The private key as PKCS#8 PEM bytes, encrypted under ``passphrase`` if given."""
        encryption: serialization.KeySerializationEncryption = (
            serialization.NoEncryption()
            if passphrase is None
            else serialization.BestAvailableEncryption(passphrase)
        )
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    @classmethod
    def from_pem(cls, pem: bytes, *, passphrase: bytes | None = None) -> SigningKey:
        """Parse a PKCS#8 PEM private key (encrypted ones with ``passphrase``).

        Raises
        ------
        ConfigError
            If the key is encrypted and no passphrase is given.
        CryptoError
            If the data is not an Ed25519 private key, or the passphrase is wrong.
        """
        encrypted = pem.lstrip().startswith(_ENCRYPTED_PEM)
        if encrypted and passphrase is None:
            raise ConfigError(f"the private key is passphrase-protected: set {PASSPHRASE_ENV}")
        try:
            key = serialization.load_pem_private_key(
                pem, password=passphrase if encrypted else None
            )
        except (ValueError, TypeError) as err:
            if encrypted:
                raise CryptoError(
                    f"the passphrase ({PASSPHRASE_ENV}) does not open this private key"
                ) from err
            raise CryptoError("not a PEM private key") from err
        if not isinstance(key, Ed25519PrivateKey):
            raise CryptoError("private key is not Ed25519")
        return cls(key)


def generate_signing_key() -> SigningKey:
    """Create a new random Ed25519 key."""
    return SigningKey(Ed25519PrivateKey.generate())


def private_key_path(key_dir: Path, name: str) -> Path:
    """Where the private key ``name`` lives in ``key_dir``."""
    return key_dir / f"{name}.pem"


def public_key_path(key_dir: Path, name: str) -> Path:
    """Where the public key ``name`` lives in ``key_dir``."""
    return key_dir / f"{name}.pub"


def _check_name(name: str) -> None:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise ConfigError(f"key name {name!r} must be letters, digits, '-', '_' or '.'")


def key_passphrase(*, prompt_for: Path | None = None) -> bytes | None:
    """The key files' passphrase: ``VERACITY_KEY_PASSPHRASE``, or asked at a terminal.

    Without the variable, ``prompt_for`` (an encrypted key file) is asked for on the
    terminal when stdin is one; otherwise there is none.
    """
    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return value.encode("utf-8")
    if prompt_for is not None and sys.stdin is not None and sys.stdin.isatty():
        return getpass.getpass(f"passphrase of {prompt_for}: ").encode("utf-8") or None
    return None


def new_key_passphrase(path: Path) -> bytes | None:
    """The passphrase to encrypt a new key file under: the variable, or asked at a terminal.

    Without ``VERACITY_KEY_PASSPHRASE`` and with a terminal on stdin, it is asked twice
    (an empty answer leaves the key unencrypted); without a terminal there is none.

    Raises
    ------
    ConfigError
        If the two answers differ.
    """
    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return value.encode("utf-8")
    if sys.stdin is None or not sys.stdin.isatty():
        return None
    first = getpass.getpass(f"passphrase for the new key {path} (empty: none): ")
    if not first:
        return None
    if getpass.getpass(f"the passphrase for {path} again: ") != first:
        raise ConfigError(f"the two passphrases differ; {path} was not written")
    return first.encode("utf-8")


def write_key_pair(
    key_dir: Path, name: str, key: SigningKey, *, prompt: bool = False
) -> tuple[Path, Path]:
    """Write ``NAME.pem`` (mode 0600) and ``NAME.pub`` into ``key_dir``.

    The private key is created with 0600 from the start (never world-readable, even
    briefly) and an existing file is never overwritten. With ``VERACITY_KEY_PASSPHRASE``
    set, the private key is encrypted under it (PKCS#8, the best encryption
    ``cryptography`` offers); with ``prompt`` and no variable, a person at a terminal is
    asked for one, with confirmation (:func:`new_key_passphrase`), before anything is
    written.

    Raises
    ------
    ConfigError
        If the name is unusable, either file already exists, or the prompted passphrases
        differ.
    """
    _check_name(name)
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    private_path = private_key_path(key_dir, name)
    public_path = public_key_path(key_dir, name)
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"{path} already exists; refusing to overwrite a key")
    passphrase = new_key_passphrase(private_path) if prompt else key_passphrase()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.pem(passphrase=passphrase))
    os.chmod(private_path, 0o600)
    public_path.write_text(key.public.pem(), encoding="ascii")
    return private_path, public_path


def load_signing_key(path: Path) -> SigningKey:
    """Load a private key, refusing files that others can read.

    An encrypted key file is opened with :func:`key_passphrase` (the variable, or a
    prompt at a terminal).

    Raises
    ------
    ConfigError
        If the file is missing or its permissions allow group or others access, or it is
        encrypted and there is no passphrase.
    CryptoError
        If the file is not an Ed25519 private key, or the passphrase does not open it.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as err:
        raise ConfigError(f"private key {path} not found") from err
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"private key {path} is readable by others; run: chmod 600 {path}")
    data = path.read_bytes()
    passphrase = (
        key_passphrase(prompt_for=path) if data.lstrip().startswith(_ENCRYPTED_PEM) else None
    )
    try:
        return SigningKey.from_pem(data, passphrase=passphrase)
    except (CryptoError, ConfigError) as err:
        raise type(err)(f"{path}: {err}") from err


def load_verify_key(path: Path) -> VerifyKey:
    """Load a PEM public key file.

    Raises
    ------
    ConfigError
        If the file is missing.
    CryptoError
        If the file is not an Ed25519 public key.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise ConfigError(f"public key {path} not found") from err
    try:
        return VerifyKey.from_pem(data)
    except CryptoError as err:
        raise CryptoError(f"{path}: {err}") from err
