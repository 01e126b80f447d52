"""RFC 8785 (JCS) canonical JSON and the hashes built on it.

``json.dumps(sort_keys=True)`` is not RFC 8785 (it writes ``1e-05`` and ``1.0`` where JCS
writes ``0.00001`` and ``1``), so every hashed or signed document goes through
:func:`canonical_json`. Integers outside +-2**53 are refused: carry 64-bit ids (Flower run
ids) as strings.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import rfc8785

from veracity.errors import InputError

__all__ = ["canonical_json", "sha256_hex", "canonical_hash", "parse_json_object"]


def canonical_json(document: Any) -> bytes:
    """Serialise ``document`` as RFC 8785 canonical JSON (UTF-8 bytes).

    Raises
    ------
    InputError
        If the document holds values JSON cannot represent canonically (NaN, infinities,
        integers beyond 2**53, non-string keys, unsupported types).
    """
    try:
        return rfc8785.dumps(document)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as err:
        raise InputError(f"not canonical JSON: {err}") from err


def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` in lowercase hex."""
    return hashlib.sha256(data).hexdigest()


def canonical_hash(document: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of ``document``."""
    return sha256_hex(canonical_json(document))


def parse_json_object(text: str, *, what: str) -> dict[str, Any]:
    """Parse ``text`` as a JSON object.

    Raises
    ------
    InputError
        If it is not JSON or not an object.
    """
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError) as err:
        raise InputError(f"{what} is not JSON: {err}") from err
    if not isinstance(value, dict):
        raise InputError(f"{what} is not a JSON object")
    return value
