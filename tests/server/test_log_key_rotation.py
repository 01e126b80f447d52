"""``veracity server rotate-log-key|retire-log-key`` and ``veracity ledger vkey --identity``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from veracity.cli import main
from veracity.crypto.keys import load_signing_key, load_verify_key
from veracity.ledger.ledger import Ledger
from veracity.ledger.witnessed import WitnessedLog
from veracity.server.coordinator import open_coordinator


def _json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    code = main([*argv, "--format", "json"])
    out = capsys.readouterr().out
    assert code == 0, out
    document: dict[str, object] = json.loads(out)
    return document


def test_the_log_key_rotates_with_the_offline_identity_and_the_coordinator_runs_without_it(
    tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "c"
    shown = _json(["server", "init", "--data-dir", str(data_dir), "--db", sqlite_url], capsys)
    offline = tmp_path / "offline"
    shutil.move(data_dir / "identity", offline)  # what the operator does after init
    identity_file = offline / "root.pem"
    assert shown["identity_private_key"] == str(data_dir / "identity" / "root.pem")
    trusted = load_verify_key(data_dir / "keys" / "root.pub")
    assert trusted == load_signing_key(identity_file).public
    assert not list(data_dir.rglob("root.pem"))

    with open_coordinator(data_dir) as service:  # runs on keys/log.pem alone
        first = service.root_key.public
        service.ledger.checkpoint()
    rotated = _json(
        ["server", "rotate-log-key", "--data-dir", str(data_dir),
         "--identity-key", str(identity_file)],
        capsys,
    )  # fmt: skip
    assert rotated["previous_log_key_id"] == first.key_id
    assert (data_dir / "keys" / "log.previous.pem").exists()
    with open_coordinator(data_dir) as service:
        assert service.root_key.public.key_id == rotated["log_key_id"]
        service.ledger.checkpoint()
        note = WitnessedLog(service.ledger).note(cosigned=False)
        assert len(note.signatures) == 2  # the overlap: old and new log key
    assert main(["ledger", "vkey", "--db", sqlite_url, "--identity"]) == 0
    assert capsys.readouterr().out == trusted.pem()
    assert main(["ledger", "vkey", "--db", sqlite_url]) == 0
    vkey = capsys.readouterr().out.strip()
    assert vkey.split("+")[2]  # name+hash+key of the *new* log key
    with Ledger.open(sqlite_url) as ledger:
        assert vkey == WitnessedLog(ledger).verifier.vkey()
        assert ledger.root_public_key.key_id == rotated["log_key_id"]

    retired = _json(
        ["server", "retire-log-key", "--data-dir", str(data_dir),
         "--identity-key", str(identity_file)],
        capsys,
    )  # fmt: skip
    assert retired["retired_log_key_id"] == first.key_id
    assert not (data_dir / "keys" / "log.previous.pem").exists()
    with open_coordinator(data_dir) as service:
        service.ledger.checkpoint()
        assert len(WitnessedLog(service.ledger).note(cosigned=False).signatures) == 1
    with Ledger.open(sqlite_url) as ledger:
        assert ledger.verify(trusted).entries == ledger.size()
    code = main(
        ["ledger", "verify", "--db", sqlite_url, "--trust", str(data_dir / "keys" / "root.pub")]
    )
    assert code == 0
    capsys.readouterr()
    # An inclusion proof checks under root.pub: the proof shows how the identity enrolled
    # the log key that signed the checkpoint (here the second one).
    proof = _json(["ledger", "prove", "3", "--db", sqlite_url], capsys)
    assert len(proof["log_key_events"]) == 3  # type: ignore[arg-type]
    (tmp_path / "proof.json").write_text(json.dumps(proof), encoding="utf-8")
    (tmp_path / "checkpoint.json").write_text(json.dumps(proof["checkpoint"]), encoding="utf-8")
    checked = _json(
        ["ledger", "verify-proof", "--proof", str(tmp_path / "proof.json"),
         "--checkpoint", str(tmp_path / "checkpoint.json"),
         "--trust", str(data_dir / "keys" / "root.pub")],
        capsys,
    )  # fmt: skip
    assert checked["ok"] is True
