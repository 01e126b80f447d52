"""A state change whose write fails leaves nothing behind, in the database or outside.

The database is made to fail for real: an engine hook raises SQLAlchemy's
``OperationalError`` (what a full disk or a dropped connection raises) at one statement of
the change's transaction: the ledger's ``INSERT INTO ledger_entry``, the read model's
``UPDATE coord_projection`` after the entry was folded in, or the ``INSERT INTO
api_action`` audit row written last. Either way the answer is 503, and afterwards the
ledger, the read model, the API tables and the SuperLink are as they were: no entry, no
projection, no action row, no SuperNode registration, no run started or stopped. The same
call then succeeds, so nothing half-done stands in its way.

Each test runs against the SuperLink kept in memory (milliseconds) and against a real one
(``integration``), on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.server.faults import failing_at, failing_commit

from .conftest import (
    SETUP,
    Api,
    Site,
    SuperLinkHandle,
    open_api,
    release_model,
    study_document,
    unique_site,
)

FAILURE_POINTS = ["INSERT INTO ledger_entry", "UPDATE coord_projection", "INSERT INTO api_action"]
TABLES = (
    "ledger_entry",
    "ledger_key_event",
    "ledger_site_statement",
    "ledger_checkpoint",
    "coord_projection",
    "coord_site",
    "coord_dataset",
    "coord_study",
    "coord_decision",
    "coord_run",
    "coord_round",
    "coord_model",
    "api_action",
    "api_token",
    "api_query_budget",
)


@pytest.fixture(
    params=["memory", pytest.param("superlink", marks=[pytest.mark.integration, pytest.mark.slow])]
)
def coupled(request: pytest.FixtureRequest, tmp_path: Path, db_url: str) -> Iterator[Api]:
    """The API with its SuperLink in memory, or the module's real SuperLink."""
    superlink: SuperLinkHandle | None = None
    if request.param == "superlink":
        superlink = request.getfixturevalue("superlink")
    yield from open_api(tmp_path / "coordinator", db_url, superlink)


@dataclass(frozen=True)
class State:
    """Everything a change could leave behind."""

    tables: dict[str, list[tuple[Any, ...]]]
    nodes: frozenset[tuple[int, str, str]]
    live_runs: frozenset[int]


def snapshot(api: Api) -> State:
    tables = {}
    with api.service.ledger.engine.connect() as connection:
        for table in TABLES:
            rows = connection.execute(sa.text(f"SELECT * FROM {table}")).all()  # noqa: S608 - fixed names
            tables[table] = sorted((tuple(row) for row in rows), key=repr)
    federation = api.service.federation
    nodes = frozenset((n.node_id, n.name, n.status) for n in federation.list_nodes())
    live = frozenset(r.run_id for r in federation.list_runs() if not r.finished)
    return State(tables, nodes, live)


@dataclass
class Change:
    """One state-changing call, prepared so that it can succeed, and its success status."""

    name: str
    call: Callable[[], Any]
    succeeds_with: int = 201


def _ready(api: Api, site: Site) -> str:
    api.enrol(site)
    api.register(site)
    study_hash = api.propose(study_document([site.name], f"s-{site.name}"))
    api.approve(site, study_hash)
    return study_hash


def _changes(api: Api) -> list[Change]:
    site = api.site
    api.enrol(site)
    api.register(site)
    study_hash = api.propose(study_document([site.name], "coupled"))
    runnable = _ready(api, api.other_site)
    live = api.service.start_run(SETUP, runnable).value.run_id
    newcomer = unique_site("east")
    dataset = site.signed("dataset.registered", site.dataset("cohort-2"))
    approval = {
        "kind": "study.approved",
        **site.signed("study.approved", site.approval(study_hash)),
    }
    note = {"kind": "note.recorded", **site.signed("note.recorded", {"text": "IRB-7"})}
    new_study = study_document([site.name], "new")
    return [
        Change(
            "enrol",
            lambda: api.call(
                "POST", "/api/v1/sites", "admin", json=newcomer.enrolment(api.service.ledger.log_id)
            ),
        ),
        Change("dataset", lambda: api.call("POST", "/api/v1/datasets", "site", json=dataset)),
        Change("propose", lambda: api.call("POST", "/api/v1/studies", "admin", json=new_study)),
        Change(
            "approve",
            lambda: api.call(
                "POST", f"/api/v1/studies/{study_hash}/decisions", "site", json=approval
            ),
        ),
        Change("note", lambda: api.call("POST", "/api/v1/statements", "site", json=note)),
        Change("checkpoint", lambda: api.call("POST", "/api/v1/ledger/checkpoints", "admin")),
        Change(
            "run", lambda: api.call("POST", "/api/v1/runs", "admin", json={"study_hash": runnable})
        ),
        Change("stop", lambda: api.call("POST", f"/api/v1/runs/{live}/stop", "admin"), 200),
    ]


@pytest.mark.parametrize("point", FAILURE_POINTS)
def test_a_failed_write_leaves_no_state_behind(coupled: Api, point: str) -> None:
    api = coupled
    engine = api.service.ledger.engine
    for change in _changes(api):
        before = snapshot(api)
        with failing_at(engine, point) as hits:
            response = change.call()
        assert hits, f"{change.name}: the failure point was never reached"
        assert response.status_code == 503, f"{change.name}: {response.text}"
        assert response.json()["code"] == "storage_unavailable"
        after = snapshot(api)
        assert after.tables == before.tables, change.name
        assert after.nodes == before.nodes, change.name
        assert after.live_runs == before.live_runs, change.name
        retried = change.call()
        assert retried.status_code == change.succeeds_with, f"{change.name}: {retried.text}"
        if change.name == "run":
            run_id = retried.json()["run_id"]
            assert api.call("POST", f"/api/v1/runs/{run_id}/stop", "admin").status_code == 200


def test_an_enrolment_whose_commit_fails_withdraws_its_supernode(coupled: Api) -> None:
    api = coupled
    engine = api.service.ledger.engine
    newcomer = unique_site("late")
    before = snapshot(api)

    with failing_commit(engine):
        response = api.call(
            "POST", "/api/v1/sites", "admin", json=newcomer.enrolment(api.service.ledger.log_id)
        )
    assert response.status_code == 503
    after = snapshot(api)
    assert after.tables == before.tables
    states = {n.name: n.status for n in api.service.federation.list_nodes()}
    # Flower keeps a withdrawn registration as "unregistered": it can no longer connect.
    assert states[newcomer.name] == "unregistered"


@pytest.mark.parametrize("point", FAILURE_POINTS)
def test_a_download_or_budget_whose_entry_fails_hands_out_and_changes_nothing(
    tmp_path: Path, db_url: str, point: str, trained_models: dict[str, Any], breast_cancer: Any
) -> None:
    """Weights leave, and a budget changes, only once their ledger entry is committed."""
    for api in open_api(tmp_path / "coordinator", db_url):
        spec, weights = trained_models["logistic"]
        model = release_model(api, spec, weights, list(breast_cancer.feature_names), "malignant")
        calls = {
            "download": ("GET", f"/api/v1/models/{model}/weights", None),
            "budget": ("PUT", f"/api/v1/models/{model}/budgets/clinic", {"budget": 7}),
        }
        for name, (method, path, body) in calls.items():
            before = snapshot(api)
            with failing_at(api.service.ledger.engine, point) as hits:
                response = api.call(method, path, "admin", json=body)
            assert hits, f"{name}: the failure point was never reached"
            assert response.status_code == 503, f"{name}: {response.text}"
            assert response.json()["code"] == "storage_unavailable"
            assert snapshot(api).tables == before.tables, name
            assert api.call(method, path, "admin", json=body).status_code == 200, name
        kinds = [e.kind for e in api.service.ledger.entries()][-2:]
        assert kinds == ["model.downloaded", "inference.budget_set"]
