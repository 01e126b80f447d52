"""The README's first command: ``veracity demo`` runs a whole study and its audit."""

from __future__ import annotations

import json
import re
import signal
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_runs_a_whole_study_and_its_audit_end_to_end(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "veracity", "demo", "--data-dir", str(data_dir), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # stdout is exactly one JSON document

    assert summary["ok"] is True
    assert summary["data_dir"] == str(data_dir.resolve())
    assert [site["name"] for site in summary["sites"]] == ["hospital-a", "hospital-b", "hospital-c"]
    analytics = summary["analytics"]
    assert analytics["queries"] == 3
    # Combined noise sd: 12 for a count, 17 for a histogram cell; 150 is over 8 sd.
    assert analytics["max_abs_error"] < 150
    for site in summary["sites"]:
        assert site["rows"] > 100
        assert site["neighbouring"] == "replace-one"
        # The dataset's epsilon counts the analysis before training (one budget for both).
        spent_before = analytics["epsilon_spent"][site["name"]]
        assert 0 < spent_before < site["epsilon"]
        assert 0 < site["epsilon_add_remove"] < site["epsilon"]
        assert site["epsilon"] <= site["epsilon_cap"] + spent_before
    assert summary["inference"]["patients"] == 114
    assert summary["inference"]["agreement"] == 1.0
    assert summary["inference"]["max_abs_error"] < 1e-3
    assert 0.5 < summary["model"]["accuracy"] <= 1.0
    assert 0.5 < summary["model"]["auc"] <= 1.0
    assert len(summary["model"]["hash"]) == 64

    explanation = summary["explanation"]
    assert len(explanation["report_hash"]) == 64
    assert 1 <= len(explanation["top_features"]) <= 10

    # One site re-trained its last round to its receipt; the auditor recomputed every round.
    replay = summary["replay"]
    assert replay["sites_confirmed"] == ["hospital-a"]
    assert replay["aggregation_verified"] is True
    assert replay["site_round"] == 3
    assert replay["aggregation_rounds"] == 3

    ledger = summary["ledger"]
    assert ledger["verified"] is True
    # The coordinator ran on its log key alone: the identity key was moved offline.
    assert not list((data_dir / "coordinator").rglob("root.pem"))
    assert (data_dir / "offline" / "identity" / "root.pem").exists()
    assert len(ledger["witnesses"]["cosigned_by"]) >= 2
    assert ledger["policy"]["quorum"] == "2 of 3 (witnesses)"
    # The data directory is kept: the auditor can check the bundle again, independently.
    again = subprocess.run(
        [sys.executable, "-m", "veracity", "ledger", "verify", "--bundle", ledger["bundle"],
         "--trust", ledger["root_public_key"], "--format", "json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["ok"] is True
    assert report["entries"] == ledger["entries"]
    shown = subprocess.run(
        [sys.executable, "-m", "veracity", "ledger", "show", "--db", ledger["db_url"],
         "--format", "json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    recorded = [entry["kind"] for entry in json.loads(shown.stdout)]
    assert recorded.count("round.completed") == 3
    assert recorded.count("model.released") == 1
    assert recorded.count("inference.served") >= 1
    assert recorded.count("study.approved") == 6  # the analysis study and the training study
    assert recorded.count("analysis.answered") == 3
    assert recorded.count("model.explained") == 1
    assert recorded.count("replay.confirmed") == 1
    # Every process the demo started has stopped.
    leftovers = subprocess.run(
        ["pgrep", "-f", str(data_dir)], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout.strip() == ""


def _read_document(stream: Any) -> dict[str, Any]:
    """Read lines from ``stream`` until they make one JSON document."""
    text = ""
    for line in stream:
        text += line
        try:
            document: dict[str, Any] = json.loads(text)
        except json.JSONDecodeError:
            continue
        return document
    raise AssertionError(f"the demo printed no JSON document: {text[-2000:]}")


def test_demo_keeps_the_console_up_with_a_read_only_token(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    demo = subprocess.Popen(
        [sys.executable, "-m", "veracity", "demo", "--data-dir", str(data_dir),
         "--rounds", "1", "--keep-running", "--format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert demo.stdout is not None
        console = _read_document(demo.stdout)["console"]
        assert re.fullmatch(r"https://127\.0\.0\.1:[0-9]+/", console["url"])
        trust = ssl.create_default_context(cafile=console["ca_cert"])
        with httpx.Client(base_url=console["url"], verify=trust, follow_redirects=True) as client:
            signed_in = client.post("/signin", data={"token": console["read_only_token"]})
            assert signed_in.status_code == 200  # followed to the overview
            assert "Overview" in signed_in.text
            assert "(auditor)" in signed_in.text
            assert client.get("/access").status_code == 403  # read-only: no admin screen
        assert demo.poll() is None  # still serving
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=180) == 0  # stops every process it started, one by one
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        if demo.stdout is not None:
            demo.stdout.close()
