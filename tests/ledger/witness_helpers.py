"""Helpers for witness tests: two copies of one ledger, a witness fed from a ledger."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
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
