"""The CLI contract: version, help, exit codes, data on stdout and errors on stderr."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from veracity import __version__
from veracity.cli import main


def test_version_prints_package_version_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--version"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.strip() == f"veracity {__version__}"


def test_help_lists_config_command(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--help"])
    out = capsys.readouterr().out
    assert code == 0
    assert "config" in out


def test_unknown_command_is_a_usage_error_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["no-such-command"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert "no-such-command" in captured.err


def test_config_json_reports_sqlite_under_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["config", "--data-dir", str(tmp_path), "--format", "json"])
    shown = json.loads(capsys.readouterr().out)
    assert code == 0
    assert shown["database_url"] == f"sqlite:///{tmp_path.resolve() / 'veracity.db'}"
    assert shown["key_dir"] == str((tmp_path / "keys").resolve())


def test_bad_database_url_is_a_configuration_error_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VERACITY_DATABASE_URL", "mysql://db/x")
    code = main(["config", "--data-dir", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err.startswith("error: invalid setting database_url")
    assert "Traceback" not in captured.err


def test_verbose_error_includes_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VERACITY_DATABASE_URL", "mysql://db/x")
    code = main(["-v", "config", "--data-dir", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 2
    assert "Traceback" in captured.err


@pytest.mark.integration
def test_installed_entry_point_works_outside_the_repository(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "veracity"
    assert script.exists(), "the veracity console script is not installed in this environment"
    for argv in ([str(script), "--version"], [sys.executable, "-m", "veracity", "--help"]):
        done = subprocess.run(
            argv, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr
        assert "veracity" in done.stdout
    assert shutil.which("veracity") is None or Path(shutil.which("veracity") or "").exists()
