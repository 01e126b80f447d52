"""Fast RFC 8785 (JCS) encoding and strict decoding for the ledger's hot paths.

:func:`veracity.ledger.canonical.canonical_json` (the ``rfc8785`` package) is the reference
and costs about 35 us per entry in pure Python. For the common ledger document (ASCII text,
no floats, integers inside +-2**53) RFC 8785 output is exactly what ``json.dumps`` writes
with sorted keys, compact separators and ``ensure_ascii=False``: JCS orders keys by UTF-16
code units (the same order as code points for ASCII keys), escapes exactly the characters
``json`` escapes, and writes integers as decimal digits. Only floats (``1.0`` vs ``1``,
``1e-05`` vs ``0.00001``), non-ASCII keys and large integers differ. :func:`encode_canonical`
takes the fast path when the output shows none of those and otherwise defers to the
reference; the test suite checks the two agree on arbitrary documents.
"""

from __future__ import annotations

import json
import re
from typing import Any

from veracity.errors import InputError
from veracity.ledger.canonical import canonical_json

__all__ = ["encode_canonical", "decode_canonical"]

#: Integer literals of 16 or more digits may pass 2**53 - 1: defer those to the reference.
_LONG_DIGITS = re.compile(rb"\d{16,}")


class _FloatSeen(Exception):
    """Raised from the JSON parser's float hook to leave the fast path."""


def _no_floats(text: str) -> Any:
    raise _FloatSeen


def _refuse_constant(name: str) -> Any:
    raise InputError(f"not canonical JSON: {name} is not a JSON number")


def _fast_text(document: Any) -> bytes | None:
    try:
        text = json.dumps(
            document, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
        )
    except (TypeError, ValueError):
        return None
    if not text.isascii():
        return None
    data = text.encode("ascii")
    if _LONG_DIGITS.search(data):
        return None
    try:
        # Reparsing finds floats, and the equality check finds what json.dumps coerces
        # silently (non-string keys, tuples) and the reference refuses or writes otherwise.
        if json.loads(data, parse_float=_no_floats) != document:
            return None
    except _FloatSeen:
        return None
    return data


def encode_canonical(document: Any) -> bytes:
    """Serialise ``document`` as RFC 8785 canonical JSON, byte-identical to ``canonical_json``.

    Raises
    ------
    InputError
        If the document holds values JSON cannot represent canonically (NaN, infinities,
        integers beyond 2**53, non-string keys, unsupported types).
    """
    fast = _fast_text(document)
    if fast is not None:
        return fast
    return canonical_json(document)


def decode_canonical(data: bytes) -> Any:
    """Parse ``data``, refusing anything that is not already in RFC 8785 canonical form.

    Raises
    ------
    InputError
        If ``data`` is not UTF-8 JSON, or parses but re-serialises to different bytes
        (whitespace, key order, escapes, number forms, duplicate keys).
    """
    floats: list[str] = []

    def note_float(text: str) -> float:
        floats.append(text)
        return float(text)

    try:
        text = data.decode("utf-8")
        document = json.loads(text, parse_float=note_float, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"not JSON: {err}") from err
    if not floats and data.isascii() and not _LONG_DIGITS.search(data):
        text = json.dumps(document, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        canonical = text.encode("utf-8")
    else:
        canonical = canonical_json(document)
    if canonical != data:
        raise InputError("not in RFC 8785 canonical form")
    return document
