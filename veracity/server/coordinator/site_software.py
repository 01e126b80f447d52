"""What software each site's node reported when a run began (kept beside the ledger).

At the start of every run the ServerApp asks each matched node ``query.hello``; the node
answers with its site name, its Veracity version and the hash of the app bundle it runs.
The answers are not signed statements and are not in the ledger: they tell an operator
which version each site runs (the console's overview shows them), nothing an auditor relies
on. The file is ``<coordinator home>/site-software.json``, rewritten atomically.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from veracity.errors import InputError

__all__ = ["SiteSoftware", "record_site_software", "read_site_software", "FILE_NAME"]

FILE_NAME = "site-software.json"


@dataclass(frozen=True)
class SiteSoftware:
    """A site node's own report of its software."""

    site: str
    version: str
    #: The app bundle hash the node runs ("" if it could not tell).
    code_hash: str
    run_id: str
    #: When the coordinator received the report (RFC 3339, UTC).
    reported_at: str


def read_site_software(data_dir: Path) -> dict[str, SiteSoftware]:
    """Each site's newest report, by site name (empty if none was received yet).

    Raises
    ------
    InputError
        If the file exists but is not what :func:`record_site_software` writes.
    """
    path = data_dir / FILE_NAME
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise InputError(f"{path} is unreadable: {err}") from err
    try:
        return {name: SiteSoftware(**fields) for name, fields in document.items()}
    except (TypeError, AttributeError) as err:
        raise InputError(f"{path} is not a site software file: {err}") from err


def record_site_software(data_dir: Path, reports: list[SiteSoftware]) -> None:
    """Merge ``reports`` into the file (one writer at a time, readers never see half a file)."""
    if not reports:
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / FILE_NAME
    with open(data_dir / (FILE_NAME + ".lock"), "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            known = read_site_software(data_dir)
        except InputError:
            known = {}  # a damaged file is replaced by what the sites say now
        known.update({report.site: report for report in reports})
        staging = path.with_suffix(".json.tmp")
        staging.write_text(
            json.dumps({name: asdict(known[name]) for name in sorted(known)}, indent=2),
            encoding="utf-8",
        )
        os.replace(staging, path)
