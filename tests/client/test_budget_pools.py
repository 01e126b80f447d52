"""Budgets follow the patients, not the file (privacy review M3).

A shuffled copy, or the same cohort minus one row, registered under a new id used to get a
fresh budget. Every test goes through the real registration, approval and site service.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.client.support import make_study, request_for
from veracity.cli import main
from veracity.client.approvals import approve_study
from veracity.client.budget import Segment, replace_one_epsilon
from veracity.client.datasets import register_dataset
from veracity.client.service import Refusal, SiteAgent, TrainReply
from veracity.client.site import Site
from veracity.tasks import breast_cancer

AgentFactory = Callable[[], SiteAgent]


def _variant(source: Path, target: Path, *, shuffle: bool, drop_last: bool) -> Path:
    header, *rows = source.read_text().splitlines()
    if drop_last:
        rows = rows[:-1]
    if shuffle:
        rows = [rows[i] for i in np.random.default_rng(5).permutation(len(rows))]
    target.write_text("\n".join([header, *rows]) + "\n")
    return target


@pytest.mark.parametrize(
    ("shuffle", "drop_last"), [(True, False), (False, True), (True, True)], ids=str
)
def test_a_copy_of_a_registered_cohort_draws_from_its_budget(
    site: Site, bc_csv: Path, agent_factory: AgentFactory, shuffle: bool, drop_last: bool
) -> None:
    # Enough budget for two rounds on the cohort (5 steps each at q = 0.2), not three.
    budget = replace_one_epsilon((Segment(2.0, 0.2, 12),), 1e-5)
    register_dataset(
        site, dataset_id="cohort", path=bc_csv, label=breast_cancer.LABEL, epsilon_budget=budget
    )
    study = make_study()
    approve_study(site, study, dataset_id="cohort", epsilon_cap=5.0)
    agent = agent_factory()
    for number in (1, 2):
        assert isinstance(agent.handle_train(request_for(study, round=number)), TrainReply)

    copy = _variant(bc_csv, bc_csv.with_name("copy.csv"), shuffle=shuffle, drop_last=drop_last)
    registered, _ = register_dataset(
        site, dataset_id="copy", path=copy, label=breast_cancer.LABEL, epsilon_budget=10.0
    )
    other = make_study(study_id="on-the-copy")
    approve_study(site, other, dataset_id="copy", epsilon_cap=5.0)
    outcome = agent.handle_train(request_for(other, round=1))

    # Before: the copy trained on a fresh budget of 10. Now its patients' spend counts.
    assert isinstance(outcome, Refusal), "the copy trained on a fresh budget"
    assert outcome.kind == "budget.refused"
    assert "budget pool 'cohort'" in outcome.reason
    assert all(spend.dataset_id == "cohort" for spend in site.store.list_spends())
    assert registered.pool_id == "cohort"
    assert site.store.dataset_history("copy") == site.store.dataset_history("cohort")


def test_a_copy_spends_the_cohorts_budget_and_its_receipt_shows_the_pool_history(
    site: Site, bc_csv: Path, agent_factory: AgentFactory
) -> None:
    register_dataset(site, dataset_id="cohort", path=bc_csv, label=breast_cancer.LABEL)
    copy = _variant(bc_csv, bc_csv.with_name("copy.csv"), shuffle=True, drop_last=True)
    register_dataset(site, dataset_id="copy", path=copy, label=breast_cancer.LABEL)
    first, second = make_study(study_id="first"), make_study(study_id="second")
    approve_study(site, first, dataset_id="cohort", epsilon_cap=5.0)
    approve_study(site, second, dataset_id="copy", epsilon_cap=5.0)
    agent = agent_factory()

    assert isinstance(agent.handle_train(request_for(first, round=1)), TrainReply)
    reply = agent.handle_train(request_for(second, round=1))

    assert isinstance(reply, TrainReply)
    # 152 and 151 rows both give 5 steps at q = 0.2: one merged segment of both rounds.
    assert reply.receipt["dataset_id"] == "copy"
    assert reply.receipt["history"] == [[2.0, 0.2, 10]]
    assert reply.metrics["study-epsilon"] < reply.receipt["epsilon"]


def test_unrelated_data_keeps_its_own_budget(
    site: Site, bc_csv: Path, tmp_path: Path, federation: breast_cancer.FederatedSplit
) -> None:
    register_dataset(site, dataset_id="cohort", path=bc_csv, label=breast_cancer.LABEL)
    other = breast_cancer.write_csv(federation.sites[1], tmp_path / "data" / "site1.csv")
    registered, _ = register_dataset(
        site, dataset_id="other", path=other, label=breast_cancer.LABEL
    )
    assert registered.pool_id == "other"
    assert site.store.shared_records("other") == {}


def test_register_dataset_says_which_budget_a_copy_draws_from(
    site_dir: Path, bc_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--data-dir", str(site_dir)]
    register = ["site", "register-dataset", "--label", breast_cancer.LABEL, *base]
    assert main([*register, "--id", "cohort", "--path", str(bc_csv), "--format", "json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["budget_pool"]["shares_records_with"] == {}
    copy = _variant(bc_csv, bc_csv.with_name("copy.csv"), shuffle=True, drop_last=True)

    assert main([*register, "--id", "copy", "--path", str(copy), "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["budget_pool"]["pool_id"] == "cohort"
    assert shown["budget_pool"]["datasets"] == ["cohort", "copy"]
    assert shown["budget_pool"]["shares_records_with"] == {"cohort": 151}
    assert main([*register, "--id", "copy2", "--path", str(copy)]) == 1  # same content again

    again = _variant(bc_csv, bc_csv.with_name("again.csv"), shuffle=True, drop_last=False)
    assert main([*register, "--id", "again", "--path", str(again)]) == 0
    told = " ".join(capsys.readouterr().err.split())
    assert "shares records with cohort (152 records), copy (151 records)" in told
    assert "draws from their budget (pool cohort" in told


def test_datasets_registered_before_fingerprints_are_fingerprinted_when_a_copy_arrives(
    site: Site, bc_csv: Path
) -> None:
    import sqlalchemy as sa

    register_dataset(site, dataset_id="cohort", path=bc_csv, label=breast_cancer.LABEL)
    engine = sa.create_engine(site.paths.database_url)
    with engine.begin() as connection:  # as a store upgraded from before fingerprints
        connection.execute(sa.text("DELETE FROM site_record_fingerprints"))
    engine.dispose()
    assert not site.store.has_fingerprints("cohort")

    copy = _variant(bc_csv, bc_csv.with_name("copy.csv"), shuffle=True, drop_last=False)
    registered, _ = register_dataset(site, dataset_id="copy", path=copy, label="diagnosis")

    assert registered.pool_id == "cohort"
    assert site.store.has_fingerprints("cohort")
