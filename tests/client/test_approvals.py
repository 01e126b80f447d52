"""Reviewing, approving and refusing studies; reading the study files the coordinator publishes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.client.support import SITE, make_study
from veracity.client.approvals import (
    approve_study,
    approved_terms,
    load_study_file,
    refuse_study,
    review_study,
)
from veracity.client.budget import Segment, replace_one_epsilon
from veracity.client.site import Site
from veracity.crypto.keys import load_verify_key
from veracity.errors import ApprovalMissing, InputError
from veracity.ledger.statement import verify_statement


def test_review_projects_the_whole_study(ready_site: Site) -> None:
    study = make_study(rounds=4)
    review = review_study(ready_site, study, dataset_id="bc-0", epsilon_cap=3.0)
    assert review.problems == ()
    assert (review.sample_rate, review.steps_per_round, review.total_steps) == (0.2, 5, 20)
    expected = replace_one_epsilon((Segment(2.0, 0.2, 20),), 1e-5)
    assert review.projected_study_epsilon == review.projected_dataset_epsilon == expected
    assert review.cap_in_force == 3.0  # the smaller of 3 (allowed) and 5 (asked)
    summary = review.to_dict()
    assert summary["study_hash"] == study.study_hash
    assert summary["dataset_rows"] == 152


def test_review_warns_when_the_study_would_outrun_its_cap(ready_site: Site) -> None:
    review = review_study(ready_site, make_study(rounds=40), dataset_id="bc-0", epsilon_cap=1.0)
    assert review.problems == ()
    assert any("rounds past the cap will be refused" in w for w in review.warnings)


@pytest.mark.parametrize(
    ("study_changes", "dataset_id", "cap", "problem"),
    [
        (
            {"epsilon_caps": {"hospital-z": 1.0}},
            "bc-0",
            1.0,
            "no epsilon cap for site 'hospital-a'",
        ),
        ({}, "ghost", 1.0, "no dataset 'ghost'"),
        ({}, "bc-0", 0.0, "must be positive"),
        ({"delta": 1e-4}, "bc-0", 1.0, "delta 0.0001 is weaker"),
    ],
)
def test_problems_block_an_approval_and_nothing_is_written(
    ready_site: Site, study_changes: dict[str, object], dataset_id: str, cap: float, problem: str
) -> None:
    study = make_study(**study_changes)
    with pytest.raises(InputError, match=problem):
        approve_study(ready_site, study, dataset_id=dataset_id, epsilon_cap=cap)
    assert ready_site.store.list_decisions() == []
    assert len(ready_site.store.outbox()) == 1  # only dataset.registered


def test_study_columns_must_exist_in_the_dataset(ready_site: Site) -> None:
    document = make_study().to_document()
    document["features"] = ["mean_radius", "tumour_stage"]
    document["scaling"] = [[0, 1], [0, 1]]
    document["model"] = {"family": "logistic", "n_features": 2}
    from veracity.tasks.study import parse_study

    with pytest.raises(InputError, match="no column 'tumour_stage'"):
        approve_study(ready_site, parse_study(document), dataset_id="bc-0", epsilon_cap=1.0)


def test_approval_and_refusal_are_signed_statements(ready_site: Site) -> None:
    study = make_study()
    decision, statement, _ = approve_study(ready_site, study, dataset_id="bc-0", epsilon_cap=2.5)
    key = load_verify_key(ready_site.paths.public_key)
    assert statement.kind == "study.approved"
    assert set(statement.payload) == {
        "study_hash",
        "site",
        "dataset_id",
        "epsilon_cap",
        "signed_at",
    }
    assert statement.payload["epsilon_cap"] == 2.5
    assert statement.payload["site"] == SITE
    verify_statement(
        key, statement.kind, SITE, statement.payload, statement.signature, log_id=ready_site.log_id
    )
    assert decision.study_document == study.to_document()
    _, _, cap = approved_terms(
        ready_site, study=study, study_hash=study.study_hash, code_hash=study.code_hash
    )
    assert cap == 2.5
    _, refusal = refuse_study(ready_site, study, reason="  consent   withdrawn ")
    assert set(refusal.payload) == {"study_hash", "site", "reason", "signed_at"}
    assert refusal.payload["reason"] == "consent withdrawn"
    verify_statement(
        key, refusal.kind, SITE, refusal.payload, refusal.signature, log_id=ready_site.log_id
    )
    with pytest.raises(ApprovalMissing, match="refused"):
        approved_terms(
            ready_site, study=study, study_hash=study.study_hash, code_hash=study.code_hash
        )
    kinds = [entry.statement.kind for entry in ready_site.store.outbox()]
    assert kinds == ["dataset.registered", "study.approved", "study.refused"]


@pytest.mark.parametrize("reason", ["", "   ", "x" * 2001])
def test_a_refusal_needs_a_reasonable_reason(ready_site: Site, reason: str) -> None:
    with pytest.raises(InputError):
        refuse_study(ready_site, make_study(), reason=reason)


def test_study_files_are_read_bare_or_as_a_proposal(tmp_path: Path) -> None:
    study = make_study()
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(study.to_document()))
    proposal = tmp_path / "proposal.json"
    proposal.write_text(json.dumps({"study": study.to_document(), "study_hash": study.study_hash}))
    assert load_study_file(bare) == load_study_file(proposal) == study
    proposal.write_text(json.dumps({"study": study.to_document(), "study_hash": "0" * 64}))
    with pytest.raises(InputError, match="does not match the document"):
        load_study_file(proposal)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{oops", "not JSON \\(line 1"),
        ("[1, 2]", "JSON object"),
        ('{"study_id": "x"}', "invalid study"),
    ],
)
def test_bad_study_files_are_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "study.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        load_study_file(path)
    with pytest.raises(InputError, match="cannot read"):
        load_study_file(tmp_path / "absent.json")
