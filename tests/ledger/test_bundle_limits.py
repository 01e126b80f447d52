"""Attack 7 (issue 18): a bundle cannot exhaust the verifier's memory or crash it.

A 64 MiB entry line took 439 MiB of memory, and deep nesting in an entry or the trailer
ended in "unexpected RecursionError" (exit 2). Lines are now read with a limit (an entry is
at most ``MAX_ENTRY_BYTES``, which the ledger also refuses to write), the trailer line by
line, and nesting is a verification failure: exit 1 with the reason.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from veracity.cli import main
from veracity.crypto.keys import load_verify_key
from veracity.errors import LedgerIntegrityError
from veracity.ledger.verify import MAX_ENTRY_BYTES, verify_bundle_file


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


@pytest.fixture
def bundle(tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]) -> Path:
    """A bundle exported from a ledger on each backend (SQLite, PostgreSQL)."""
    where = ["--db", db_url, "--data-dir", str(tmp_path)]
    assert _run(capsys, "ledger", "init", *where, "--format", "json")[0] == 0
    note = tmp_path / "note.json"
    note.write_text(json.dumps({"text": "hello"}), encoding="utf-8")
    for _ in range(3):
        code, _shown = _run(
            capsys,
            "ledger", "append", *where, "--kind", "note.recorded",
            "--payload-file", str(note), "--format", "json",
        )  # fmt: skip
        assert code == 0
    out = tmp_path / "ledger.bundle"
    code, _shown = _run(capsys, "ledger", "export", *where, "--out", str(out), "--format", "json")
    assert code == 0
    return out


def _replace_line(path: Path, index: int, line: bytes) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[index] = line
    path.write_bytes(b"\n".join(lines))


def _verify_cli(capsys: pytest.CaptureFixture[str], bundle: Path) -> tuple[int, Any]:
    return _run(
        capsys,
        "ledger", "verify", "--bundle", str(bundle),
        "--trust", str(bundle.parent / "keys" / "root.pub"), "--format", "json",
    )  # fmt: skip


def test_a_64_mib_line_is_refused_without_reading_it_whole(
    bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _replace_line(bundle, 2, b'{"a":"' + b"x" * (64 << 20) + b'"}')
    trusted = load_verify_key(bundle.parent / "keys" / "root.pub")
    tracemalloc.start()
    try:
        with pytest.raises(LedgerIntegrityError, match="longer than") as caught:
            verify_bundle_file(bundle, trusted_root=trusted, workers=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.seq == 1
    assert peak < 3 * MAX_ENTRY_BYTES < 64 << 20  # the line is never held whole

    code, report = _verify_cli(capsys, bundle)
    assert code == 1
    assert report["ok"] is False
    assert "longer than" in report["reason"]


@pytest.mark.parametrize("where", ["entry", "trailer"])
def test_deep_nesting_is_a_verification_failure_not_a_crash(
    bundle: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    lines = bundle.read_bytes().split(b"\n")
    index = 2 if where == "entry" else len(lines) - 2
    _replace_line(bundle, index, deep if where == "entry" else b'{"checkpoints":' + deep + b"}")

    code, report = _verify_cli(capsys, bundle)
    assert code == 1, report
    assert report["ok"] is False
    assert "nests too deeply" in report["reason"]
