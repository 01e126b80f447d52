"""Helpers for witness tests: two copies of one ledger, a witness fed from a ledger."""

from __future__ import annotations

import itertools
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.ledger.conftest import World, seeded_key
from veracity.ledger.ledger import Ledger
from veracity.ledger.note import CheckpointText, Note, NoteSignature
from veracity.ledger.witness import Witness
from veracity.ledger.witnessed import WitnessedLog, witness_name


def make_witness(directory: Path, world: World, site: str) -> Witness:
    """The witness of ``site`` for ``world``'s log, its key seeded from the site name."""
    log = WitnessedLog(world.ledger)
    return Witness(
        directory,
        site=site,
        key=seeded_key(f"witness-{site}"),
        name=witness_name(site),
        log=log.verifier,
        site_keys=[world.keys[site].public],
        clock=lambda: 1_800_000_000,
    )


def feed(witness: Witness, ledger: Ledger, note: str | None = None) -> NoteSignature:
    """Give ``witness`` the newest checkpoint of ``ledger`` with proof and entries."""
    text = note if note is not None else WitnessedLog(ledger).note().render()
    new_size = CheckpointText.parse(Note.parse(text).text).tree_size
    old = witness.state().tree_size
    proof: list[bytes] = []
    if 0 < old < new_size:
        proof = list(ledger.consistency_proof(old, new_size).proof)
    entries: list[bytes] = []
    if new_size > old:
        entries = [e.body for e in ledger.iter_entries(since=old, limit=new_size - old)]
    return witness.witness(text, proof, entries)


@pytest.fixture
def second_db_url(request: pytest.FixtureRequest, db_url: str, tmp_path: Path) -> Iterator[str]:
    """Another empty database on the same backend as ``db_url``."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'copy.db'}"
        return
    base = request.getfixturevalue("pg_session_database")
    schema = f"t_{secrets.token_hex(6)}"
    engine = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


@dataclass(frozen=True)
class CopyableDatabase:
    """A coordinator database and a way to copy it whole, as an attacker with the files would."""

    url: str
    copy: Callable[[], str]


@pytest.fixture
def copyable_db(
    request: pytest.FixtureRequest, db_url: str, tmp_path: Path
) -> Iterator[CopyableDatabase]:
    """An empty database on ``db_url``'s backend that ``copy()`` duplicates (with its data).

    SQLite: a file copy. PostgreSQL: a database of its own, copied with ``CREATE DATABASE
    ... TEMPLATE`` (nothing may be connected to it then: close ledgers first).
    """
    counter = itertools.count()
    if db_url.startswith("sqlite"):
        source = Path(str(make_url(db_url).database))

        def copy_file() -> str:
            target = tmp_path / f"copy-{next(counter)}.db"
            shutil.copyfile(source, target)
            return f"sqlite:///{target}"

        yield CopyableDatabase(db_url, copy_file)
        return
    base = make_url(request.getfixturevalue("pg_session_database"))
    engine = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    names = [f"veracity_split_{secrets.token_hex(5)}"]
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{names[0]}"'))

    def copy_database() -> str:
        name = f"{names[0]}_{next(counter)}"
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{names[0]}"'))
        names.append(name)
        return base.set(database=name).render_as_string(hide_password=False)

    try:
        yield CopyableDatabase(
            base.set(database=names[0]).render_as_string(hide_password=False), copy_database
        )
    finally:
        with engine.connect() as conn:
            for name in names:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()
