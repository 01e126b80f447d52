"""``veracity ledger vkey|checkpoint --format note|consistency|verify-consistency|equivocation|
policy`` and ``veracity site witness-key``, through ``veracity.cli.main``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.ledger.test_cli import run
from tests.ledger.witness_helpers import CopyableDatabase, copyable_db
from veracity.ledger.note import Note, NoteVerifier, verify_note
from veracity.ledger.policy import Policy

__all__ = ["copyable_db"]


Where = Path | list[str]


def _args(where: Where) -> list[str]:
    """``--data-dir DIR`` for a data directory, else the options given (``--db URL ...``)."""
    return ["--data-dir", str(where)] if isinstance(where, Path) else where


def _append_note(capsys: pytest.CaptureFixture[str], where: Where, text: str) -> None:
    args = _args(where)
    payload = Path(args[args.index("--data-dir") + 1]) / "payload.json"
    payload.write_text(json.dumps({"text": text}), encoding="utf-8")
    code, _, err = run(
        capsys, "ledger", "append", "--kind", "note.recorded", "--payload-file", str(payload),
        *args,
    )  # fmt: skip
    assert code == 0, err


def _checkpoint(capsys: pytest.CaptureFixture[str], where: Where) -> str:
    code, _, err = run(capsys, "ledger", "checkpoint", *_args(where))
    assert code == 0, err
    code, note, err = run(capsys, "ledger", "checkpoint", *_args(where), "--format", "note")
    assert code == 0, err
    return str(note)


@pytest.fixture
def data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    directory = tmp_path / "coordinator"
    code, _, err = run(capsys, "ledger", "init", "--data-dir", str(directory))
    assert code == 0, err
    return directory


def _vkey(capsys: pytest.CaptureFixture[str], where: Where) -> str:
    code, out, err = run(capsys, "ledger", "vkey", *_args(where))
    assert code == 0, err
    return str(out).strip()


def test_checkpoint_note_verifies_under_the_printed_vkey(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    note = _checkpoint(capsys, data_dir)
    vkey = _vkey(capsys, data_dir)
    verifier = NoteVerifier.parse(vkey)
    assert verifier.name.startswith("veracity.local/veracity/")
    parsed = Note.parse(note)
    assert verify_note(parsed, [verifier]) == [verifier]
    assert parsed.text.startswith(verifier.name + "\n")


def test_consistency_proof_round_trips_through_verify_consistency(
    data_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    first = Note.parse(_checkpoint(capsys, data_dir)).text.split("\n")[1]
    _append_note(capsys, data_dir, "more")
    _checkpoint(capsys, data_dir)
    code, proof, err = run(
        capsys, "ledger", "consistency", "--data-dir", str(data_dir), "--old", first
    )
    assert code == 0, err
    assert proof["old_note"]
    assert proof["new_note"]
    path = tmp_path / "proof.json"
    path.write_text(json.dumps(proof), encoding="utf-8")
    vkey = _vkey(capsys, data_dir)
    code, shown, err = run(
        capsys, "ledger", "verify-consistency", "--proof", str(path), "--vkey", vkey,
        "--format", "json",
    )  # fmt: skip
    assert (code, shown["ok"]) == (0, True), err
    proof["proof"][0] = "00" * 32
    path.write_text(json.dumps(proof), encoding="utf-8")
    code, shown, _ = run(
        capsys, "ledger", "verify-consistency", "--proof", str(path), "--vkey", vkey,
        "--format", "json",
    )  # fmt: skip
    assert (code, shown["ok"]) == (1, False)


def _fork(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path, extra_b: int
) -> tuple[Path, Path, Path]:
    """Copy the coordinator's database, extend each copy differently; both notes."""
    _checkpoint(capsys, data_dir)
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    _append_note(capsys, data_dir, "study X withdrawn")
    for i in range(extra_b + 1):
        _append_note(capsys, copy, f"study X approved {i}")
    a, b = tmp_path / "a.note", tmp_path / "b.note"
    a.write_text(_checkpoint(capsys, data_dir), encoding="utf-8")
    b.write_text(_checkpoint(capsys, copy), encoding="utf-8")
    return a, b, copy


def test_equivocation_proves_two_roots_for_one_size(
    data_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    a, b, _copy = _fork(capsys, data_dir, tmp_path, extra_b=0)
    vkey = _vkey(capsys, data_dir)
    code, evidence, err = run(capsys, "ledger", "equivocation", str(a), str(b), "--vkey", vkey)
    assert code == 0, err
    assert evidence["equivocation"] is True
    assert "two roots" in evidence["reason"]
    assert evidence["log_vkey"] == vkey


def test_equivocation_at_different_sizes_uses_a_copy_of_the_log(
    data_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    a, b, copy = _fork(capsys, data_dir, tmp_path, extra_b=3)
    vkey = _vkey(capsys, data_dir)
    code, evidence, _ = run(capsys, "ledger", "equivocation", str(a), str(b), "--vkey", vkey)
    assert code == 1
    assert evidence["equivocation"] is False
    db = f"sqlite:///{copy / 'veracity.db'}"
    code, evidence, err = run(
        capsys, "ledger", "equivocation", str(a), str(b), "--vkey", vkey, "--db", db
    )
    assert code == 0, err
    assert evidence["consistency"]["proof"]


def test_equivocation_on_copies_of_the_coordinator_database(
    copyable_db: CopyableDatabase, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Attack 6 on each backend: copies of one database (a file copy; on PostgreSQL
    ``CREATE DATABASE ... TEMPLATE``) extended differently, proven by ``ledger equivocation``."""
    keys = str(tmp_path / "coordinator")
    original = ["--db", copyable_db.url, "--data-dir", keys]
    code, _, err = run(capsys, "ledger", "init", *original)
    assert code == 0, err
    _checkpoint(capsys, original)
    same_size, longer = ["--db", copyable_db.copy(), "--data-dir", keys], copyable_db.copy()
    _append_note(capsys, original, "study X withdrawn")
    _append_note(capsys, same_size, "study X approved")
    for i in range(4):
        _append_note(capsys, ["--db", longer, "--data-dir", keys], f"study X approved {i}")
    notes = {}
    for label, where in (
        ("a", original), ("b", same_size), ("c", ["--db", longer, "--data-dir", keys])
    ):  # fmt: skip
        notes[label] = tmp_path / f"{label}.note"
        notes[label].write_text(_checkpoint(capsys, where), encoding="utf-8")
    vkey = _vkey(capsys, original)
    a, b, c = (str(notes[k]) for k in "abc")
    code, evidence, err = run(capsys, "ledger", "equivocation", a, b, "--vkey", vkey)
    assert code == 0, err
    assert "two roots" in evidence["reason"]
    code, evidence, _ = run(capsys, "ledger", "equivocation", a, c, "--vkey", vkey)
    assert (code, evidence["equivocation"]) == (1, False)
    code, evidence, err = run(
        capsys, "ledger", "equivocation", a, c, "--vkey", vkey, "--db", longer
    )
    assert code == 0, err
    assert evidence["consistency"]["proof"]


def test_two_notes_of_one_history_are_no_equivocation(
    data_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    a = tmp_path / "a.note"
    a.write_text(_checkpoint(capsys, data_dir), encoding="utf-8")
    _append_note(capsys, data_dir, "later")
    b = tmp_path / "b.note"
    b.write_text(_checkpoint(capsys, data_dir), encoding="utf-8")
    vkey = _vkey(capsys, data_dir)
    db = f"sqlite:///{data_dir / 'veracity.db'}"
    code, evidence, _ = run(
        capsys, "ledger", "equivocation", str(a), str(b), "--vkey", vkey, "--db", db
    )
    assert code == 1
    assert "consistent" in evidence["reason"]


def test_equivocation_refuses_notes_not_signed_by_the_given_key(
    data_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    a, b, _copy = _fork(capsys, data_dir, tmp_path, extra_b=0)
    other = tmp_path / "other"
    run(capsys, "ledger", "init", "--data-dir", str(other))
    code, evidence, _ = run(
        capsys, "ledger", "equivocation", str(a), str(b), "--vkey", _vkey(capsys, other)
    )
    assert code == 1
    assert evidence["equivocation"] is False


def test_policy_lists_the_log_and_site_witness_keys(
    data_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    sites = []
    for name in ("north", "south", "east"):
        directory = tmp_path / name
        code, _, err = run(capsys, "site", "init", "--name", name, "--data-dir", str(directory))
        assert code == 0, err
        code, vkey, err = run(capsys, "site", "witness-key", "--data-dir", str(directory))
        assert code == 0, err
        assert str(vkey).startswith(f"{name}.witness.veracity.local+")
        sites += ["--site-dir", str(directory)]
    out = tmp_path / "policy.txt"
    code, _, err = run(
        capsys, "ledger", "policy", "--data-dir", str(data_dir), "--quorum", "2", *sites,
        "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    policy: Any = Policy.parse(out.read_text(encoding="utf-8"))
    assert [w.name for w in policy.witnesses] == ["east", "north", "south"]
    assert policy.required == "2 of 3 (witnesses)"
    assert policy.logs[0][0].vkey() == _vkey(capsys, data_dir)


def test_key_and_policy_commands_answer_json_with_what_text_prints(
    data_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``--format json`` holds the same keys, proof and policy; text stays the C2SP form."""
    vkey = _vkey(capsys, data_dir)
    code, shown, err = run(capsys, "ledger", "vkey", *_args(data_dir), "--format", "json")
    assert code == 0, err
    assert shown == {"vkey": vkey, "origin": NoteVerifier.parse(vkey).name}
    code, pem, _ = run(capsys, "ledger", "vkey", *_args(data_dir), "--identity")
    code, shown, _ = run(
        capsys, "ledger", "vkey", *_args(data_dir), "--identity", "--format", "json"
    )
    assert code == 0
    assert shown == {"identity_public_key": pem}

    site = tmp_path / "north"
    assert run(capsys, "site", "init", "--name", "north", "--data-dir", str(site))[0] == 0
    code, text, _ = run(capsys, "site", "witness-key", "--data-dir", str(site))
    code, shown, _ = run(capsys, "site", "witness-key", "--data-dir", str(site), "--format", "json")
    assert code == 0
    assert shown == {"name": NoteVerifier.parse(text.strip()).name, "vkey": text.strip()}
    log_id = "ab" * 32
    proof_args = ["site", "enrolment-proof", "--log-id", log_id, "--data-dir", str(site)]
    code, proof, _ = run(capsys, *proof_args)
    code, shown, _ = run(capsys, *proof_args, "--format", "json")
    assert code == 0
    assert shown == {"site": "north", "log_id": log_id, "proof": proof.strip()}

    policy_args = ["ledger", "policy", *_args(data_dir), "--quorum", "1", "--site-dir", str(site)]
    code, text, _ = run(capsys, *policy_args)
    assert code == 0
    assert Policy.parse(text).required == "1 of 1 (witnesses)"
    out = tmp_path / "policy.txt"
    code, shown, _ = run(capsys, *policy_args, "--out", str(out), "--format", "json")
    assert code == 0
    assert shown == {
        "policy": text, "log": NoteVerifier.parse(vkey).name, "quorum": 1,
        "witnesses": ["north"], "out": str(out.absolute()),
    }  # fmt: skip
    assert out.read_text(encoding="utf-8") == text
