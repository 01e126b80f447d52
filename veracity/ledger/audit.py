"""An auditor's policy and memory: quorum-cosigned checkpoints and no silent rollback.

After the ledger itself verifies (:mod:`veracity.ledger.verify`), :func:`audit` checks what
the log's own signatures cannot show:

1. **The log is the one the policy names.** The policy's log vkey is named by the origin
   ``<name>/veracity/<log id>``; a ledger with another log id (a new log under the same
   root key) is refused.
2. **The newest checkpoint carries a quorum.** Its C2SP note must be signed by the
   policy's log key and cosigned by witnesses meeting the quorum, and its root must be the
   verified ledger's root at that size. A split view then needs colluding witnesses.
3. **So does any checkpoint a fast mode relies on** (``--root-signatures tail``).
4. **No rollback, no fork from what was verified before.** The state directory keeps the
   last verified checkpoint (``latest.checkpoint``, and its cosigned note in
   ``latest.note``); the new newest checkpoint must be of the same log, at least as large,
   and the verified ledger must have the old root at the old size. Only then is the new
   one stored (atomically).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veracity.errors import InputError, LedgerIntegrityError, SignatureError
from veracity.ledger.merkle import MerkleTree, leaf_hash
from veracity.ledger.note import CheckpointText, Note
from veracity.ledger.policy import Policy
from veracity.ledger.witness import write_atomic
from veracity.ledger.witnessed import ORIGIN_NAME

__all__ = ["NO_POLICY", "STATE_CHECKPOINT", "STATE_NOTE", "AuditReport", "audit", "bundle_tree"]

#: The last verified checkpoint (origin, size, root), and its note with cosignatures.
STATE_CHECKPOINT = "latest.checkpoint"
_MAX_LINE = 64 * 1024 * 1024
STATE_NOTE = "latest.note"


#: The ``quorum`` of an audit made without a policy (a ``--state`` check alone).
NO_POLICY = "no policy"


@dataclass(frozen=True)
class AuditReport:
    """What the policy and state checks found."""

    origin: str | None
    tree_size: int | None
    cosigned: Mapping[str, int] = field(default_factory=dict)
    quorum: str = NO_POLICY
    previous_size: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The report's JSON form (the ``witnesses`` object of ``verify``)."""
        return {
            "origin": self.origin,
            "tree_size": self.tree_size,
            "cosigned_by": sorted(self.cosigned),
            "quorum": self.quorum,
            "previous_verified_size": self.previous_size,
        }


def _by_size(notes: Sequence[Note]) -> dict[int, list[Note]]:
    found: dict[int, list[Note]] = {}
    for note in notes:
        try:
            size = CheckpointText.parse(note.text).tree_size
        except InputError:
            continue
        found.setdefault(size, []).append(note)
    return found


def _merged(candidates: Sequence[Note]) -> Note:
    """One note of a text with every signature its copies carry."""
    first = candidates[0]
    merged = first
    for other in candidates[1:]:
        if other.text == first.text:
            merged = merged.with_signatures(other.signatures)
    return merged


def audit(
    *,
    log_id: str,
    checkpoint_sizes: Sequence[int],
    root_at: Callable[[int], bytes],
    notes: Sequence[Note],
    policy: Policy | None,
    state_dir: Path | None,
    relies_on: int | None = None,
) -> AuditReport:
    """Check the verified ledger's checkpoints against ``policy`` and the auditor's state.

    ``root_at(size)`` is the verified ledger's root at ``size``; ``checkpoint_sizes`` its
    signed checkpoints; ``notes`` the checkpoint notes at hand (from the database, the
    bundle or files); ``relies_on`` the checkpoint a fast mode trusted.

    Raises
    ------
    SignatureError
        If the policy names no log of this id, or a checkpoint that must meet the policy
        does not (no note, not the log's key, too few cosignatures).
    LedgerIntegrityError
        If a note's root is not the ledger's, or the ledger is smaller than, or forks
        from, the checkpoint verified before.
    """
    by_size = _by_size(notes)
    newest = max(checkpoint_sizes, default=None)
    report = AuditReport(origin=None, tree_size=newest)
    if policy is not None:
        origins = [log.name for log, _url in policy.logs if log.name.endswith(f"/{log_id}")]
        if not origins:
            raise SignatureError(
                f"the policy trusts no log with id {log_id}: this is another log "
                "(a new log under the same key is not the log you audit)"
            )
        if newest is None:
            raise SignatureError("the ledger has no checkpoint for the policy to check")
        checked: dict[int, Any] = {}
        for size in sorted({newest, *([relies_on] if relies_on else [])}):
            candidates = [n for n in by_size.get(size, []) if n.text.startswith(origins[0])]
            if not candidates:
                raise SignatureError(
                    f"no signed note of the checkpoint of size {size}: get it from the "
                    "coordinator (`veracity ledger checkpoint --format note`) or its witnesses"
                )
            verdict = policy.check(_merged(candidates))
            if root_at(size) != verdict.checkpoint.root_hash:
                raise LedgerIntegrityError(
                    f"the cosigned checkpoint of size {size} is not this ledger's root"
                )
            checked[size] = verdict
        top = checked[newest]
        report = AuditReport(
            origin=top.checkpoint.origin,
            tree_size=newest,
            cosigned=dict(top.cosigned),
            quorum=policy.required,
        )
    if state_dir is None:
        return report
    return _with_state(report, state_dir, by_size, root_at, newest, log_id)


def _with_state(
    report: AuditReport,
    state_dir: Path,
    by_size: dict[int, list[Note]],
    root_at: Callable[[int], bytes],
    newest: int | None,
    log_id: str,
) -> AuditReport:
    path = state_dir / STATE_CHECKPOINT
    previous: CheckpointText | None = None
    if path.exists():
        try:
            previous = CheckpointText.parse(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, InputError) as err:
            raise InputError(f"the audit state {path} is unreadable: {err}") from err
        if previous.origin.rsplit("/", 1)[-1] != log_id:
            raise LedgerIntegrityError(
                f"the state is for the log {previous.origin}, not the log {log_id}: "
                "another log (a new log under the same key?)"
            )
    if newest is None:
        if previous is not None:
            raise LedgerIntegrityError(
                f"the ledger has no checkpoint, but one of size {previous.tree_size} was "
                "verified before: a rollback"
            )
        return report
    if previous is not None:
        if newest < previous.tree_size:
            raise LedgerIntegrityError(
                f"the newest checkpoint is of size {newest}, smaller than the size "
                f"{previous.tree_size} verified before: the ledger was truncated or rolled back"
            )
        if root_at(previous.tree_size) != previous.root_hash:
            raise LedgerIntegrityError(
                f"the ledger is not consistent with the checkpoint of size "
                f"{previous.tree_size} verified before: a fork (split view)"
            )
    origin = report.origin or f"{ORIGIN_NAME}/veracity/{log_id}"
    state_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(path, CheckpointText(origin, newest, root_at(newest)).text().encode("ascii"))
    candidates = [n for n in by_size.get(newest, []) if n.text.startswith(origin + "\n")]
    if candidates:
        write_atomic(state_dir / STATE_NOTE, _merged(candidates).render().encode("utf-8"))
    return AuditReport(
        origin=report.origin,
        tree_size=report.tree_size,
        cosigned=report.cosigned,
        quorum=report.quorum,
        previous_size=None if previous is None else previous.tree_size,
    )


def _bundle_note(text: object) -> Note:
    """One note of a bundle's notes line; a malformed one makes the bundle bad."""
    try:
        return Note.parse(str(text))
    except InputError as err:
        reason = f"the bundle's notes line holds a malformed note: {err}"
        raise LedgerIntegrityError(reason) from err


def bundle_tree(path: Path) -> tuple[MerkleTree, list[int], list[Note]]:
    """The Merkle tree, checkpoint sizes and notes of a bundle that has already verified.

    The notes (with their cosignatures) are what the bundle carries, untrusted: the
    policy checks them.

    Raises
    ------
    InputError
        If the bundle cannot be read again as it was verified.
    LedgerIntegrityError
        If a note in the bundle's notes line is malformed.
    """
    tree = MerkleTree()
    sizes: list[int] = []
    notes: list[Note] = []
    try:
        with path.open("rb") as handle:
            header = json.loads(handle.readline(_MAX_LINE))
            count = int(header["entries"])
            for _ in range(count):
                line = handle.readline(_MAX_LINE)
                if not line.endswith(b"\n"):
                    raise InputError("the bundle changed since it was verified")
                tree.append(leaf_hash(line[:-1]))
            trailer = json.loads(handle.readline(_MAX_LINE))
            sizes = [int(c["tree_size"]) for c in trailer["checkpoints"]]
            for line in handle:
                record = json.loads(line) if line.strip() else None
                if isinstance(record, dict) and "notes" in record:
                    notes = [_bundle_note(text) for text in record["notes"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"cannot read the bundle {path} again: {err}") from err
    return tree, sizes, notes
