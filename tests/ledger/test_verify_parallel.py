"""The parallel verifier (chunks in worker processes) agrees with the in-process one."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from veracity.errors import LedgerIntegrityError
from veracity.ledger import verify as verify_module
from veracity.ledger.ledger import Ledger
from veracity.ledger.verify import verify_bundle_file

from .conftest import World


def _build(tmp_path: Path, make_world: Callable[..., World]) -> World:
    world = make_world(f"sqlite:///{tmp_path / 'ledger.db'}", checkpoint_every=9)
    for i in range(30):
        world.note("hospital-a" if i % 3 else "hospital-b", f"note {i}")
    world.dataset("hospital-a")
    world.ledger.checkpoint()
    return world


@pytest.mark.integration
def test_parallel_chunks_give_the_same_report_and_the_same_first_bad_seq(
    tmp_path: Path, make_world: Callable[..., World], monkeypatch: pytest.MonkeyPatch
) -> None:
    world = _build(tmp_path, make_world)
    serial = world.ledger.verify(world.root.public, workers=1)
    monkeypatch.setattr(verify_module, "PARALLEL_THRESHOLD", 0)
    monkeypatch.setattr(verify_module, "DEFAULT_CHUNK", 8)
    parallel = verify_module.verify_database(
        world.ledger.url,
        size=world.ledger.size(),
        trusted_root=world.root.public,
        key_events=world.ledger._key_events_for_verify(),
        checkpoints=world.ledger.checkpoints(),
        workers=2,
        chunk_size=8,
    )
    assert parallel == serial
    bundle = tmp_path / "ledger.bundle"
    world.ledger.export_bundle(bundle)
    assert (
        verify_bundle_file(bundle, trusted_root=world.root.public, workers=2, chunk_size=8)
        == serial
    )

    world.ledger.engine.dispose()  # closing the last connection folds the WAL into the file
    for seq, statement in [
        (19, "UPDATE ledger_entry SET hash = zeroblob(32) WHERE seq = 19"),
        (16, "DELETE FROM ledger_entry WHERE seq = 16"),
    ]:
        copy = tmp_path / f"copy-{seq}.db"
        shutil.copy(tmp_path / "ledger.db", copy)
        connection = sqlite3.connect(copy, isolation_level=None)
        connection.execute("PRAGMA foreign_keys = OFF")
        connection.execute(statement)
        connection.close()
        ledger = Ledger.open(f"sqlite:///{copy}")
        with pytest.raises(LedgerIntegrityError) as caught:
            verify_module.verify_database(
                ledger.url,
                size=ledger.size(),
                trusted_root=world.root.public,
                key_events=ledger._key_events_for_verify(),
                checkpoints=ledger.checkpoints(),
                workers=2,
                chunk_size=8,
            )
        ledger.close()
        assert caught.value.seq == seq
