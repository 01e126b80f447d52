"""Driving a whole research network through the ``veracity`` command line only.

:class:`Shell` runs ``veracity`` as a person would (a fresh process per command, relative
paths from its working directory, settings in ``VERACITY_*`` variables); ``prefix`` puts
each command inside a network namespace (``ip netns exec NAME``) for the multi-host test.
:func:`write_hospital_files` writes each hospital's patients, a clinic's and a reference
CSV. Nothing here speaks HTTP: every step goes through the CLI.
"""

from __future__ import annotations

import csv
import itertools
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


#: The analysis both network tests run: a count, a mean and a histogram (its plot).
ANALYSIS_QUERIES = ("malignant", "mean-radius", "texture")
_TEXTURE_BINS = [5.0, 15.0, 20.0, 25.0, 40.0]


def analysis_study(study_id: str, *, code_hash: str) -> dict[str, Any]:
    """A small analysis study of the hospital files, approved like a training study.

    ``code_hash`` is the one ``veracity admin studies new`` prints (the installed app's).
    """
    return {
        "kind": "analysis",
        "study_id": study_id,
        "title": f"{study_id}: malignant tumours, mean radius, texture",
        "columns": {
            "diagnosis": {"lower": 0.0, "upper": 1.0},
            "mean_radius": {"lower": 5.0, "upper": 30.0},
            "mean_texture": {"lower": 5.0, "upper": 40.0},
        },
        "queries": [
            {"query_id": "malignant", "kind": "count", "epsilon": 0.5,
             "cohort": [{"column": "diagnosis", "op": "==", "value": 1.0}]},
            {"query_id": "mean-radius", "kind": "mean", "column": "mean_radius",
             "epsilon": 0.5},
            {"query_id": "texture", "kind": "histogram", "column": "mean_texture",
             "bins": _TEXTURE_BINS, "epsilon": 0.5},
        ],
        "delta": 1e-5,
        "epsilon_caps": dict.fromkeys(SITES, 8.0),
        "min_sites": len(SITES),
        "code_hash": code_hash,
    }  # fmt: skip


def check_analysis(result: dict[str, Any], files: dict[str, Path]) -> dict[str, float]:
    """Check ``veracity analysis run --format json`` against the hospital files themselves.

    Every query answered by every site; each figure within 5 standard errors (from the noise
    the sites state) of the pooled truth: a miss is a one-in-a-million event. Returns each
    site's epsilon after its last answer.
    """
    assert result["status"] == "completed", result
    queries = {q["query_id"]: q for q in result["queries"]}
    assert sorted(queries) == sorted(ANALYSIS_QUERIES)
    rows: list[dict[str, str]] = []
    for site in SITES:
        with files[site].open(encoding="utf-8") as handle:
            rows.extend(csv.DictReader(handle))
    radius = [float(r["mean_radius"]) for r in rows]
    texture = [float(r["mean_texture"]) for r in rows]
    truth = {
        "malignant": [float(sum(float(r["diagnosis"]) == 1.0 for r in rows))],
        "mean-radius": [sum(radius) / len(radius)],
        "texture": [
            float(sum(low <= t < high for t in texture))
            for low, high in itertools.pairwise(_TEXTURE_BINS)
        ],
    }
    assert all(5.0 <= t < 40.0 for t in texture)  # inside the bounds: nothing clipped
    assert all(5.0 <= r <= 30.0 for r in radius)
    for query_id, expected in truth.items():
        query = queries[query_id]
        assert query["refused"] == [], query
        assert query["repeated"] is False, query  # a first answer, charged at every site
        assert sorted(query["epsilon"]) == list(SITES), query
        assert len(query["value"]) == len(expected), query
        for value, se, exact in zip(query["value"], query["se"], expected, strict=True):
            assert 0 < se < 0.5 * exact, (query_id, se, exact)  # noisy, yet informative
            assert abs(value - exact) <= 5 * se, (query_id, value, exact, se)
    return {site: max(q["epsilon"][site] for q in queries.values()) for site in SITES}


def answered_in_bundle(bundle: Path, run_id: str) -> dict[str, dict[str, Any]]:
    """The ``analysis.answered`` payloads of run ``run_id`` in a ledger bundle, by query."""
    found: dict[str, dict[str, Any]] = {}
    for line in bundle.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if entry.get("kind") == "analysis.answered" and entry["payload"]["run_id"] == run_id:
            found[entry["payload"]["query_id"]] = entry["payload"]
    return found
