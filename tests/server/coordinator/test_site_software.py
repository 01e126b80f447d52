"""The sites' software reports kept beside the ledger."""

from __future__ import annotations

from pathlib import Path

import pytest

from veracity.errors import InputError
from veracity.server.coordinator.site_software import (
    FILE_NAME,
    SiteSoftware,
    read_site_software,
    record_site_software,
)


def _report(site: str, version: str, run_id: str) -> SiteSoftware:
    return SiteSoftware(site, version, "ab" * 32, run_id, "2026-12-06T09:00:00Z")


def test_the_newest_report_of_each_site_is_kept(tmp_path: Path) -> None:
    assert read_site_software(tmp_path) == {}
    record_site_software(tmp_path, [_report("north", "1.0", "1"), _report("south", "1.0", "1")])
    record_site_software(tmp_path, [_report("north", "1.1", "2")])
    kept = read_site_software(tmp_path)
    assert kept == {"north": _report("north", "1.1", "2"), "south": _report("south", "1.0", "1")}


def test_a_damaged_file_is_named_on_read_and_replaced_on_the_next_report(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_text('{"north": {"site": "north"}}', encoding="utf-8")
    with pytest.raises(InputError, match="not a site software file"):
        read_site_software(tmp_path)
    record_site_software(tmp_path, [_report("north", "1.2", "3")])
    assert read_site_software(tmp_path) == {"north": _report("north", "1.2", "3")}
