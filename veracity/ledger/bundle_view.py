"""Reading a verified bundle as a ledger: what an auditor holding only the bundle needs.

:class:`BundleLedger` answers the read queries of :func:`~veracity.ledger.provenance.
build_provenance` (entries by kind, the newest checkpoint, the log id) from an exported
bundle, so ``veracity ledger provenance MODEL --bundle FILE --trust root.pub`` runs with no
database and no network. :func:`provenance_from_bundle` verifies the bundle against the
trusted root key first: provenance is derived only from a ledger that checks out.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from veracity.crypto.keys import VerifyKey
from veracity.errors import InputError, LedgerIntegrityError
from veracity.ledger.checkpoint import Checkpoint
from veracity.ledger.entry import Entry, parse_body
from veracity.ledger.reader import EntryReader

__all__ = ["BundleLedger", "provenance_from_bundle"]


class BundleLedger(EntryReader):
    """The entries and checkpoints of a bundle file, read-only, in memory."""

    def __init__(self, path: Path) -> None:
        try:
            lines = path.read_bytes().split(b"\n")
        except OSError as err:
            raise InputError(f"cannot read bundle {path}: {err.strerror}") from err
        try:
            header = json.loads(lines[0])
            size = int(header["entries"])
            self.log_id: str = str(header["log_id"])
            self._entries = [parse_body(line) for line in lines[1 : 1 + size]]
            trailer = [json.loads(line) for line in lines[1 + size :] if line.strip()]
        except (ValueError, KeyError, TypeError, IndexError) as err:
            raise LedgerIntegrityError(f"{path} is not a readable ledger bundle: {err}") from err
        self._checkpoints: list[Checkpoint] = []
        for record in trailer:
            if isinstance(record, dict) and "checkpoints" in record:
                self._checkpoints = [Checkpoint.from_json(item) for item in record["checkpoints"]]

    def iter_entries(
        self,
        *,
        since: int = 0,
        kind: str | None = None,
        actor: str | None = None,
        limit: int | None = None,
    ) -> Iterator[Entry]:
        """Entries with ``seq >= since`` in order, optionally of one kind or actor."""
        count = 0
        for entry in self._entries:
            if entry.seq < since or (kind is not None and entry.kind != kind):
                continue
            if actor is not None and entry.actor != actor:
                continue
            if limit is not None and count >= limit:
                return
            count += 1
            yield entry

    def latest_checkpoint(self) -> Checkpoint | None:
        """The newest signed checkpoint in the bundle, if any."""
        return max(self._checkpoints, key=lambda c: c.tree_size, default=None)


def provenance_from_bundle(path: Path, model_hash: str, *, trusted_root: VerifyKey) -> Any:
    """PROV-JSON of ``model_hash`` from the bundle at ``path``, once it verifies.

    Raises
    ------
    InputError
        If the file cannot be read, or no entry names the model.
    LedgerIntegrityError
        If the bundle does not verify under ``trusted_root``.
    """
    from veracity.ledger.provenance import build_provenance
    from veracity.ledger.verify import verify_bundle_file

    verify_bundle_file(path, trusted_root=trusted_root)
    return build_provenance(BundleLedger(path), model_hash)
