"""Fast RFC 8785 (JCS) encoding and strict decoding for the ledger's hot paths.

:func:`veracity.core.canonical.canonical_json` (the ``rfc8785`` package) is the reference
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
from typing import Any

from veracity.core.canonical import canonical_json
from veracity.errors import InputError

__all__ = ["encode_canonical", "decode_canonical"]


class _SlowPath(Exception):
    """Raised from the JSON parser's hooks to leave the fast path."""


def _no_floats(text: str) -> Any:
    raise _SlowPath


def _small_int(text: str) -> int:
    # 15 digits always fit in +-2**53 - 1; longer literals go to the reference.
    if len(text) > 15:
        raise _SlowPath
    return int(text)


def _refuse_constant(name: str) -> Any:
    raise InputError(f"not canonical JSON: {name} is not a JSON number")


_ENCODER = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
)
_FAST_DECODER = json.JSONDecoder(
    parse_float=_no_floats, parse_int=_small_int, parse_constant=_refuse_constant
)
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def _fast_text(document: Any) -> bytes | None:
    try:
        text = _ENCODER.encode(document)
    except (TypeError, ValueError):
        return None
    if not text.isascii():
        return None
    try:
        # Reparsing finds floats and long integers, and the equality check finds what
        # json.dumps coerces silently (non-string keys, tuples) and the reference refuses
        # or writes otherwise.
        if _FAST_DECODER.decode(text) != document:
            return None
    except _SlowPath:
        return None
    return text.encode("ascii")


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
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"not JSON: {err}") from err
    try:
        if text.isascii():
            document = _FAST_DECODER.decode(text)
            if _ENCODER.encode(document) != text:
                raise InputError("not in RFC 8785 canonical form")
            return document
    except _SlowPath:
        pass
    except ValueError as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"not JSON: {err}") from err
    except RecursionError as err:
        raise InputError("not canonical JSON: it nests too deeply") from err
    try:
        document = _DECODER.decode(text)
        canonical = canonical_json(document)
    except ValueError as err:
        raise InputError(f"not JSON: {err}") from err
    except RecursionError as err:
        raise InputError("not canonical JSON: it nests too deeply") from err
    if canonical != data:
        raise InputError("not in RFC 8785 canonical form")
    return document
