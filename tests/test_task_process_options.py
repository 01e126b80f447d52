"""The options of Flower task processes: the site's worker and the ServerApp executor."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from veracity.client import worker
from veracity.server import serverapp_executor
from veracity.supervise import task_process_parser

SHARED = ["--runtime-api-address", "--poll-interval", "--object-backoff", "--ready-file",
          "--parent-pid"]  # fmt: skip


def test_the_shared_options_parse_with_their_defaults() -> None:
    args = task_process_parser("Title.\n\nMore.", poll_interval=0.25).parse_args(
        ["--runtime-api-address", "127.0.0.1:9094", "--ready-file", "ready"]
    )
    assert args.runtime_api_address == "127.0.0.1:9094"
    assert args.poll_interval == 0.25
    assert args.object_backoff == 0.05
    assert args.ready_file == Path("ready")
    assert args.parent_pid is None


@pytest.mark.parametrize("main", [worker.main, serverapp_executor.main], ids=["worker", "executor"])
def test_both_task_processes_take_the_shared_options(
    main: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    for option in SHARED:
        assert option in shown
    assert ("--root-certificates" in shown) is (main is serverapp_executor.main)


def test_the_executor_requires_its_root_certificates(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        serverapp_executor.main(["--runtime-api-address", "127.0.0.1:9091"])
    assert exited.value.code == 2
    assert "--root-certificates" in capsys.readouterr().err
