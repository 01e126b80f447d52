"""``veracity ledger verify --policy/--state``: the witnesses' quorum and the auditor's memory.

Apart from the witness commands (:mod:`veracity.ledger.witness_cli`) and the ``ledger``
command group (:mod:`veracity.ledger.cli`), which both use it, so that neither imports
the other.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from veracity.errors import InputError, SignatureError
from veracity.ledger.merkle import MerkleTree, leaf_hash

if TYPE_CHECKING:
    from veracity.crypto.keys import VerifyKey
    from veracity.ledger.policy import Policy

__all__ = ["audit_verified", "bundle_log_keys", "check_policy_log_keys", "read_text"]


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of ``path`` (``-``: standard input).

    Raises
    ------
    InputError
        If it cannot be read or is not UTF-8.
    """
    try:
        return sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except OSError as err:
        raise InputError(f"cannot read {what} {path}: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise InputError(f"{what} {path} is not UTF-8 text") from err


def bundle_log_keys(bundle: Path) -> list[VerifyKey]:
    """The log keys the identity enrolled, replayed from a (verified) bundle's key events."""
    from veracity.ledger.verify_common import history_of
    from veracity.ledger.verify_sources import read_bundle_layout

    layout = read_bundle_layout(bundle, 1 << 20)
    return history_of(layout.key_events, layout.log_id).log_keys()


def check_policy_log_keys(policy: Policy, log_id: str, enrolled: list[VerifyKey]) -> None:
    """Refuse a policy that names, for this log, a log key its identity never enrolled.

    Raises
    ------
    SignatureError
        Naming the policy's vkey that no identity-signed log-key enrolment in the ledger
        (genesis or a rotation) shows.
    """
    known = {key.raw for key in enrolled}
    for log, _url in policy.logs:
        if log.name.endswith(f"/{log_id}") and log.public_key not in known:
            raise SignatureError(
                f"the policy names the log key {log.vkey()} for this log, but the identity "
                "(root.pub) never enrolled it as a log key of this ledger: the policy is "
                "not about the log you verified (or is forged); refused"
            )


def audit_verified(
    report: Any,
    *,
    db: str | None,
    bundle: Path | None,
    policy_file: Path | None,
    state: Path | None,
    notes: list[Path],
    tail: bool,
) -> dict[str, Any]:
    """After ``verify``: the policy's quorum and the state's memory (see :mod:`..audit`).

    Every log key the policy names for this log must be one the identity enrolled (genesis
    or a rotation) in the verified ledger.

    Raises
    ------
    SignatureError
        If the policy names a log key the identity never enrolled, or a checkpoint that
        must meet the policy does not.
    LedgerIntegrityError
        If the ledger rolled back or forked from the state's checkpoint.
    """
    from veracity.ledger.audit import audit, bundle_tree
    from veracity.ledger.ledger import Ledger
    from veracity.ledger.note import Note
    from veracity.ledger.policy import Policy
    from veracity.ledger.witnessed import WitnessedLog

    policy = None if policy_file is None else Policy.parse(read_text(policy_file, "policy"))
    given = [Note.parse(read_text(path, "note")) for path in notes]
    size = int(report.entries)
    if bundle is not None:
        tree, sizes, stored = bundle_tree(bundle)
        root_at = tree.root
        if policy is not None:
            check_policy_log_keys(policy, report.log_id, bundle_log_keys(bundle))
    else:
        assert db is not None  # noqa: S101 - one of the two is given by the caller
        ledger = Ledger.open(db)
        try:
            if policy is not None:
                check_policy_log_keys(policy, report.log_id, ledger.log_keys())
            # Only the checkpoints of the entries verified: one recorded since is not theirs.
            sizes = [c.tree_size for c in ledger.checkpoints() if c.tree_size <= size]
            log = WitnessedLog(ledger)
            stored = [n for n in (log.stored_note(s) for s in sizes[-2:]) if n is not None]
            verified = getattr(report, "tree", None)
            if isinstance(verified, MerkleTree) and verified.size == size:
                # The tree the verifier built from the entries it checked.
                root_at = verified.root
            else:
                leaves = MerkleTree()
                for entry in ledger.iter_entries(limit=size):
                    leaves.append(leaf_hash(entry.body))
                root_at = leaves.root
        finally:
            ledger.close()
    relies_on = max((s for s in sizes if s < size), default=None) if tail else None
    result = audit(
        log_id=report.log_id,
        checkpoint_sizes=sizes,
        root_at=root_at,
        notes=[*given, *stored],
        policy=policy,
        state_dir=state,
        relies_on=relies_on,
    )
    document = result.to_json()
    if tail:
        document["tail_relies_on"] = relies_on
    return document
