"""The site store's contract, on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from veracity.client.budget import EpsilonReport, History, RoundBudget, Segment, merge_history
from veracity.client.migrations import HISTORY, current_revision, head_revision
from veracity.client.store import (
    VERSION_TABLE,
    Base,
    Dataset,
    SignedStatement,
    SiteStore,
    create_store_engine,
)
from veracity.errors import ConfigError, InputError

NOW = "2026-03-01T09:00:00.000000Z"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'site.db'}"
    from veracity.config import normalise_database_url

    return normalise_database_url(str(request.getfixturevalue("pg_url")))


@pytest.fixture
def store(store_url: str) -> Iterator[SiteStore]:
    with SiteStore.open(store_url) as opened:
        yield opened


def _statement(kind: str, number: int) -> SignedStatement:
    return SignedStatement(kind=kind, actor="hospital-a", payload={"n": number}, signature="c2ln")


def _dataset(dataset_id: str = "cohort", digest: str = "d" * 64) -> Dataset:
    return Dataset(
        dataset_id=dataset_id, path=Path("/data/cohort.csv"), file_format="csv",
        file_sha256="f" * 64, content_digest=digest, salt=bytes(32), commitment="c" * 64,
        schema_hash="s" * 64, label="outcome", features=("age", "bmi"), rows=100, positives=40,
        epsilon_budget=3.0, delta=1e-5, registered_at=NOW, pool_id=dataset_id,
    )  # fmt: skip


def _budget(before: History, planned: Segment, limit: int) -> RoundBudget:
    """A stand-in budget rule: allowed while the total steps stay within ``limit``."""
    after = merge_history([*before, planned])
    steps = float(sum(s.steps for s in after))
    report = EpsilonReport(history=after, delta=1e-5, epsilon=steps, rdp=steps)
    return RoundBudget(
        planned=planned, dataset=report, study=report, dataset_budget=limit, study_cap=limit
    )


def test_a_new_store_is_migrated_to_head_with_its_own_version_table(store_url: str) -> None:
    with SiteStore.open(store_url):
        pass
    engine = create_store_engine(store_url)
    try:
        assert current_revision(engine) == head_revision()
        tables = set(sa.inspect(engine).get_table_names())
        assert {
            VERSION_TABLE,
            "site_datasets",
            "site_decisions",
            "site_privacy_spends",
            "site_outbox",
        } <= tables
        assert "alembic_version" not in tables
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
            assert compare_metadata(context, Base.metadata) == []  # migrations == ORM models
    finally:
        engine.dispose()


def test_reopening_keeps_the_data(store_url: str) -> None:
    with SiteStore.open(store_url) as first:
        first.add_dataset(_dataset(), _statement("dataset.registered", 1))
    with SiteStore.open(store_url) as second:
        assert second.get_dataset("cohort") == _dataset()


def test_a_store_from_before_budget_pools_is_upgraded_one_pool_per_dataset(
    store_url: str,
) -> None:
    with SiteStore.open(store_url) as store:
        store.add_dataset(_dataset(), _statement("dataset.registered", 1))
        store.add_dataset(_dataset("second", "e" * 64), _statement("dataset.registered", 2))
    engine = create_store_engine(store_url)
    with engine.begin() as connection:
        HISTORY.run(connection, "downgrade", "0001_site_store")
    engine.dispose()
    with SiteStore.open(store_url) as store:
        assert store.pool("cohort").datasets == ("cohort",)
        assert store.pool("second").datasets == ("second",)
        assert not store.has_fingerprints("cohort")


def test_a_store_from_a_newer_veracity_is_refused(store_url: str) -> None:
    with SiteStore.open(store_url):
        pass
    engine = create_store_engine(store_url)
    with engine.begin() as connection:
        connection.execute(
            sa.text(f"UPDATE {VERSION_TABLE} SET version_num = 'from_the_future'")  # noqa: S608 - constant table name
        )
    engine.dispose()
    with pytest.raises(ConfigError, match="newer version"):
        SiteStore.open(store_url)


def test_unusable_urls_are_configuration_errors(tmp_path: Path) -> None:
    for url in ("sqlite://", "mysql://db/x", "not a url"):
        with pytest.raises(ConfigError):
            SiteStore.open(url)


def test_dataset_and_its_statement_are_written_together(store: SiteStore) -> None:
    statement = _statement("dataset.registered", 1)
    store.add_dataset(_dataset(), statement)
    assert store.list_datasets() == [_dataset()]
    assert [entry.statement for entry in store.outbox()] == [statement]
    with pytest.raises(InputError, match="already registered"):
        store.add_dataset(_dataset(digest="e" * 64), _statement("dataset.registered", 2))
    with pytest.raises(InputError, match="already registered as dataset 'cohort'"):
        store.add_dataset(_dataset("other"), _statement("dataset.registered", 3))
    assert len(store.outbox()) == 1  # the refused ones left nothing behind


def test_latest_decision_is_the_one_in_force(store: SiteStore) -> None:
    store.add_dataset(_dataset(), _statement("dataset.registered", 1))
    common: dict[str, Any] = {
        "study_hash": "a" * 64,
        "study_id": "s",
        "study_document": {"k": 1},
        "code_hash": "b" * 64,
    }
    store.add_decision(
        **common, decision="approved", dataset_id="cohort", epsilon_cap=2.0, reason=None,
        decided_at=NOW, statement=_statement("study.approved", 2),
    )  # fmt: skip
    assert store.latest_decision("a" * 64).decision == "approved"  # type: ignore[union-attr]
    store.add_decision(
        **common, decision="refused", dataset_id=None, epsilon_cap=None, reason="withdrawn",
        decided_at=NOW, statement=_statement("study.refused", 3),
    )  # fmt: skip
    latest = store.latest_decision("a" * 64)
    assert latest is not None
    assert latest.decision == "refused"
    assert latest.reason == "withdrawn"
    assert [d.decision for d in store.list_decisions()] == ["approved", "refused"]
    assert store.latest_decision("0" * 64) is None
    with pytest.raises(InputError, match="no dataset 'ghost'"):
        store.add_decision(
            **common, decision="approved", dataset_id="ghost", epsilon_cap=1.0, reason=None,
            decided_at=NOW, statement=_statement("study.approved", 4),
        )  # fmt: skip


def test_reservations_count_whatever_happens_to_the_round(store: SiteStore) -> None:
    store.add_dataset(_dataset(), _statement("dataset.registered", 1))
    planned = Segment(2.0, 0.2, 5)
    ids = []
    for number, study in enumerate(["x" * 64, "y" * 64, "x" * 64]):
        budget, _, _, spend_id = store.reserve_round(
            dataset_id="cohort", study_hash=study, run_id="r", round=number, planned=planned,
            evaluate=lambda d, s, _pool: _budget(d, planned, 100), now=NOW,
        )  # fmt: skip
        assert spend_id is not None
        assert budget.allowed
        ids.append(spend_id)
    store.finish_spend(ids[0], status="completed", now=NOW, update_hash="u" * 64)
    store.finish_spend(ids[1], status="failed", now=NOW, note="crashed")
    assert [s.status for s in store.list_spends("cohort")] == ["completed", "failed", "reserved"]
    assert store.dataset_history("cohort") == (Segment(2.0, 0.2, 15),)
    assert store.study_history("cohort", "x" * 64) == (Segment(2.0, 0.2, 10),)
    with pytest.raises(InputError, match="no reserved privacy spend"):
        store.finish_spend(ids[0], status="failed", now=NOW)


def test_datasets_that_share_records_draw_from_one_budget_pool(store: SiteStore) -> None:
    def add(name: str, number: int, fingerprints: set[str], budget: float = 3.0) -> Any:
        dataset = dataclasses.replace(
            _dataset(name, digest=f"{number:064x}"), epsilon_budget=budget
        )
        return store.add_dataset(
            dataset, _statement("dataset.registered", number), record_fingerprints=fingerprints
        )

    first = add("a-cohort", 1, {"01" * 16, "02" * 16, "03" * 16})
    extract = add("b-extract", 2, {"03" * 16, "04" * 16}, budget=5.0)
    other = add("c-other", 3, {"09" * 16})
    bridge = add("d-bridge", 4, {"04" * 16, "09" * 16}, budget=2.0)

    assert (first.pool_id, first.shared) == ("a-cohort", {})
    assert (extract.pool_id, extract.shared) == ("a-cohort", {"a-cohort": 1})
    assert other.pool_id == "c-other"
    # Records shared with both pools merge them into the older one.
    assert bridge.pool_id == "a-cohort"
    assert bridge.shared == {"b-extract": 1, "c-other": 1}
    pool = store.pool("c-other")
    assert pool.datasets == ("a-cohort", "b-extract", "c-other", "d-bridge")
    assert pool.epsilon_budget == 2.0  # the smallest budget of the pool binds
    planned = Segment(2.0, 0.2, 5)
    for name in ("a-cohort", "c-other"):
        _, _, _, spend_id = store.reserve_round(
            dataset_id=name, study_hash="x" * 64, run_id="r", round=1, planned=planned,
            evaluate=lambda d, s, _pool: _budget(d, planned, 100), now=NOW,
        )  # fmt: skip
        assert spend_id is not None
    # Every dataset of the pool sees every spend on any of them.
    assert store.dataset_history("b-extract") == (Segment(2.0, 0.2, 10),)
    assert store.shared_records("b-extract") == {"a-cohort": 1, "d-bridge": 1}


def test_the_record_key_is_made_once_and_kept(store: SiteStore) -> None:
    key = store.record_key()
    assert len(key) == 32
    assert store.record_key() == key


def test_a_refused_reservation_writes_nothing(store: SiteStore) -> None:
    store.add_dataset(_dataset(), _statement("dataset.registered", 1))
    planned = Segment(2.0, 0.2, 5)
    budget, _, _, spend_id = store.reserve_round(
        dataset_id="cohort", study_hash="x" * 64, run_id="r", round=1, planned=planned,
        evaluate=lambda d, s, _pool: _budget(d, planned, 4), now=NOW,
    )  # fmt: skip
    assert spend_id is None
    assert not budget.allowed
    assert store.list_spends() == []
    with pytest.raises(InputError, match="no dataset"):
        store.reserve_round(
            dataset_id="ghost", study_hash="x" * 64, run_id="r", round=1, planned=planned,
            evaluate=lambda d, s, _pool: _budget(d, planned, 100), now=NOW,
        )  # fmt: skip


def test_concurrent_reservations_never_overspend(store_url: str, store: SiteStore) -> None:
    store.add_dataset(_dataset(), _statement("dataset.registered", 1))
    planned = Segment(1.0, 0.5, 1)
    results: list[int | None] = []
    lock = threading.Lock()

    def contender() -> None:
        with SiteStore.open(store_url) as own:  # each worker its own connection, like a process
            _, _, _, spend_id = own.reserve_round(
                dataset_id="cohort", study_hash="x" * 64, run_id="r", round=1, planned=planned,
                evaluate=lambda d, s, _pool: _budget(d, planned, 3), now=NOW,
            )  # fmt: skip
        with lock:
            results.append(spend_id)

    workers = [threading.Thread(target=contender) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert len(results) == 8
    assert sum(spend_id is not None for spend_id in results) == 3
    assert store.dataset_history("cohort") == (Segment(1.0, 0.5, 3),)


def test_outbox_delivery_is_tracked(store: SiteStore) -> None:
    first, second = _statement("study.approved", 1), _statement("budget.refused", 2)
    store.add_statement(first, now=NOW)
    store.add_statement(first, now=NOW)  # queuing the same statement twice keeps one copy
    store.add_statement(second, now=NOW)
    assert [e.statement for e in store.outbox()] == [first, second]
    with pytest.raises(InputError, match="not in the outbox"):
        store.mark_delivered([first.statement_id, "0" * 64], now=NOW)
    assert len(store.outbox()) == 2  # nothing changed
    assert store.mark_delivered([first.statement_id], now=NOW) == 1
    assert store.mark_delivered([first.statement_id], now=NOW) == 0
    assert [e.statement for e in store.outbox()] == [second]
    delivered = store.outbox(include_delivered=True)
    assert [e.delivered_at for e in delivered] == [NOW, None]


def test_statement_ids_identify_the_statement_not_the_signature() -> None:
    a = SignedStatement("k", "site", {"x": 1}, "c2ln")
    b = SignedStatement("k", "site", {"x": 1}, "b3RoZXI=")
    c = SignedStatement("k", "site", {"x": 2}, "c2ln")
    assert a.statement_id == b.statement_id != c.statement_id


def test_the_site_store_history_uses_the_store_version_table() -> None:
    from veracity.client import migrations, store

    assert migrations.HISTORY.version_table == store.VERSION_TABLE
