"""The wheel ships the ledger's Alembic migrations (package data included)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.integration
@pytest.mark.slow
def test_wheel_contains_the_ledger_migrations(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("veracity-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "veracity/ledger/migrations/env.py",
        "veracity/ledger/migrations/script.py.mako",
        "veracity/ledger/migrations/versions/0001_ledger_tables.py",
    ):
        assert required in names
