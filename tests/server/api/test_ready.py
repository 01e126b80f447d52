"""``/ready``: the database and the SuperLink answer; ``/health`` stays cheap.

Runs on SQLite and on PostgreSQL (``db_url``); the SuperLink is the in-memory federation,
made unreachable the way a stopped SuperLink is (every call a ``TransportError``), and the
database fails the way a lost connection does (SQLAlchemy's ``OperationalError``).
"""

from __future__ import annotations

from tests.server.faults import failing_at
from veracity.server.coordinator import InMemoryFederation

from .conftest import Api


def test_ready_when_the_database_and_the_superlink_answer(api: Api) -> None:
    response = api.call("GET", "/ready", None)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready", "database": "ok", "superlink": "ok"}


def test_not_ready_while_the_superlink_does_not_answer_though_alive(api: Api) -> None:
    federation = api.service.federation
    assert isinstance(federation, InMemoryFederation)
    federation.reachable = False
    response = api.call("GET", "/ready", None)
    assert response.status_code == 503
    assert response.json()["code"] == "superlink_unavailable"
    assert api.call("GET", "/health", None).json() == {"status": "ok"}


def test_not_ready_while_the_database_does_not_answer_though_alive(api: Api) -> None:
    with failing_at(api.service.ledger.engine, "SELECT"):
        response = api.call("GET", "/ready", None)
        health = api.call("GET", "/health", None)
    assert response.status_code == 503
    assert response.json()["code"] == "storage_unavailable"
    assert health.json() == {"status": "ok"}
