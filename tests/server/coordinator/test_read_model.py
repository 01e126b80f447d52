"""The read model: folded in each change's transaction, rebuildable, never needed to verify.

Runs on SQLite and on PostgreSQL (``db_url``).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from tests.server.sites import Site, study_document
from veracity.contracts.events import ROOT_ACTOR, InferenceServed, ModelReleased
from veracity.server.coordinator import SERVER_APP, CoordinatorService, operator
from veracity.server.coordinator.read_model import HISTORY
from veracity.server.coordinator.tables import VERSION_TABLE, CoordBase

from .conftest import SETUP, approve, enrol, round_completed

ALICE = operator("alice")


def _history(service: CoordinatorService) -> None:
    """A coordinator's life: every projected kind, replacements, revocations, two runs."""
    north, south, east = Site("north"), Site("south"), Site("east")
    for site in (north, south, east):
        enrol(service, site)
    signed = north.signed("dataset.registered", north.dataset("cohort-1", rows=200))
    service.record_statement(
        SETUP, "dataset.registered", "north", signed["payload"], signed["signature"]
    )
    both = service.propose_study(SETUP, study_document(["north", "south"], "both", 1))
    alone = service.propose_study(SETUP, study_document(["east"], "alone"))
    both_hash, alone_hash = both.value.study_hash, alone.value.study_hash
    approve(service, north, both_hash)
    approve(service, south, both_hash)
    refusal = south.signed("study.refused", south.refusal(both_hash))
    service.record_statement(
        SETUP, "study.refused", "south", refusal["payload"], refusal["signature"]
    )
    approve(service, east, alone_hash)
    service.revoke_site_key(ALICE, "east", reason="key leaked")
    rotated = Site("east")
    enrol(service, rotated, dataset=False)

    stopped = service.start_run(ALICE, both_hash).value.run_id
    service.stop_run(ALICE, stopped)
    trained = service.start_run(ALICE, both_hash).value.run_id
    for number in (1, 2):
        service.record_round(SERVER_APP, round_completed(north, trained, both_hash, number))
    service.release(
        SERVER_APP,
        ModelReleased(
            model_hash="ab" * 32,
            run_id=trained,
            study_hash=both_hash,
            model={"family": "logistic", "n_features": 2},
            datasets=[],
            epsilon={"north": 0.9},
            metrics={"train-loss": 0.5},
            card_hash="cd" * 32,
        ),
    )
    service.finish_run(
        SERVER_APP,
        trained,
        both_hash,
        status="completed",
        reason="2 round(s) completed",
        rounds_completed=2,
        model_hash="ab" * 32,
    )
    service.record_inference(
        InferenceServed(
            model_hash="ab" * 32,
            requester="clinic",
            he_params_hash="ef" * 32,
            batch_size=3,
            request_hash="12" * 32,
            served_total=3,
        )
    )
    service.checkpoint(ALICE)
    # An entry that reached the ledger without the service (another tool, an older version).
    late = south.signed("dataset.registered", south.dataset("cohort-9"))
    service.ledger.append(
        "dataset.registered", "south", late["payload"], signature=late["signature"]
    )
    service.ledger.append(
        "note.recorded", ROOT_ACTOR, {"text": "audit visit"}, signer=service.root_key
    )


def test_a_rebuilt_read_model_equals_the_one_kept_with_each_change(
    service_on: CoordinatorService,
) -> None:
    service = service_on
    _history(service)
    service.reads.sites()  # a read folds in what came without the service
    kept = service.read_model.dump()
    assert all(kept[table] for table in kept), {t: len(r) for t, r in kept.items()}
    report = service.reindex()
    assert service.read_model.dump() == kept
    assert report.entries == service.ledger.size()
    assert report.rows == {
        table: len(rows) for table, rows in kept.items() if table != "coord_projection"
    }
    assert kept["coord_projection"] == [(1, service.ledger.size())]


def test_what_the_reads_answer_after_a_history(service_on: CoordinatorService) -> None:
    service = service_on
    _history(service)
    assert [s.name for s in service.reads.sites()] == ["east", "north", "south"]
    east = service.reads.site("east")
    assert east.key_id is not None
    assert not east.revoked
    both, alone = service.reads.studies()
    assert set(service.reads.decisions(both.study_hash)) == {"north", "south"}
    assert set(service.reads.approvals(both.study_hash)) == {"north"}
    # east's approval was signed with its revoked key; it counts only while east holds a key,
    # which it does again: the read model answers what the ledger's key index says.
    assert set(service.reads.approvals(alone.study_hash)) == {"east"}
    first, second = service.reads.runs()
    assert first.finished is not None
    assert first.finished.status == "stopped"
    assert second.finished is not None
    assert second.finished.status == "completed"
    assert second.finished.model_hash == "ab" * 32
    assert [r.round for r in service.reads.rounds(second.run_id)] == [1, 2]
    assert second.rounds_recorded == 2
    late = service.reads.dataset("south", "cohort-9")
    assert late is not None
    assert [m.model_hash for m in service.reads.models()] == ["ab" * 32]


def test_entries_appended_without_the_service_are_folded_in_before_a_read(
    service_on: CoordinatorService,
) -> None:
    service = service_on
    north = Site("north")
    enrol(service, north, dataset=False)
    signed = north.signed("dataset.registered", north.dataset("cohort-7"))
    service.ledger.append(
        "dataset.registered", "north", signed["payload"], signature=signed["signature"]
    )
    assert service.read_model.is_behind()
    found = service.reads.dataset("north", "cohort-7")
    assert found is not None
    assert found.statement.dataset_id == "cohort-7"
    assert not service.read_model.is_behind()


def test_verification_needs_no_read_model_and_a_reindex_restores_it(
    service_on: CoordinatorService,
) -> None:
    service = service_on
    _history(service)
    service.reads.sites()
    kept = service.read_model.dump()
    # Tamper with the read model, then drop it altogether: the ledger verifies either way.
    with service.ledger.engine.begin() as connection:
        connection.execute(sa.text("UPDATE coord_site SET key_id = NULL"))
        connection.execute(sa.text("DELETE FROM coord_decision"))
    report = service.ledger.verify(service.ledger.identity_public_key)
    assert report.entries == service.ledger.size()
    service.read_model.downgrade("base")
    assert service.ledger.verify(service.ledger.identity_public_key).entries == report.entries
    # A coordinator brought up to this version starts from an empty read model and folds
    # the whole log in.
    service.read_model.upgrade()
    assert service.read_model.is_behind()
    service.reads.sites()
    assert service.read_model.dump() == kept


def test_the_migration_creates_exactly_the_tables_the_models_declare(
    service_on: CoordinatorService,
) -> None:
    engine = service_on.ledger.engine
    assert HISTORY.current(engine) == HISTORY.head()
    coord = set(CoordBase.metadata.tables)

    def ours(name: Any, type_: str, *_: Any) -> bool:
        return type_ != "table" or name in coord

    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"version_table": VERSION_TABLE, "include_name": ours}
        )
        assert compare_metadata(context, CoordBase.metadata) == []
        assert VERSION_TABLE in sa.inspect(connection).get_table_names()
    service_on.read_model.downgrade("base")
    assert HISTORY.current(engine) is None
    with engine.connect() as connection:
        assert not coord & set(sa.inspect(connection).get_table_names())
    service_on.read_model.upgrade()
    assert HISTORY.current(engine) == HISTORY.head()
