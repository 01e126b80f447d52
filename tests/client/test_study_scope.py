"""A site trains only the rounds and runs its operator approved (privacy review m1).

A 3-round study used to train round 500, twice, and any number of runs: only the epsilon
cap bounded what the coordinator could ask. Every test goes through the real site service.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.client.support import make_study, request_for
from veracity.client.approvals import approve_study, review_study
from veracity.client.service import Refusal, SiteAgent, TrainReply
from veracity.client.site import Site
from veracity.tasks.study import Study

AgentFactory = Callable[[], SiteAgent]


@pytest.fixture
def three_rounds(ready_site: Site) -> Study:
    study = make_study(study_id="three-rounds", rounds=3)
    approve_study(ready_site, study, dataset_id="bc-0", epsilon_cap=5.0)
    return study


def _refused(outcome: object, reason: str) -> None:
    assert isinstance(outcome, Refusal), "trained a round the study does not allow"
    assert outcome.kind == "approval.missing"
    assert reason in outcome.reason


@pytest.mark.parametrize("number", [500, 4, 0])
def test_a_round_outside_the_study_is_refused_with_a_signed_statement(
    number: int, ready_site: Site, three_rounds: Study, agent_factory: AgentFactory
) -> None:
    outcome = agent_factory().handle_train(request_for(three_rounds, round=number))

    _refused(outcome, f"has 3 round(s); round {number} is not part of it")
    assert ready_site.store.list_spends() == []
    queued = [entry.statement for entry in ready_site.store.outbox()]
    assert isinstance(outcome, Refusal)
    assert outcome.statement in queued


def test_a_round_is_trained_once(
    ready_site: Site, three_rounds: Study, agent_factory: AgentFactory
) -> None:
    agent = agent_factory()
    assert isinstance(agent.handle_train(request_for(three_rounds, round=2)), TrainReply)

    again = agent.handle_train(request_for(three_rounds, round=2))

    _refused(again, "round 2 of run 1001 was already trained")
    assert len(ready_site.store.list_spends()) == 1


def test_a_run_beyond_the_studys_runs_is_refused(
    ready_site: Site, three_rounds: Study, agent_factory: AgentFactory
) -> None:
    agent = agent_factory()
    for number in (1, 2, 3):
        outcome = agent.handle_train(request_for(three_rounds, round=number, run_id="1001"))
        assert isinstance(outcome, TrainReply)

    second_run = agent.handle_train(request_for(three_rounds, round=1, run_id="2002"))

    _refused(second_run, "the study allows 1 run(s)")
    assert {spend.run_id for spend in ready_site.store.list_spends()} == {"1001"}


def test_a_study_approved_for_two_runs_trains_two(
    ready_site: Site, agent_factory: AgentFactory
) -> None:
    study = make_study(study_id="two-runs", rounds=2, runs=2)
    approve_study(ready_site, study, dataset_id="bc-0", epsilon_cap=5.0)
    agent = agent_factory()
    for run_id in ("1001", "2002"):
        for number in (1, 2):
            outcome = agent.handle_train(request_for(study, round=number, run_id=run_id))
            assert isinstance(outcome, TrainReply)

    third = agent.handle_train(request_for(study, round=1, run_id="3003"))

    _refused(third, "the study allows 2 run(s)")


def test_the_review_projects_every_allowed_run(ready_site: Site) -> None:
    once = review_study(ready_site, make_study(rounds=2), dataset_id="bc-0", epsilon_cap=5.0)
    twice = review_study(
        ready_site, make_study(rounds=2, runs=2), dataset_id="bc-0", epsilon_cap=5.0
    )

    assert (once.total_steps, twice.total_steps) == (10, 20)
    assert twice.to_dict()["runs"] == 2
    assert once.projected_study_epsilon is not None
    assert twice.projected_study_epsilon is not None
    assert twice.projected_study_epsilon > once.projected_study_epsilon
