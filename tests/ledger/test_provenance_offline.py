"""``ledger provenance --bundle FILE --trust root.pub``: an auditor with nothing else."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from veracity.cli import main
from veracity.ledger.bundle_view import BundleLedger
from veracity.ledger.reader import EntryReader

from .conftest import World
from .test_provenance import MODEL, record_study


def _bundle(tmp_path: Path, make_world: Callable[..., World]) -> tuple[World, Path, Path]:
    world = make_world(f"sqlite:///{tmp_path / 'ledger.db'}")
    record_study(world)
    bundle = tmp_path / "auditor" / "ledger.jsonl"
    world.ledger.export_bundle(bundle)
    trust = tmp_path / "auditor" / "root.pub"
    trust.write_text(world.root.public.pem(), encoding="utf-8")
    return world, bundle, trust


def test_provenance_from_a_bundle_equals_the_databases(
    tmp_path: Path,
    make_world: Callable[..., World],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world, _, _ = _bundle(tmp_path, make_world)
    expected = world.ledger.provenance(MODEL)
    world.ledger.close()
    (tmp_path / "ledger.db").unlink()  # the auditor has no database
    monkeypatch.chdir(tmp_path / "auditor")
    args = ["ledger", "provenance", MODEL, "--bundle", "ledger.jsonl", "--trust", "root.pub"]
    assert main([*args, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(expected))
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("document")


def test_provenance_refuses_a_bundle_that_does_not_verify(
    tmp_path: Path, make_world: Callable[..., World], capsys: pytest.CaptureFixture[str]
) -> None:
    _, bundle, trust = _bundle(tmp_path, make_world)
    lines = bundle.read_bytes().split(b"\n")
    index = next(i for i, line in enumerate(lines) if b'"dataset_id":"d1"' in line)
    lines[index] = lines[index].replace(b'"dataset_id":"d1"', b'"dataset_id":"d2"')  # in transit
    bundle.write_bytes(b"\n".join(lines))
    code = main(["ledger", "provenance", MODEL, "--bundle", str(bundle), "--trust", str(trust)])
    assert code == 1
    assert capsys.readouterr().out == ""


def test_provenance_from_a_bundle_needs_the_trusted_key(
    tmp_path: Path, make_world: Callable[..., World], capsys: pytest.CaptureFixture[str]
) -> None:
    _, bundle, _ = _bundle(tmp_path, make_world)
    assert main(["ledger", "provenance", MODEL, "--bundle", str(bundle)]) == 2
    assert "--trust" in capsys.readouterr().err


def test_a_bundle_reads_the_same_entries_as_its_database(
    tmp_path: Path, make_world: Callable[..., World]
) -> None:
    world, bundle, _ = _bundle(tmp_path, make_world)
    view = BundleLedger(bundle)
    readers: list[EntryReader] = [world.ledger, view]
    queries: list[dict[str, Any]] = [
        {},
        {"kind": "study.approved"},
        {"since": 3, "limit": 4},
        {"actor": "coordinator", "since": 1},
    ]
    for query in queries:
        database, from_bundle = (reader.entries(**query) for reader in readers)
        assert database
        assert [e.body for e in from_bundle] == [e.body for e in database]
        assert list(view.iter_entries(**query)) == from_bundle
    assert view.latest_checkpoint() == world.ledger.latest_checkpoint()
