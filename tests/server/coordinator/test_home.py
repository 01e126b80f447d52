"""The coordinator's home: one place for its layout, its configuration and the database default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from veracity.config import load_settings
from veracity.errors import ConfigError
from veracity.server.coordinator import CoordinatorHome, init_coordinator, open_coordinator


def test_a_saved_home_loads_back(tmp_path: Path) -> None:
    home = CoordinatorHome.at(tmp_path / "c", superlink_port=9111)
    home.save()
    assert CoordinatorHome.load(tmp_path / "c") == home
    moved = home.with_superlink_port(9222)
    moved.save()
    assert CoordinatorHome.load(tmp_path / "c").superlink_address == "127.0.0.1:9222"
    assert moved.superlink_port == 9222


def test_the_default_database_is_the_one_the_ledger_cli_opens(tmp_path: Path) -> None:
    home = CoordinatorHome.at(tmp_path / "c")
    assert home.db_url == load_settings(data_dir=tmp_path / "c").db_url
    assert home.db_url.endswith("/c/veracity.db")


def test_a_directory_that_was_never_initialised_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="veracity server init"):
        CoordinatorHome.load(tmp_path)
    with pytest.raises(ConfigError, match="veracity server init"):
        open_coordinator(tmp_path)


@pytest.mark.parametrize("text", ["{", "[]", json.dumps({"db_url": "sqlite:///x"})])
def test_a_malformed_configuration_is_refused(tmp_path: Path, text: str) -> None:
    (tmp_path / "coordinator.json").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="malformed"):
        CoordinatorHome.load(tmp_path)


def test_init_keeps_the_root_key_and_certificates_and_is_repeatable(tmp_path: Path) -> None:
    with init_coordinator(tmp_path / "c") as first:
        root = first.root_key.public
        log_id = first.ledger.log_id
        certificate = first.home.tls.server_cert.read_bytes()
    with init_coordinator(tmp_path / "c") as second:
        assert second.root_key.public == root
        assert second.ledger.log_id == log_id
        assert second.home.tls.server_cert.read_bytes() == certificate
    with open_coordinator(tmp_path / "c") as opened:
        assert opened.home == CoordinatorHome.load(tmp_path / "c")
        assert opened.fingerprint() == second.fingerprint()


def test_run_seeds_are_kept_under_runs(tmp_path: Path) -> None:
    home = CoordinatorHome.at(tmp_path)
    path = home.write_seeds("77", {"model_seed": 1, "nonce": "ab"})
    assert path.parent == home.runs
    assert home.seeds_of("77") == {"model_seed": 1, "nonce": "ab"}
    home.remove_seeds("77")
    assert home.seeds_of("77") is None
