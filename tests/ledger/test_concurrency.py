"""Eight processes appending 500 entries each stay one linear chain (SQLite and PostgreSQL)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from veracity.ledger.events import ROOT_ACTOR
from veracity.ledger.ledger import Ledger

from .conftest import World, seeded_key

PROCESSES = 8
PER_PROCESS = 500


def _writer(url: str, name: str, count: int) -> None:
    key = seeded_key(f"{name}-w")
    ledger = Ledger.open(url, root_key=seeded_key("root"), checkpoint_every=1000)
    try:
        for i in range(count):
            ledger.append("note.recorded", name, {"text": f"{name} {i}"}, signer=key)
    finally:
        ledger.close()


@pytest.mark.integration
@pytest.mark.slow
def test_eight_writer_processes_build_one_linear_chain(
    db_url: str, make_world: Callable[..., World]
) -> None:
    world = make_world(db_url, sites=())
    names = [f"writer-{n}" for n in range(PROCESSES)]
    for name in names:
        world.ledger.append(
            "key.enrolled",
            ROOT_ACTOR,
            {
                "name": name,
                "role": "site",
                "public_key": seeded_key(f"{name}-w").public.pem(),
                "valid_from": "2026-11-27T15:47:52.123456Z",
            },
            signer=world.root,
        )
    start = world.ledger.size()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(db_url, name, PER_PROCESS)) for name in names]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=600)
    assert [worker.exitcode for worker in workers] == [0] * PROCESSES
    notes = world.ledger.entries(kind="note.recorded", since=start)
    assert len(notes) == PROCESSES * PER_PROCESS
    for name in names:
        assert sorted(e.payload["text"] for e in notes if e.actor == name) == sorted(
            f"{name} {i}" for i in range(PER_PROCESS)
        )
    with world.ledger.engine.connect() as connection:
        rows, distinct, top = connection.execute(
            sa.text("SELECT count(*), count(DISTINCT seq), max(seq) FROM ledger_entry")
        ).one()
    assert rows == distinct == top + 1
    report = world.ledger.verify(world.root.public)
    assert report.entries == rows
    assert report.checkpoints == len(world.ledger.checkpoints()) >= 4
