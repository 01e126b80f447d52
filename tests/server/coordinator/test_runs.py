"""Runs through the coordinator service: start, stop, finish, rounds, release.

A start submits first (its run id is in ``run.started``) and is undone if anything after it
fails; a stop records first and stops last, so a stop that is not recorded never happened;
a run that ended on the SuperLink without a ``run.finished`` is recorded as it ended when a
stop is asked for; a run ends with exactly one ``run.finished``.
"""

from __future__ import annotations

import json

import pytest

from tests.server.sites import Site, study_document
from veracity.contracts.events import (
    InferenceServed,
    ModelReleased,
    RunStarted,
)
from veracity.contracts.explanation import ReleaseExplanation
from veracity.core.canonical import canonical_hash
from veracity.errors import ApprovalMissing, Conflict, NotFound, TransportError
from veracity.server.coordinator import SERVER_APP, CoordinatorService, InMemoryFederation, operator
from veracity.server.coordinator.unit_of_work import SUPERVISOR

from .conftest import SETUP, enrol, failing_at, failing_commit, ready_study, round_completed

ALICE = operator("alice")


def _live(service: CoordinatorService, federation: InMemoryFederation, run_id: str) -> bool:
    return not federation.run(int(run_id)).finished


def _finished(service: CoordinatorService) -> list[tuple[str, str]]:
    return [
        (e.payload["run_id"], e.payload["status"])
        for e in service.ledger.iter_entries(kind="run.finished")
    ]


# ------------------------------------------------------------------------ start
def test_a_run_of_an_approved_study_is_submitted_and_recorded(
    service: CoordinatorService, federation: InMemoryFederation
) -> None:
    study_hash = ready_study(service, Site("north"))
    recorded = service.start_run(ALICE, study_hash, node_wait=7.0)
    run = recorded.value
    assert (run.study_hash, run.started_seq, run.finished) == (study_hash, recorded.seq, None)
    submitted = federation.submitted(int(run.run_id))
    assert submitted.config["study-hash"] == study_hash
    assert submitted.config["node-wait"] == 7.0
    started = RunStarted.parse(recorded.entry.payload)
    assert started.fab_hash == submitted.fab_hash
    assert started.config_hash == canonical_hash(submitted.config)
    seeds = service.home.seeds_of(run.run_id)
    assert seeds is not None
    assert started.seed_commitment == canonical_hash(seeds)
    assert service.reads.run(run.run_id) == run
    assert service.reads.runs() == [run]


def test_an_explanation_at_release_is_in_the_submitted_config_that_run_started_hashes(
    service: CoordinatorService, federation: InMemoryFederation
) -> None:
    study_hash = ready_study(service, Site("north"))
    asked = ReleaseExplanation(steps=8, clip_norm=1.0, epsilon=0.5, delta=1e-5)

    run = service.start_run(ALICE, study_hash, explain_at_release=asked)

    submitted = federation.submitted(int(run.value.run_id))
    assert (
        ReleaseExplanation.parse(json.loads(str(submitted.config["explain-at-release"]))) == asked
    )
    assert RunStarted.parse(run.entry.payload).config_hash == canonical_hash(submitted.config)


def test_a_run_needs_a_proposed_study_and_enough_approvals(
    service: CoordinatorService, federation: InMemoryFederation
) -> None:
    north, south = Site("north"), Site("south")
    for site in (north, south):
        enrol(service, site)
    document = study_document([north.name, south.name], min_sites=2)
    study_hash = service.propose_study(SETUP, document).value.study_hash
    with pytest.raises(NotFound):
        service.start_run(ALICE, "e" * 64)
    with pytest.raises(ApprovalMissing, match="0 site"):
        service.start_run(ALICE, study_hash)
    assert federation.list_runs() == []


def test_a_start_whose_entry_is_not_written_stops_the_run_and_forgets_its_seeds(
    service: CoordinatorService, federation: InMemoryFederation
) -> None:
    study_hash = ready_study(service, Site("north"))
    size = service.ledger.size()
    with (
        failing_at(service.ledger.engine, "INSERT INTO ledger_entry"),
        pytest.raises(Exception, match="No space left"),
    ):
        service.start_run(ALICE, study_hash)
    (run,) = federation.list_runs()
    assert run.state == "finished:stopped"
    assert list(service.home.runs.glob("*.seeds.json")) == []
    assert service.ledger.size() == size
    assert service.reads.runs() == []


def test_a_start_whose_commit_fails_stops_the_run(
    service: CoordinatorService, federation: InMemoryFederation
) -> None:
    study_hash = ready_study(service, Site("north"))
    with failing_commit(service.ledger.engine), pytest.raises(Exception, match="Input/output"):
        service.start_run(ALICE, study_hash)
    (run,) = federation.list_runs()
    assert run.state == "finished:stopped"
    assert list(service.home.runs.glob("*.seeds.json")) == []


# ------------------------------------------------------------------------- stop
def test_a_stop_is_recorded_then_made(
    service: CoordinatorService, federation: InMemoryFederation
) -> None:
    run_id = service.start_run(ALICE, ready_study(service, Site("north"))).value.run_id
    recorded = service.stop_run(ALICE, run_id)
    assert recorded.entry.kind == "run.finished"
    assert recorded.value.finished is not None
    assert recorded.value.finished.status == "stopped"
    assert not _live(service, federation, run_id)
    assert service.reads.run(run_id).finished == recorded.value.finished
    with pytest.raises(Conflict, match="has finished"):
        service.stop_run(ALICE, run_id)


def test_a_stop_that_is_not_recorded_leaves_the_run_running(
    service: CoordinatorService, federation: InMemoryFederation
) -> None:
    run_id = service.start_run(ALICE, ready_study(service, Site("north"))).value.run_id
    with (
        failing_at(service.ledger.engine, "INSERT INTO ledger_entry"),
        pytest.raises(Exception, match="No space left"),
    ):
        service.stop_run(ALICE, run_id)
    assert _live(service, federation, run_id)
    assert _finished(service) == []
    service.stop_run(ALICE, run_id)
    assert _finished(service) == [(run_id, "stopped")]


def test_a_run_stopped_by_a_stop_whose_commit_failed_is_recorded_by_the_next_stop(
    service: CoordinatorService, federation: InMemoryFederation
) -> None:
    run_id = service.start_run(ALICE, ready_study(service, Site("north"))).value.run_id
    with failing_commit(service.ledger.engine), pytest.raises(Exception, match="Input/output"):
        service.stop_run(ALICE, run_id)
    # The SuperLink stopped it (a stop cannot be undone); the ledger has no run.finished.
    assert not _live(service, federation, run_id)
    assert _finished(service) == []
    recorded = service.stop_run(ALICE, run_id)
    assert _finished(service) == [(run_id, "stopped")]
    assert recorded.value.finished is not None
    assert "finished:stopped" in recorded.value.finished.reason


def test_a_run_whose_serverapp_died_is_recorded_as_failed_when_stopped(
    service: CoordinatorService, federation: InMemoryFederation
) -> None:
    run_id = service.start_run(ALICE, ready_study(service, Site("north"))).value.run_id
    federation.finish(int(run_id), "failed", "ServerApp exited")
    calls = len(federation.calls)
    service.stop_run(ALICE, run_id)
    assert _finished(service) == [(run_id, "failed")]
    assert "stop_run" not in federation.calls[calls:]


def test_runs_whose_serverapp_died_are_recorded_failed_once_without_a_stop(
    service: CoordinatorService, federation: InMemoryFederation
) -> None:
    study = ready_study(service, Site("north"))
    dead = service.start_run(ALICE, study).value.run_id
    alive = service.start_run(ALICE, study).value.run_id
    federation.finish(int(dead), "failed", "No heartbeat received from the task")

    assert service.record_ended_runs(SUPERVISOR) == [dead]

    assert _finished(service) == [(dead, "failed")]
    reason = service.reads.run(dead).finished
    assert reason is not None
    assert "No heartbeat received from the task" in reason.reason
    assert service.record_ended_runs(SUPERVISOR) == []  # recorded once; the live run untouched
    assert _live(service, federation, alive)
    service.ledger.verify(service.ledger.identity_public_key)


def test_a_stop_without_a_superlink_records_nothing(
    service: CoordinatorService, federation: InMemoryFederation
) -> None:
    run_id = service.start_run(ALICE, ready_study(service, Site("north"))).value.run_id
    federation.reachable = False
    with pytest.raises(TransportError):
        service.stop_run(ALICE, run_id)
    assert _finished(service) == []
    with pytest.raises(NotFound):
        service.stop_run(ALICE, "12345")


# ----------------------------------------------------------------------- finish
def test_a_run_ends_with_exactly_one_run_finished(service: CoordinatorService) -> None:
    study_hash = ready_study(service, Site("north"))
    run_id = service.start_run(ALICE, study_hash).value.run_id
    service.stop_run(ALICE, run_id)
    # The ServerApp, stopped under its feet, tries to record its own ending.
    with pytest.raises(Conflict, match="has finished"):
        service.finish_run(
            SERVER_APP,
            run_id,
            study_hash,
            status="failed",
            reason="the grid went away",
            rounds_completed=0,
            model_hash=None,
        )
    assert _finished(service) == [(run_id, "stopped")]


def test_a_run_the_coordinator_never_started_is_still_recorded_as_failed(
    service: CoordinatorService,
) -> None:
    service.finish_run(
        SERVER_APP,
        "777",
        "ab" * 32,
        status="failed",
        reason="run was not started through the coordinator",
        rounds_completed=0,
        model_hash=None,
    )
    assert _finished(service) == [("777", "failed")]
    assert service.reads.find_run("777") is None  # not listed as a run started here
    assert service.ledger.latest_checkpoint() is not None


# ----------------------------------------------------------- rounds and release
def test_rounds_and_releases_are_recorded_and_read_back(service: CoordinatorService) -> None:
    north = Site("north")
    study_hash = ready_study(service, north)
    run_id = service.start_run(ALICE, study_hash).value.run_id
    completed = round_completed(north, run_id, study_hash)
    recorded = service.record_round(SERVER_APP, completed)
    assert recorded.value.completed == completed
    checkpoint = service.ledger.latest_checkpoint()
    assert checkpoint is not None
    assert checkpoint.tree_size == recorded.seq + 1  # signed over the round
    assert service.reads.rounds(run_id) == [recorded.value]
    assert service.reads.run(run_id).rounds_recorded == 1

    released = service.release(
        SERVER_APP,
        ModelReleased(
            model_hash="34" * 32,
            run_id=run_id,
            study_hash=study_hash,
            model={"family": "logistic", "n_features": 2},
            datasets=[],
            epsilon={"north": 0.7},
            metrics={"train-loss": 0.5},
            card_hash="56" * 32,
        ),
    )
    assert service.reads.model("34" * 32) == released.value
    assert service.reads.models() == [released.value]
    stopped = service.stop_run(ALICE, run_id)
    assert stopped.value.finished is not None
    assert stopped.value.finished.rounds_completed == 1


def test_an_inference_is_recorded_by_the_service(service: CoordinatorService) -> None:
    served = InferenceServed(
        model_hash="34" * 32,
        requester="clinic",
        he_params_hash="78" * 32,
        batch_size=4,
        served_total=4,
        request_hash="9a" * 32,
    )
    recorded = service.record_inference(served)
    assert recorded.entry.kind == "inference.served"
    assert recorded.action_id is None  # served batches are in the ledger, not api_action


def test_logs_and_status_are_for_runs_started_here(
    service: CoordinatorService, federation: InMemoryFederation
) -> None:
    run_id = service.start_run(ALICE, ready_study(service, Site("north"))).value.run_id
    federation.log(int(run_id), "round 1 done\n", at=10.0)
    assert service.run_logs(run_id, after=0.0) == ("round 1 done\n", 10.0)
    summary = service.run_status(run_id)
    assert summary is not None
    assert summary.status == "pending"
    other = federation.start_run(b"someone else's bundle", config={})
    for call in (service.run_logs, service.run_status):
        with pytest.raises(NotFound):
            call(str(other))
