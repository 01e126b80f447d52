"""Ledger verification and export as background jobs, and what they leave to everyone else.

Runs on SQLite and on PostgreSQL (``db_url``). A job answers 202 at once and is followed
until ``done``; an export job's bundle verifies offline. While verifications wait for the
verifier (here held by a verification already running), an admin's request is still
served: the waiting ones hold no request thread (before, twelve of them held all eight).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from veracity.errors import Conflict, NotFound
from veracity.ledger.verify import verify_bundle_file
from veracity.server.api.jobs import LedgerJobs

from .conftest import Api


def _finished(api: Api, job_id: str) -> dict[str, Any]:
    for _ in range(1200):
        job: dict[str, Any] = api.call("GET", f"/api/v1/ledger/jobs/{job_id}", "auditor").json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"ledger job {job_id} did not finish")


def test_a_verification_job_answers_at_once_and_reports_when_done(api: Api) -> None:
    started = api.call("POST", "/api/v1/ledger/jobs", "auditor", json={"kind": "verify"})
    assert started.status_code == 202, started.text
    assert started.json()["status"] in ("queued", "running")
    assert started.json()["requested_by"] == "auditor-user"

    job = _finished(api, started.json()["job_id"])

    assert job["status"] == "done", job
    assert job["result"]["ok"] is True
    assert job["result"]["entries"] == api.service.ledger.size()


def test_an_export_jobs_bundle_verifies_offline(api: Api, tmp_path: Path) -> None:
    started = api.call("POST", "/api/v1/ledger/jobs", "admin", json={"kind": "export"})
    job = _finished(api, started.json()["job_id"])
    assert job["status"] == "done", job

    response = api.call("GET", f"/api/v1/ledger/jobs/{job['job_id']}/bundle", "auditor")

    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == job["result"]["sha256"]
    assert response.headers["x-bundle-sha256"] == job["result"]["sha256"]
    bundle = tmp_path / "bundle.jsonl"
    bundle.write_bytes(response.content)
    report = verify_bundle_file(bundle, trusted_root=api.service.ledger.identity_public_key)
    assert report.entries == job["result"]["entries"]


def test_unknown_jobs_and_a_verifications_bundle_are_not_found(api: Api) -> None:
    assert api.call("GET", "/api/v1/ledger/jobs/" + "0" * 24, "admin").status_code == 404
    started = api.call("POST", "/api/v1/ledger/jobs", "admin", json={"kind": "verify"})
    job = _finished(api, started.json()["job_id"])
    bundle = api.call("GET", f"/api/v1/ledger/jobs/{job['job_id']}/bundle", "admin")
    assert bundle.status_code == 404
    assert bundle.json()["code"] == "not_found"
    refused = api.call("POST", "/api/v1/ledger/jobs", "admin", json={"kind": "delete"})
    assert refused.status_code == 422


def test_an_admin_is_served_while_a_dozen_verifications_wait(api: Api) -> None:
    waiting: list[threading.Thread] = []
    statuses: list[int] = []
    # A verification is running (it holds the verifier); twelve more are asked for.
    with api.service.audit_log._verify_lock:
        for _ in range(12):
            thread = threading.Thread(
                target=lambda: statuses.append(
                    api.call("GET", "/api/v1/ledger/verify", "auditor").status_code
                ),
                daemon=True,
            )
            thread.start()
            waiting.append(thread)
        time.sleep(1.0)  # let them all arrive and queue
        served: list[int] = []
        admin = threading.Thread(
            target=lambda: served.append(api.call("GET", "/api/v1/sites", "admin").status_code),
            daemon=True,
        )
        admin.start()
        admin.join(timeout=60)

        assert served == [200]  # answered while every verification still waits
        assert statuses == []
    for thread in waiting:
        thread.join(timeout=120)
    assert statuses == [200] * 12


def test_jobs_waiting_are_bounded_and_never_evicted_while_they_wait(tmp_path: Path) -> None:
    release = threading.Event()

    def blocked(directory: Path) -> dict[str, Any]:
        (directory / "ledger-bundle.jsonl").write_text("{}\n", encoding="utf-8")
        release.wait(30)
        return {"ok": True}

    async def scenario() -> None:
        jobs = LedgerJobs(tmp_path / "jobs", slots=1, keep=1, max_waiting=3)
        first, second, third = (jobs.start("export", "auditor", blocked) for _ in range(3))
        await asyncio.sleep(0.2)
        with pytest.raises(Conflict, match="3 ledger jobs are queued or running"):
            jobs.start("verify", "auditor", blocked)
        # Over ``keep`` already, yet nothing waiting or running was evicted.
        assert [jobs.get(j.job_id).status for j in (first, second, third)] == [
            "running", "queued", "queued",
        ]  # fmt: skip
        release.set()
        for _ in range(300):
            if all(jobs.get(j.job_id).status == "done" for j in (first, second, third)):
                break
            await asyncio.sleep(0.05)
        bundles = [jobs.bundle(jobs.get(j.job_id)) for j in (first, second, third)]
        assert all(b is not None and b.exists() for b in bundles)
        fourth = jobs.start("verify", "auditor", blocked)
        # Now the finished ones beyond ``keep`` go, oldest first, with their files.
        with pytest.raises(NotFound):
            jobs.get(first.job_id)
        assert bundles[0] is not None
        assert not bundles[0].exists()
        assert jobs.get(fourth.job_id).job_id == fourth.job_id
        await jobs.aclose()
        assert jobs.get(fourth.job_id).status in ("done", "failed")

    asyncio.run(scenario())


@pytest.mark.integration  # it starts a process, to have the pid of one that has exited
def test_every_api_process_sees_every_job_and_one_whose_process_died_has_failed(
    tmp_path: Path,
) -> None:
    """Two API workers share the jobs directory: what one runs, the other reports."""
    directory = tmp_path / "jobs"

    def export(where: Path) -> dict[str, Any]:
        (where / "ledger-bundle.jsonl").write_text("{}\n", encoding="utf-8")
        return {"entries": 1, "sha256": "0" * 64}

    async def run_one() -> str:
        jobs = LedgerJobs(directory, slots=1)
        job = jobs.start("export", "auditor", export)
        for _ in range(300):
            if jobs.get(job.job_id).status == "done":
                break
            await asyncio.sleep(0.01)
        await jobs.aclose()
        return job.job_id

    done_id = asyncio.run(run_one())
    other = LedgerJobs(directory, slots=1)  # another worker's view of the same directory
    done = other.get(done_id)
    assert (done.status, done.result) == ("done", {"entries": 1, "sha256": "0" * 64})
    assert other.bundle(done) is not None

    # A job left running by a worker process that has exited is reported failed.
    worker = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    dead_pid = int(worker.stdout)
    orphan_id = "ab" * 12
    orphan = {
        "job_id": orphan_id, "kind": "verify", "requested_by": "auditor", "status": "running",
        "result": None, "error": None, "worker_pid": dead_pid, "created": time.time(),
    }  # fmt: skip
    (directory / orphan_id).mkdir()
    (directory / orphan_id / "job.json").write_text(json.dumps(orphan), encoding="utf-8")
    seen = other.get(orphan_id)
    assert (seen.status, seen.error) == ("failed", "the API worker that ran it stopped")
