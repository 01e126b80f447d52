"""Shared fixtures: databases (SQLite and the real PostgreSQL) and the CLI runner.

PostgreSQL: the server at 127.0.0.1:5432 (database ``test``, trust auth), or the URL in
``VERACITY_TEST_PG_URL``. One throwaway database is created per test session and dropped
at the end; each test that asks for ``pg_url`` gets its own schema inside it. Where the
server is unreachable, tests that need it skip with the reason, except under ``CI=true``,
where they fail.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from veracity.config import normalise_database_url

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _admin_url() -> str:
    return normalise_database_url(os.environ.get("VERACITY_TEST_PG_URL", DEFAULT_PG_URL))


def _unreachable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL is required under CI=true but unreachable: {reason}")
    pytest.skip(f"PostgreSQL unreachable at {_admin_url()}: {reason}")


@pytest.fixture(scope="session")
def pg_session_database() -> Iterator[str]:
    """A throwaway PostgreSQL database for this test session; dropped at the end."""
    admin_url = _admin_url()
    try:
        admin = sa.create_engine(
            admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
        )
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as err:
        _unreachable(str(err).splitlines()[0])
        raise  # unreachable: _unreachable always raises
    name = f"veracity_test_{secrets.token_hex(6)}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url(pg_session_database: str) -> Iterator[str]:
    """A PostgreSQL URL whose default schema is new and empty for this test."""
    schema = f"t_{secrets.token_hex(6)}"
    engine = sa.create_engine(pg_session_database, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(pg_session_database).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite database file in this test's temporary directory."""
    return f"sqlite:///{tmp_path / 'veracity.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each storage backend in turn, for contract suites that must hold on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'veracity.db'}"
    return str(request.getfixturevalue("pg_url"))
