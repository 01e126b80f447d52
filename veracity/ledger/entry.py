"""A ledger entry: its exact hashed bytes and how they are built and read back.

An entry is the RFC 8785 canonical JSON of ``{actor, kind, payload, prev, seq, signature,
ts}``, plus ``root_signature`` when the actor is not the root. Its leaf hash is
``SHA-256(0x00 || bytes)`` and ``prev`` is the previous entry's leaf hash in hex (64 zeros
for the genesis entry). Every signature in an entry is bound to its position:

* the root signs its own entries with an *entry signature* (``signature``) over the log id,
  ``seq``, ``prev``, ``ts`` and the statement ``{actor, kind, payload}``
  (:func:`entry_message`), so a root entry cannot be moved, copied, re-dated or carried to
  another log without the root key;
* any other actor signs the position-free *statement* (``signature``, under
  ``veracity.statement.v2``: a site signs before it knows where its statement will sit),
  bound to the log id (:func:`statement_message`: a site's statement for one log never
  verifies in another), and the root countersigns it at its position (``root_signature``:
  an entry signature that also covers the actor's signature bytes).

The log id is the genesis entry's leaf hash; genesis itself, which defines it, binds 32
zero bytes instead. Carrying the signatures inside the hashed bytes means the chain and the
Merkle tree commit to every signature.

Because JCS sorts keys, the canonical statement ``{"actor":..,"kind":..,"payload":..}`` is
a prefix of the entry's bytes (up to the payload) plus ``}``; :func:`statement_of_body`
recovers it without re-serialising, and :func:`build_body` appends the position fields to
it. Both are checked against full canonicalisation in the tests.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from veracity.core.fields import is_hex64
from veracity.core.jcs import decode_canonical, encode_canonical
from veracity.errors import InputError
from veracity.ledger.merkle import leaf_hash
from veracity.ledger.statement import NO_LOG_ID, STATEMENT_DOMAIN

__all__ = [
    "GENESIS_PREV",
    "ENTRY_FIELDS",
    "Entry",
    "COUNTERSIGNED_FIELDS",
    "statement_bytes",
    "statement_message",
    "ENTRY_DOMAIN",
    "NO_LOG_ID",
    "entry_message",
    "build_body",
    "statement_of_body",
    "parse_body",
]

#: ``prev`` of the genesis entry.
GENESIS_PREV = "0" * 64
ENTRY_FIELDS = frozenset({"actor", "kind", "payload", "prev", "seq", "signature", "ts"})
#: The fields of an entry whose actor is not the root.
COUNTERSIGNED_FIELDS = ENTRY_FIELDS | {"root_signature"}
#: The signing domain of entry signatures (the root's, bound to the entry's position).
ENTRY_DOMAIN = "veracity.entry.v1"
_ENTRY_PREFIX = ENTRY_DOMAIN.encode("ascii") + b"\x00"
_TS_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
_SUFFIX_MARK = b',"prev":"'
_DOMAIN_PREFIX = STATEMENT_DOMAIN.encode("ascii") + b"\x00"


def statement_bytes(kind: str, actor: str, payload: Any) -> bytes:
    """Canonical JSON of the statement ``{actor, kind, payload}`` an actor signs.

    Raises
    ------
    InputError
        If the payload cannot be canonicalised.
    """
    return encode_canonical({"actor": actor, "kind": kind, "payload": payload})


def statement_message(statement: bytes, log_id: bytes) -> bytes:
    """The bytes an actor's key signs for a statement in the log ``log_id`` (32 bytes).

    The same bytes as ``sign_statement(..., log_id=log_id)`` signs:
    ``veracity.statement.v2 || 0x00 || log_id || SHA-256(statement)``. (Genesis, which
    defines the log id, binds :data:`NO_LOG_ID`; no site statement is ever bound to it.)
    """
    return _DOMAIN_PREFIX + log_id + hashlib.sha256(statement).digest()


def entry_message(
    log_id: bytes, seq: int, prev: bytes, ts: str, statement: bytes, signature: bytes = b""
) -> bytes:
    """The bytes an entry signature signs: the statement at its position in one log.

    ``DOMAIN || 0x00 || SHA-256(log_id || seq (8 bytes, big-endian) || prev || ts ||
    SHA-256(statement) || signature)``, every part of fixed length (``ts`` is always 27
    characters); ``signature`` is the raw statement signature a countersignature covers
    (empty for the root's own entries).
    """
    digest = hashlib.sha256(
        b"".join(
            (
                log_id,
                seq.to_bytes(8, "big"),
                prev,
                ts.encode("ascii"),
                hashlib.sha256(statement).digest(),
                signature,
            )
        )
    ).digest()
    return _ENTRY_PREFIX + digest


def build_body(
    statement: bytes,
    *,
    prev: str,
    seq: int,
    signature: str,
    ts: str,
    root_signature: str | None = None,
) -> bytes:
    """The entry's canonical bytes from its statement bytes and its position."""
    countersignature = (
        b"" if root_signature is None else b'","root_signature":"' + root_signature.encode("ascii")
    )
    return b"".join(
        (
            statement[:-1],
            b',"prev":"',
            prev.encode("ascii"),
            countersignature,
            b'","seq":',
            str(seq).encode("ascii"),
            b',"signature":"',
            signature.encode("ascii"),
            b'","ts":"',
            ts.encode("ascii"),
            b'"}',
        )
    )


def statement_of_body(body: bytes) -> bytes:
    """The statement bytes inside a canonical entry body (see the module docstring)."""
    cut = body.rfind(_SUFFIX_MARK)
    return body[:cut] + b"}"


@dataclass(frozen=True)
class Entry:
    """One recorded event, as stored."""

    seq: int
    ts: str
    kind: str
    actor: str
    payload: dict[str, Any]
    prev: str
    signature: str
    #: The exact hashed bytes (RFC 8785).
    body: bytes
    #: The root's countersignature (entries of actors other than the root).
    root_signature: str | None = None

    @property
    def leaf_hash(self) -> bytes:
        """RFC 9162 leaf hash of :attr:`body`."""
        return leaf_hash(self.body)

    @property
    def hash(self) -> str:
        """The leaf hash in hex (what the next entry's ``prev`` holds)."""
        return self.leaf_hash.hex()

    def to_json(self) -> dict[str, Any]:
        """The entry as a JSON-ready dict, with its hash."""
        return {
            "seq": self.seq,
            "ts": self.ts,
            "kind": self.kind,
            "actor": self.actor,
            "payload": self.payload,
            "prev": self.prev,
            "signature": self.signature,
            **({} if self.root_signature is None else {"root_signature": self.root_signature}),
            "hash": self.hash,
        }


def parse_body(body: bytes) -> Entry:
    """Read an entry back from its bytes, checking form but not signatures or links.

    Raises
    ------
    InputError
        If the bytes are not canonical JSON of an object with exactly the entry fields,
        of the right types.
    """
    document = decode_canonical(body)
    if not isinstance(document, dict) or set(document) not in (ENTRY_FIELDS, COUNTERSIGNED_FIELDS):
        raise InputError(
            "entry is not an object with exactly actor, kind, payload, prev, seq, signature, ts "
            "(and root_signature)"
        )
    root_signature = document.get("root_signature")
    if root_signature is not None and not isinstance(root_signature, str):
        raise InputError("entry root_signature must be a string")
    seq, ts, kind, actor = document["seq"], document["ts"], document["kind"], document["actor"]
    prev, signature, payload = document["prev"], document["signature"], document["payload"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise InputError("entry seq is not a non-negative integer")
    if not isinstance(ts, str) or not _TS_RE.fullmatch(ts):
        raise InputError("entry ts is not an RFC 3339 UTC timestamp with microseconds")
    if not is_hex64(prev):
        raise InputError("entry prev is not a 64-digit lowercase hex hash")
    if not isinstance(kind, str) or not isinstance(actor, str) or not isinstance(signature, str):
        raise InputError("entry kind, actor and signature must be strings")
    if not isinstance(payload, dict):
        raise InputError("entry payload is not an object")
    return Entry(
        seq=seq,
        ts=ts,
        kind=kind,
        actor=actor,
        payload=payload,
        prev=prev,
        signature=signature,
        body=body,
        root_signature=root_signature,
    )
