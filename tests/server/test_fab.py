"""The app bundle: deterministic, the same Flower app as pyproject.toml, source only."""

from __future__ import annotations

import io
import tomllib
import zipfile
from pathlib import Path

from veracity.server.fab import FLOWER_APP, build_fab

REPO = Path(__file__).resolve().parents[2]


def test_pyproject_declares_the_same_flower_app_as_the_bundle() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["tool"]["flwr"]["app"] == FLOWER_APP


def test_the_same_source_gives_the_same_bundle_hash() -> None:
    assert build_fab().fab_hash == build_fab().fab_hash


def test_bundle_holds_python_source_licence_and_manifest_only() -> None:
    with zipfile.ZipFile(io.BytesIO(build_fab().content)) as archive:
        names = archive.namelist()
    assert "pyproject.toml" in names
    assert "LICENSE" in names
    assert "veracity/server/flower_app.py" in names
    assert "veracity/client/flower_app.py" in names
    others = [n for n in names if n not in {"pyproject.toml", "LICENSE", ".info/CONTENT"}]
    assert all(n.startswith("veracity/") and n.endswith(".py") for n in others)
