"""The app bundle: deterministic, the same Flower app as pyproject.toml, source only."""

from __future__ import annotations

import io
import tomllib
import zipfile
from pathlib import Path

import pytest

from veracity.server import fab
from veracity.server.fab import FLOWER_APP, build_fab

REPO = Path(__file__).resolve().parents[2]


def test_pyproject_declares_the_same_flower_app_as_the_bundle() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["tool"]["flwr"]["app"] == FLOWER_APP


def test_the_same_source_gives_the_same_bundle_hash() -> None:
    manifest = {"pyproject.toml": fab._pyproject(), "LICENSE": fab._license_text()}
    files: dict[str, bytes | Path] = {**manifest, **fab.package_sources()}
    # Built twice from the files (no cache), and as build_fab keeps it: the same bytes.
    assert fab._build(files) == fab._build(files)
    assert build_fab() == fab._build(files)


def test_a_changed_source_file_builds_another_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = {}
    for name, path in fab.package_sources().items():
        copy = tmp_path / name
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(path.read_bytes())
        sources[name] = copy
    monkeypatch.setattr(fab, "package_sources", lambda: dict(sources))
    first = build_fab()
    assert build_fab() is first  # kept: nothing changed

    edited = sources["veracity/server/fab.py"]
    edited.write_bytes(edited.read_bytes() + b"# edited\n")
    second = build_fab()
    assert second.fab_hash != first.fab_hash
    manifest = {"pyproject.toml": fab._pyproject(), "LICENSE": fab._license_text()}
    assert second == fab._build({**manifest, **sources})

    edited.unlink()  # as package_sources would list what is left
    del sources["veracity/server/fab.py"]
    assert build_fab().fab_hash not in {first.fab_hash, second.fab_hash}


def test_bundle_holds_python_source_licence_and_manifest_only() -> None:
    with zipfile.ZipFile(io.BytesIO(build_fab().content)) as archive:
        names = archive.namelist()
    assert "pyproject.toml" in names
    assert "LICENSE" in names
    assert "veracity/server/flower_app.py" in names
    assert "veracity/client/flower_app.py" in names
    others = [n for n in names if n not in {"pyproject.toml", "LICENSE", ".info/CONTENT"}]
    assert all(n.startswith("veracity/") and n.endswith(".py") for n in others)
