"""Site statements and studies through the coordinator service: recorded or refused."""

from __future__ import annotations

from typing import Any

import pytest

from tests.server.sites import Site, study_document
from veracity.crypto.keys import generate_signing_key
from veracity.errors import Conflict, InputError, NotFound, SignatureError
from veracity.ledger.statement import sign_statement
from veracity.server.coordinator import CoordinatorService, operator
from veracity.server.fab import build_fab

from .conftest import SETUP, enrol

NORTH_OPS = operator("north-ops")


def _record(service: CoordinatorService, site: Site, kind: str, payload: dict[str, Any]) -> Any:
    signed = site.signed(kind, payload)
    return service.record_statement(
        NORTH_OPS, kind, site.name, signed["payload"], signed["signature"]
    )


@pytest.fixture
def north(service: CoordinatorService) -> Site:
    site = Site("north")
    enrol(service, site)
    return site


def test_a_dataset_registration_is_recorded_and_read_back(
    service: CoordinatorService, north: Site
) -> None:
    payload = north.dataset("cohort-2", rows=77)
    recorded = _record(service, north, "dataset.registered", payload)
    assert (recorded.entry.kind, recorded.entry.actor, recorded.entry.payload) == (
        "dataset.registered",
        "north",
        payload,
    )
    found = service.reads.dataset("north", "cohort-2")
    assert found is not None
    assert (found.seq, found.statement.rows) == (recorded.seq, 77)
    # A later registration of the same id replaces it.
    again = _record(service, north, "dataset.registered", north.dataset("cohort-2", rows=80))
    latest = service.reads.dataset("north", "cohort-2")
    assert latest is not None
    assert (latest.seq, latest.statement.rows) == (again.seq, 80)
    assert [d.dataset_id for d in service.reads.datasets(site_name="north")] == [
        "cohort-1",
        "cohort-2",
    ]


def test_a_statement_is_recorded_once(service: CoordinatorService, north: Site) -> None:
    signed = north.signed("dataset.registered", north.dataset("cohort-5"))
    kind = "dataset.registered"
    service.record_statement(NORTH_OPS, kind, "north", signed["payload"], signed["signature"])
    size = service.ledger.size()
    with pytest.raises(Conflict, match="already recorded"):
        service.record_statement(NORTH_OPS, kind, "north", signed["payload"], signed["signature"])
    assert service.ledger.size() == size


def test_a_statement_the_site_did_not_sign_is_refused(
    service: CoordinatorService, north: Site
) -> None:
    payload = north.dataset("cohort-3")
    forged = sign_statement(
        generate_signing_key(), "dataset.registered", "north", payload, log_id=service.ledger.log_id
    )
    size = service.ledger.size()
    with pytest.raises(SignatureError):
        service.record_statement(NORTH_OPS, "dataset.registered", "north", payload, forged)
    assert service.ledger.size() == size
    assert service.reads.dataset("north", "cohort-3") is None


@pytest.mark.parametrize(
    ("kind", "payload", "message"),
    [
        ("key.enrolled", {}, "not a statement a site can make"),
        ("dataset.registered", {"site": "south"}, "names site 'south'"),
        ("dataset.registered", {"site": "north", "rows": -1}, "invalid dataset.registered"),
    ],
)
def test_statements_a_site_cannot_make_are_refused(
    service: CoordinatorService, north: Site, kind: str, payload: dict[str, Any], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        service.record_statement(NORTH_OPS, kind, "north", payload, "c2ln")


def test_decisions_are_checked_against_the_study(service: CoordinatorService, north: Site) -> None:
    south = Site("south")
    enrol(service, south)
    study_hash = service.propose_study(SETUP, study_document(["north"])).value.study_hash
    with pytest.raises(NotFound, match="no study"):
        _record(service, north, "study.approved", north.approval("f" * 64))
    with pytest.raises(InputError, match="exceeds the study's cap"):
        _record(service, north, "study.approved", north.approval(study_hash, cap=99.0))
    with pytest.raises(InputError, match="has not registered dataset"):
        _record(service, north, "study.approved", north.approval(study_hash, "nope"))
    with pytest.raises(InputError, match="does not include site 'south'"):
        _record(service, south, "study.refused", south.refusal(study_hash))
    assert service.reads.decisions(study_hash) == {}


def test_the_latest_decision_counts(service: CoordinatorService, north: Site) -> None:
    study_hash = service.propose_study(SETUP, study_document(["north"])).value.study_hash
    _record(service, north, "study.approved", north.approval(study_hash))
    assert set(service.reads.approvals(study_hash)) == {"north"}
    refused = _record(service, north, "study.refused", north.refusal(study_hash))
    decision = service.reads.decisions(study_hash)["north"]
    assert (decision.kind, decision.seq, decision.approves) == ("study.refused", refused.seq, False)
    assert service.reads.approvals(study_hash) == {}
    assert decision.to_json() == {
        **refused.entry.payload,
        "kind": "study.refused",
        "seq": refused.seq,
    }


def test_a_study_is_proposed_once_with_this_coordinators_code(
    service: CoordinatorService, north: Site
) -> None:
    recorded = service.propose_study(NORTH_OPS, study_document(["north"]))
    study = recorded.value.study
    assert study.code_hash == build_fab().fab_hash
    assert recorded.entry.payload["study_hash"] == study.study_hash
    assert service.reads.study(study.study_hash) == recorded.value
    with pytest.raises(Conflict, match="already proposed"):
        service.propose_study(NORTH_OPS, study_document(["north"]))
    with pytest.raises(InputError, match="code_hash"):
        service.propose_study(
            NORTH_OPS, {**study_document(["north"], "bc-2"), "code_hash": "00" * 32}
        )
    with pytest.raises(InputError, match="invalid study"):
        service.propose_study(NORTH_OPS, {**study_document(["north"], "bc-3"), "rounds": 0})


def test_studies_are_listed_oldest_first_and_by_site(
    service: CoordinatorService, north: Site
) -> None:
    south = Site("south")
    enrol(service, south)
    first = service.propose_study(SETUP, study_document(["north"], "a")).value
    second = service.propose_study(SETUP, study_document(["south"], "b")).value
    assert service.reads.studies() == [first, second]
    assert service.reads.studies(site_name="south") == [second]
    assert first.summary()["sites"] == ["north"]
