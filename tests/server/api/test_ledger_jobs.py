"""Ledger verification and export as background jobs, and what they leave to everyone else.

Runs on SQLite and on PostgreSQL (``db_url``). A job answers 202 at once and is followed
until ``done``; an export job's bundle verifies offline. While verifications wait for the
verifier (here held by a verification already running), an admin's request is still
served: the waiting ones hold no request thread (before, twelve of them held all eight).
"""

from __future__ import annotations

import asyncio
import hashlib
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
    report = verify_bundle_file(bundle, trusted_root=api.service.root_key.public)
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


def test_jobs_waiting_are_bounded_and_never_evicted_while_they_wait() -> None:
    release = threading.Event()

    def blocked(directory: Path) -> dict[str, Any]:
        (directory / "ledger-bundle.jsonl").write_text("{}\n", encoding="utf-8")
        release.wait(30)
        return {"ok": True}

    async def scenario() -> None:
        jobs = LedgerJobs(slots=1, keep=1, max_waiting=3)
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
            if all(j.status == "done" for j in (first, second, third)):
                break
            await asyncio.sleep(0.05)
        assert all(j.bundle is not None and j.bundle.exists() for j in (first, second, third))
        fourth = jobs.start("verify", "auditor", blocked)
        # Now the finished ones beyond ``keep`` go, oldest first, with their files.
        with pytest.raises(NotFound):
            jobs.get(first.job_id)
        assert first.bundle is not None
        assert not first.bundle.exists()
        assert jobs.get(fourth.job_id) is fourth
        await jobs.aclose()
        assert not third.bundle.exists()  # type: ignore[union-attr]

    asyncio.run(scenario())
