"""``GET /runs/{run}/archive``: an auditor downloads a run's archive and replays it."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from tests.server.test_central_dp_run import _execute, _task_identity, enrol_sites  # noqa: F401
from tests.server.test_replay import RUN, _propose_plain
from veracity.errors import InputError
from veracity.server.replay import replay_aggregation
from veracity.server.round_archive import extract_archive

from .conftest import Api


def test_an_auditor_downloads_a_run_archive_that_replays(api: Api, tmp_path: Path) -> None:
    network = enrol_sites(api.service)
    _execute(network, _propose_plain(network, rounds=2), RUN)
    bundle = tmp_path / "ledger.jsonl"
    api.service.ledger.export_bundle(bundle)

    response = api.call("GET", f"/api/v1/runs/{RUN}/archive", "auditor")

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    index = extract_archive(response.content, tmp_path / "archive")
    assert [r["round"] for r in index["rounds"]] == [1, 2]
    report = replay_aggregation(
        bundle, tmp_path / "archive", trusted_root=api.service.ledger.identity_public_key
    )
    assert report.rounds == 2


def test_an_unknown_run_has_no_archive(api: Api) -> None:
    response = api.call("GET", "/api/v1/runs/999/archive", "auditor")

    assert response.status_code == 404


def test_an_archive_with_a_path_outside_its_layout_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("index.json", '{"format": "veracity.run-archive.v1", "rounds": []}')
        archive.writestr("../escape.npz", b"x")

    with pytest.raises(InputError, match=r"not weights/<hash>\.npz"):
        extract_archive(buffer.getvalue(), tmp_path / "out")
    assert not (tmp_path / "escape.npz").exists()


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


INDEX = b'{"format": "veracity.run-archive.v1", "rounds": []}'


def test_a_compressed_member_is_refused_before_anything_is_unpacked(tmp_path: Path) -> None:
    # 64 MiB of zeros compress to ~64 KiB: a zip bomb grows the same way, only more.
    bomb = _zip({"index.json": INDEX, "weights/" + "a" * 64 + ".npz": bytes(64 << 20)},
                zipfile.ZIP_DEFLATED)  # fmt: skip
    assert len(bomb) < 1 << 20
    with pytest.raises(InputError, match="is compressed"):
        extract_archive(bomb, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_existing_directory_is_never_unpacked_into(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with pytest.raises(InputError, match="exists"):
        extract_archive(_zip({"index.json": INDEX}), home)
    assert list(home.iterdir()) == []


def test_an_index_without_its_rounds_is_refused(tmp_path: Path) -> None:
    data = _zip({"index.json": b'{"format": "veracity.run-archive.v1"}'})
    with pytest.raises(InputError, match="index is not"):
        extract_archive(data, tmp_path / "out")
