"""VerifyKey.verify (libsodium first, OpenSSL for what libsodium refuses) gives OpenSSL's verdict.

libsodium and OpenSSL disagree on small-order and non-canonical points ("Taming the many
EdDSAs", Chalkias et al. 2020; C2SP CCTV ed25519 vectors). The fast path is sound only if
every signature libsodium accepts is one OpenSSL accepts; these tests build each class of
edge case with a small pure-Python Edwards25519 implementation and check that property and
that the combined verdict equals OpenSSL's on every one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hypothesis_examples import examples
from veracity.crypto.keys import SigningKey, VerifyKey, _sodium_accepts
from veracity.errors import SignatureError

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
Point = tuple[int, int]
IDENTITY: Point = (0, 1)


def _add(a: Point, b: Point) -> Point:
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    x3 = (x1 * y2 + x2 * y1) * pow(1 + t, P - 2, P) % P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, P - 2, P) % P
    return x3, y3


def _mul(k: int, point: Point) -> Point:
    result = IDENTITY
    while k:
        if k & 1:
            result = _add(result, point)
        point = _add(point, point)
        k >>= 1
    return result


def _neg(point: Point) -> Point:
    return (-point[0] % P, point[1])


def _x_of(y: int, sign: int) -> int | None:
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, P - 2, P) % P
    root = pow(x, (P + 3) // 8, P)
    if root * root % P != x:
        root = root * SQRT_M1 % P
    if root * root % P != x:
        return None
    if root & 1 != sign:
        root = -root % P
    return root


def _encode(point: Point, *, y_offset: int = 0) -> bytes:
    """Encoding of ``point``; ``y_offset=P`` writes the non-canonical y + p where it fits."""
    x, y = point
    return ((y + y_offset) | ((x & 1) << 255)).to_bytes(32, "little")


BASE: Point = (_x_of(4 * pow(5, P - 2, P) % P, 0) or 0, 4 * pow(5, P - 2, P) % P)


def _order(point: Point) -> int:
    for order in (1, 2, 4, 8):
        if _mul(order, point) == IDENTITY:
            return order
    raise AssertionError("not a torsion point")


def _torsion() -> list[Point]:
    """The eight points of order dividing 8 (so ``[k]T = [k mod 8]T`` for each)."""
    y = 2
    while True:
        x = _x_of(y, 0)
        if x is not None:
            t = _mul(L, (x, y))
            if _order(t) == 8:
                return [_mul(i, t) for i in range(8)]
        y += 1


TORSION = _torsion()


def _k(r: bytes, a: bytes, message: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r + a + message).digest(), "little") % L


def _openssl_accepts(public: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _combined_accepts(public: bytes, signature: bytes, message: bytes) -> bool:
    try:
        VerifyKey.from_raw(public).verify(signature, message)
    except SignatureError:
        return False
    return True


def _case(public: bytes, signature: bytes, message: bytes) -> tuple[bool, bool, bool]:
    return (
        _sodium_accepts(public, signature, message),
        _openssl_accepts(public, signature, message),
        _combined_accepts(public, signature, message),
    )


def _messages() -> Iterator[bytes]:
    i = 0
    while True:
        yield f"veracity edge {i}".encode()
        i += 1


def _small_order_cases() -> Iterator[tuple[str, bytes, bytes, bytes]]:
    """S = 0 with small-order A and R where the cofactorless equation holds (R = -[k]A)."""
    for a_point in TORSION:
        for r_point in TORSION:
            for offset_a in (0, P):
                for offset_r in (0, P):
                    if a_point[1] + offset_a >= 2**255 or r_point[1] + offset_r >= 2**255:
                        continue  # no non-canonical encoding of this y
                    a = _encode(a_point, y_offset=offset_a)
                    r = _encode(r_point, y_offset=offset_r)
                    for message, _ in zip(_messages(), range(40), strict=False):
                        if _mul(_k(r, a, message) % 8, a_point) == _neg(r_point):
                            yield (
                                f"A order {_order(a_point)} +{offset_a > 0}, "
                                f"R order {_order(r_point)} +{offset_r > 0}",
                                a,
                                r + bytes(32),
                                message,
                            )
                            break


def test_signing_makes_the_rfc8032_signatures_openssl_makes() -> None:
    vectors = json.loads((VECTORS / "rfc8032-ed25519.json").read_text(encoding="utf-8"))["vectors"]
    for vector in vectors:
        private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vector["secret_key"]))
        message = bytes.fromhex(vector["message"])
        made = SigningKey(private).sign(message)
        assert made == bytes.fromhex(vector["signature"]) == private.sign(message), vector["name"]


@given(seed=st.binary(min_size=32, max_size=32), message=st.binary(max_size=300))
def test_signing_makes_the_bytes_openssl_makes(seed: bytes, message: bytes) -> None:
    private = Ed25519PrivateKey.from_private_bytes(seed)
    assert SigningKey(private).sign(message) == private.sign(message)


def test_rfc8032_vectors_agree() -> None:
    vectors = json.loads((VECTORS / "rfc8032-ed25519.json").read_text(encoding="utf-8"))["vectors"]
    assert len(vectors) == 4
    for vector in vectors:
        public = bytes.fromhex(vector["public_key"])
        message = bytes.fromhex(vector["message"])
        signature = bytes.fromhex(vector["signature"])
        assert _case(public, signature, message) == (True, True, True), vector["name"]
        flipped = bytes([signature[5] ^ 4]) + signature[1:]
        assert _case(public, flipped, message) == (False, False, False), vector["name"]
        s = int.from_bytes(signature[32:], "little")
        high_s = signature[:32] + (s + L).to_bytes(32, "little")
        # Malleability: S + L satisfies the equation but is not canonical; both refuse it.
        assert _case(public, high_s, message) == (False, False, False), vector["name"]


def test_small_order_and_non_canonical_points_get_openssls_verdict() -> None:
    cases = list(_small_order_cases())
    assert len(cases) > 40
    sodium_refused_openssl_accepted = 0
    for name, public, signature, message in cases:
        sodium, openssl, combined = _case(public, signature, message)
        assert combined == openssl, name
        assert openssl or not sodium, f"libsodium accepts what OpenSSL refuses: {name}"
        sodium_refused_openssl_accepted += openssl and not sodium
    # The divergence is real: without the OpenSSL fallback these would change verdict.
    assert sodium_refused_openssl_accepted > 0


def test_mixed_order_public_key_gets_openssls_verdict() -> None:
    secret = int.from_bytes(hashlib.sha256(b"mixed").digest(), "little") % L
    agreed = {True: 0, False: 0}
    for torsion in TORSION[1:]:
        a_point = _add(_mul(secret, BASE), torsion)
        a = _encode(a_point)
        for nonce, message in zip(range(1, 17), _messages(), strict=False):
            r = _encode(_mul(nonce, BASE))
            s = (nonce + _k(r, a, message) * secret) % L
            signature = r + s.to_bytes(32, "little")
            sodium, openssl, combined = _case(a, signature, message)
            # Cofactorless: valid exactly when [k] kills the torsion component.
            assert openssl == (_mul(_k(r, a, message) % 8, torsion) == IDENTITY)
            assert combined == openssl
            assert openssl or not sodium
            agreed[openssl] += 1
    assert agreed[True]
    assert agreed[False]


def test_a_signature_of_the_wrong_length_never_borrows_message_bytes() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    public = VerifyKey(key.public_key())
    message = b"veracity.statement.v1\x00" + bytes(32)
    signature = key.sign(message)
    # libsodium's crypto_sign_open would read signature || message as one signed message.
    shifted = (signature[:63], signature[63:] + message)
    with pytest.raises(SignatureError):
        public.verify(*shifted)
    assert not _sodium_accepts(public.raw, *shifted)


@settings(max_examples=examples(60), deadline=None)
@given(
    seed=st.binary(min_size=32, max_size=32),
    message=st.binary(max_size=64),
    flip=st.one_of(st.none(), st.integers(min_value=0, max_value=64 * 8 - 1)),
    other_message=st.one_of(st.none(), st.binary(max_size=8)),
)
def test_any_signature_gets_openssls_verdict(
    seed: bytes, message: bytes, flip: int | None, other_message: bytes | None
) -> None:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    public = VerifyKey(key.public_key()).raw
    signature = bytearray(key.sign(message))
    if flip is not None:
        signature[flip // 8] ^= 1 << (flip % 8)
    checked = message if other_message is None else message + b"!" + other_message
    sodium, openssl, combined = _case(public, bytes(signature), checked)
    assert combined == openssl
    assert openssl or not sodium
    assert openssl == (flip is None and other_message is None)
