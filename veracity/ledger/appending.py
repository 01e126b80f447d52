"""Appending: prepare an event, check it against the log at its position, and write it.

Everything about an append is checked before anything is written: the payload schema, the
actor's enrolled key at that seq, its role, the signature, the key rules for ``key.*``
events and every receipt of ``round.completed``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from veracity.contracts.events import (
    KEY_KINDS,
    RECEIPT_DOMAINS,
    ROOT_ACTOR,
    SITE_KINDS,
    Role,
    allowed_roles,
    validate_actor_name,
    validate_payload,
)
from veracity.core.fields import format_timestamp
from veracity.crypto.keys import SigningKey, VerifyKey
from veracity.errors import (
    ConfigError,
    Conflict,
    CryptoError,
    InputError,
    SignatureError,
)
from veracity.ledger import store
from veracity.ledger.entry import (
    GENESIS_PREV,
    NO_LOG_ID,
    Entry,
    build_body,
    entry_message,
    parse_body,
    statement_bytes,
    statement_message,
)
from veracity.ledger.keyring import KeyRecord, check_key_event
from veracity.ledger.keyview import KeyView
from veracity.ledger.log_key import genesis_identity
from veracity.ledger.merkle import leaf_hash
from veracity.ledger.statement import (
    decode_signature,
    encode_signature,
    unbound_reason,
    verify_bound,
)
from veracity.ledger.verify import MAX_ENTRY_BYTES

__all__ = [
    "EventRequest",
    "Prepared",
    "Appended",
    "prepare",
    "check_readable",
    "position_signatures",
    "check_event",
    "entry_signer",
    "write_genesis",
    "append_rows",
]


@dataclass(frozen=True)
class EventRequest:
    """One event to append: exactly one of ``signer`` or ``signature`` must be given."""

    kind: str
    actor: str
    payload: dict[str, Any]
    signer: SigningKey | None = None
    signature: str | None = None


@dataclass
class Prepared:
    """One event canonicalised and signed, ready to be written at a position."""

    request: EventRequest
    statement: bytes
    #: The actor's statement signature (``None`` for the root's own entries, which are
    #: signed at their position under the write lock).
    signature: str | None


@dataclass(frozen=True)
class Appended:
    """What :func:`append_rows` wrote."""

    entries: list[Entry]
    #: ``(seq, leaf hash)`` of the entries signed or countersigned with ``root_key``.
    own: list[tuple[int, bytes]]
    #: The seq after the last entry written.
    next_seq: int
    #: The size of the newest stored checkpoint before these entries (0 if none).
    last_checkpoint: int


def check_readable(body: bytes, request: EventRequest) -> None:
    """Refuse an entry whose bytes would not read back as the event (never write those).

    Raises
    ------
    InputError
        If the bytes do not decode, or decode to a payload its schema refuses.
    """
    if len(body) > MAX_ENTRY_BYTES:
        raise InputError(
            f"{request.kind} would take {len(body)} bytes; an entry holds at most {MAX_ENTRY_BYTES}"
        )
    try:
        entry = parse_body(body)
    except InputError as err:
        raise InputError(f"{request.kind} would be stored as unreadable bytes: {err}") from err
    if entry.payload != request.payload:
        validate_payload(entry.kind, entry.payload, actor=entry.actor)


def prepare(request: EventRequest, *, log_id: bytes) -> Prepared:
    """Validate and canonicalise one event and sign it (outside the write lock).

    An actor's statement signed here (``signer=``) is bound to the log ``log_id``.
    """
    validate_actor_name(request.actor)
    validate_payload(request.kind, request.payload, actor=request.actor)
    if (request.signer is None) == (request.signature is None):
        raise SignatureError("give exactly one of signer= or signature=")
    statement = statement_bytes(request.kind, request.actor, request.payload)
    signature: str | None = None
    if request.actor == ROOT_ACTOR:
        if request.signer is None:
            raise SignatureError(
                "the root's entries are signed at their position when appended: pass signer="
            )
    elif request.signer is not None:
        signature = encode_signature(request.signer.sign(statement_message(statement, log_id)))
    elif request.signature is not None:
        signature = request.signature
        decode_signature(signature)
    return Prepared(request=request, statement=statement, signature=signature)


def position_signatures(
    item: Prepared,
    *,
    root_key: SigningKey | None,
    log_id: bytes,
    seq: int,
    prev: bytes,
    ts: str,
) -> tuple[str, str | None]:
    """``(signature, root_signature)`` of ``item`` at ``seq`` (see :mod:`.entry`).

    Raises
    ------
    ConfigError
        If another actor's statement is to be countersigned without the root key.
    """
    request = item.request
    if item.signature is None:
        if request.signer is None:  # pragma: no cover - prepare refused it
            raise SignatureError("the root's entries need signer=")
        message = entry_message(log_id, seq, prev, ts, item.statement)
        return encode_signature(request.signer.sign(message)), None
    if root_key is None:
        raise ConfigError(
            f"recording {request.actor!r}'s statement needs the root key (root.pem) to "
            "countersign it at its position"
        )
    raw = decode_signature(item.signature)
    message = entry_message(log_id, seq, prev, ts, item.statement, raw)
    return item.signature, encode_signature(root_key.sign(message))


def check_countersigner(keys: KeyView, seq: int, root_key: SigningKey) -> None:
    """Refuse to countersign at ``seq`` with a log key that is not the one in force there.

    Verifiers check a countersignature under the log key in force at its seq: one made by
    a key rotated or recovered away would be written, and the log would fail verification
    at that entry for good.

    Raises
    ------
    ConfigError
        Naming both keys: the coordinator runs with a log key it no longer holds.
    """
    current = keys.key_at(ROOT_ACTOR, seq)
    if current is None or current.key != root_key.public:
        in_force = "none" if current is None else current.key.key_id
        raise ConfigError(
            f"the log key this coordinator signs with ({root_key.public.key_id}) is not the "
            f"one in force at entry {seq} ({in_force}): it was rotated or recovered away; "
            "install the current log key (keys/log.pem) and start again; nothing was recorded"
        )


def entry_signer(kind: str, actor: str, payload: dict[str, Any], record: KeyRecord) -> VerifyKey:
    """The key that signs an entry of ``actor``, who holds ``record`` at its position.

    The actor's key, except in the recovery of a lost log key (``key.recovered`` of the
    root): nobody holds the lost key, so the new log key signs it; the identity's signature
    in the payload is what enrols that key (:func:`~.keyring.check_key_event`).
    """
    if kind == "key.recovered" and actor == ROOT_ACTOR and payload.get("name") == ROOT_ACTOR:
        return VerifyKey.from_pem(payload["public_key"])
    return record.key


def check_event(keys: KeyView, seq: int, item: Prepared, *, log_id: str) -> KeyRecord | None:
    """Every check that needs the ledger's state; returns the key change, if any."""
    request = item.request
    log = bytes.fromhex(log_id)
    record = keys.key_at(request.actor, seq)
    if record is None:
        raise SignatureError(
            f"{request.actor!r} holds no enrolled key (never enrolled, or revoked)"
        )
    roles = allowed_roles(request.kind)
    if roles is not None and record.role not in roles:
        raise SignatureError(f"a {record.role.value} key may not record {request.kind}")
    if request.signer is not None:
        if request.signer.public != entry_signer(
            request.kind, request.actor, request.payload, record
        ):
            raise SignatureError(f"the signer is not the key enrolled for {request.actor!r}")
    elif item.signature is not None:
        raw = decode_signature(item.signature)
        try:
            record.key.verify(raw, statement_message(item.statement, log))
        except SignatureError as err:
            reason = unbound_reason(
                record.key,
                raw,
                lambda other: statement_message(item.statement, other),
                log,
                what=f"{request.actor}'s {request.kind} statement",
            )
            raise SignatureError(reason) from err
    payload = request.payload
    domain = RECEIPT_DOMAINS.get(request.kind)
    if domain is not None:
        for signed in payload["receipts"]:
            site = signed["receipt"]["site"]
            site_record = keys.key_at(site, seq)
            if site_record is None or site_record.role is not Role.SITE:
                raise SignatureError(f"receipt of {site!r}: the site holds no enrolled key")
            verify_bound(
                site_record.key,
                domain,
                log,
                signed["receipt"],
                signed["signature"],
                what=f"receipt of {site!r}",
            )
    if request.kind in KEY_KINDS:
        name = payload["name"]
        try:
            return check_key_event(
                request.kind,
                payload,
                seq=seq,
                log_id=log_id,
                current=keys.key_at(name, seq + 1),
                last=keys.last_record(name, seq + 1),
                holder_of=keys.holder_of,
                identity=keys.identity() if name == ROOT_ACTOR else None,
                retired=keys.retired,
            )
        except CryptoError as err:  # pragma: no cover - the schema checked the key
            raise InputError(str(err)) from err
    return None


def write_genesis(
    session: Session,
    root_key: SigningKey,
    now: datetime | None,
    identity_key: SigningKey | None = None,
) -> None:
    """Write genesis: the log key's ``key.enrolled`` entry, signed by ``root_key``.

    With ``identity_key`` it names the identity and carries its signature of the log key
    (:func:`~veracity.ledger.log_key.genesis_identity`); without, the key is its own identity.
    """
    ts = format_timestamp(now)
    payload = {
        "name": ROOT_ACTOR,
        "role": Role.ROOT.value,
        "public_key": root_key.public.pem(),
        "valid_from": ts,
    }
    if identity_key is not None:
        payload.update(genesis_identity(identity_key, root_key.public))
    statement = statement_bytes("key.enrolled", ROOT_ACTOR, payload)
    message = entry_message(NO_LOG_ID, 0, bytes(32), ts, statement)
    signature = encode_signature(root_key.sign(message))
    body = build_body(statement, prev=GENESIS_PREV, seq=0, signature=signature, ts=ts)
    session.execute(
        insert(store.EntryRow),
        [
            {
                "seq": 0,
                "ts": ts,
                "kind": "key.enrolled",
                "actor": ROOT_ACTOR,
                "prev_seq": None,
                "prev": bytes(32),
                "hash": leaf_hash(body),
                "body": body,
            }
        ],
    )
    session.execute(
        insert(store.KeyEventRow),
        [
            {
                "seq": 0,
                "name": ROOT_ACTOR,
                "action": "enrolled",
                "role": Role.ROOT.value,
                "key_id": root_key.public.key_id,
                "public_key": payload["public_key"],
            }
        ],
    )


def append_rows(
    session: Session,
    prepared: list[Prepared],
    ts: str,
    *,
    log_id: str,
    root_key: SigningKey | None,
) -> Appended:
    """Check and write the events at the head (the caller holds the write lock).

    The entries are dated ``ts``, or the head entry's or newest checkpoint's time if that
    is later (a clock that stepped back never dates an entry before its predecessor).

    Raises
    ------
    InputError, SignatureError, Conflict, ConfigError
        As :meth:`~veracity.ledger.ledger.Ledger.append` documents; nothing is written.
    """
    head = session.execute(
        select(store.EntryRow.seq, store.EntryRow.hash, store.EntryRow.ts)
        .order_by(store.EntryRow.seq.desc())
        .limit(1)
    ).first()
    if head is None:
        raise ConfigError("the ledger has no genesis entry; run `veracity ledger init`")
    seq, prev = head.seq + 1, bytes(head.hash)
    newest = session.execute(
        select(store.CheckpointRow.tree_size, store.CheckpointRow.timestamp)
        .order_by(store.CheckpointRow.tree_size.desc())
        .limit(1)
    ).first()
    last_checkpoint = 0 if newest is None else newest.tree_size
    # Time never goes backwards in the log: not before the head, nor the newest checkpoint.
    ts = max(ts, head.ts, "" if newest is None else newest.timestamp)
    keys = KeyView(session, head=head.seq)
    log_id_bytes = bytes.fromhex(log_id)
    entry_rows: list[dict[str, Any]] = []
    key_rows: list[dict[str, Any]] = []
    statement_rows: dict[bytes, int] = {}
    entries: list[Entry] = []
    for item in prepared:
        change = check_event(keys, seq, item, log_id=log_id)
        request = item.request
        if item.signature is not None and root_key is not None:
            check_countersigner(keys, seq, root_key)
        signature, root_signature = position_signatures(
            item, root_key=root_key, log_id=log_id_bytes, seq=seq, prev=prev, ts=ts
        )
        body = build_body(
            item.statement,
            prev=prev.hex(),
            seq=seq,
            signature=signature,
            ts=ts,
            root_signature=root_signature,
        )
        check_readable(body, request)
        digest = leaf_hash(body)
        entry_rows.append(
            {
                "seq": seq,
                "ts": ts,
                "kind": request.kind,
                "actor": request.actor,
                "prev_seq": seq - 1,
                "prev": prev,
                "hash": digest,
                "body": body,
            }
        )
        entries.append(
            Entry(
                seq=seq,
                ts=ts,
                kind=request.kind,
                actor=request.actor,
                payload=request.payload,
                prev=prev.hex(),
                signature=signature,
                body=body,
                root_signature=root_signature,
            )
        )
        if request.kind == "key.revoked" and request.payload["name"] == ROOT_ACTOR:
            # A retired log key: the log key in use stays (the index row keeps it).
            payload = request.payload
            keys.record(seq, ROOT_ACTOR, change)
            keys.retire(payload["key_id"])
            key_rows.append(
                {
                    "seq": seq,
                    "name": ROOT_ACTOR,
                    "action": "retired",
                    "role": Role.ROOT.value,
                    "key_id": payload["key_id"],
                    "public_key": change.public_key_pem if change is not None else None,
                }
            )
        elif request.kind in KEY_KINDS:
            payload = request.payload
            keys.record(seq, payload["name"], change)
            key_rows.append(
                {
                    "seq": seq,
                    "name": payload["name"],
                    "action": request.kind.removeprefix("key."),
                    "role": change.role.value if change is not None else None,
                    "key_id": change.key_id if change is not None else payload["key_id"],
                    "public_key": payload["public_key"] if change is not None else None,
                }
            )
        if request.kind in SITE_KINDS:
            statement_digest = hashlib.sha256(item.statement).digest()
            if statement_digest in statement_rows:
                raise InputError("this signed statement appears twice in the batch")
            statement_rows[statement_digest] = seq
        seq, prev = seq + 1, digest
    if statement_rows:
        already = session.execute(
            select(store.SiteStatementRow.seq).where(
                store.SiteStatementRow.digest.in_(list(statement_rows))
            )
        ).first()
        if already is not None:
            raise Conflict(f"this signed statement is already recorded at seq {already.seq}")
    session.execute(insert(store.EntryRow), entry_rows)
    if statement_rows:
        session.execute(
            insert(store.SiteStatementRow),
            [{"digest": d, "seq": s} for d, s in statement_rows.items()],
        )
    if key_rows:
        session.execute(insert(store.KeyEventRow), key_rows)
    session.flush()
    own: list[tuple[int, bytes]] = []
    if root_key is not None:
        mine = root_key.public
        own = [
            (row["seq"], row["hash"])
            for row, item in zip(entry_rows, prepared, strict=True)
            if item.signature is not None  # countersigned with root_key
            or (item.request.signer is not None and item.request.signer.public == mine)
        ]
    return Appended(entries=entries, own=own, next_seq=seq, last_checkpoint=last_checkpoint)
