"""Starting and stopping the long-lived processes Veracity runs.

The SuperLink, SuperNodes, executors and uvicorn each run in their own process group with
a log file and are stopped with SIGTERM then SIGKILL, so that nothing outlives the command
that started it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from veracity.errors import ConfigError, TransportError

__all__ = [
    "ManagedProcess",
    "ProcessGroup",
    "free_port",
    "wait_for",
    "flower_environment",
    "python_module_argv",
    "stopping_on_signals",
    "exit_with_parent",
    "task_process_parser",
    "log_task_process",
    "PollBackoff",
    "OBJECT_BACKOFF_CAP",
    "OBJECT_PULL_TRIES",
]


def free_port(host: str = "127.0.0.1") -> int:
    """An unused TCP port on ``host`` (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def exit_with_parent(parent_pid: int, *, name: str) -> None:
    """Exit this process (``os._exit(0)``) once ``parent_pid``, its supervisor, is gone.

    A worker started by a supervising process must not outlive it when it is killed
    without the chance to stop its group.
    """

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                print(f"{name}: parent {parent_pid} is gone; exiting", file=sys.stderr)
                os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


#: The longest wait between two tries of a message object that is not there yet (Flower's
#: is 10 s after a first 1 s). A message's objects trail it by a fraction of a second on
#: every hop (ServerApp -> SuperLink -> SuperNode -> worker and back), so a reader doubling
#: its wait up to a second arrived up to a second late on each; a try is one request on
#: loopback or to the SuperLink, so ten a second while a round's objects are in flight cost
#: little.
OBJECT_BACKOFF_CAP = 0.1
#: Tries of one object before a reader gives up, at :data:`OBJECT_BACKOFF_CAP` apart: about
#: the 500 s that Flower's 500 tries allowed at its waits (a slow site's large reply must
#: not be cut short by the shorter waits). The ServerApp's Grid is bounded by the round's
#: deadline instead.
OBJECT_PULL_TRIES = 5000


class PollBackoff:
    """How long a poll loop waits: ``active`` while busy, growing to ``idle`` when quiet.

    For ``hot`` seconds after the last :meth:`activity` (a task, a message) every wait is
    ``active``, so the next message of a running round is picked up at once; after that
    each wait is ``factor`` times the previous one, up to ``idle``, so an idle process
    asks its server a few times a second at most instead of many. ``idle`` below
    ``active`` makes every wait ``idle``.
    """

    def __init__(
        self,
        *,
        active: float,
        idle: float,
        hot: float = 5.0,
        factor: float = 1.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if active <= 0 or idle <= 0 or hot < 0 or factor < 1:
            raise ValueError("poll intervals must be positive, hot >= 0 and factor >= 1")
        self.active, self.idle, self.hot, self.factor = min(active, idle), idle, hot, factor
        self._clock = clock
        self._last_activity = clock()
        self._interval = self.active

    def activity(self) -> None:
        """Something happened: poll at ``active`` for the next ``hot`` seconds."""
        self._last_activity = self._clock()
        self._interval = self.active

    def next_wait(self) -> float:
        """The wait before the next poll (and the one after it grows, once cooled down)."""
        if self._clock() - self._last_activity < self.hot:
            return self.active
        wait = self._interval
        self._interval = min(self.idle, self._interval * self.factor)
        return wait

    def sleep(self) -> None:
        """Sleep :meth:`next_wait` seconds."""
        time.sleep(self.next_wait())


def task_process_parser(doc: str | None, *, poll_interval: float) -> argparse.ArgumentParser:
    """The options every Flower task process takes (a site's worker, the ServerApp executor).

    ``--runtime-api-address`` (required), ``--poll-interval`` (default ``poll_interval``),
    ``--object-backoff``, ``--ready-file`` and ``--parent-pid``; the description is the first
    line of the module's ``doc``. The caller adds its own options.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--poll-interval", type=float, default=poll_interval)
    parser.add_argument("--object-backoff", type=float, default=0.05)
    parser.add_argument("--ready-file", type=Path, default=None)
    parser.add_argument("--parent-pid", type=int, default=None)
    return parser


def log_task_process() -> None:
    """Log a task process's records to stderr (timestamped; httpx's only from warnings)."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


def python_module_argv(module: str, *args: str) -> list[str]:
    """``python -m module args...`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def flower_environment(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment Flower's processes run with.

    Their own home, no telemetry, no update check and no run-time ``uv sync`` of app
    dependencies.
    """
    env = dict(os.environ)
    # Flower's processes start each other by name (flower-superlink starts
    # flower-superexec, which starts flwr-serverapp): find them beside this interpreter
    # even when its environment is not activated.
    scripts = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(
        [scripts, *[p for p in env.get("PATH", "").split(os.pathsep) if p]]
    )
    env.update(
        {
            "FLWR_HOME": str(flwr_home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if extra:
        env.update(extra)
    return env


@dataclass
class ManagedProcess:
    """One child process with its own process group and log file."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)

    def start(self) -> None:
        """Start the process (stdout and stderr to the log file).

        Raises
        ------
        ConfigError
            If the executable cannot be started.
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        try:
            self.popen = subprocess.Popen(
                list(self.argv),
                stdout=self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(self.env) if self.env is not None else None,
                cwd=self.cwd,
                start_new_session=True,
            )
        except OSError as err:
            self._log.close()
            raise ConfigError(f"could not start {self.name}: {err}") from err

    @property
    def pid(self) -> int | None:
        """The process id, once started."""
        return self.popen.pid if self.popen is not None else None

    def alive(self) -> bool:
        """True while the process runs."""
        return self.popen is not None and self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines of the log, for error messages."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, *, timeout: float = 10.0) -> None:
        """SIGTERM the process group, wait up to ``timeout`` s, then SIGKILL it."""
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=timeout)
        if self.popen is not None:
            # Children the process started in its group (executors, app processes).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None


class ProcessGroup:
    """Processes that stop together, in reverse start order, however the block exits."""

    def __init__(self) -> None:
        self.processes: list[ManagedProcess] = []

    def start(self, process: ManagedProcess) -> ManagedProcess:
        """Start ``process`` and remember it for :meth:`stop_all`."""
        process.start()
        self.processes.append(process)
        return process

    def stop_all(self, *, timeout: float = 10.0) -> None:
        """Stop every process, newest first."""
        while self.processes:
            self.processes.pop().stop(timeout=timeout)

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def check_alive(self) -> None:
        """Raise if any process has exited.

        Raises
        ------
        TransportError
            Naming the process that died and the end of its log.
        """
        for process in self.processes:
            if not process.alive():
                raise TransportError(
                    f"{process.name} exited unexpectedly; log {process.log_path}:\n{process.tail()}"
                )


@contextlib.contextmanager
def stopping_on_signals(group: ProcessGroup) -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while the block runs, so ``group`` is stopped."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        group.stop_all()


def wait_for(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    watch: Sequence[ManagedProcess] = (),
) -> None:
    """Poll ``predicate`` until it is true, ``timeout`` passes, or a watched process dies.

    Raises
    ------
    TransportError
        On timeout, or if a watched process exits first (with the end of its log).
    """
    deadline = time.monotonic() + timeout
    while True:
        for process in watch:
            if not process.alive():
                raise TransportError(
                    f"{process.name} exited while waiting for {what}; log {process.log_path}:\n"
                    f"{process.tail()}"
                )
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise TransportError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
