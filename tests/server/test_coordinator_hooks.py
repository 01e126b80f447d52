"""The coordinator's hooks for the admin API: undo steps, logs, the SuperLink timeout."""

from __future__ import annotations

from pathlib import Path

import pytest

from veracity.errors import NotFound
from veracity.server.api.serve import initialise
from veracity.supervise import free_port


def test_undo_steps_are_best_effort_when_the_superlink_is_gone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with initialise(tmp_path / "c", superlink_port=free_port()) as coordinator:
        coordinator.control_timeout = 1.0
        coordinator.withdraw_run("123")
        coordinator.withdraw_node(456)
    assert "could not stop run 123" in caplog.text
    assert "could not withdraw SuperNode 456" in caplog.text


def test_logs_of_a_run_not_started_here_are_not_found(tmp_path: Path) -> None:
    with (
        initialise(tmp_path / "c", superlink_port=free_port()) as coordinator,
        pytest.raises(NotFound),
    ):
        coordinator.run_logs("42")


def test_control_calls_use_the_configured_timeout(tmp_path: Path) -> None:
    with initialise(tmp_path / "c", superlink_port=free_port()) as coordinator:
        coordinator.control_timeout = 3.5
        with coordinator.control() as control:
            assert control.timeout == 3.5
        with coordinator.control(timeout=1.0) as control:
            assert control.timeout == 1.0
