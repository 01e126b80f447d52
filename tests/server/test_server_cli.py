"""``veracity server init|reindex`` and ``veracity server token create|list|revoke``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.server.sites import Site
from veracity.cli import main
from veracity.ledger.possession import sign_enrolment
from veracity.server.api import db
from veracity.server.api.tokens import TokenStore, hash_token
from veracity.server.coordinator import InMemoryFederation, open_coordinator, operator
from veracity.server.coordinator.read_model import HISTORY


def _init(data_dir: Path, db_url: str, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    code = main(["server", "init", "--data-dir", str(data_dir), "--db", db_url, "--format", "json"])
    shown: dict[str, str] = json.loads(capsys.readouterr().out)
    assert code == 0
    return shown


def test_init_creates_the_ledger_and_the_api_tables(
    tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = _init(tmp_path / "c", db_url, capsys)
    with open_coordinator(tmp_path / "c") as coordinator:
        assert db.current_revision(coordinator.ledger.engine) == db.head_revision()
        assert HISTORY.current(coordinator.ledger.engine) == HISTORY.head()
        assert shown["log_id"] == coordinator.ledger.log_id
        # root.pub is the identity key auditors trust; the coordinator holds the log key.
        assert shown["root_key_id"] == coordinator.ledger.identity_public_key.key_id
        assert shown["log_key_id"] == coordinator.root_key.public.key_id
        assert shown["root_key_id"] != shown["log_key_id"]
    again = _init(tmp_path / "c", db_url, capsys)
    assert again["log_id"] == shown["log_id"]


def test_init_hides_the_database_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from veracity.server.cli import _masked

    assert _masked("postgresql+psycopg://u:hunter2@h/db") == "postgresql+psycopg://u:***@h/db"


def test_token_create_prints_the_token_alone(
    tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _init(tmp_path / "c", sqlite_url, capsys)
    code = main(
        ["server", "token", "create", "--role", "site", "--name", "north ops", "--site", "north",
         "--expires-in", "7", "--data-dir", str(tmp_path / "c")]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0
    lines = captured.out.splitlines()
    assert len(lines) == 1
    token = lines[0]
    assert token.startswith("vrc_")
    assert token not in captured.err
    with open_coordinator(tmp_path / "c") as coordinator:
        info = TokenStore(coordinator.ledger.engine).lookup(token)
    assert info is not None
    assert (info.role.value, info.name, info.site) == ("site", "north ops", "north")
    assert hash_token(token) != token


def test_token_list_and_revoke(
    tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = str(tmp_path / "c")
    _init(tmp_path / "c", sqlite_url, capsys)
    main(
        [
            "server",
            "token",
            "create",
            "--role",
            "auditor",
            "--name",
            "board",
            "--data-dir",
            data_dir,
        ]
    )
    token = capsys.readouterr().out.strip()
    assert main(["server", "token", "list", "--data-dir", data_dir, "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(t["role"], t["name"], t["revoked_at"]) for t in listed] == [("auditor", "board", None)]
    assert token not in json.dumps(listed)
    assert main(["server", "token", "revoke", listed[0]["id"], "--data-dir", data_dir]) == 0
    capsys.readouterr()
    main(["server", "token", "list", "--data-dir", data_dir, "--format", "json"])
    assert json.loads(capsys.readouterr().out)[0]["revoked_at"] is not None


def test_token_commands_refuse_bad_input(
    tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = str(tmp_path / "c")
    assert main(["server", "token", "list", "--data-dir", data_dir]) == 2  # not initialised
    _init(tmp_path / "c", sqlite_url, capsys)
    bad_role = [
        "server",
        "token",
        "create",
        "--role",
        "root",
        "--name",
        "x",
        "--data-dir",
        data_dir,
    ]
    assert main(bad_role) == 2  # a usage error, like any unknown choice
    no_site = ["server", "token", "create", "--role", "site", "--name", "x", "--data-dir", data_dir]
    assert main(no_site) == 1
    assert main(["server", "token", "revoke", "0" * 16, "--data-dir", data_dir]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err


def test_server_options_are_settable_from_the_environment(
    tmp_path: Path,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _init(tmp_path / "c", sqlite_url, capsys)
    monkeypatch.setenv("VERACITY_DATA_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("VERACITY_ROLE", "researcher")
    monkeypatch.setenv("VERACITY_NAME", "clinic")
    assert main(["server", "token", "create"]) == 0
    assert capsys.readouterr().out.startswith("vrc_")


def test_budget_set_and_list_on_the_command_line(
    tmp_path: Path,
    sqlite_url: str,
    capsys: pytest.CaptureFixture[str],
    trained_models: dict[str, Any],
) -> None:
    from veracity.server.registry import ModelRegistry

    _init(tmp_path / "c", sqlite_url, capsys)
    spec, weights = trained_models["logistic"]
    model = ModelRegistry(tmp_path / "c" / "models").put(
        spec, weights, features=[f"f{i}" for i in range(30)], label="y",
        scaling=[(0.0, 1.0)] * 30, card={},
    )  # fmt: skip
    common = ["--model", model, "--data-dir", str(tmp_path / "c"), "--format", "json"]
    args = ["server", "budget", "set", "--requester", "clinic-7", "--predictions", "31"]
    assert main([*args, *common]) == 0
    assert json.loads(capsys.readouterr().out)["budget"] == 31
    assert main(["server", "budget", "list", *common]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(b["requester"], b["budget"], b["used"]) for b in listed] == [("clinic-7", 31, 0)]
    with open_coordinator(tmp_path / "c") as coordinator:  # the operator's change is signed too
        (entry,) = coordinator.ledger.entries(kind="inference.budget_set")
    assert entry.payload["requester"] == "clinic-7"
    assert entry.payload["budget"] == 31
    assert entry.payload["model_hash"] == model
    assert entry.payload["requested_by"]
    unknown = ["--model", "0" * 64, "--data-dir", str(tmp_path / "c")]
    assert main([*args, *unknown]) == 1  # no such model


def test_reindex_rebuilds_the_read_model_from_the_ledger(
    tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _init(tmp_path / "c", db_url, capsys)
    site = Site("north")
    with open_coordinator(tmp_path / "c", federation=InMemoryFederation()) as coordinator:
        coordinator.enrol_site(
            operator("alice"),
            "north",
            public_key_pem=site.key.public.pem(),
            proof=sign_enrolment(
                site.key, log_id=coordinator.ledger.log_id, name="north", role="site"
            ),
            supernode_public_key=site.supernode_key,
        )
        kept = coordinator.read_model.dump()
        with coordinator.ledger.engine.begin() as connection:
            connection.execute(sa.text("DELETE FROM coord_site"))
        size = coordinator.ledger.size()
    code = main(["server", "reindex", "--data-dir", str(tmp_path / "c"), "--format", "json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["entries"] == size
    assert report["rows"]["coord_site"] == 1
    with open_coordinator(tmp_path / "c") as coordinator:
        assert coordinator.read_model.dump() == kept
        assert coordinator.reads.site("north").key_id == site.key.public.key_id
