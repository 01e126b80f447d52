"""Ledger jobs behind a real uvicorn with two worker processes (issue 16).

Each request travels on its own connection, so the two workers take them in turn as the
kernel hands out connections: a job kept in the memory of the worker that accepted it was
unknown (404) to the other. Jobs are kept in the data directory now.
"""

from __future__ import annotations

import hashlib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from veracity.server.api.serve import initialise, issue_token, start_api
from veracity.server.api.settings import ApiSettings
from veracity.server.api.tokens import Role
from veracity.server.coordinator import CoordinatorHome
from veracity.supervise import ProcessGroup, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, str]]:
    data_dir = tmp_path_factory.mktemp("jobs-workers") / "coordinator"
    initialise(data_dir, superlink_port=free_port()).close()
    token = issue_token(data_dir, role=Role.AUDITOR, name="auditor-7").token
    settings = ApiSettings(data_dir=data_dir, api_port=free_port(), api_workers=2)
    with ProcessGroup() as group:
        _, base = start_api(settings, group)
        yield f"{base}/api/v1", CoordinatorHome.at(data_dir).tls.ca_cert, token


def _call(api: tuple[str, Path, str], method: str, path: str, **kwargs: Any) -> httpx.Response:
    url, ca_cert, token = api
    # A client of its own each time: a new connection, which either worker may accept.
    verify = ssl.create_default_context(cafile=str(ca_cert))
    with httpx.Client(verify=verify, timeout=30) as client:
        return client.request(
            method, f"{url}{path}", headers={"Authorization": f"Bearer {token}"}, **kwargs
        )


def test_each_worker_answers_for_jobs_the_other_started(two_workers: tuple[str, Path, str]) -> None:
    started = [
        _call(two_workers, "POST", "/ledger/jobs", json={"kind": kind}).json()
        for kind in ("export", "verify", "export", "verify")
    ]
    for job in started:
        for _ in range(600):
            seen = _call(two_workers, "GET", f"/ledger/jobs/{job['job_id']}")
            assert seen.status_code == 200, seen.text  # 404 from the other worker before
            if seen.json()["status"] in ("done", "failed"):
                break
            time.sleep(0.05)
        assert seen.json()["status"] == "done", seen.json()
        job.update(seen.json())
    for job in (j for j in started if j["kind"] == "export"):
        for _ in range(6):  # several connections: both workers hand out the bundle
            bundle = _call(two_workers, "GET", f"/ledger/jobs/{job['job_id']}/bundle")
            assert bundle.status_code == 200, bundle.text
            assert hashlib.sha256(bundle.content).hexdigest() == job["result"]["sha256"]
    assert all(j["result"]["entries"] >= 1 for j in started if j["kind"] == "export")
