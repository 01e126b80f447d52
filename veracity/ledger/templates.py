r"""Entry templates: a fast, provably no-looser reading of the most frequent entry kinds.

The reference reading of an entry is :func:`~veracity.ledger.entry.parse_body` (strict RFC
8785 decoding, then the entry's field checks) followed by
:func:`~veracity.contracts.events.validate_payload` (the kind's pydantic schema). It costs
about 12 us per entry, most of it decoding and re-encoding JSON to prove the bytes are
canonical. A template is one regular expression over the exact bytes of an entry of one
kind that matches only what the reference accepts:

* the keys of the entry and of its payload are literal, in RFC 8785 order (sorted; all
  ASCII, so UTF-16 order is byte order), each exactly once, with no whitespace: the
  template names every required schema field and nothing else (``extra="forbid"``); an
  entry that carries an optional field (a ``dataset.registered``'s ``kind``) does not
  match and is read by the reference;
* every string is printable ASCII without ``"`` or ``\\`` (characters RFC 8785 writes
  as themselves, so the text between the quotes *is* the decoded string, one byte per
  character), and every integer is decimal digits without sign or leading zero, at most
  15 of them (how RFC 8785 writes an integer below 2**53), so the bytes are canonical;
* each field's fragment is a subset of its schema constraint (``Hash``: 64 lowercase hex
  digits; ``Name``: the name pattern; ``Ident``: 1 to 128 characters; counts and sizes
  inside their bounds), ``seq``/``prev``/``ts``/``signature`` are a subset of what
  :func:`parse_body` and the verifier's signature decoding accept, and what a regular
  expression cannot say (a site event names its actor; a timestamp is a real date) is
  checked after the match with the schema's own code.

A match therefore implies the reference accepts the entry and reads the same values;
anything else (another kind, an escape, non-ASCII text, a float, a value at the edge of
its range) does not match and is read by the reference. ``tests/ledger/test_templates.py``
checks this on Hypothesis-generated entries and pins each template's fields to its schema.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from veracity.contracts.events import SITE_KINDS
from veracity.core.fields import check_timestamp

__all__ = ["Template", "TEMPLATES", "FastEntry", "template_for", "read_entry"]

#: What a template reads: (actor, prev in hex, seq, signature in base64, ts, root_signature
#: in base64 or ``None``).
FastEntry = tuple[str, bytes, int, bytes, str, bytes | None]

_NAME = rb"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_HASH = rb'"[0-9a-f]{64}"'
_IDENT = rb'"[\x20\x21\x23-\x5b\x5d-\x7e]{1,128}"'
_COUNT = rb"(?:0|[1-9][0-9]{0,14})"
_TIMESTAMP = (
    rb"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?"
    rb"(?:Z|[+-][0-9]{2}:[0-9]{2})"
)
_ENTRY_TS = rb"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z"


def _timestamp(name: str) -> bytes:
    """A timestamp field, captured so that :func:`check_timestamp` can also run on it."""
    return rb'"(?P<time_' + name.encode("ascii") + rb">" + _TIMESTAMP + rb')"'


#: Standard base64 of 64 bytes (what ``base64.b64decode(validate=True)`` reads as 64 bytes).
_SIGNATURE = rb"[A-Za-z0-9+/]{86}=="

#: Fragments of the payload fields, per kind (the value only; the key is added in order).
_FIELDS: dict[str, dict[str, bytes]] = {
    "inference.served": {
        "model_hash": _HASH,
        "requester": _IDENT,
        "he_params_hash": _HASH,
        # 1 <= batch_size <= 2**31: nine digits at most stay inside.
        "batch_size": rb"[1-9][0-9]{0,8}",
        "request_hash": _HASH,
        # 1 <= served_total < 2**53: fifteen digits at most stay inside.
        "served_total": rb"[1-9][0-9]{0,14}",
    },
    "dataset.registered": {
        "site": rb'"(?P<site>' + _NAME + rb')"',
        "dataset_id": _IDENT,
        "commitment": _HASH,
        "schema_hash": _HASH,
        "rows": _COUNT,
        "label": _IDENT,
        "features": rb"\[" + _IDENT + rb"(?:," + _IDENT + rb"){0,9999}\]",
        "signed_at": _timestamp("signed_at"),
    },
}


@dataclass(frozen=True)
class Template:
    """The compiled template of one kind."""

    kind: str
    #: The payload fields it requires (exactly the schema's, pinned by a test).
    fields: frozenset[str]
    pattern: re.Pattern[bytes]
    #: Whether the payload's ``site`` must be the actor (site kinds).
    site_is_actor: bool
    #: Named groups holding timestamps that must also be real dates.
    timestamps: tuple[str, ...]


def _compile(kind: str, fields: dict[str, bytes]) -> Template:
    payload = b",".join(
        b'"' + name.encode("ascii") + b'":' + fields[name] for name in sorted(fields)
    )
    pattern = re.compile(
        rb'\{"actor":"(?P<actor>'
        + _NAME
        + rb')","kind":"'
        + re.escape(kind.encode("ascii"))
        + rb'","payload":\{'
        + payload
        + rb'\},"prev":"(?P<prev>[0-9a-f]{64})"'
        + rb'(?:,"root_signature":"(?P<root_signature>'
        + _SIGNATURE
        + rb')")?,"seq":'
        + rb'(?P<seq>0|[1-9][0-9]{0,14}),"signature":"(?P<signature>'
        + _SIGNATURE
        + rb')","ts":"(?P<ts>'
        + _ENTRY_TS
        + rb')"\}'
    )
    return Template(
        kind=kind,
        fields=frozenset(fields),
        pattern=pattern,
        site_is_actor=kind in SITE_KINDS,
        timestamps=tuple(name for name in pattern.groupindex if name.startswith("time_")),
    )


#: The templates, by kind.
TEMPLATES: dict[str, Template] = {kind: _compile(kind, fields) for kind, fields in _FIELDS.items()}
_BY_KIND_BYTES = {kind.encode("ascii"): template for kind, template in TEMPLATES.items()}
_KIND_PREFIX = re.compile(rb'\{"actor":"' + _NAME + rb'","kind":"([a-z.]{1,64})","payload":')


def template_for(body: bytes, kind: str | None = None) -> Template | None:
    """The template for an entry of ``kind`` (read from the bytes when not given)."""
    if kind is not None:
        return TEMPLATES.get(kind)
    prefix = _KIND_PREFIX.match(body)
    return None if prefix is None else _BY_KIND_BYTES.get(prefix.group(1))


def read_entry(template: Template, body: bytes) -> FastEntry | None:
    """Read ``body`` through ``template``; ``None`` when it is for the reference to read.

    A non-``None`` result is what the reference would read, for an entry it accepts
    (see the module docstring); ``None`` says nothing about the entry.
    """
    match = template.pattern.fullmatch(body)
    if match is None:
        return None
    actor_bytes, prev, seq, signature, ts, root_signature = match.group(
        "actor", "prev", "seq", "signature", "ts", "root_signature"
    )
    actor = actor_bytes.decode("ascii")
    if template.site_is_actor and match.group("site") != actor_bytes:
        return None
    for name in template.timestamps:
        try:
            check_timestamp(match.group(name).decode("ascii"))
        except ValueError:
            return None
    return actor, prev, int(seq), signature, ts.decode("ascii"), root_signature
