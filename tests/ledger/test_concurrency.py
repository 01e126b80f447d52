"""Eight processes appending 500 entries each stay one linear chain (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from veracity.contracts.events import ROOT_ACTOR

from .conftest import World, enrolment_payload, seeded_key

REPO = Path(__file__).resolve().parents[2]
PROCESSES = 8
PER_PROCESS = 500


WRITER = """
import hashlib, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from veracity.crypto.keys import SigningKey
from veracity.ledger.ledger import Ledger

def seeded(label):
    return SigningKey(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest()))

url, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
key = seeded(name + "-w")
with Ledger.open(url, root_key=seeded("root"), checkpoint_every=1000) as ledger:
    for i in range(count):
        ledger.append("note.recorded", name, {"text": f"{name} {i}"}, signer=key)
"""


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
            enrolment_payload(world.ledger.log_id, name, seeded_key(f"{name}-w")),
            signer=world.root,
        )
    start = world.ledger.size()
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, db_url, name, str(PER_PROCESS)],
            env=environment,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    try:
        errors = [worker.communicate(timeout=600)[1] for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    assert [worker.returncode for worker in workers] == [0] * PROCESSES, errors
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
