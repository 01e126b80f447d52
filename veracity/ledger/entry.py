"""A ledger entry: its exact hashed bytes and how they are built and read back.

An entry is the RFC 8785 canonical JSON of ``{actor, kind, payload, prev, seq, signature,
ts}``. ``signature`` is the actor's statement signature (``veracity.ledger.statement``) over
``{actor, kind, payload}``; carrying it inside the hashed bytes means the chain and the
Merkle tree commit to every signature. Its leaf hash is ``SHA-256(0x00 || bytes)`` and
``prev`` is the previous entry's leaf hash in hex (64 zeros for the genesis entry).

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
from veracity.ledger.statement import STATEMENT_DOMAIN

__all__ = [
    "GENESIS_PREV",
    "ENTRY_FIELDS",
    "Entry",
    "statement_bytes",
    "statement_message",
    "build_body",
    "statement_of_body",
    "parse_body",
]

#: ``prev`` of the genesis entry.
GENESIS_PREV = "0" * 64
ENTRY_FIELDS = frozenset({"actor", "kind", "payload", "prev", "seq", "signature", "ts"})
_TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
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


def statement_message(statement: bytes) -> bytes:
    """The bytes an Ed25519 key signs for a statement (same as ``sign_statement``)."""
    return _DOMAIN_PREFIX + hashlib.sha256(statement).digest()


def build_body(statement: bytes, *, prev: str, seq: int, signature: str, ts: str) -> bytes:
    """The entry's canonical bytes from its statement bytes and its position."""
    return b"".join(
        (
            statement[:-1],
            b',"prev":"',
            prev.encode("ascii"),
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
    if not isinstance(document, dict) or set(document) != ENTRY_FIELDS:
        raise InputError(
            "entry is not an object with exactly actor, kind, payload, prev, seq, signature, ts"
        )
    seq, ts, kind, actor = document["seq"], document["ts"], document["kind"], document["actor"]
    prev, signature, payload = document["prev"], document["signature"], document["payload"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise InputError("entry seq is not a non-negative integer")
    if not isinstance(ts, str) or not _TS_RE.match(ts):
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
    )
