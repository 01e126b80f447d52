"""Known-answer vectors: RFC 9162 Merkle proofs, RFC 8032 Ed25519, RFC 8785 canonical JSON."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veracity.core.canonical import canonical_json
from veracity.core.jcs import decode_canonical, encode_canonical
from veracity.crypto.keys import SigningKey, VerifyKey
from veracity.errors import InputError, ProofError, SignatureError
from veracity.ledger.merkle import verify_consistency, verify_inclusion

MERKLE = Path(__file__).resolve().parents[1] / "vectors" / "rfc9162-merkle"
MERKLE_FILES = sorted(MERKLE.rglob("*.json"))


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value) if value is not None else b""


def test_all_shared_merkle_vectors_are_present() -> None:
    inclusion = [p for p in MERKLE_FILES if "inclusion" in p.parts]
    consistency = [p for p in MERKLE_FILES if "consistency" in p.parts]
    assert len(inclusion) >= 90
    assert len(consistency) >= 90


@pytest.mark.parametrize("path", MERKLE_FILES, ids=lambda p: str(p.relative_to(MERKLE)))
def test_merkle_proof_verifiers_agree_with_rfc9162_vector(
    path: Path, load_vector: Callable[[str], Any]
) -> None:
    vector = load_vector(str(path.relative_to(MERKLE.parent)))
    proof = [_b64(item) for item in vector["proof"] or []]
    if "leafIdx" in vector:

        def check() -> None:
            verify_inclusion(
                _b64(vector["leafHash"]),
                vector["leafIdx"],
                vector["treeSize"],
                proof,
                _b64(vector["root"]),
            )
    else:

        def check() -> None:
            verify_consistency(
                vector["size1"],
                vector["size2"],
                proof,
                _b64(vector["root1"]),
                _b64(vector["root2"]),
            )

    if vector["wantErr"]:
        with pytest.raises(ProofError):
            check()
    else:
        check()


def test_rfc8032_ed25519_vectors_sign_and_verify(load_vector: Callable[[str], Any]) -> None:
    vectors = load_vector("rfc8032-ed25519.json")["vectors"]
    assert len(vectors) == 4
    for vector in vectors:
        key = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vector["secret_key"])))
        message = bytes.fromhex(vector["message"])
        signature = bytes.fromhex(vector["signature"])
        assert key.public.raw.hex() == vector["public_key"], vector["name"]
        assert key.sign(message) == signature, vector["name"]
        public = VerifyKey.from_raw(bytes.fromhex(vector["public_key"]))
        public.verify(signature, message)
        with pytest.raises(SignatureError):
            public.verify(signature, message + b"\x00")
        with pytest.raises(SignatureError):
            public.verify(bytes([signature[0] ^ 1]) + signature[1:], message)


@pytest.mark.parametrize("example", ["example-3.2.2", "example-3.2.3"])
def test_rfc8785_examples_canonicalise_byte_for_byte(example: str, vectors_dir: Path) -> None:
    document = json.loads((vectors_dir / "rfc8785" / f"{example}-input.json").read_bytes())
    expected = (vectors_dir / "rfc8785" / f"{example}-output.json").read_bytes()
    assert canonical_json(document) == expected
    assert encode_canonical(document) == expected
    assert decode_canonical(expected) == document


def test_rfc8785_appendix_b_numbers(load_vector: Callable[[str], Any]) -> None:
    vectors = load_vector("rfc8785/numbers.json")["vectors"]
    assert len(vectors) == 26
    for ieee, expected in vectors:
        value = struct.unpack(">d", bytes.fromhex(ieee))[0]
        if expected is None:
            with pytest.raises(InputError):
                encode_canonical([value])
            continue
        assert encode_canonical([value]) == f"[{expected}]".encode(), ieee
        if abs(value) < 2**53:
            # Integral text beyond 2**53 parses as a Python int, which the ledger refuses.
            assert decode_canonical(f"[{expected}]".encode()) == [value]
