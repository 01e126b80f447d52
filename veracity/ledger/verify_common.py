"""What the verifier's modules share: row and key-event shapes, limits, chunks, key history."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from veracity.contracts.events import (
    KINDS,
    allowed_roles,
)
from veracity.crypto.keys import VerifyKey
from veracity.errors import (
    CryptoError,
    InputError,
    SignatureError,
)
from veracity.ledger.entry import NO_LOG_ID
from veracity.ledger.keyring import KeyHistory
from veracity.ledger.merkle import MerkleTree

__all__ = [
    "RootSignatures",
    "KeyEvent",
    "Row",
    "MAX_ENTRY_BYTES",
    "MAX_RECORD_BYTES",
    "ZERO_HASH",
    "NO_SEQ",
    "ALLOWED_ROLES",
    "VerifyReport",
    "Chunk",
    "Task",
    "Failure",
    "history_of",
    "lenient_history",
    "decode_raw_signature",
    "Context",
    "stored_bytes",
    "genesis_log_id",
    "backwards",
]

RootSignatures = Literal["all", "tail"]
#: (seq, kind, payload) of a ``key.*`` entry.
KeyEvent = tuple[int, str, dict[str, Any]]
#: A stored row: seq, hash, prev_seq, prev, kind, actor, ts, body (``None`` where unknown).
Row = tuple[
    int | None, bytes | None, int | None, bytes | None, str | None, str | None, str | None, bytes
]

#: The longest entry a bundle may hold (bytes, newline excluded): the ledger refuses to
#: write a longer one, so a longer line is not an entry (and is never read whole).
MAX_ENTRY_BYTES = 8 << 20
#: The longest header or trailer line of a bundle (the checkpoint list of 10^6 entries,
#: one every 1000, is about 0.3 MB).
MAX_RECORD_BYTES = 64 << 20
ZERO_HASH = bytes(32)
NO_SEQ = 2**63
ALLOWED_ROLES = {kind: allowed_roles(kind) for kind in KINDS}


@dataclass(frozen=True)
class VerifyReport:
    """What a successful verification covered."""

    entries: int
    checkpoints: int
    log_id: str
    root_hash: str
    signatures: int
    receipts: int
    #: Every ``key.recovered`` (a lost key replaced without its hand-over, the log key's
    #: included): (seq, name, new key id). Shown, so that no recovery goes unnoticed.
    recoveries: tuple[tuple[int, str, str], ...] = ()
    #: The Merkle tree of the entries just verified (their leaf hashes): what the policy
    #: and state audit checks notes against, so that it never reads the log a second time
    #: (a second read costs a second pass over every entry, and could differ from the one
    #: verified).
    tree: MerkleTree | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The report in the CLI's JSON shape (plus details)."""
        return {
            "key_recoveries": [
                {"seq": seq, "name": name, "key_id": key_id}
                for seq, name, key_id in self.recoveries
            ],
            "ok": True,
            "entries": self.entries,
            "checkpoints": self.checkpoints,
            "first_bad_seq": None,
            "reason": None,
            "log_id": self.log_id,
            "root_hash": self.root_hash,
            "signatures_checked": self.signatures,
            "receipts_checked": self.receipts,
        }


@dataclass
class Chunk:
    """What one chunk of entries showed."""

    start: int
    count: int = 0
    first_prev: str | None = None
    last_hash: bytes | None = None
    leaves: bytes = b""
    key_events: list[KeyEvent] = field(default_factory=list)
    checkpoint_entries: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    cosignatures: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    site_statements: list[tuple[bytes, int]] = field(default_factory=list)
    signatures: int = 0
    receipts: int = 0
    error: tuple[int, str] | None = None
    #: The ts of the chunk's first and last entries (tied across chunks afterwards).
    first_ts: str | None = None
    last_ts: str | None = None
    #: The ts of the entries the task asked for (:attr:`Task.ts_wanted`), by seq.
    ts_at: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """A chunk to check: where its rows come from and what it needs to know."""

    source: tuple[str, str]  # ("sqlite", path), ("db", url) or ("bundle", path)
    start: int
    end: int  # seq bound (db) or byte bound (bundle)
    byte_start: int
    trusted_root: bytes
    key_events: tuple[KeyEvent, ...]
    covered_size: int
    root_signatures: RootSignatures
    #: The log id (genesis leaf hash) every entry signature after genesis binds.
    log_id: bytes = NO_LOG_ID
    #: Leaf hashes (by seq) of entries the checking process wrote and signed itself: the
    #: root's signatures in an entry whose bytes hash to these are its own (see
    #: :func:`verify_extension`); empty in every other check.
    own: Mapping[int, bytes] = field(default_factory=dict)
    #: The ts of entry ``start - 1`` when known (else the chunks are tied afterwards).
    prev_ts: str | None = None
    #: Seqs whose ts the checkpoint checks need (each checkpoint's last entry).
    ts_wanted: frozenset[int] = frozenset()


class Failure(Exception):
    """A row check's failure: the seq it is about and what is wrong."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(reason)
        self.seq = seq
        self.reason = reason


def history_of(events: Iterable[KeyEvent], log_id: bytes) -> KeyHistory:
    """The key history the events replay to; raises :class:`Failure` at an invalid one."""
    history, failure = lenient_history(events, log_id)
    if failure is not None:
        raise failure
    return history


def lenient_history(events: Iterable[KeyEvent], log_id: bytes) -> tuple[KeyHistory, Failure | None]:
    """The key history up to the first invalid key event, and that event's failure."""
    history = KeyHistory(log_id=log_id.hex())
    for seq, kind, payload in events:
        try:
            history.apply(seq, kind, payload)
        except (InputError, SignatureError, CryptoError, KeyError, ValueError, TypeError) as err:
            return history, Failure(seq, f"invalid key event: {err}")
    return history, None


def decode_raw_signature(text: str) -> bytes:
    """The 64 signature bytes of an entry's base64 signature (:class:`SignatureError` else)."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as err:
        raise SignatureError("signature is not base64") from err
    if len(raw) != 64:
        raise SignatureError("an Ed25519 signature is 64 bytes")
    return raw


@dataclass
class Context:
    """What every row of a chunk is checked against."""

    task: Task
    history: KeyHistory
    trusted_root: VerifyKey
    chunk: Chunk


def stored_bytes(value: object) -> bytes | None:
    """A stored blob as bytes (``None`` for a value of another type, which never matches)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return None


def genesis_log_id(body: object) -> bytes:
    """The log id genesis bytes define (its leaf hash); zeros when there are none."""
    stored = stored_bytes(body)
    return NO_LOG_ID if stored is None else hashlib.sha256(b"\x00" + stored).digest()


def backwards(seq: int, ts: str, prev_ts: str) -> str:
    """The failure message of entry ``seq`` dated ``ts``, before its predecessor's ``prev_ts``."""
    return (
        f"dated {ts}, before entry {seq - 1} ({prev_ts}): time in the log never goes "
        "backwards (re-dated, or written with a clock set back)"
    )
