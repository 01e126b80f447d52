"""A state change whose ledger write fails leaves nothing behind, in the database or outside.

The database is made to fail for real: an engine hook raises SQLAlchemy's
``OperationalError`` (what a full disk or a dropped connection raises) at one statement,
either the ledger's ``INSERT INTO ledger_entry`` or, after the entry was written in the
same transaction, the ``UPDATE api_action`` that links the API's record to it. Either way
the answer is 503, and afterwards the ledger, the API tables and the SuperLink are as they
were: no entry, no action row, no SuperNode registration, no run left alive. The same call
then succeeds, so nothing half-done stands in its way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .conftest import Api, Site, study_document, unique_site

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAILURE_POINTS = ["INSERT INTO ledger_entry", "UPDATE api_action"]


@contextmanager
def failing_at(engine: Engine, statement: str) -> Iterator[list[str]]:
    """Make every statement starting with ``statement`` fail like a lost database."""
    hits: list[str] = []

    def before(_c: Any, _cursor: Any, sql: str, params: Any, _ctx: Any, _many: bool) -> None:
        if sql.lstrip().upper().startswith(statement.upper()):
            hits.append(sql)
            raise sa.exc.OperationalError(sql, params, OSError(28, "No space left on device"))

    sa.event.listen(engine, "before_cursor_execute", before)
    try:
        yield hits
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)


@dataclass(frozen=True)
class State:
    """Everything a change could leave behind."""

    tables: dict[str, list[tuple[Any, ...]]]
    nodes: frozenset[tuple[int, str]]
    live_runs: frozenset[int]


def snapshot(api: Api) -> State:
    tables = {}
    with api.coordinator.ledger.engine.connect() as connection:
        for table in (
            "ledger_entry",
            "ledger_key_event",
            "ledger_site_statement",
            "ledger_checkpoint",
            "api_action",
            "api_token",
        ):
            rows = connection.execute(sa.text(f"SELECT * FROM {table}")).all()  # noqa: S608 - fixed names
            tables[table] = sorted(tuple(row) for row in rows)
    with api.coordinator.control() as control:
        nodes = frozenset((n.node_id, n.name) for n in control.list_nodes())
        live = frozenset(r.run_id for r in control.list_runs() if not r.finished)
    return State(tables, nodes, live)


@dataclass
class Change:
    """One state-changing call, prepared so that it can succeed."""

    name: str
    call: Callable[[Api], Any]


def _ready(api: Api, site: Site) -> str:
    api.enrol(site)
    api.register(site)
    study = api.coordinator.propose_study(study_document([site.name], f"s-{site.name}"))
    signed = site.signed("study.approved", site.approval(study.study_hash))
    api.coordinator.record_statement(
        "study.approved", site.name, signed["payload"], signed["signature"]
    )
    return study.study_hash


def _changes(api: Api) -> list[tuple[str, Callable[[], Any]]]:
    site = api.site
    api.enrol(site)
    api.register(site)
    study = api.coordinator.propose_study(study_document([site.name], "coupled"))
    runnable = _ready(api, api.other_site)
    newcomer = unique_site("east")
    dataset = site.signed("dataset.registered", site.dataset("cohort-2"))
    approval = {
        "kind": "study.approved",
        **site.signed("study.approved", site.approval(study.study_hash)),
    }
    note = {"kind": "note.recorded", **site.signed("note.recorded", {"text": "IRB-7"})}
    return [
        ("enrol", lambda: api.call("POST", "/api/v1/sites", "admin", json=newcomer.enrolment())),
        ("dataset", lambda: api.call("POST", "/api/v1/datasets", "site", json=dataset)),
        (
            "propose",
            lambda: api.call(
                "POST", "/api/v1/studies", "admin", json=study_document([site.name], "new")
            ),
        ),
        (
            "approve",
            lambda: api.call(
                "POST", f"/api/v1/studies/{study.study_hash}/decisions", "site", json=approval
            ),
        ),
        ("note", lambda: api.call("POST", "/api/v1/statements", "site", json=note)),
        ("checkpoint", lambda: api.call("POST", "/api/v1/ledger/checkpoints", "admin")),
        (
            "run",
            lambda: api.call("POST", "/api/v1/runs", "admin", json={"study_hash": runnable}),
        ),
    ]


@pytest.mark.parametrize("point", FAILURE_POINTS)
def test_a_failed_ledger_write_leaves_no_state_behind(api_with_superlink: Api, point: str) -> None:
    api = api_with_superlink
    engine = api.coordinator.ledger.engine
    for name, change in _changes(api):
        before = snapshot(api)
        with failing_at(engine, point) as hits:
            response = change()
        assert hits, f"{name}: the failure point was never reached"
        assert response.status_code == 503, f"{name}: {response.status_code} {response.text}"
        assert response.json()["code"] == "storage_unavailable"
        after = snapshot(api)
        assert after.tables == before.tables, name
        assert after.nodes == before.nodes, name
        assert after.live_runs == before.live_runs, name
        retried = change()
        assert retried.status_code == 201, f"{name} retried: {retried.text}"
        if name == "run":
            run_id = retried.json()["run_id"]
            assert api.call("POST", f"/api/v1/runs/{run_id}/stop", "admin").status_code == 200


def test_an_enrolment_whose_commit_fails_withdraws_its_supernode(api_with_superlink: Api) -> None:
    api = api_with_superlink
    engine = api.coordinator.ledger.engine
    newcomer = unique_site("late")
    before = snapshot(api)

    def refuse(_connection: Any) -> None:
        raise sa.exc.OperationalError("COMMIT", {}, OSError(5, "Input/output error"))

    sa.event.listen(engine, "commit", refuse)
    try:
        response = api.call("POST", "/api/v1/sites", "admin", json=newcomer.enrolment())
    finally:
        sa.event.remove(engine, "commit", refuse)
    assert response.status_code == 503
    after = snapshot(api)
    assert after.tables == before.tables
    with api.coordinator.control() as control:
        states = {n.name: n.status for n in control.list_nodes()}
    # Flower keeps a withdrawn registration as "unregistered": it can no longer connect.
    assert states[newcomer.name] == "unregistered"
