"""The examples run as documented (so they cannot silently rot)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_breast_cancer_network_example_runs_a_study_and_verifies_its_ledger(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "breast_cancer_network.py"), str(tmp_path),
         "--rounds", "2"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "finished:completed" in done.stdout
    assert "round 2:" in done.stdout
    assert "ledger verified:" in done.stdout
