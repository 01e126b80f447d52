"""The export bundle: one file an auditor verifies offline with only the root public key.

JSON Lines, UTF-8:

1. a header ``{"format": "veracity-ledger-bundle", "version": 1, "log_id", "entries": N}``;
2. ``N`` lines, each the exact hashed bytes of one entry in seq order (RFC 8785 output has
   no raw newlines, so each entry is one line and is hashed exactly as stored);
3. ``{"checkpoints": [...]}``: every root-signed checkpoint;
4. ``{"key_events": [[seq, kind, payload], ...]}``: an index of the ``key.*`` entries (the
   public keys), which the verifier checks against the entries themselves;
5. optionally ``{"notes": [text, ...]}``: the newest checkpoints as C2SP signed notes with
   every cosignature the log holds, so an auditor with only the bundle can check a witness
   policy (``veracity ledger verify --bundle FILE --policy P``).

Nothing in the bundle is trusted: :func:`veracity.ledger.verify.verify_bundle_file`
recomputes everything and pins the root key the auditor supplies.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from veracity.errors import InputError
from veracity.ledger.checkpoint import Checkpoint

__all__ = ["BUNDLE_FORMAT", "BUNDLE_VERSION", "write_bundle"]

BUNDLE_FORMAT = "veracity-ledger-bundle"
BUNDLE_VERSION = 1


def _line(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n"


def write_bundle(
    path: Path,
    *,
    log_id: str,
    size: int,
    bodies: Iterable[bytes],
    checkpoints: Sequence[Checkpoint],
    key_events: Sequence[tuple[int, str, dict[str, Any]]],
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """Write a bundle atomically (temporary file beside ``path``, then rename).

    Raises
    ------
    InputError
        If the directory cannot be written or the entries do not match ``size``.
    """
    directory = path.resolve().parent
    digest = hashlib.sha256()
    written = 0
    count = 0
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    except OSError as err:
        raise InputError(f"cannot write {path}: {err.strerror}") from err
    try:
        with os.fdopen(fd, "wb") as handle:

            def put(data: bytes) -> None:
                nonlocal written
                handle.write(data)
                digest.update(data)
                written += len(data)

            put(
                _line(
                    {
                        "format": BUNDLE_FORMAT,
                        "version": BUNDLE_VERSION,
                        "log_id": log_id,
                        "entries": size,
                    }
                )
            )
            for body in bodies:
                if b"\n" in body:
                    raise InputError(f"entry {count} holds a raw newline; not canonical")
                put(body + b"\n")
                count += 1
            if count != size:
                raise InputError(f"expected {size} entries, read {count}")
            put(_line({"checkpoints": [c.to_json() for c in checkpoints]}))
            put(_line({"key_events": [[seq, kind, payload] for seq, kind, payload in key_events]}))
            if notes:
                put(_line({"notes": list(notes)}))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return {
        "path": str(path),
        "entries": size,
        "checkpoints": len(checkpoints),
        "notes": len(notes),
        "bytes": written,
        "sha256": digest.hexdigest(),
    }
