"""The ledger and keys commands, through ``veracity.cli.main``."""

from __future__ import annotations

import json
import shlex
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from veracity.cli import main
from veracity.crypto.keys import load_verify_key


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    try:
        document = json.loads(captured.out) if captured.out.strip() else None
    except ValueError:
        document = captured.out
    return code, document, captured.err


@pytest.fixture
def data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    code, shown, _ = run(capsys, "ledger", "init", "--data-dir", str(tmp_path), "--format", "json")
    assert code == 0
    assert shown["created_root_key"] is True
    return tmp_path


def write(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def test_keys_new_writes_a_0600_private_key_and_a_public_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, shown, _ = run(
        capsys, "keys", "new", "hospital-a", "--key-dir", str(tmp_path), "--format", "json"
    )
    assert code == 0
    assert stat.S_IMODE((tmp_path / "hospital-a.pem").stat().st_mode) == 0o600
    assert load_verify_key(tmp_path / "hospital-a.pub").key_id == shown["key_id"]
    code, _, err = run(capsys, "keys", "new", "hospital-a", "--key-dir", str(tmp_path))
    assert code == 2
    assert "refusing to overwrite" in err


def test_init_append_checkpoint_verify_prove_round_trip(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = data_dir / "keys"
    code, _, _ = run(capsys, "keys", "new", "hospital-a", "--key-dir", str(keys))
    assert code == 0
    code, shown, _ = run(capsys, "ledger", "init", "--data-dir", str(data_dir), "--format", "json")
    code, made, _ = run(
        capsys,
        "ledger",
        "key-proof",
        "--key",
        str(keys / "hospital-a.pem"),
        "--name",
        "hospital-a",
        "--log-id",
        shown["log_id"],
        "--format",
        "json",
    )
    assert code == 0
    enrol = {
        "name": "hospital-a",
        "role": "site",
        "public_key": (keys / "hospital-a.pub").read_text(),
        "valid_from": "2026-11-27T15:47:52.123456Z",
        "proof": made["proof"],
    }
    common = ["--data-dir", str(data_dir), "--format", "json"]
    code, entry, _ = run(
        capsys,
        "ledger",
        "append",
        "--kind",
        "key.enrolled",
        "--payload-file",
        str(write(data_dir / "e.json", enrol)),
        *common,
    )
    assert (code, entry["seq"], entry["actor"]) == (0, 1, "coordinator")
    note = write(data_dir / "n.json", {"text": "ethics approval REC-2026-114"})
    code, entry, _ = run(
        capsys,
        "ledger",
        "append",
        "--kind",
        "note.recorded",
        "--payload-file",
        str(note),
        "--actor",
        "hospital-a",
        *common,
    )
    assert (code, entry["actor"]) == (0, "hospital-a")
    code, checkpoint, _ = run(capsys, "ledger", "checkpoint", *common)
    assert (code, checkpoint["tree_size"]) == (0, 3)
    code, listed, _ = run(capsys, "ledger", "checkpoints", *common)
    assert listed == [checkpoint]
    trust = str(data_dir / "keys" / "root.pub")
    code, report, _ = run(capsys, "ledger", "verify", "--trust", trust, *common)
    assert code == 0
    assert {k: report[k] for k in ("ok", "entries", "checkpoints", "first_bad_seq", "reason")} == {
        "ok": True,
        "entries": 4,
        "checkpoints": 1,
        "first_bad_seq": None,
        "reason": None,
    }
    code, proof, _ = run(capsys, "ledger", "prove", "2", *common)
    assert (code, proof["tree_size"], proof["checkpoint"]) == (0, 3, checkpoint)
    proof_file = write(data_dir / "proof.json", proof)
    checkpoint_file = write(data_dir / "checkpoint.json", checkpoint)
    code, checked, _ = run(
        capsys,
        "ledger",
        "verify-proof",
        "--proof",
        str(proof_file),
        "--checkpoint",
        str(checkpoint_file),
        "--trust",
        trust,
        "--format",
        "json",
    )
    assert (code, checked["ok"]) == (0, True)
    proof["proof"][0] = "00" * 32
    code, checked, _ = run(
        capsys,
        "ledger",
        "verify-proof",
        "--proof",
        str(write(proof_file, proof)),
        "--checkpoint",
        str(checkpoint_file),
        "--trust",
        trust,
        "--format",
        "json",
    )
    assert (code, checked["ok"]) == (1, False)
    code, shown, _ = run(capsys, "ledger", "show", "--kind", "note.recorded", *common)
    assert [e["payload"]["text"] for e in shown] == ["ethics approval REC-2026-114"]
    code, shown, _ = run(capsys, "ledger", "show", "--since", "2", *common)
    assert [e["seq"] for e in shown] == [2, 3]
    out = data_dir / "ledger.bundle"
    code, info, err = run(capsys, "ledger", "export", "--out", str(out), *common)
    assert (code, info["entries"]) == (0, 4)
    # It ends with the next command to run: the auditor's verification of that bundle.
    nexts = err[err.index("next:") :].splitlines()[1:]
    verify = shlex.split(nexts[0].replace("root.pub", shlex.quote(trust)))
    assert verify[:3] == ["veracity", "ledger", "verify"]
    code, report, _ = run(capsys, *verify[1:], "--format", "json")
    assert (code, report["ok"]) == (0, True)


def test_verify_reports_the_first_bad_seq_and_exits_1(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    note = write(data_dir / "n.json", {"text": "a"})
    for _ in range(3):
        assert (
            main(
                [
                    "ledger",
                    "append",
                    "--kind",
                    "note.recorded",
                    "--payload-file",
                    str(note),
                    "--data-dir",
                    str(data_dir),
                ]
            )
            == 0
        )
    capsys.readouterr()
    connection = sqlite3.connect(data_dir / "veracity.db")
    connection.execute("UPDATE ledger_entry SET hash = zeroblob(32) WHERE seq = 2")
    connection.commit()
    connection.close()
    trust = str(data_dir / "keys" / "root.pub")
    code, report, _ = run(
        capsys,
        "ledger",
        "verify",
        "--data-dir",
        str(data_dir),
        "--trust",
        trust,
        "--format",
        "json",
    )
    assert code == 1
    assert (report["ok"], report["first_bad_seq"]) == (False, 2)
    assert report["reason"] == "stored hash does not match the entry bytes"
    code, _, err = run(capsys, "ledger", "verify", "--data-dir", str(data_dir), "--trust", trust)
    assert code == 1
    assert err.strip() == "error: entry 2: stored hash does not match the entry bytes"


def test_wrong_trust_key_fails_verification(
    data_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert run(capsys, "keys", "new", "other", "--key-dir", str(tmp_path / "other"))[0] == 0
    code, report, _ = run(
        capsys,
        "ledger",
        "verify",
        "--data-dir",
        str(data_dir),
        "--trust",
        str(tmp_path / "other" / "other.pub"),
        "--format",
        "json",
    )
    assert (code, report["first_bad_seq"]) == (1, 0)


@pytest.mark.parametrize(
    ("payload", "kind", "message"),
    [
        ("{not json", "note.recorded", "not valid JSON"),
        ('{"text": 5}', "note.recorded", "field 'text'"),
        ('{"text": "x"}', "no.such.kind", "unknown event kind"),
    ],
)
def test_bad_input_is_refused_with_one_line_and_nothing_written(
    data_dir: Path, capsys: pytest.CaptureFixture[str], payload: str, kind: str, message: str
) -> None:
    (data_dir / "p.json").write_text(payload)
    code, out, err = run(
        capsys,
        "ledger",
        "append",
        "--kind",
        kind,
        "--payload-file",
        str(data_dir / "p.json"),
        "--data-dir",
        str(data_dir),
    )
    assert code == 1
    assert out is None
    assert err.count("\n") == 1
    assert message in err
    code, shown, _ = run(capsys, "ledger", "show", "--data-dir", str(data_dir), "--format", "json")
    assert len(shown) == 1


def test_unknown_actor_key_and_missing_database_are_configuration_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "ledger", "show", "--data-dir", str(tmp_path))
    assert code == 2
    assert "ledger init" in err
    assert not (tmp_path / "veracity.db").exists()
    code, _, err = run(
        capsys,
        "ledger",
        "verify",
        "--data-dir",
        str(tmp_path),
        "--trust",
        str(tmp_path / "none.pub"),
    )
    assert code == 2


def test_corrupt_bundle_is_rejected(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "junk.bundle"
    bundle.write_bytes(b"\x00\x01garbage\n")
    code, report, _ = run(
        capsys,
        "ledger",
        "verify",
        "--bundle",
        str(bundle),
        "--trust",
        str(data_dir / "keys" / "root.pub"),
        "--format",
        "json",
    )
    assert code == 1
    assert report["ok"] is False
    assert "bundle" in report["reason"]


def test_init_is_idempotent_and_keeps_the_root_key(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (data_dir / "keys" / "root.pub").read_text()
    code, shown, _ = run(capsys, "ledger", "init", "--data-dir", str(data_dir), "--format", "json")
    assert (code, shown["created_root_key"], shown["entries"]) == (0, False, 1)
    assert (data_dir / "keys" / "root.pub").read_text() == before


def test_db_option_overrides_the_data_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    code, shown, _ = run(
        capsys, "ledger", "init", "--db", url, "--key-dir", str(tmp_path / "k"), "--format", "json"
    )
    assert code == 0
    assert shown["db"] == url
    assert (tmp_path / "elsewhere.db").exists()
    assert (tmp_path / "k" / "root.pem").exists()


def test_corrupt_database_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"this is not a database" * 100)
    code, out, err = run(capsys, "ledger", "show", "--db", f"sqlite:///{broken}")
    assert code == 2
    assert out is None
    assert err.startswith("error: cannot read the database")
    assert broken.read_bytes() == b"this is not a database" * 100
