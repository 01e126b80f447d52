"""The ledger as an auditor reads it through the coordinator: pages, checkpoints, verification.

Reads of the log itself (not of the read model): the log's identity, pages of entries,
signed checkpoints, a whole-ledger verification against the coordinator's root key (one at
a time per process: it reads every entry) and the export bundle.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Literal

from veracity.crypto.keys import VerifyKey
from veracity.errors import InputError, LedgerIntegrityError, SignatureError
from veracity.ledger.checkpoint import Checkpoint
from veracity.ledger.entry import Entry
from veracity.ledger.ledger import Ledger

__all__ = ["AuditLog", "check_tail_request"]


def check_tail_request(root_signatures: str, no_witnesses: bool) -> None:
    """Refuse ``tail`` without ``no_witnesses``: the coordinator holds no witness policy.

    Raises
    ------
    InputError
        If ``tail`` is asked for without ``no_witnesses``.
    """
    if root_signatures == "tail" and not no_witnesses:
        raise InputError(
            "root_signatures=tail trusts a checkpoint instead of the signatures below it, "
            "and only a witness quorum makes that safe: verify with `veracity ledger "
            "verify --policy FILE --root-signatures tail` on a bundle, or ask for "
            "no_witnesses=true to trust the log key alone"
        )


class AuditLog:
    """Read-only views of one coordinator's ledger."""

    def __init__(self, ledger: Ledger, root: VerifyKey) -> None:
        self.ledger = ledger
        self.root = root
        self._verify_lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        """Log id, size, the identity (root) key, the current log key and the newest checkpoint."""
        latest = self.ledger.latest_checkpoint()
        return {
            "log_id": self.ledger.log_id,
            "size": self.ledger.size(),
            "root_public_key": self.root.pem(),
            "root_key_id": self.root.key_id,
            "log_public_key": self.ledger.root_public_key.pem(),
            "log_key_id": self.ledger.root_public_key.key_id,
            "latest_checkpoint": None if latest is None else latest.to_json(),
        }

    def checkpoint_key(self, checkpoint: Checkpoint) -> VerifyKey:
        """The log key that signed ``checkpoint`` (the current one if none of the log's did)."""
        for key in self.ledger.log_keys():
            try:
                checkpoint.verify(key)
            except SignatureError:
                continue
            return key
        return self.ledger.root_public_key

    def entries(
        self, *, since: int, limit: int, kind: str | None, actor: str | None
    ) -> tuple[list[Entry], int | None]:
        """One page of entries from ``since`` and where the next page starts (or None)."""
        page = self.ledger.entries(since=since, kind=kind, actor=actor, limit=limit + 1)
        following = page[limit].seq if len(page) > limit else None
        return page[:limit], following

    def verify(
        self, *, root_signatures: Literal["all", "tail"], no_witnesses: bool = False
    ) -> dict[str, Any]:
        """Verify the whole ledger against the root key; the report (``ok`` false on failure).

        The coordinator holds no witness policy, so ``tail`` (which trusts the newest
        checkpoint below the head instead of the root signatures it covers) runs only when
        ``no_witnesses`` says to trust the log key alone; the report says what it trusted.

        Raises
        ------
        InputError
            If ``tail`` is asked for without ``no_witnesses``.
        """
        check_tail_request(root_signatures, no_witnesses)
        with self._verify_lock:
            try:
                report = self.ledger.verify(self.root, root_signatures=root_signatures)
            except LedgerIntegrityError as err:
                return {
                    "ok": False,
                    "entries": None,
                    "checkpoints": None,
                    "first_bad_seq": err.seq,
                    "reason": err.reason,
                    "log_id": None,
                    "root_hash": None,
                    "signatures_checked": None,
                    "receipts_checked": None,
                }
        document: dict[str, Any] = report.to_json()
        document["root_signatures"] = root_signatures
        if root_signatures == "tail":
            sizes = [c.tree_size for c in self.ledger.checkpoints()]
            document["tail_trusted"] = {
                "checkpoint_size": max((s for s in sizes if s < report.entries), default=None),
                "trusted_on": "the log key alone (no_witnesses: no witness checked it)",
                "witnesses": False,
            }
        return document

    def checkpoint_for(self, size: int) -> Checkpoint | None:
        """The signed checkpoint of exactly ``size`` entries, if one was made."""
        for checkpoint in self.ledger.checkpoints():
            if checkpoint.tree_size == size:
                return checkpoint
        return None

    def checkpoints(self, *, since_size: int, limit: int) -> list[Checkpoint]:
        """Signed checkpoints with ``tree_size >= since_size``, oldest first."""
        listed = [c for c in self.ledger.checkpoints() if c.tree_size >= since_size]
        return listed[:limit]

    def export_bundle(self, directory: Path) -> tuple[Path, dict[str, Any]]:
        """Export the ledger as an offline-verifiable bundle file in ``directory``."""
        path = directory / "ledger-bundle.jsonl"
        summary: dict[str, Any] = self.ledger.export_bundle(path)
        return path, summary
