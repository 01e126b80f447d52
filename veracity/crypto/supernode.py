"""The Flower SuperNode key of a site: ECDSA on NIST P-384, in OpenSSH format.

Flower's SuperNode authentication (``flower-supernode --auth-supernode-private-key``)
loads the private key with ``load_ssh_private_key`` and requires an elliptic-curve key on a
NIST curve; the coordinator registers the public key (``flwr supernode register KEY.pub``),
which must be an OpenSSH ``ecdsa-sha2-nistp384`` line. The private key file is created
with mode 0600 and never overwritten.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from veracity.errors import ConfigError, CryptoError, InputError

__all__ = [
    "SUPERNODE_KEY_NAME",
    "generate_supernode_key",
    "write_supernode_key_pair",
    "load_supernode_public_key",
    "parse_supernode_public_key",
]

#: The curves Flower's SuperNode authentication accepts.
NIST_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})

#: File name of the SuperNode private key in a site's key directory (``.pub`` beside it).
SUPERNODE_KEY_NAME = "supernode"


def generate_supernode_key() -> ec.EllipticCurvePrivateKey:
    """A new random ECDSA P-384 private key."""
    return ec.generate_private_key(ec.SECP384R1())


def write_supernode_key_pair(
    key_dir: Path, *, comment: str, name: str = SUPERNODE_KEY_NAME
) -> tuple[Path, Path]:
    """Create ``key_dir/NAME`` (OpenSSH private key, 0600) and ``key_dir/NAME.pub``.

    Parameters
    ----------
    key_dir
        Directory of the site's keys (created 0700 if missing).
    comment
        The comment of the OpenSSH public-key line, usually the site name.
    name
        File name of the private key.

    Raises
    ------
    ConfigError
        If either file already exists.
    """
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    private_path = key_dir / name
    public_path = key_dir / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"{path} already exists; refusing to overwrite a key")
    key = generate_supernode_key()
    private_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public_line = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_bytes)
    os.chmod(private_path, 0o600)
    clean_comment = " ".join(comment.split())
    public_path.write_bytes(
        public_line + (f" {clean_comment}" if clean_comment else "").encode() + b"\n"
    )
    return private_path, public_path


def load_supernode_public_key(path: Path) -> str:
    """The OpenSSH public-key line of a SuperNode key file, checked to be ECDSA P-384.

    Raises
    ------
    ConfigError
        If the file is missing.
    CryptoError
        If it is not an OpenSSH ECDSA P-384 public key.
    """
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError as err:
        raise ConfigError(f"SuperNode public key {path} not found") from err
    except UnicodeDecodeError as err:
        raise CryptoError(f"{path} is not an OpenSSH public key") from err
    try:
        key = serialization.load_ssh_public_key(text.encode("ascii"))
    except (ValueError, UnsupportedAlgorithm) as err:
        raise CryptoError(f"{path} is not an OpenSSH public key") from err
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise CryptoError(f"{path} is not an ECDSA P-384 key")
    return text


def parse_supernode_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """The SuperNode key of an enrolment: an OpenSSH line of an ECDSA key on a NIST curve.

    What the SuperLink accepts for registration (P-384 is what sites generate).

    Raises
    ------
    InputError
        If ``text`` is not an OpenSSH public key, or not ECDSA on a NIST curve.
    """
    try:
        key = serialization.load_ssh_public_key(text.strip().encode("ascii"))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm) as err:
        raise InputError("SuperNode key is not an OpenSSH public key") from err
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in NIST_CURVES:
        raise InputError("SuperNode key must be ECDSA on a NIST curve (P-384 recommended)")
    return key
