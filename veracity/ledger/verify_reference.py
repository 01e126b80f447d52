"""The reference check of one entry row: every kind, every failure and its message.

The fast path (:mod:`.verify_fast`) hands every row it does not accept outright to
:func:`check_row_reference`, so failures and their messages are always this module's.
"""

from __future__ import annotations

from veracity.contracts.events import (
    KEY_KINDS,
    RECEIPT_DOMAINS,
    ROOT_ACTOR,
    SITE_KINDS,
    Role,
    validate_payload,
)
from veracity.crypto.keys import VerifyKey
from veracity.errors import (
    InputError,
    SignatureError,
)
from veracity.ledger.entry import (
    GENESIS_PREV,
    NO_LOG_ID,
    entry_message,
    parse_body,
    statement_message,
    statement_of_body,
)
from veracity.ledger.statement import unbound_reason, verify_bound
from veracity.ledger.verify_common import (
    ALLOWED_ROLES,
    ZERO_HASH,
    Context,
    Failure,
    Row,
    backwards,
    decode_raw_signature,
    stored_bytes,
)

__all__ = ["check_row_reference"]


def check_row_reference(
    context: Context,
    row: Row,
    seq: int,
    digest: bytes,
    prev_hash: bytes | None,
    prev_ts: str | None = None,
) -> str:
    """The reference check of one row (every kind, every failure message); returns its ts.

    ``prev_ts`` is the ts of entry ``seq - 1`` when known: the entry may not be older.

    Raises
    ------
    Failure
        Naming ``seq`` (or the seq the failure is about) and what is wrong.
    """
    seq_col, hash_col, prev_seq_col, prev_col, kind_col, actor_col, ts_col, body = row
    task, history, chunk = context.task, context.history, context.chunk
    if seq_col is not None and seq_col != seq:
        if seq_col > seq:
            raise Failure(seq, f"entry {seq} is missing (the next stored entry is {seq_col})")
        raise Failure(seq, f"entry {seq_col} is stored out of order")
    if hash_col is not None and stored_bytes(hash_col) != digest:
        raise Failure(seq, "stored hash does not match the entry bytes")
    try:
        entry = parse_body(body)
    except InputError as err:
        raise Failure(seq, f"entry bytes are malformed: {err}") from err
    if entry.seq != seq:
        raise Failure(seq, f"entry bytes say seq {entry.seq} (entries reordered or inserted)")
    if prev_hash is None:
        chunk.first_prev = entry.prev
        if seq == 0 and entry.prev != GENESIS_PREV:
            raise Failure(0, "genesis prev is not 64 zeros")
    elif entry.prev != prev_hash.hex():
        raise Failure(seq, f"prev is not the hash of entry {seq - 1} (chain broken)")
    if prev_col is not None:
        stored_prev = stored_bytes(prev_col)
        wanted_prev = ZERO_HASH if seq == 0 else bytes.fromhex(entry.prev)
        if stored_prev != wanted_prev or prev_seq_col != (None if seq == 0 else seq - 1):
            raise Failure(seq, "stored prev columns do not match the entry bytes")
    if (kind_col, actor_col, ts_col) != (None, None, None) and (
        kind_col,
        actor_col,
        ts_col,
    ) != (entry.kind, entry.actor, entry.ts):
        raise Failure(seq, "stored kind, actor or ts columns do not match the entry bytes")
    try:
        validate_payload(entry.kind, entry.payload, actor=entry.actor)
    except InputError as err:
        raise Failure(seq, str(err)) from err
    kind, actor, payload = entry.kind, entry.actor, entry.payload
    if seq == 0:
        if kind != "key.enrolled" or actor != ROOT_ACTOR or payload["role"] != Role.ROOT:
            raise Failure(0, f"genesis must be key.enrolled of {ROOT_ACTOR!r} as root")
        signer = VerifyKey.from_pem(payload["public_key"])
        identity = payload.get("identity_key")
        if (signer if identity is None else VerifyKey.from_pem(identity)) != context.trusted_root:
            raise Failure(0, "genesis names an identity (root) key other than the trusted root key")
        role = Role.ROOT
    else:
        record = history.key_at(actor, seq)
        if record is None:
            raise Failure(seq, f"{actor!r} holds no enrolled key here (never enrolled, or revoked)")
        signer = record.key
        role = record.role
        if kind == "key.recovered" and actor == ROOT_ACTOR and payload["name"] == ROOT_ACTOR:
            # A lost log key's recovery is signed by the new log key (the identity's
            # signature in the payload enrols it; the key history checks that).
            signer = VerifyKey.from_pem(payload["public_key"])
    roles = ALLOWED_ROLES[kind]
    if roles is not None and role not in roles:
        raise Failure(seq, f"a {role.value} key may not record {kind}")
    check_root = (
        seq == 0 or task.root_signatures == "all" or seq >= task.covered_size
    ) and task.own.get(seq) != digest
    statement = statement_of_body(entry.body)
    log_id = NO_LOG_ID if seq == 0 else task.log_id
    prev_raw = bytes.fromhex(entry.prev)
    if role is Role.ROOT:
        if entry.root_signature is not None:
            raise Failure(seq, "a root entry carries no root_signature")
        if check_root:
            try:
                signer.verify(
                    decode_raw_signature(entry.signature),
                    entry_message(log_id, seq, prev_raw, entry.ts, statement),
                )
            except SignatureError as err:
                raise Failure(
                    seq,
                    f"signature does not verify under {actor!r}'s enrolled key at this position "
                    "(moved, copied, re-dated or forged)",
                ) from err
            chunk.signatures += 1
    else:
        if entry.root_signature is None:
            raise Failure(
                seq, "the entry lacks the root's countersignature binding it to its position"
            )
        message = statement_message(statement, task.log_id)
        try:
            raw = decode_raw_signature(entry.signature)
        except SignatureError as err:
            raise Failure(seq, f"signature does not verify under {actor!r}'s enrolled key") from err
        try:
            signer.verify(raw, message)
        except SignatureError as err:
            reason = unbound_reason(
                signer,
                raw,
                lambda other: statement_message(statement, other),
                task.log_id,
                what=f"{actor!r}'s {kind} statement",
            )
            raise Failure(seq, reason) from err
        chunk.signatures += 1
        if kind in SITE_KINDS:
            chunk.site_statements.append((message, seq))
        if check_root:
            root_record = history.key_at(ROOT_ACTOR, seq)
            try:
                if root_record is None:
                    raise SignatureError("no root key")
                root_record.key.verify(
                    decode_raw_signature(entry.root_signature),
                    entry_message(log_id, seq, prev_raw, entry.ts, statement, raw),
                )
            except SignatureError as err:
                raise Failure(
                    seq,
                    "the root's countersignature does not verify at this position (moved, "
                    "copied, re-dated or forged)",
                ) from err
            chunk.signatures += 1
    if kind in KEY_KINDS:
        chunk.key_events.append((seq, kind, payload))
    elif kind in RECEIPT_DOMAINS:
        domain = RECEIPT_DOMAINS[kind]
        for signed in payload["receipts"]:
            site = signed["receipt"]["site"]
            site_record = history.key_at(site, seq)
            if site_record is None or site_record.role is not Role.SITE:
                raise Failure(seq, f"receipt of {site!r}: no enrolled site key here")
            try:
                verify_bound(
                    site_record.key,
                    domain,
                    task.log_id,
                    signed["receipt"],
                    signed["signature"],
                    what=f"receipt of {site!r}",
                )
            except SignatureError as err:
                raise Failure(seq, str(err)) from err
            chunk.receipts += 1
    elif kind == "checkpoint":
        if payload["tree_size"] > seq:
            raise Failure(seq, "a checkpoint entry can only record entries before it")
        chunk.checkpoint_entries.append((seq, entry.ts, payload))
    elif kind == "checkpoint.cosigned":
        if payload["tree_size"] > seq:
            raise Failure(seq, "a cosignature can only cover entries before it")
        chunk.cosignatures.append((seq, actor, payload))
    if prev_ts is not None and entry.ts < prev_ts:
        # (Last: an entry that no key signed as it stands is named a forgery first.)
        raise Failure(seq, backwards(seq, entry.ts, prev_ts))
    return entry.ts
