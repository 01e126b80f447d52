"""Sites and runs on a real SuperLink: enrolment, start, status, logs, stop, and timeouts."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from veracity.server.api.db import ActionRow

from .conftest import Api, open_api, study_document, unique_site

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _action_count(api: Api) -> int:
    with Session(api.service.ledger.engine) as session:
        return int(session.scalar(select(func.count()).select_from(ActionRow)) or 0)


def _ready_study(api: Api) -> str:
    site = api.site
    api.enrol(site)
    api.register(site)
    study_hash = api.propose(study_document([site.name], f"run-{site.name}"))
    api.approve(site, study_hash)
    return study_hash


def test_enrolling_a_site_registers_its_supernode(api_with_superlink: Api) -> None:
    api = api_with_superlink
    site = unique_site("east")
    response = api.call(
        "POST", "/api/v1/sites", "admin", json=site.enrolment(api.service.ledger.log_id)
    )
    assert response.status_code == 201, response.text
    made = response.json()
    entry = api.service.ledger.get(made["seq"])
    assert (entry.kind, entry.payload["name"], entry.payload["supernode_public_key"]) == (
        "key.enrolled",
        site.name,
        site.supernode_key,
    )
    nodes = {str(n.node_id): n.name for n in api.service.federation.list_nodes()}
    assert nodes[made["node_id"]] == site.name
    again = api.call(
        "POST", "/api/v1/sites", "admin", json=site.enrolment(api.service.ledger.log_id)
    )
    assert again.status_code == 409


def test_a_malformed_supernode_key_is_refused_before_anything_happens(
    api_with_superlink: Api,
) -> None:
    api = api_with_superlink
    body = {
        **unique_site("west").enrolment(api.service.ledger.log_id),
        "supernode_public_key": "ssh-ed25519 AAAA nope",
    }
    size = api.service.ledger.size()
    response = api.call("POST", "/api/v1/sites", "admin", json=body)
    assert response.status_code == 422
    assert api.service.ledger.size() == size


def test_a_run_needs_approvals(api_with_superlink: Api) -> None:
    api = api_with_superlink
    api.enrol(api.site)
    study_hash = api.propose(study_document([api.site.name], "unapproved"))
    response = api.call("POST", "/api/v1/runs", "admin", json={"study_hash": study_hash})
    assert response.status_code == 409
    assert response.json()["code"] == "approval_missing"
    missing = api.call("POST", "/api/v1/runs", "admin", json={"study_hash": "e" * 64})
    assert missing.status_code == 404


def test_a_run_is_started_followed_and_stopped(api_with_superlink: Api) -> None:
    api = api_with_superlink
    study_hash = _ready_study(api)
    started = api.call("POST", "/api/v1/runs", "admin", json={"study_hash": study_hash})
    assert started.status_code == 201, started.text
    run_id = started.json()["run_id"]
    entry = api.service.ledger.get(started.json()["seq"])
    assert (entry.kind, entry.payload["run_id"], entry.payload["study_hash"]) == (
        "run.started",
        run_id,
        study_hash,
    )
    listed = api.call("GET", "/api/v1/runs", "admin").json()["items"]
    assert [(r["run_id"], r["finished"]) for r in listed] == [(run_id, None)]
    status = api.call("GET", f"/api/v1/runs/{run_id}", "admin").json()
    assert status["superlink"]["run_id"] == run_id
    assert status["superlink"]["status"].split(":")[0] in ("pending", "starting", "running")
    # A live run's log is followed as `admin runs watch` does: each call reads for at most
    # `wait` seconds and ends its stream, so the SuperLink keeps answering (the stop below).
    text, after = "", 0.0
    for _ in range(40):  # the ServerApp uploads its log every few seconds
        logs = api.call(
            "GET", f"/api/v1/runs/{run_id}/logs", "admin", params={"after": after, "wait": 0.5}
        )
        assert logs.status_code == 200, logs.text
        assert logs.json()["run_id"] == run_id
        text += logs.json()["text"]
        after = logs.json()["latest"]
        if text:
            break
    assert text, "no log line of the live run arrived"
    assert api.call("GET", f"/api/v1/runs/{run_id}/rounds", "admin").json() == {
        "items": [],
        "next_offset": None,
    }

    stopped = api.call("POST", f"/api/v1/runs/{run_id}/stop", "admin")
    assert stopped.status_code == 200, stopped.text
    finished = api.service.ledger.get(stopped.json()["seq"])
    assert (finished.kind, finished.payload["status"]) == ("run.finished", "stopped")
    after = api.call("GET", f"/api/v1/runs/{run_id}", "admin").json()
    assert after["finished"]["status"] == "stopped"
    assert after["superlink"]["status"].startswith("finished")
    assert api.call("POST", f"/api/v1/runs/{run_id}/stop", "admin").status_code == 409


def test_runs_not_started_here_are_not_found(api_with_superlink: Api) -> None:
    api = api_with_superlink
    for method, path in [
        ("GET", "/api/v1/runs/12345"),
        ("GET", "/api/v1/runs/12345/logs"),
        ("GET", "/api/v1/runs/12345/rounds"),
        ("POST", "/api/v1/runs/12345/stop"),
    ]:
        assert api.call(method, path, "admin").status_code == 404, path


def test_without_a_superlink_changes_answer_503_and_leave_nothing(
    tmp_path: Path, db_url: str
) -> None:
    for api in open_api(tmp_path / "coordinator", db_url, in_memory=False, control_timeout=2.0):
        size = api.service.ledger.size()
        actions = _action_count(api)
        started = time.monotonic()
        response = api.call(
            "POST",
            "/api/v1/sites",
            "admin",
            json=unique_site("x").enrolment(api.service.ledger.log_id),
        )
        assert time.monotonic() - started < 5.0
        assert response.status_code == 503
        assert response.json()["code"] == "superlink_unavailable"
        assert "Traceback" not in response.text
        assert api.service.ledger.size() == size
        assert _action_count(api) == actions


@pytest.fixture
def silent_superlink() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung SuperLink)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=2)
        for connection in accepted:
            connection.close()
        listener.close()


def test_a_hung_superlink_times_out(tmp_path: Path, db_url: str, silent_superlink: int) -> None:
    for api in open_api(
        tmp_path / "coordinator",
        db_url,
        in_memory=False,
        control_timeout=1.0,
        superlink_port=silent_superlink,
    ):
        started = time.monotonic()
        response = api.call(
            "POST",
            "/api/v1/sites",
            "admin",
            json=unique_site("y").enrolment(api.service.ledger.log_id),
        )
        elapsed = time.monotonic() - started
        assert response.status_code == 503
        assert elapsed < 4.0, elapsed
