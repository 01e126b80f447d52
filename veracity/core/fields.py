"""Field types shared by every contract, defined once.

Hex digests, RFC 3339 timestamps (and the one formatter that writes them), enrolled names,
identifiers, free text and bounded finite numbers. The pydantic ``Annotated`` aliases are
what the contract models (:mod:`veracity.contracts`), the study document and the admin
API's schemas use; the plain checks (:func:`is_hex64`, :func:`check_name`, ...) are for code
that validates without a model.

Numbers that are hashed into the ledger must be finite and below 2**53 in magnitude: RFC
8785 writes a float of that size in exponent-free form that a decoder could not tell from
an integer literal beyond the exactly representable range, and NaN or infinity have no
JSON form at all.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, TypeGuard

from pydantic import AfterValidator, Field, StringConstraints

from veracity.errors import InputError

__all__ = [
    "HEX64_PATTERN",
    "NAME_PATTERN",
    "SITE_NAME_PATTERN",
    "IDENT_PATTERN",
    "MAX_SAFE_INTEGER",
    "Hash",
    "Name",
    "SiteName",
    "Ident",
    "Text",
    "Timestamp",
    "Number",
    "Count",
    "Round",
    "JsonObject",
    "MAX_JSON_DEPTH",
    "is_hex64",
    "check_hex64",
    "check_name",
    "check_site_name",
    "check_timestamp",
    "check_number",
    "check_json_value",
    "format_timestamp",
]

#: A SHA-256 digest (or key id) in lowercase hex.
HEX64_PATTERN = r"^[0-9a-f]{64}$"
#: An enrolled actor's name: letters, digits, ``.``, ``_`` or ``-``, at most 128.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
#: A site's name: a DNS label (lowercase letters, digits and ``-``, at most 63), because it
#: also names the site's SuperNode and may name its host.
SITE_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
#: The largest magnitude a hashed number may have (integers and floats alike).
MAX_SAFE_INTEGER = 2**53 - 1
#: How deeply a free-form JSON value (a study document, a model description) may nest.
MAX_JSON_DEPTH = 32

_HEX64_RE = re.compile(HEX64_PATTERN)
_NAME_RE = re.compile(NAME_PATTERN)
_SITE_NAME_RE = re.compile(SITE_NAME_PATTERN)
_TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")


def is_hex64(value: object) -> TypeGuard[str]:
    """Whether ``value`` is 64 lowercase hex digits (a SHA-256 digest)."""
    return isinstance(value, str) and _HEX64_RE.match(value) is not None


def check_hex64(value: object, *, what: str) -> str:
    """Return ``value`` if it is 64 lowercase hex digits.

    Raises
    ------
    InputError
        Naming ``what``, if it is not.
    """
    if not is_hex64(value):
        raise InputError(f"{what} must be 64 lowercase hex digits")
    return value


def check_name(value: object, *, what: str = "name") -> str:
    """Return ``value`` if it is a usable enrolled name (see :data:`NAME_PATTERN`).

    Raises
    ------
    InputError
        If it is not.
    """
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise InputError(f"{what} {value!r} must be letters, digits, '.', '_' or '-' (max 128)")
    return value


def check_site_name(value: object) -> str:
    """Return ``value`` if it is a valid site name (see :data:`SITE_NAME_PATTERN`).

    Raises
    ------
    InputError
        If it is not a DNS label of lowercase letters, digits and ``-``.
    """
    if not isinstance(value, str) or not _SITE_NAME_RE.match(value):
        raise InputError(
            f"site name {value!r} must be lowercase letters, digits and '-' (max 63, "
            "starting with a letter or digit)"
        )
    return value


def check_timestamp(value: str) -> str:
    """Return ``value`` if it is an RFC 3339 timestamp of a real date and time.

    Raises
    ------
    ValueError
        If it is not (pydantic turns this into a validation error).
    """
    if not _TIMESTAMP_RE.match(value):
        raise ValueError("must be an RFC 3339 timestamp such as 2026-11-27T15:47:52.123456Z")
    try:
        datetime.fromisoformat(value)
    except ValueError as err:
        raise ValueError(f"is not a valid date and time: {err}") from err
    return value


def check_number(value: float) -> float:
    """Return ``value`` if it is finite and below 2**53 in magnitude.

    Raises
    ------
    ValueError
        If it is not (pydantic turns this into a validation error).
    """
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    if abs(value) > MAX_SAFE_INTEGER:
        raise ValueError("must be below 2**53 in magnitude")
    return value


def check_json_value(value: Any, *, depth: int = 0) -> Any:
    """Return ``value`` if it is JSON whose every number is hashable (see :func:`check_number`).

    Free-form parts of a payload (a study document, a model description) are checked with
    this: objects with string keys, arrays, strings, booleans, ``null``, integers and
    finite floats below 2**53 in magnitude, nested at most :data:`MAX_JSON_DEPTH` deep.

    Raises
    ------
    ValueError
        Naming the first value that is not (pydantic turns this into a validation error).
    """
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nests deeper than {MAX_JSON_DEPTH} levels")
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        check_number(value)
        return value
    if isinstance(value, list):
        for item in value:
            check_json_value(item, depth=depth + 1)
        return value
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"has a key that is not text: {key!r}")
            try:
                check_json_value(item, depth=depth + 1)
            except ValueError as err:
                raise ValueError(f"{key}: {err}") from None
        return value
    raise ValueError(f"holds a {type(value).__name__}, which is not JSON")


def format_timestamp(moment: datetime | None = None) -> str:
    """RFC 3339 UTC with microseconds, e.g. ``2026-11-27T15:47:52.123456Z`` (now by default).

    Raises
    ------
    InputError
        If ``moment`` is a naive datetime.
    """
    if moment is None:
        moment = datetime.now(UTC)
    if moment.tzinfo is None:
        raise InputError("timestamps must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


Hash = Annotated[str, StringConstraints(pattern=HEX64_PATTERN)]
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
SiteName = Annotated[str, StringConstraints(pattern=SITE_NAME_PATTERN)]
#: An identifier (dataset, run, feature, requester ...): 1 to 128 characters, none of them a
#: control character. Identifiers are keys in the coordinator's tables, and PostgreSQL
#: text cannot hold NUL.
IDENT_PATTERN = r"^[^\x00-\x1f\x7f]{1,128}$"
Ident = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=IDENT_PATTERN)]
Text = Annotated[str, StringConstraints(max_length=10_000)]
Timestamp = Annotated[str, AfterValidator(check_timestamp)]
Number = Annotated[float, AfterValidator(check_number)]
Count = Annotated[int, Field(ge=0, le=MAX_SAFE_INTEGER)]
Round = Annotated[int, Field(ge=1, le=1_000_000)]
#: A free-form JSON object that is hashed into the ledger (see :func:`check_json_value`).
JsonObject = Annotated[dict[str, Any], AfterValidator(check_json_value)]
