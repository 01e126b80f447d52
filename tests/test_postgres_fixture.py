"""The PostgreSQL fixture talks to the real server and isolates tests from each other."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.integration


def test_pg_url_runs_a_real_query_in_its_own_schema(pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE probe (id integer PRIMARY KEY, note text)"))
            conn.execute(sa.text("INSERT INTO probe VALUES (1, 'hello')"))
            note = conn.execute(sa.text("SELECT note FROM probe WHERE id = 1")).scalar_one()
            schema = conn.execute(sa.text("SELECT current_schema()")).scalar_one()
            version = conn.execute(sa.text("SHOW server_version")).scalar_one()
    finally:
        engine.dispose()
    assert note == "hello"
    assert schema.startswith("t_")
    assert int(version.split(".")[0]) >= 12


def test_each_test_gets_an_empty_schema(pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            tables = sa.inspect(conn).get_table_names()
    finally:
        engine.dispose()
    assert tables == []
