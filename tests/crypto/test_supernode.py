"""The SuperNode key is what Flower's SuperNode authentication loads and registers."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from veracity.crypto.supernode import load_supernode_public_key, write_supernode_key_pair
from veracity.errors import ConfigError, CryptoError


def test_key_pair_is_openssh_ecdsa_p384_that_flower_accepts(tmp_path: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import uses_nist_ec_curve

    private_path, public_path = write_supernode_key_pair(tmp_path / "keys", comment="hospital-a")
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert private_path.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    # What flower-supernode --auth-supernode-private-key does with the file:
    private = serialization.load_ssh_private_key(private_path.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(private.curve, ec.SECP384R1)
    # What `flwr supernode register KEY.pub` does with the public key:
    registered = try_load_public_key(public_path)
    public = private.public_key()
    assert uses_nist_ec_curve(public)
    line = load_supernode_public_key(public_path)
    assert line.startswith("ecdsa-sha2-nistp384 ")
    assert line.endswith(" hospital-a")
    reloaded = serialization.load_ssh_public_key(line.encode())
    assert isinstance(reloaded, ec.EllipticCurvePublicKey)
    assert reloaded.public_numbers() == public.public_numbers()
    assert registered  # Flower serialised it for registration


def test_existing_keys_are_never_overwritten(tmp_path: Path) -> None:
    write_supernode_key_pair(tmp_path, comment="a")
    before = (tmp_path / "supernode").read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        write_supernode_key_pair(tmp_path, comment="a")
    assert (tmp_path / "supernode").read_bytes() == before


def test_other_public_keys_are_refused(tmp_path: Path) -> None:
    other = ed25519.Ed25519PrivateKey.generate().public_key()
    path = tmp_path / "supernode.pub"
    path.write_bytes(
        other.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    with pytest.raises(CryptoError, match="P-384"):
        load_supernode_public_key(path)
    path.write_text("not a key")
    with pytest.raises(CryptoError, match="OpenSSH"):
        load_supernode_public_key(path)
    with pytest.raises(ConfigError):
        load_supernode_public_key(tmp_path / "missing.pub")
