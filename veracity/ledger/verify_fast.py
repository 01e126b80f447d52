"""Checking a chunk of consecutive rows: the template fast path, the reference fallback.

A row of a templated kind (:mod:`veracity.ledger.templates`) whose every check passes on
the template's reading is accepted there; any other row goes through
:func:`~veracity.ledger.verify_reference.check_row_reference`.
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Iterable

from veracity.contracts.events import (
    ROOT_ACTOR,
    SITE_KINDS,
    Role,
)
from veracity.crypto.keys import VerifyKey
from veracity.errors import SignatureError
from veracity.ledger.entry import (
    entry_message,
    statement_message,
    statement_of_body,
)
from veracity.ledger.keyring import KeyRecord
from veracity.ledger.templates import read_entry, template_for
from veracity.ledger.verify_common import (
    ALLOWED_ROLES,
    NO_SEQ,
    Chunk,
    Context,
    Failure,
    Row,
    Task,
    lenient_history,
    stored_bytes,
)
from veracity.ledger.verify_reference import check_row_reference

__all__ = ["check_rows"]


def check_rows(rows: Iterable[Row], task: Task) -> Chunk:
    """Check consecutive rows starting at ``task.start``; stops at the first failure.

    Each row first tries the fast path: an entry of a templated kind
    (:mod:`veracity.ledger.templates`) whose every check passes is accepted with the same
    checks done on the template's reading. Any row the fast path does not accept outright
    (another kind, a template mismatch, any failed check) goes through
    :func:`check_row_reference`, which accepts it or names the failure, so failures and
    their messages are exactly the reference's.
    """
    chunk = Chunk(start=task.start)
    leaves = bytearray()
    history, bad_key_event = lenient_history(task.key_events, task.log_id)
    context = Context(
        task=task, history=history, trusted_root=VerifyKey.from_raw(task.trusted_root), chunk=chunk
    )
    bad_from = bad_key_event.seq if bad_key_event is not None else NO_SEQ
    root_checked_from = 0 if task.root_signatures == "all" else task.covered_size
    spans: dict[str, tuple[KeyRecord | None, int, int]] = {}
    site_statements = chunk.site_statements
    own = task.own.get if task.own else None
    sha256 = hashlib.sha256
    expected = task.start
    prev_hash: bytes | None = None
    prev_hex = b""
    prev_ts = task.prev_ts
    ts_wanted = task.ts_wanted
    ts = ""
    try:
        for row in rows:
            seq = expected
            if seq >= bad_from and bad_key_event is not None:
                raise bad_key_event
            seq_col, hash_col, prev_seq_col, prev_col, kind_col, actor_col, ts_col, body = row
            if body.__class__ is not bytes:
                stored = stored_bytes(body)
                if stored is None:
                    raise Failure(seq, "entry bytes are not stored as a blob")
                body = stored
                row = (seq_col, hash_col, prev_seq_col, prev_col, kind_col, actor_col, ts_col, body)
            digest = sha256(b"\x00" + body).digest()
            accepted = False
            template = None
            if (
                prev_hash is not None
                and (seq_col is None or seq_col == seq)
                and (hash_col is None or hash_col == digest)
            ):
                template = template_for(body, kind_col)
            fast = None if template is None else read_entry(template, body)
            if fast is not None and template is not None and prev_hash is not None:
                actor, prev_text, entry_seq, signature_text, ts, root_text = fast
                kind = template.kind
                columns = (kind_col, actor_col, ts_col)
                if (
                    entry_seq == seq
                    and prev_text == prev_hex
                    and (prev_ts is None or ts >= prev_ts)
                    and (prev_col is None or (prev_col == prev_hash and prev_seq_col == seq - 1))
                    and (columns == (None, None, None) or columns == (kind, actor, ts))
                ):
                    span = spans.get(actor)
                    if span is None or not span[1] < seq <= span[2]:
                        span = spans[actor] = history.key_span(actor, seq)
                    record = span[0]
                    roles = ALLOWED_ROLES[kind]
                    if record is not None and (roles is None or record.role in roles):
                        is_root = record.role is Role.ROOT
                        check_root = seq >= root_checked_from and (
                            own is None or own(seq) != digest
                        )
                        root_key = None
                        if check_root and not is_root:
                            root_span = spans.get(ROOT_ACTOR)
                            if root_span is None or not root_span[1] < seq <= root_span[2]:
                                root_span = spans[ROOT_ACTOR] = history.key_span(ROOT_ACTOR, seq)
                            root_key = None if root_span[0] is None else root_span[0].key
                        try:
                            if is_root != (root_text is None):
                                raise SignatureError("the reference names the failure")
                            statement = statement_of_body(body)
                            if is_root:
                                if check_root:
                                    record.key.verify(
                                        binascii.a2b_base64(signature_text),
                                        entry_message(task.log_id, seq, prev_hash, ts, statement),
                                    )
                                    chunk.signatures += 1
                            else:
                                raw = binascii.a2b_base64(signature_text)
                                message = statement_message(statement, task.log_id)
                                record.key.verify(raw, message)
                                if check_root:
                                    if root_key is None or root_text is None:
                                        raise SignatureError("no root key")
                                    root_key.verify(
                                        binascii.a2b_base64(root_text),
                                        entry_message(
                                            task.log_id, seq, prev_hash, ts, statement, raw
                                        ),
                                    )
                                    chunk.signatures += 1
                                chunk.signatures += 1
                                if kind in SITE_KINDS:
                                    site_statements.append((message, seq))
                        except SignatureError:
                            pass  # the reference names the failure
                        else:
                            accepted = True
            if not accepted:
                ts = check_row_reference(context, row, seq, digest, prev_hash, prev_ts)
            if chunk.first_ts is None:
                chunk.first_ts = ts
            if seq in ts_wanted:
                chunk.ts_at[seq] = ts
            prev_ts = ts
            leaves += digest
            prev_hash = digest
            prev_hex = binascii.hexlify(digest)
            expected += 1
            chunk.count += 1
    except Failure as failure:
        chunk.error = (failure.seq, failure.reason)
    chunk.last_hash = prev_hash
    chunk.last_ts = prev_ts if chunk.count else None
    chunk.leaves = bytes(leaves)
    return chunk
