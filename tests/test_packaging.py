"""The built wheel: one top-level name, ``veracity``, with everything it needs at run time."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_wheel_has_only_the_veracity_top_level_package(tmp_path: Path) -> None:
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
    wheels = list(tmp_path.glob("veracity-*.whl"))
    assert len(wheels) == 1
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
        top_level_file = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        declared = wheel.read(top_level_file).decode().split()
    roots = {
        name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")
    }
    assert roots == {"veracity"}
    assert declared == ["veracity"]
    assert "veracity/py.typed" in names
    # The four Alembic histories (ledger, coordinator read model, admin API, site store) ship
    # with their templates.
    for package in (
        "veracity/ledger",
        "veracity/server/coordinator",
        "veracity/server/api",
        "veracity/client",
    ):
        assert f"{package}/migrations/env.py" in names
        assert f"{package}/migrations/script.py.mako" in names
        assert any(n.startswith(f"{package}/migrations/versions/0001_") for n in names)
    # The web console's templates and vendored script (with its licence) ship as package data.
    console = "veracity/server/api/console"
    for data in ("templates/base.html", "static/verify.js", "static/htmx-LICENSE.txt"):
        assert f"{console}/{data}" in names
    assert any(n.startswith(f"{console}/static/htmx-") and n.endswith(".min.js") for n in names)
    assert not any(name.startswith(("tests/", "examples/", "benchmarks/")) for name in names)
