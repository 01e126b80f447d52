"""Settings: prefix, defaults and database URLs."""

from __future__ import annotations

from pathlib import Path

import pytest

from veracity.config import load_settings, normalise_database_url
from veracity.errors import ConfigError


def test_default_database_is_sqlite_under_the_data_dir(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    assert settings.db_url == f"sqlite:///{tmp_path.resolve()}/veracity.db"


def test_environment_prefix_sets_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VERACITY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("VERACITY_DATABASE_URL", "postgresql://u@127.0.0.1:5432/x")
    settings = load_settings()
    assert settings.data_dir == tmp_path
    assert settings.db_url == "postgresql+psycopg://u@127.0.0.1:5432/x"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://h/db", "postgresql+psycopg://h/db"),
        ("postgresql+psycopg://h/db", "postgresql+psycopg://h/db"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ],
)
def test_database_urls_are_normalised(given: str, expected: str) -> None:
    assert normalise_database_url(given) == expected


@pytest.mark.parametrize("bad", ["", "not a url", "mysql://h/db", "oracle+cx://h/db"])
def test_unsupported_database_urls_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        normalise_database_url(bad)
