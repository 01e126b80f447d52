"""The coordinator's ServerApp executor (replaces ``flower-superexec`` beside the SuperLink).

Stock ``flower-superlink --isolation subprocess`` starts ``flower-superexec``, which polls
for a new run once a second and starts a fresh ``flwr-serverapp`` interpreter for it:
seconds of polling, interpreter start and imports (Flower, SQLAlchemy, the ledger) before
a run's first message leaves, which dominated a short run such as an analysis study. With
``--isolation process`` the SuperLink leaves its Runtime API to an executor of our own:

1. this process imports Flower's ``flwr-serverapp`` entry point and Veracity's ServerApp
   once, shortens the Grid's first back-off for reply objects not yet uploaded (1 s in
   Flower, ``object_backoff`` here), then polls ``AcquireTask`` for ServerApp tasks every
   ``poll_interval`` seconds for a few seconds after a run started, backing off to
   ``idle_poll`` seconds while none does (each ``AcquireTask`` costs the SuperLink a few
   SQLite transactions: polling every 0.05 s made it the SuperLink's busiest request);
2. for each task it forks; the child runs the stock entry point with the exact arguments
   the stock executor passes (``--runtime-api-address``, ``--token``,
   ``--root-certificates``, ``--parent-pid``), so each run still has its own process, its
   log upload and its final status exactly as stock, and exits when the run ends;
3. it reaps finished children, and on SIGTERM stops its children and exits.

As at the sites' worker, the ServerApp code that runs is the installed Veracity (Flower's
``load_app`` reuses the imported module): the coordinator built the run's FAB from that
same code, and ``execute_run`` refuses a FAB that is not the code the sites approved.

Uses Flower internals (``flwr.supercore.runtime``); flwr is pinned to 1.42.0. POSIX only
(``os.fork``), like the rest of the coordinator's process supervision.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from veracity.supervise import (
    OBJECT_BACKOFF_CAP,
    OBJECT_PULL_TRIES,
    PollBackoff,
    exit_with_parent,
    log_task_process,
    task_process_parser,
)

__all__ = ["ExecutorOptions", "run_executor", "main"]

log = logging.getLogger("veracity.server.serverapp_executor")


@dataclass(frozen=True)
class ExecutorOptions:
    """Where the SuperLink's Runtime API is and how to poll it."""

    runtime_api_address: str
    root_certificates: Path
    poll_interval: float = 0.05
    idle_poll: float = 0.25
    object_backoff: float = 0.05
    ready_file: Path | None = None
    parent_pid: int | None = None


def _child(entry: Any, options: ExecutorOptions, token: str) -> None:
    """In the forked child: what ``flwr-serverapp --token TOKEN ...`` runs; never returns."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sys.argv = [
            "flwr-serverapp",
            "--runtime-api-address", options.runtime_api_address,
            "--token", token,
            "--root-certificates", str(options.root_certificates),
            "--parent-pid", str(os.getppid()),
        ]  # fmt: skip
        entry()
        code = 0
    except SystemExit as done:  # flwr_exit() ends the run with sys.exit(code)
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:
        log.exception("the ServerApp process failed")
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_executor(options: ExecutorOptions) -> NoReturn:
    """Start a ServerApp process per run until SIGTERM/SIGINT (which exit with status 0)."""
    import flwr.superlink.grid.http_grid as http_grid
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.inflatable.inflatable_utils import pull_objects
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.superlink.cli.flwr_serverapp import flwr_serverapp

    import veracity.server.flower_app  # noqa: F401  (imported once, here, for every run)

    # The ServerApp's Grid waits 1 s, then longer, before it asks again for a reply's
    # objects that are not uploaded yet (an internal default with no option): a reply
    # arriving a moment after the pull would cost a second. Start at object_backoff.
    patched = functools.partial(
        pull_objects,
        initial_backoff=options.object_backoff,
        backoff_cap=OBJECT_BACKOFF_CAP,
        max_tries_per_object=OBJECT_PULL_TRIES,
    )
    setattr(http_grid, "pull_objects", patched)  # noqa: B010

    client = RuntimeHttpClient.from_server_address(
        server_address=options.runtime_api_address,
        insecure=False,
        root_certificates=options.root_certificates.read_bytes(),
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    request = AcquireTaskRequest(supported_task_types=[TaskType.SERVER_APP])
    children: set[int] = set()

    def stop(signum: int, frame: FrameType | None) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if options.parent_pid is not None:
        exit_with_parent(options.parent_pid, name="ServerApp executor")
    if options.ready_file is not None:
        options.ready_file.write_text(f"{os.getpid()}\n", encoding="ascii")
    log.info("ServerApp executor %d ready, polling %s", os.getpid(), options.runtime_api_address)
    backoff = PollBackoff(active=options.poll_interval, idle=options.idle_poll)
    while True:
        while children:
            pid, _status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            children.discard(pid)
        try:
            response = client.AcquireTask(request)
        except Exception as err:  # noqa: BLE001 - the SuperLink may be starting or stopping
            log.warning("AcquireTask failed: %s", err)
            time.sleep(max(options.poll_interval, 1.0))
            continue
        if response.HasField("task") and response.token:
            pid = os.fork()
            if pid == 0:
                _child(flwr_serverapp, options, response.token)
            children.add(pid)
            log.info("run task started in process %d", pid)
            backoff.activity()
            continue
        backoff.sleep()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m veracity.server.serverapp_executor --runtime-api-address HOST:PORT ...``."""
    parser = task_process_parser(__doc__, poll_interval=0.05)
    parser.add_argument("--root-certificates", type=Path, required=True)
    parser.add_argument("--idle-poll", type=float, default=0.25)
    args = parser.parse_args(argv)
    log_task_process()
    run_executor(  # returns only by SystemExit
        ExecutorOptions(
            runtime_api_address=args.runtime_api_address,
            root_certificates=args.root_certificates,
            poll_interval=args.poll_interval,
            idle_poll=args.idle_poll,
            object_backoff=args.object_backoff,
            ready_file=args.ready_file,
            parent_pid=args.parent_pid,
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
