"""The encrypted-inference wire format, version 1 (pure Python; see docs/inference-wire.md).

Every message is one *envelope*::

    magic    4 bytes   "VHE" and the format version byte 1
    length   4 bytes   header length, unsigned little-endian
    header   length    RFC 8785 canonical JSON object; "kind", "version" and "parts"
    parts    ...       the binary parts, in header order, back to back, nothing after

``parts`` is a list of ``{"name": ..., "length": ...}``; their lengths must add up to exactly
the bytes that follow the header. Three kinds exist: a public context
(``veracity.he.context``), a request (``veracity.he.request``) and a response
(``veracity.he.response``). Parsing refuses, with an :class:`~veracity.errors.InputError`
that names the problem, anything malformed, truncated, oversized or with trailing bytes,
before any ciphertext reaches SEAL.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

from veracity.core.canonical import canonical_json
from veracity.errors import InputError
from veracity.he.params import PackingLayout

__all__ = [
    "MAGIC",
    "WIRE_VERSION",
    "KIND_CONTEXT",
    "KIND_REQUEST",
    "KIND_RESPONSE",
    "CONTENT_TYPE",
    "Query",
    "WireLimits",
    "DEFAULT_LIMITS",
    "Envelope",
    "RequestHeader",
    "ResponseHeader",
    "encode_envelope",
    "decode_envelope",
    "encode_request",
    "decode_request",
    "encode_response",
    "decode_response",
    "body_hash",
]

MAGIC = b"VHE\x01"
WIRE_VERSION = 1
KIND_CONTEXT = "veracity.he.context"
KIND_REQUEST = "veracity.he.request"
KIND_RESPONSE = "veracity.he.response"
#: Media type of every envelope on HTTP.
CONTENT_TYPE = "application/vnd.veracity.he.v1"


class Query(StrEnum):
    """What a request asks for (the optional header field ``query``).

    ``prediction`` (the default, and what a header without the field asks): the logits.
    ``contributions`` (linear models only): per declared patient, class and feature,
    ``w_j * x_j``, one output per feature, charged as that many predictions.
    """

    PREDICTION = "prediction"
    CONTRIBUTIONS = "contributions"


_PREFIX = struct.Struct("<4sI")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class WireLimits:
    """Size limits the server (and the client, on responses) enforces.

    Attributes
    ----------
    max_request_bytes
        Largest request envelope, context part included.
    max_context_bytes
        Largest public-context envelope (Galois keys make the ``replicated`` context ~7 MB,
        the ``im2col`` context ~16 MiB).
    max_response_bytes
        Largest response envelope a client accepts.
    max_header_bytes
        Largest JSON header of any envelope.
    max_parts
        Most parts in one envelope.
    """

    max_request_bytes: int = 64 * 1024 * 1024
    max_context_bytes: int = 32 * 1024 * 1024
    max_response_bytes: int = 64 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    max_parts: int = 4096


#: The default limits.
DEFAULT_LIMITS = WireLimits()


@dataclass(frozen=True)
class Envelope:
    """A parsed envelope: its kind, its header (without ``parts``) and its binary parts."""

    kind: str
    header: Mapping[str, Any]
    parts: tuple[tuple[str, bytes], ...]

    def parts_named(self, name: str) -> list[bytes]:
        """Every part called ``name``, in order."""
        return [data for part_name, data in self.parts if part_name == name]

    def single_part(self, name: str) -> bytes:
        """The one part called ``name``.

        Raises
        ------
        InputError
            If there is none or more than one.
        """
        found = self.parts_named(name)
        if len(found) != 1:
            raise InputError(f"{self.kind} must carry exactly one {name!r} part, has {len(found)}")
        return found[0]


def body_hash(data: bytes) -> str:
    """SHA-256 (hex) of a whole envelope: a request's ``request_hash``, a context's hash."""
    return hashlib.sha256(data).hexdigest()


def encode_envelope(
    kind: str, header: Mapping[str, Any], parts: Sequence[tuple[str, bytes]]
) -> bytes:
    """Serialise an envelope.

    Raises
    ------
    InputError
        If the header uses a reserved field or cannot be written as canonical JSON.
    """
    if {"kind", "version", "parts"} & set(header):
        raise InputError("header fields kind, version and parts are written by the envelope")
    document = {
        **header,
        "kind": kind,
        "version": WIRE_VERSION,
        "parts": [{"name": name, "length": len(data)} for name, data in parts],
    }
    encoded = canonical_json(document)
    return b"".join([_PREFIX.pack(MAGIC, len(encoded)), encoded, *(data for _, data in parts)])


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InputError(f"header repeats field {key!r}")
        result[key] = value
    return result


def decode_envelope(
    data: bytes, *, kind: str, max_bytes: int, limits: WireLimits = DEFAULT_LIMITS
) -> Envelope:
    """Parse and bound-check an envelope of the expected ``kind``.

    Raises
    ------
    InputError
        If the data is larger than ``max_bytes``, not an envelope, of another kind or
        version, has a malformed or oversized header, too many parts, or parts whose lengths
        do not add up to exactly the bytes present (truncated or trailing data).
    """
    if len(data) > max_bytes:
        raise InputError(f"{kind} of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    if len(data) < _PREFIX.size:
        raise InputError(f"truncated {kind}: {len(data)} bytes is shorter than the envelope prefix")
    magic, header_length = _PREFIX.unpack_from(data)
    if magic[:3] != MAGIC[:3]:
        raise InputError("not a Veracity HE envelope (bad magic bytes)")
    if magic != MAGIC:
        raise InputError(f"unsupported wire format version {magic[3]}; this server speaks 1")
    if header_length > limits.max_header_bytes:
        raise InputError(
            f"header of {header_length} bytes exceeds the limit of {limits.max_header_bytes}"
        )
    body_start = _PREFIX.size + header_length
    if len(data) < body_start:
        raise InputError(f"truncated {kind}: header declares {header_length} bytes")
    try:
        header = json.loads(
            data[_PREFIX.size : body_start].decode("utf-8"), object_pairs_hook=_no_duplicates
        )
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise InputError(f"malformed {kind} header: {err}") from err
    if not isinstance(header, dict):
        raise InputError(f"malformed {kind} header: not a JSON object")
    if header.get("version") != WIRE_VERSION:
        raise InputError(f"unsupported {kind} version {header.get('version')!r}; expected 1")
    if header.get("kind") != kind:
        raise InputError(f"expected a {kind}, got {header.get('kind')!r}")
    declared = header.get("parts")
    if not isinstance(declared, list):
        raise InputError(f"malformed {kind} header: 'parts' must be a list")
    if len(declared) > limits.max_parts:
        raise InputError(f"{len(declared)} parts exceed the limit of {limits.max_parts}")
    parts: list[tuple[str, bytes]] = []
    offset = body_start
    for index, entry in enumerate(declared):
        if not isinstance(entry, dict) or set(entry) != {"name", "length"}:
            raise InputError(f"malformed part {index}: expected {{name, length}}")
        name, length = entry["name"], entry["length"]
        if not isinstance(name, str) or not _NAME.match(name):
            raise InputError(f"malformed part {index}: bad name")
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise InputError(f"malformed part {index}: length must be a non-negative integer")
        if offset + length > len(data):
            raise InputError(
                f"truncated {kind}: part {index} ({name}) declares {length} bytes, "
                f"{len(data) - offset} remain"
            )
        parts.append((name, data[offset : offset + length]))
        offset += length
    if offset != len(data):
        raise InputError(f"{len(data) - offset} unexpected bytes after the last part of the {kind}")
    fields = {k: v for k, v in header.items() if k not in {"kind", "version", "parts"}}
    return Envelope(kind=kind, header=fields, parts=tuple(parts))


def _hex64(header: Mapping[str, Any], field: str) -> str:
    value = header.get(field)
    if not isinstance(value, str) or not _HEX64.match(value):
        raise InputError(f"field {field!r} must be 64 lowercase hex characters")
    return value


def _query(header: Mapping[str, Any]) -> Query:
    if "query" not in header:
        return Query.PREDICTION
    try:
        return Query(str(header["query"]))
    except ValueError as err:
        known = ", ".join(query.value for query in Query)
        raise InputError(f"unknown query {header['query']!r}; one of {known}") from err


def _positive_int(header: Mapping[str, Any], field: str) -> int:
    value = header.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"field {field!r} must be a positive integer")
    return value


def _layout(header: Mapping[str, Any]) -> PackingLayout:
    try:
        return PackingLayout(str(header.get("layout")))
    except ValueError as err:
        known = ", ".join(layout.value for layout in PackingLayout)
        raise InputError(
            f"unknown packing layout {header.get('layout')!r}; one of {known}"
        ) from err


def _exact_fields(
    header: Mapping[str, Any],
    fields: frozenset[str],
    what: str,
    optional: frozenset[str] = frozenset(),
) -> None:
    extra = set(header) - fields - optional
    if extra:
        raise InputError(f"{what} has unknown fields: {', '.join(sorted(extra))}")
    missing = fields - set(header)
    if missing:
        raise InputError(f"{what} lacks fields: {', '.join(sorted(missing))}")


@dataclass(frozen=True)
class RequestHeader:
    """What a request asks for.

    Attributes
    ----------
    model_hash
        The released model to evaluate.
    parameter_set
        Name of the CKKS parameter set the ciphertexts were made under.
    context_hash
        SHA-256 of the public-context envelope; the context travels as the ``context`` part
        or was uploaded before.
    layout, batch_size
        How the ciphertexts pack ``batch_size`` patients.
    query
        What to compute: the prediction (default; the field is then left out of the
        header) or, for a linear model, per-feature contributions.
    """

    model_hash: str
    parameter_set: str
    context_hash: str
    layout: PackingLayout
    batch_size: int
    query: Query = Query.PREDICTION

    def to_header(self) -> dict[str, Any]:
        """The JSON header fields."""
        return _header_fields(self)


#: Header fields a request or response may carry (left out: their default).
_OPTIONAL_FIELDS = frozenset({"query"})


def _header_fields(header: RequestHeader | ResponseHeader) -> dict[str, Any]:
    """A header's fields as JSON: enums by value, ``query`` left out when it is the default."""
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(header):
        value = getattr(header, field.name)
        if field.name in _OPTIONAL_FIELDS and value == field.default:
            continue
        fields[field.name] = value.value if isinstance(value, Enum) else value
    return fields


def _required(header: type[RequestHeader | ResponseHeader]) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(header)) - _OPTIONAL_FIELDS


_REQUEST_FIELDS = _required(RequestHeader)


def encode_request(
    header: RequestHeader, ciphertexts: Sequence[bytes], *, context: bytes | None = None
) -> bytes:
    """A request envelope: the context part (if sent inline), then the ciphertexts."""
    parts = [("context", context)] if context is not None else []
    parts += [("ciphertext", ct) for ct in ciphertexts]
    return encode_envelope(KIND_REQUEST, header.to_header(), parts)


def decode_request(
    data: bytes, *, limits: WireLimits = DEFAULT_LIMITS
) -> tuple[RequestHeader, bytes | None, list[bytes]]:
    """Parse a request into its header, inline context (or None) and ciphertexts.

    Raises
    ------
    InputError
        If the envelope or its header is malformed, truncated, oversized or incomplete.
    """
    envelope = decode_envelope(
        data, kind=KIND_REQUEST, max_bytes=limits.max_request_bytes, limits=limits
    )
    header = envelope.header
    _exact_fields(header, _REQUEST_FIELDS, "request header", _OPTIONAL_FIELDS)
    parameter_set = header.get("parameter_set")
    if not isinstance(parameter_set, str) or not _NAME.match(parameter_set):
        raise InputError("field 'parameter_set' must be a parameter-set name")
    parsed = RequestHeader(
        model_hash=_hex64(header, "model_hash"),
        parameter_set=parameter_set,
        context_hash=_hex64(header, "context_hash"),
        layout=_layout(header),
        batch_size=_positive_int(header, "batch_size"),
        query=_query(header),
    )
    names = [name for name, _ in envelope.parts]
    unknown = set(names) - {"context", "ciphertext"}
    if unknown:
        raise InputError(f"request has unknown parts: {', '.join(sorted(unknown))}")
    contexts = envelope.parts_named("context")
    if len(contexts) > 1 or (contexts and names[0] != "context"):
        raise InputError("a request carries at most one context part, first")
    ciphertexts = envelope.parts_named("ciphertext")
    if not ciphertexts:
        raise InputError("request carries no ciphertexts")
    return parsed, (contexts[0] if contexts else None), ciphertexts


@dataclass(frozen=True)
class ResponseHeader:
    """What a response says it answers (``query`` as the request's)."""

    model_hash: str
    request_hash: str
    he_params_hash: str
    layout: PackingLayout
    batch_size: int
    query: Query = Query.PREDICTION

    def to_header(self) -> dict[str, Any]:
        """The JSON header fields."""
        return _header_fields(self)


_RESPONSE_FIELDS = _required(ResponseHeader)


def encode_response(header: ResponseHeader, ciphertexts: Sequence[bytes]) -> bytes:
    """A response envelope carrying the result ciphertexts."""
    return encode_envelope(
        KIND_RESPONSE, header.to_header(), [("result", ct) for ct in ciphertexts]
    )


def decode_response(
    data: bytes, *, limits: WireLimits = DEFAULT_LIMITS
) -> tuple[ResponseHeader, list[bytes]]:
    """Parse a response into its header and result ciphertexts.

    Raises
    ------
    InputError
        If the envelope or its header is malformed, truncated or oversized.
    """
    envelope = decode_envelope(
        data, kind=KIND_RESPONSE, max_bytes=limits.max_response_bytes, limits=limits
    )
    header = envelope.header
    _exact_fields(header, _RESPONSE_FIELDS, "response header", _OPTIONAL_FIELDS)
    parsed = ResponseHeader(
        model_hash=_hex64(header, "model_hash"),
        request_hash=_hex64(header, "request_hash"),
        he_params_hash=_hex64(header, "he_params_hash"),
        layout=_layout(header),
        batch_size=_positive_int(header, "batch_size"),
        query=_query(header),
    )
    results = envelope.parts_named("result")
    if not results or len(results) != len(envelope.parts):
        raise InputError("response must carry result ciphertexts and nothing else")
    return parsed, results
