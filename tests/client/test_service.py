"""SiteAgent.handle_train end to end: receipts, composition, refusals, restarts and failures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dp_accounting import NeighboringRelation, dp_event
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
from opacus.accountants import PRVAccountant

from tests.client.support import SITE, make_study, request_for
from veracity.client.approvals import approve_study, refuse_study
from veracity.client.budget import (
    Segment,
    history_from_json,
    merge_history,
    replace_one_epsilon,
)
from veracity.client.service import RECEIPT_FIELDS, Refusal, SiteAgent, TrainReply
from veracity.client.site import Site
from veracity.client.training import NOISE_GENERATOR_SEEDED, PrivateTrainer
from veracity.core.canonical import canonical_json
from veracity.crypto.keys import load_verify_key
from veracity.errors import InputError, VerificationError
from veracity.ledger.statement import RECEIPT_DOMAIN, verify_bound, verify_statement
from veracity.tasks.study import Study
from veracity.tasks.weights import weights_hash

# Every test here opens a SiteAgent, which trains with Opacus itself (no trainer seam).
pytestmark = pytest.mark.training

# 152 rows, batch 32: five steps per round at q = 1/5.
STEPS_PER_ROUND = 5
RATE = 0.2

AgentFactory = Callable[[], SiteAgent]


def _train(
    agent: SiteAgent, study: Study, rounds: range, *, run_id: str = "1001"
) -> list[TrainReply]:
    replies = []
    weights = None
    for number in rounds:
        outcome = agent.handle_train(
            request_for(study, round=number, run_id=run_id, weights=weights)
        )
        assert isinstance(outcome, TrainReply), getattr(outcome, "reason", outcome)
        replies.append(outcome)
        weights = outcome.weights
    return replies


def _auditor_epsilon(receipt: dict[str, Any]) -> float:
    """What an auditor computes from a receipt alone: replace-one, Google dp-accounting PLD."""
    parsed = json.loads(canonical_json(receipt))
    assert (parsed["accountant"], parsed["neighbouring"]) == ("pld", "replace-one")
    accountant = PLDAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    accountant.compose(
        dp_event.ComposedDpEvent(
            [
                dp_event.SelfComposedDpEvent(
                    dp_event.PoissonSampledDpEvent(rate, dp_event.GaussianDpEvent(sigma)), steps
                )
                for sigma, rate, steps in parsed["history"]
            ]
        )
    )
    return float(accountant.get_epsilon(parsed["delta"]))


def _auditor_add_remove_epsilon(receipt: dict[str, Any]) -> float:
    """The receipt's add/remove figure, recomputed with Opacus's own PRV accountant."""
    parsed = json.loads(canonical_json(receipt))
    accountant = PRVAccountant()
    accountant.history = [tuple(entry) for entry in parsed["history"]]
    return float(accountant.get_epsilon(parsed["delta"]))


def _assert_an_auditor_computes_the_same(receipt: dict[str, Any]) -> None:
    """Both epsilons of ``receipt`` are what an auditor computes afresh from its history."""
    assert receipt["epsilon"] == pytest.approx(_auditor_epsilon(receipt), abs=1e-9)
    assert receipt["epsilon_add_remove"] == pytest.approx(
        _auditor_add_remove_epsilon(receipt), abs=1e-9
    )


def _site_public_key(site: Site) -> Any:
    return load_verify_key(site.paths.public_key)


def test_trained_round_returns_signed_receipt_with_exactly_the_contract_fields(
    ready_site: Site, approved: Study, agent_factory: AgentFactory
) -> None:
    agent = agent_factory()
    (reply,) = _train(agent, approved, range(1, 2))
    receipt = reply.receipt
    assert tuple(sorted(receipt)) == tuple(sorted(RECEIPT_FIELDS))
    verify_bound(
        _site_public_key(ready_site),
        RECEIPT_DOMAIN,
        ready_site.log_id,
        receipt,
        reply.receipt_signature,
        what="receipt",
    )
    assert receipt["site"] == SITE
    assert receipt["study"] == approved.study_hash
    assert receipt["round"] == 1
    assert receipt["run_id"] == "1001"
    assert receipt["dataset_id"] == "bc-0"
    dataset = ready_site.store.get_dataset("bc-0")
    assert dataset is not None
    assert receipt["dataset_commitment"] == dataset.commitment
    assert receipt["update_hash"] == weights_hash(reply.weights)
    assert receipt["accountant"] == "pld"
    assert receipt["neighbouring"] == "replace-one"
    assert receipt["noise_generator"] == reply.noise_generator
    assert receipt["delta"] == approved.dp.delta
    assert receipt["max_grad_norm"] == approved.dp.max_grad_norm
    assert receipt["num_examples"] == 152
    assert receipt["history"] == [[approved.dp.noise_multiplier, RATE, STEPS_PER_ROUND]]
    assert reply.metrics["num-examples"] == 152
    assert reply.metrics["epsilon"] == receipt["epsilon"]
    assert reply.metrics["epsilon-rdp"] >= receipt["epsilon"]
    assert reply.metrics["secure-mode"] == 0.0
    assert "train-loss" not in reply.metrics  # not shared unless the operator opts in
    assert reply.noise_generator == NOISE_GENERATOR_SEEDED
    assert set(reply.weights) == {"linear.weight", "linear.bias"}


def test_tampered_receipt_fails_verification(
    ready_site: Site, approved: Study, agent_factory: AgentFactory
) -> None:
    (reply,) = _train(agent_factory(), approved, range(1, 2))
    forged = {**reply.receipt, "epsilon": reply.receipt["epsilon"] / 2}
    with pytest.raises(VerificationError):
        verify_bound(
            _site_public_key(ready_site),
            RECEIPT_DOMAIN,
            ready_site.log_id,
            forged,
            reply.receipt_signature,
            what="receipt",
        )


def test_receipt_epsilons_equal_the_auditors_independent_recomputation(
    approved: Study, agent_factory: AgentFactory
) -> None:
    replies = _train(agent_factory(), approved, range(1, 4))
    for reply in replies:
        assert abs(reply.receipt["epsilon"] - _auditor_epsilon(reply.receipt)) <= 1e-6
        add_remove = _auditor_add_remove_epsilon(reply.receipt)
        assert abs(reply.receipt["epsilon_add_remove"] - add_remove) <= 1e-6
        assert reply.receipt["epsilon"] > reply.receipt["epsilon_add_remove"]


def test_epsilon_composes_across_rounds(approved: Study, agent_factory: AgentFactory) -> None:
    replies = _train(agent_factory(), approved, range(1, 4))
    epsilons = [reply.receipt["epsilon"] for reply in replies]
    assert epsilons == sorted(epsilons)
    assert len(set(epsilons)) == 3
    assert replies[-1].receipt["history"] == [[2.0, RATE, 3 * STEPS_PER_ROUND]]
    single_engine = PRVAccountant()
    for _ in range(3 * STEPS_PER_ROUND):
        single_engine.step(noise_multiplier=2.0, sample_rate=RATE)
    assert replies[-1].receipt["epsilon_add_remove"] == pytest.approx(
        single_engine.get_epsilon(approved.dp.delta), abs=1e-9
    )


@pytest.fixture
def approved_for_two_runs(ready_site: Site) -> Study:
    """``make_study(runs=2)`` approved on ``bc-0`` with cap 5."""
    study = make_study(runs=2)
    approve_study(ready_site, study, dataset_id="bc-0", epsilon_cap=5.0)
    return study


def test_epsilon_composes_across_runs_and_a_restart(
    ready_site: Site, approved_for_two_runs: Study, agent_factory: AgentFactory
) -> None:
    approved = approved_for_two_runs
    first = agent_factory()
    _train(first, approved, range(1, 3), run_id="1001")
    first.close()
    restarted = agent_factory()  # a new agent on the same store, as after a restart
    (reply,) = _train(restarted, approved, range(1, 2), run_id="2002")
    assert reply.receipt["history"] == [[2.0, RATE, 3 * STEPS_PER_ROUND]]
    expected = replace_one_epsilon((Segment(2.0, RATE, 3 * STEPS_PER_ROUND),), approved.dp.delta)
    assert reply.receipt["epsilon"] == expected
    assert ready_site.store.dataset_history("bc-0") == (Segment(2.0, RATE, 15),)


@pytest.mark.integration
@pytest.mark.slow
def test_epsilon_after_restart_in_a_new_process_is_bit_identical(
    site_dir: Path, approved_for_two_runs: Study, agent_factory: AgentFactory
) -> None:
    approved = approved_for_two_runs
    _train(agent_factory(), approved, range(1, 3))
    script = textwrap.dedent(
        f"""
        import json, sys
        from veracity.client.service import SiteAgent, TrainRequest
        from veracity.tasks.torch_models import build_model, model_weights
        from veracity.tasks.study import parse_study
        study = parse_study(json.loads(sys.stdin.read()))
        with SiteAgent.open({str(site_dir)!r}, seed=11) as agent:
            reply = agent.handle_train(TrainRequest(
                study=study.to_document(), study_hash=study.study_hash, run_id="3003",
                round=1, code_hash=study.code_hash,
                weights=model_weights(build_model(study.model_spec))))
            print(json.dumps(reply.receipt))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(approved.to_document()),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    receipt = json.loads(done.stdout.strip().splitlines()[-1])
    assert receipt["history"] == [[2.0, RATE, 3 * STEPS_PER_ROUND]]
    in_process = replace_one_epsilon((Segment(2.0, RATE, 15),), approved.dp.delta)
    assert receipt["epsilon"] == in_process  # bit-identical float after a JSON round trip


def test_round_that_would_cross_the_cap_halfway_is_refused_before_training(
    ready_site: Site, agent_factory: AgentFactory
) -> None:
    delta = 1e-5
    after_two = replace_one_epsilon((Segment(2.0, RATE, 2 * STEPS_PER_ROUND),), delta)
    halfway = replace_one_epsilon((Segment(2.0, RATE, 2 * STEPS_PER_ROUND + 2),), delta)
    after_three = replace_one_epsilon((Segment(2.0, RATE, 3 * STEPS_PER_ROUND),), delta)
    assert after_two < halfway < after_three
    study = make_study(epsilon_caps={SITE: halfway})  # crossed in the middle of round 3
    approve_study(ready_site, study, dataset_id="bc-0", epsilon_cap=halfway)
    agent = agent_factory()
    replies = _train(agent, study, range(1, 3))
    outcome = agent.handle_train(request_for(study, round=3, weights=replies[-1].weights))

    assert isinstance(outcome, Refusal)
    assert outcome.kind == "budget.refused"
    payload = outcome.payload
    assert set(payload) == {
        "site", "study_hash", "dataset_id", "run_id", "round",
        "epsilon_requested", "epsilon_left", "signed_at",
    }  # fmt: skip
    assert payload["epsilon_requested"] == pytest.approx(after_three)
    assert payload["epsilon_left"] == pytest.approx(halfway - after_two)
    verify_statement(
        _site_public_key(ready_site),
        "budget.refused",
        SITE,
        payload,
        outcome.signature,
        log_id=ready_site.log_id,
    )
    # Nothing was spent: the history still ends after round 2, and no receipt passed the cap.
    assert ready_site.store.dataset_history("bc-0") == (Segment(2.0, RATE, 10),)
    assert all(reply.receipt["epsilon"] <= halfway for reply in replies)
    queued = [entry.statement for entry in ready_site.store.outbox()]
    assert outcome.statement in queued


def test_refusals_repeat_and_the_cap_is_never_crossed(
    ready_site: Site, agent_factory: AgentFactory
) -> None:
    cap = replace_one_epsilon((Segment(2.0, RATE, STEPS_PER_ROUND + 1),), 1e-5)
    study = make_study(epsilon_caps={SITE: cap})
    approve_study(ready_site, study, dataset_id="bc-0", epsilon_cap=cap)
    agent = agent_factory()
    outcomes = [agent.handle_train(request_for(study, round=n)) for n in range(1, 5)]
    assert isinstance(outcomes[0], TrainReply)
    assert all(isinstance(o, Refusal) and o.kind == "budget.refused" for o in outcomes[1:])
    spent = replace_one_epsilon(ready_site.store.dataset_history("bc-0"), 1e-5)
    assert spent <= cap


def test_dataset_budget_composes_across_studies_and_refuses_the_second(
    site: Site, bc_csv: Path, agent_factory: AgentFactory
) -> None:
    from veracity.client.datasets import register_dataset

    budget = replace_one_epsilon((Segment(2.0, RATE, 2 * STEPS_PER_ROUND + 1),), 1e-5)
    register_dataset(site, dataset_id="bc-0", path=bc_csv, label="diagnosis", epsilon_budget=budget)
    first, second = make_study(study_id="first"), make_study(study_id="second")
    approve_study(site, first, dataset_id="bc-0", epsilon_cap=5.0)
    approve_study(site, second, dataset_id="bc-0", epsilon_cap=5.0)
    agent = agent_factory()
    _train(agent, first, range(1, 2))
    (reply,) = _train(agent, second, range(1, 2))
    # The dataset's epsilon covers both studies; the study's own epsilon only itself.
    assert reply.receipt["history"] == [[2.0, RATE, 2 * STEPS_PER_ROUND]]
    assert reply.metrics["study-epsilon"] < reply.metrics["epsilon"]
    outcome = agent.handle_train(request_for(second, round=2, weights=reply.weights))
    assert isinstance(outcome, Refusal)
    assert outcome.kind == "budget.refused"
    assert "dataset 'bc-0'" in outcome.reason


def test_studies_with_different_noise_keep_separate_history_segments(
    ready_site: Site, agent_factory: AgentFactory
) -> None:
    calm, loud = make_study(study_id="calm"), make_study(study_id="loud", noise_multiplier=4.0)
    approve_study(ready_site, calm, dataset_id="bc-0", epsilon_cap=5.0)
    approve_study(ready_site, loud, dataset_id="bc-0", epsilon_cap=5.0)
    agent = agent_factory()
    _train(agent, calm, range(1, 3))
    (reply,) = _train(agent, loud, range(1, 2))
    assert reply.receipt["history"] == [[2.0, RATE, 10], [4.0, RATE, 5]]
    assert abs(reply.receipt["epsilon"] - _auditor_epsilon(reply.receipt)) <= 1e-6


def test_unapproved_study_is_refused_with_a_signed_statement(
    ready_site: Site, agent_factory: AgentFactory
) -> None:
    study = make_study(study_id="never-approved")
    outcome = agent_factory().handle_train(request_for(study, round=1))
    assert isinstance(outcome, Refusal)
    assert outcome.kind == "approval.missing"
    assert "not approved" in outcome.reason
    verify_statement(
        _site_public_key(ready_site),
        "approval.missing",
        SITE,
        outcome.payload,
        outcome.signature,
        log_id=ready_site.log_id,
    )
    assert ready_site.store.list_spends() == []


def _alter(study: Study, **training: Any) -> dict[str, Any]:
    document = study.to_document()
    document["training"] = {**document["training"], **training}
    return document


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("parameters-under-the-old-hash", "does not match study_hash"),
        ("parameters-rehashed", "not approved"),
        ("code-hash", "code hash"),
    ],
)
def test_altered_study_is_refused(
    how: str, expected: str, approved: Study, agent_factory: AgentFactory
) -> None:
    from veracity.tasks.study import parse_study

    agent = agent_factory()
    if how == "parameters-under-the-old-hash":
        request = request_for(approved, round=1, document=_alter(approved, learning_rate=5.0))
    elif how == "parameters-rehashed":
        altered = parse_study(_alter(approved, learning_rate=5.0))
        request = request_for(altered, round=1)
    else:
        request = request_for(approved, round=1, code_hash="ee" * 32)
    outcome = agent.handle_train(request)
    assert isinstance(outcome, Refusal)
    assert outcome.kind == "approval.missing"
    assert expected in outcome.reason
    assert agent.site.store.list_spends() == []


def test_refused_and_withdrawn_studies_are_refused(
    ready_site: Site, approved: Study, agent_factory: AgentFactory
) -> None:
    agent = agent_factory()
    _train(agent, approved, range(1, 2))
    refuse_study(ready_site, approved, reason="ethics approval expired")
    outcome = agent.handle_train(request_for(approved, round=2))
    assert isinstance(outcome, Refusal)
    assert outcome.kind == "approval.missing"
    assert "ethics approval expired" in outcome.reason


def test_changed_dataset_file_is_refused(
    bc_csv: Path, approved: Study, agent_factory: AgentFactory
) -> None:
    agent = agent_factory()
    _train(agent, approved, range(1, 2))
    lines = bc_csv.read_text().splitlines()
    bc_csv.write_text("\n".join([*lines, lines[-1]]) + "\n")  # one duplicated patient
    outcome = agent.handle_train(request_for(approved, round=2))
    assert isinstance(outcome, Refusal)
    assert outcome.kind == "approval.missing"
    assert "changed since it was registered" in outcome.reason


def test_missing_dataset_file_is_refused(
    bc_csv: Path, approved: Study, agent_factory: AgentFactory
) -> None:
    bc_csv.unlink()
    outcome = agent_factory().handle_train(request_for(approved, round=1))
    assert isinstance(outcome, Refusal)
    assert "cannot be read" in outcome.reason


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"study_hash": "XYZ"}, "study_hash"),
        ({"run_id": "has space"}, "run_id"),
        ({"round": -1}, "round"),
        ({"round": True}, "round"),
        ({"weights": {"linear.weight": np.zeros((1, 3), np.float32)}}, "global weights"),
        ({"weights": "nan"}, "global weights"),
        ({"study": {"study_id": "x"}}, "invalid study"),
    ],
)
def test_malformed_requests_raise_input_error(
    change: dict[str, Any], message: str, approved: Study, agent_factory: AgentFactory
) -> None:
    import dataclasses

    request = request_for(approved, round=1)
    if change.get("weights") == "nan":
        weights = {name: value.copy() for name, value in request.weights.items()}
        weights["linear.bias"][0] = np.nan
        change = {"weights": weights}
    agent = agent_factory()
    with pytest.raises(InputError, match=message):
        agent.handle_train(dataclasses.replace(request, **change))
    assert agent.site.store.list_spends() == []


def test_crash_during_training_still_counts_the_reserved_steps(
    ready_site: Site, approved: Study, agent_factory: AgentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = agent_factory()

    def crash(self: PrivateTrainer, *_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("power cut")

    with monkeypatch.context() as patch:
        patch.setattr(PrivateTrainer, "train_round", crash)
        with pytest.raises(RuntimeError, match="power cut"):
            agent.handle_train(request_for(approved, round=1))
    (spend,) = ready_site.store.list_spends()
    assert spend.status == "failed"
    assert "power cut" in (spend.note or "")
    (reply,) = _train(agent, approved, range(2, 3))
    assert reply.receipt["history"] == [[2.0, RATE, 2 * STEPS_PER_ROUND]]


def test_accountant_disagreeing_with_the_reservation_withholds_the_update(
    ready_site: Site, approved: Study, agent_factory: AgentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = PrivateTrainer.train_round

    def halve_noise(self: PrivateTrainer, *args: Any, **kwargs: Any) -> Any:
        self.optimizer.noise_multiplier = self.noise_multiplier / 2  # a mis-wired optimizer
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PrivateTrainer, "train_round", halve_noise)
    with pytest.raises(VerificationError, match="update is withheld"):
        agent_factory().handle_train(request_for(approved, round=1))
    (spend,) = ready_site.store.list_spends()
    assert spend.status == "failed"


def test_poly_mlp_study_trains_and_reports_train_loss_when_shared(
    site_dir: Path, ready_site: Site, agent_factory: AgentFactory
) -> None:
    from veracity.tasks.spec import ModelFamily

    config_path = site_dir / "site.json"
    config = json.loads(config_path.read_text())
    config["share_train_loss"] = True
    config_path.write_text(json.dumps(config))
    study = make_study(study_id="poly", family=ModelFamily.POLY_MLP, hidden=8, learning_rate=0.2)
    approve_study(ready_site, study, dataset_id="bc-0", epsilon_cap=5.0)
    (reply,) = _train(agent_factory(), study, range(1, 2))
    assert set(reply.weights) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert math.isfinite(reply.metrics["train-loss"])
    assert reply.metrics["train-loss"] > 0


def test_history_in_receipts_parses_back_to_the_store_history(
    ready_site: Site, approved: Study, agent_factory: AgentFactory
) -> None:
    replies = _train(agent_factory(), approved, range(1, 3))
    parsed = history_from_json(json.loads(canonical_json(replies[-1].receipt))["history"])
    assert parsed == merge_history(ready_site.store.dataset_history("bc-0"))


def test_the_worker_agent_accounts_the_next_round_ahead_without_changing_a_figure(
    approved: Study, site_dir: Path, clock: Any
) -> None:
    """#16: the accountants took most of a site's round; the next one is computed between rounds.

    The warm caches change no figure (each receipt is what an auditor computes afresh from
    its history), and nothing is computed after the study's last round.
    """
    from veracity.client import budget

    agent = SiteAgent.open(site_dir, clock=clock, seed=7, account_ahead=True)
    try:
        replies = []
        weights = None
        for number in range(1, approved.rounds + 1):
            outcome = agent.handle_train(request_for(approved, round=number, weights=weights))
            assert isinstance(outcome, TrainReply)
            replies.append(outcome)
            weights = outcome.weights
            if number == approved.rounds:
                assert agent._ahead is None  # the study's last round: nothing ahead
                continue
            assert agent._ahead is not None
            agent._ahead.join()
            sigma, rate, steps = outcome.receipt["history"][-1]
            after = ((sigma, rate, steps + STEPS_PER_ROUND),)
            next_history = budget.history_from_json([list(s) for s in after])
            misses = budget._replace_one_cached.cache_info().misses
            budget.replace_one_epsilon(next_history, approved.dp.delta)
            assert budget._replace_one_cached.cache_info().misses == misses  # found in cache
    finally:
        agent.close()
    assert approved.rounds >= 2
    for reply in replies:
        _assert_an_auditor_computes_the_same(reply.receipt)


def test_the_worker_agent_accounts_an_approved_studys_first_round_before_it_is_asked(
    ready_site: Site, site_dir: Path, clock: Any
) -> None:
    """#16: round 1 computed its privacy figures while the coordinator waited (seconds).

    The worker's agent computes them when it sees the approval, once per decision: the
    first round then finds every accountant's figure in the caches, and its receipt is
    still what an auditor computes afresh. A refused or withdrawn study, an unchanged
    store and (after a restart) a study that trained already start nothing.
    """
    from veracity.client import budget

    cached = (
        budget._replace_one_cached,
        budget._rdp_replace_one_cached,
        budget._prv_epsilon_cached,
    )
    for cache in cached:
        cache.cache_clear()
    study = make_study(rounds=1)  # no round after it: nothing accounted ahead of round 2
    refused = make_study(study_id="refused-study")
    agent = SiteAgent.open(site_dir, clock=clock, seed=7, account_ahead=True)
    try:
        assert agent.prepare_approved() == 0  # nothing approved yet
        refuse_study(agent.site, refused, reason="not this one")
        assert agent.prepare_approved() == 0
        withdrawn = make_study(study_id="withdrawn-study")
        approve_study(agent.site, withdrawn, dataset_id="bc-0", epsilon_cap=5.0)
        refuse_study(agent.site, withdrawn, reason="withdrawn")
        assert agent.prepare_approved() == 0  # its approval is no longer in force
        approve_study(agent.site, study, dataset_id="bc-0", epsilon_cap=5.0)
        assert agent.prepare_approved() == 1
        assert agent._ahead is not None
        agent._ahead.join()
        assert agent.prepare_approved() == 0  # the same decision is not prepared twice
        misses = [cache.cache_info().misses for cache in cached]
        outcome = agent.handle_train(request_for(study, round=1))
        assert isinstance(outcome, TrainReply)
        assert [cache.cache_info().misses for cache in cached] == misses
    finally:
        agent.close()
    restarted = SiteAgent.open(site_dir, clock=clock, seed=7, account_ahead=True)
    try:
        assert restarted.prepare_approved() == 0  # the study trained here already
    finally:
        restarted.close()
    _assert_an_auditor_computes_the_same(outcome.receipt)


def test_an_agent_without_account_ahead_prepares_nothing(
    approved: Study, site_dir: Path, clock: Any
) -> None:
    """The CLI's agents (``site train`` and the like) do not start accountant threads."""
    agent = SiteAgent.open(site_dir, clock=clock, seed=7)
    try:
        assert agent.prepare_approved() == 0
        assert agent._ahead is None
    finally:
        agent.close()
