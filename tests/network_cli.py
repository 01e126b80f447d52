"""Driving a whole research network through the ``veracity`` command line only.

:class:`Shell` runs ``veracity`` as a person would (a fresh process per command, relative
paths from its working directory, settings in ``VERACITY_*`` variables); ``prefix`` puts
each command inside a network namespace (``ip netns exec NAME``) for the multi-host test.
:func:`write_hospital_files` writes each hospital's patients, a clinic's and a reference
CSV. Nothing here speaks HTTP: every step goes through the CLI.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SITES = ("hospital-a", "hospital-b", "hospital-c")


@dataclass
class Shell:
    """A person's shell: a working directory, environment variables, maybe a namespace."""

    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    prefix: Sequence[str] = ()
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def _argv(self, args: Sequence[str]) -> list[str]:
        return [*self.prefix, sys.executable, "-m", "veracity", *args]

    def _environment(self, extra: dict[str, str] | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VERACITY_") or k == "HOME"}
        env.update(
            FLWR_TELEMETRY_ENABLED="0",
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            PYTHONPATH=os.environ.get("PYTHONPATH", ""),
        )
        env.update(self.env)
        env.update(extra or {})
        return env

    def run(
        self,
        *args: str,
        expect: int = 0,
        timeout: float = 600.0,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``veracity ARGS`` to the end; check its exit status."""
        done = subprocess.run(
            self._argv(args),
            cwd=self.cwd,
            env=self._environment(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == expect, (
            f"veracity {' '.join(args)} exited {done.returncode}, not {expect}:\n"
            f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        )
        return done

    def json(self, *args: str, **kwargs: Any) -> Any:
        """Run ``veracity ARGS --format json``; its one JSON document."""
        return json.loads(self.run(*args, "--format", "json", **kwargs).stdout)

    def start(
        self, *args: str, log: Path, ready: str, timeout: float = 240.0
    ) -> subprocess.Popen[bytes]:
        """Start ``veracity ARGS`` in the background; return once ``ready`` is in its log."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as handle:
            process = subprocess.Popen(
                self._argv(args),
                cwd=self.cwd,
                env=self._environment(None),
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append(process)
        deadline = time.monotonic() + timeout
        while ready not in log.read_text(errors="replace"):
            if process.poll() is not None:
                raise AssertionError(f"veracity {' '.join(args)} exited:\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"veracity {' '.join(args)} not ready:\n{log.read_text()}")
            time.sleep(0.5)
        return process

    def stop_all(self) -> list[int | None]:
        """SIGTERM everything started here, newest first; their exit statuses."""
        codes: list[int | None] = []
        for process in reversed(self.started):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                codes.append(process.wait(timeout=60))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                codes.append(process.wait(timeout=30))
        self.started.clear()
        return codes


def write_hospital_files(directory: Path, *, seed: int = 7) -> dict[str, Path]:
    """Each hospital's patients, a clinic's (no label) and a reference CSV, in ``directory``.

    Returns ``{"hospital-a": ..., "clinic": ..., "reference": ...}``.
    """
    from veracity.tasks.breast_cancer import FEATURES, LABEL, federated_split, write_csv

    directory.mkdir(parents=True, exist_ok=True)
    split = federated_split(len(SITES), seed=seed, skew=0.6)
    files = {
        site: write_csv(part, directory / f"{site}.csv")
        for site, part in zip(SITES, split.sites, strict=True)
    }
    files["reference"] = write_csv(split.sites[0], directory / "reference.csv")
    clinic = directory / "clinic.csv"
    with clinic.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", *FEATURES])
        for index, row in enumerate(split.test.features[:8]):
            writer.writerow([f"p{index:04d}", *(repr(float(v)) for v in row)])
    files["clinic"] = clinic
    assert LABEL == "diagnosis"
    return files


def wait_for(what: str, probe: Any, *, timeout: float = 120.0, interval: float = 1.0) -> Any:
    """Call ``probe`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)
