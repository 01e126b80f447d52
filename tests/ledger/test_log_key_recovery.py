"""A lost log key is replaced by a visible, identity-signed ``key.recovered`` (#18).

Before, a lost (or stolen) online log key could only be rotated away with a hand-over
signed by that very key: there was no way out without it. The recovery needs the offline
identity key alone, is its own kind, is shown by the verifier and logged loudly by site
witnesses, and every older log key signs nothing after it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.ledger.witness_helpers import feed, make_witness
from veracity.cli import main
from veracity.contracts.events import ROOT_ACTOR
from veracity.crypto.keys import load_verify_key
from veracity.errors import ConfigError, Conflict, LedgerIntegrityError, SignatureError
from veracity.ledger.checkpoint import sign_checkpoint
from veracity.ledger.ledger import Ledger
from veracity.ledger.log_key import recover_log_key, recovery_payload, retire_log_key
from veracity.ledger.note import Note, sign_note
from veracity.ledger.verify import verify_bundle_file
from veracity.ledger.witnessed import WitnessedLog

from .conftest import seeded_key
from .test_log_key import IDENTITY, LOG_1, LOG_2, forged_root_entry, rotate, split_world

LOG_3 = seeded_key("log-3")


def test_a_lost_log_key_is_recovered_visibly_by_the_identity(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world = split_world(db_url)
    ledger = world.ledger
    witness = make_witness(tmp_path / "w", world, "hospital-a")
    ledger.checkpoint()
    feed(witness, ledger)
    rotate(world)  # LOG_1 is in its overlap, LOG_2 signs: then LOG_2 is lost

    entry = recover_log_key(ledger, identity=IDENTITY, new_key=LOG_3, reason="the disk died")
    assert (entry.kind, entry.payload["name"]) == ("key.recovered", ROOT_ACTOR)
    assert ledger.root_public_key == LOG_3.public
    assert ledger.log_keys_at(ledger.size()) == [LOG_3.public]  # no overlap after a recovery
    world.root = LOG_3
    world.note(ROOT_ACTOR, "signed by the recovered log key")
    world.dataset("hospital-b", "d2")  # countersigned by it
    ledger.checkpoint()
    with caplog.at_level(logging.ERROR, logger="veracity.ledger.witness"):
        feed(witness, ledger)
    assert witness.state().log_keys == [LOG_3.public.raw.hex()]
    assert "RECOVERED" in caplog.text

    for mode in ("all", "tail"):
        report = ledger.verify(IDENTITY.public, root_signatures=mode)
        assert report.recoveries == ((entry.seq, ROOT_ACTOR, LOG_3.public.key_id),)
        assert report.to_json()["key_recoveries"] == [
            {"seq": entry.seq, "name": ROOT_ACTOR, "key_id": LOG_3.public.key_id}
        ]
    bundle = tmp_path / "ledger.bundle"
    ledger.export_bundle(bundle)
    assert verify_bundle_file(bundle, trusted_root=IDENTITY.public).recoveries == report.recoveries

    # The lost keys sign nothing after the recovery: not an entry, not a checkpoint note.
    size = ledger.size()
    stolen = sign_checkpoint(
        LOG_2,
        log_id=ledger.log_id,
        tree_size=size,
        root_hash=ledger.root(size).hex(),
        timestamp="2026-12-31T00:00:00.000000Z",
    )
    log = WitnessedLog(ledger)
    note = Note(log.text(stolen), (sign_note(LOG_2, log.origin, log.text(stolen)),))
    with pytest.raises(SignatureError):
        feed(witness, ledger, note.render())
    for lost in (LOG_1, LOG_2):
        seq = forged_root_entry(world, lost, "signed by a lost log key")
        with pytest.raises(LedgerIntegrityError) as caught:
            ledger.verify(IDENTITY.public)
        assert caught.value.seq == seq
        with ledger.engine.begin() as connection:
            connection.execute(sa.text("DELETE FROM ledger_entry WHERE seq = :seq"), {"seq": seq})
    ledger.close()


def test_only_the_identity_recovers_the_log_key(db_url: str) -> None:
    world = split_world(db_url)
    ledger = world.ledger
    lost = ledger.key_at(ROOT_ACTOR)
    assert lost is not None
    # The thief of the log key cannot recover to a key of its own.
    with pytest.raises(SignatureError, match="identity"):
        recover_log_key(ledger, identity=LOG_1, new_key=LOG_3, reason="taken over")
    forged = recovery_payload(
        log_id=ledger.log_id, identity=LOG_1, lost_key_id=lost.key_id, incoming=LOG_3, reason="x"
    )
    with pytest.raises(SignatureError):
        ledger.append("key.recovered", ROOT_ACTOR, forged, signer=LOG_3)
    # A recovery is not a way back to a key enrolled before (the lost one included).
    with pytest.raises(Conflict, match="enrolled before"):
        recover_log_key(ledger, identity=IDENTITY, new_key=LOG_1, reason="found it again")
    ledger.verify(IDENTITY.public)
    ledger.close()


def test_ledger_recover_log_key_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "coordinator"
    assert main(["ledger", "init", "--data-dir", str(data_dir), "--format", "json"]) == 0
    capsys.readouterr()
    keys = data_dir / "keys"
    identity = next(
        p for p in (data_dir / "identity" / "root.pem", keys / "root.pem") if p.exists()
    )
    (keys / "log.pem").unlink(missing_ok=True)  # the log key is lost
    new = tmp_path / "new-log.pem"
    args = ["ledger", "recover-log-key", "--data-dir", str(data_dir), "--identity-key",
            str(identity), "--new-log-key", str(new), "--reason", "the disk died",
            "--format", "json"]  # fmt: skip
    assert main(args) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["log_key_id"] == load_verify_key(new.with_suffix(".pub")).key_id
    trust = keys / "root.pub"
    verify = ["ledger", "verify", "--data-dir", str(data_dir), "--trust", str(trust)]
    assert main([*verify, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["seq"] for r in report["key_recoveries"]] == [shown["seq"]]
    assert main(verify) == 0
    assert "recovered 'coordinator'" in capsys.readouterr().out


def test_a_coordinator_still_holding_the_replaced_log_key_records_nothing(
    db_url: str, tmp_path: Path
) -> None:
    """After a recovery, a coordinator restarted on the old key file (the genesis key opens
    the ledger) countersigned site statements with it: the verifiers check countersignatures
    under the key in force, so the log failed verification at that entry for good."""
    world = split_world(db_url)
    ledger = world.ledger
    recover_log_key(ledger, identity=IDENTITY, new_key=LOG_3, reason="the laptop was stolen")
    ledger.close()
    stale = Ledger.open(db_url, root_key=LOG_1)
    world.ledger = stale
    size = stale.size()

    with pytest.raises(ConfigError, match="not the one in force"):
        world.dataset("hospital-b", "d2")

    assert stale.size() == size
    stale.close()
    reopened = Ledger.open(db_url, root_key=LOG_3)
    world.ledger, world.root = reopened, LOG_3
    world.dataset("hospital-b", "d2")
    for mode in ("all", "tail"):
        reopened.verify(IDENTITY.public, root_signatures=mode)
    reopened.close()


def test_retiring_the_overlap_after_a_recovery_does_not_stop_the_witnesses(
    db_url: str, tmp_path: Path
) -> None:
    """The runbook ends a rotation's overlap with a retirement; after a recovery the
    witness no longer listed the old key and refused that entry on every cycle for good."""
    world = split_world(db_url)
    ledger = world.ledger
    witness = make_witness(tmp_path / "w", world, "hospital-a")
    ledger.checkpoint()
    feed(witness, ledger)
    rotate(world)  # LOG_1 in its overlap; LOG_2 signs, then is lost
    recover_log_key(ledger, identity=IDENTITY, new_key=LOG_3, reason="the disk died")
    world.root = LOG_3

    retire_log_key(ledger, identity=IDENTITY, key_id=LOG_1.public.key_id)
    ledger.checkpoint()
    feed(witness, ledger)

    newest = ledger.latest_checkpoint()
    assert newest is not None
    assert witness.state().tree_size == newest.tree_size  # it cosigned past the retirement
    assert witness.state().log_keys == [LOG_3.public.raw.hex()]
    ledger.verify(IDENTITY.public, root_signatures="all")
    ledger.close()
