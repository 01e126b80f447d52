"""A federated study end to end with real processes on 127.0.0.1.

One SuperLink (TLS, SuperNode authentication) and three site agents (SuperNode + warm
worker, Opacus at each site) serve several studies in turn; the ledger is checked after
each, with the auditor's pinned root key.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from dp_accounting import NeighboringRelation, dp_event
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
from opacus.accountants import PRVAccountant

import veracity
from tests.conftest import NETWORK_SITES, Network
from veracity.client.approvals import refuse_study
from veracity.client.site import Site
from veracity.crypto.keys import generate_signing_key
from veracity.crypto.supernode import write_supernode_key_pair
from veracity.errors import SignatureError
from veracity.ledger.possession import sign_enrolment
from veracity.ledger.statement import RECEIPT_DOMAIN, verify_bound
from veracity.localnet import approve, wait_run
from veracity.server.coordinator import CoordinatorService, operator
from veracity.server.coordinator.site_software import read_site_software
from veracity.server.fab import build_fab
from veracity.server.registry import ModelRegistry
from veracity.supervise import flower_environment, free_port
from veracity.tasks.breast_cancer import breast_cancer_study
from veracity.tasks.spec import ModelFamily
from veracity.tasks.study import Study, parse_study

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SITES = NETWORK_SITES
ADMIN = operator("admin")


def _study(study_id: str, *, rounds: int, min_sites: int) -> Study:
    return breast_cancer_study(
        study_id=study_id,
        epsilon_caps=dict.fromkeys(SITES, 3.0),
        noise_multiplier=2.2,  # two rounds of 5 steps at q = 0.2: replace-one epsilon 2.3
        code_hash=build_fab().fab_hash,
        family=ModelFamily.POLY_MLP,
        rounds=rounds,
        min_sites=min_sites,
        learning_rate=0.5,
    )


def _propose_and_run(network: Network, study: Study, caps: dict[str, float]) -> str:
    coordinator = network.coordinator
    coordinator.propose_study(ADMIN, study.to_document())
    for name, cap in caps.items():
        statement = approve(network.sites[name], study, epsilon_cap=cap)
        coordinator.record_statement(
            ADMIN, statement.kind, name, statement.payload, statement.signature
        )
    run = coordinator.start_run(ADMIN, study.study_hash, poll_interval=0.1, node_wait=60).value
    run_id = run.run_id
    summary = wait_run(coordinator, run_id, timeout=300)
    assert summary.state == "finished:completed", summary.details
    return run_id


def _rounds(coordinator: CoordinatorService, run_id: str) -> list[dict[str, Any]]:
    return [record.to_json() for record in coordinator.reads.rounds(run_id)]


def _run_finished(coordinator: CoordinatorService, run_id: str) -> dict[str, Any] | None:
    run = coordinator.reads.run(run_id)
    return None if run.finished is None else run.finished.to_json(run.run_id, run.study_hash)


def _prv_epsilon(history: list[list[float]], delta: float) -> float:
    """The add/remove figure, as an auditor recomputes it: Opacus's PRV accountant."""
    accountant = PRVAccountant()
    accountant.history = [(float(s), float(q), int(n)) for s, q, n in history]
    return float(accountant.get_epsilon(delta=delta))


def _replace_one_epsilon(history: list[list[float]], delta: float) -> float:
    """The epsilon that counts, as an auditor recomputes it: dp-accounting PLD, replace-one."""
    accountant = PLDAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    accountant.compose(
        dp_event.ComposedDpEvent(
            [
                dp_event.SelfComposedDpEvent(
                    dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(s)), int(n)
                )
                for s, q, n in history
            ]
        )
    )
    return float(accountant.get_epsilon(delta))


def test_a_two_round_study_records_every_round_with_verified_receipts(network: Network) -> None:
    coordinator = network.coordinator
    study = _study("bc-two-rounds", rounds=2, min_sites=3)
    run_id = _propose_and_run(network, study, dict.fromkeys(SITES, 3.0))

    report = coordinator.ledger.verify(coordinator.ledger.identity_public_key)
    assert report.entries == coordinator.ledger.size()
    assert coordinator.reads.run(run_id).study_hash == study.study_hash
    rounds = _rounds(coordinator, run_id)
    assert [r["round"] for r in rounds] == [1, 2]
    for recorded in rounds:
        assert recorded["participants"] == sorted(SITES)
        assert recorded["dropped"] == []
        assert recorded["refused"] == []
        for signed in recorded["receipts"]:
            receipt = signed["receipt"]
            site_key = coordinator.site_key(receipt["site"])
            verify_bound(
                site_key,
                RECEIPT_DOMAIN,
                coordinator.ledger.log_id,
                receipt,
                signed["signature"],
                what="receipt",
            )
            assert (receipt["accountant"], receipt["neighbouring"]) == ("pld", "replace-one")
            recomputed = _replace_one_epsilon(receipt["history"], receipt["delta"])
            assert abs(recomputed - receipt["epsilon"]) <= 1e-6
            add_remove = _prv_epsilon(receipt["history"], receipt["delta"])
            assert abs(add_remove - receipt["epsilon_add_remove"]) <= 1e-6
            assert receipt["epsilon"] <= study.epsilon_caps[receipt["site"]]
    finished = _run_finished(coordinator, run_id)
    assert finished is not None
    assert finished["status"] == "completed"
    released = [
        e.payload
        for e in coordinator.ledger.iter_entries(kind="model.released")
        if e.payload["run_id"] == run_id
    ]
    assert len(released) == 1
    assert (
        released[0]["model_hash"] == finished["model_hash"] == rounds[-1]["aggregated_model_hash"]
    )
    assert set(released[0]["epsilon"]) == set(SITES)
    software = read_site_software(coordinator.home.data_dir)
    assert set(software) == set(SITES)
    for site, hello in software.items():
        assert (hello.site, hello.run_id) == (site, run_id)
        assert hello.version == veracity.__version__
        assert hello.code_hash == study.code_hash  # the bundle the node really runs


def test_a_study_with_client_level_dp_records_both_guarantees(network: Network) -> None:
    coordinator = network.coordinator
    terms = {"noise_multiplier": 1.0, "clipping_norm": 1.0, "max_epsilon": 10.0, "delta": 1e-5}
    plain = _study("bc-central-dp", rounds=2, min_sites=3)
    study = parse_study({**plain.to_document(), "central_dp": terms})
    run_id = _propose_and_run(network, study, dict.fromkeys(SITES, 3.0))

    coordinator.ledger.verify(coordinator.ledger.identity_public_key)
    rounds = _rounds(coordinator, run_id)
    assert [r["round"] for r in rounds] == [1, 2]
    # Flower's RDP accountant, noise 1.0 without amplification, delta 1e-5.
    for recorded, epsilon in zip(rounds, (4.728507, 7.077392), strict=True):
        assert recorded["participants"] == sorted(SITES)
        assert recorded["metrics"]["client-level-epsilon"] == pytest.approx(epsilon, abs=1e-6)
        assert recorded["metrics"]["client-level-delta"] == 1e-5
    finished = _run_finished(coordinator, run_id)
    assert finished is not None
    assert finished["status"] == "completed"
    assert finished["model_hash"] == rounds[-1]["aggregated_model_hash"]
    (released,) = [
        e.payload
        for e in coordinator.ledger.iter_entries(kind="model.released")
        if e.payload["run_id"] == run_id
    ]
    last = rounds[-1]["metrics"]["client-level-epsilon"]
    assert released["metrics"]["client-level-epsilon"] == last
    card = ModelRegistry(coordinator.home.models).get(released["model_hash"]).card
    client_level = card["privacy"]["client_level"]
    assert client_level["epsilon"] == last
    assert client_level["delta"] == 1e-5
    assert client_level["noise_multiplier"] == 1.0
    assert client_level["clipping_norm"] == 1.0
    # The sites' record-level guarantee is reported beside it, from their receipts.
    receipts = {s["receipt"]["site"]: s["receipt"] for s in rounds[-1]["receipts"]}
    for site, guarantee in card["privacy"]["per_site"].items():
        assert guarantee["epsilon"] == receipts[site]["epsilon"] == released["epsilon"][site]


def test_a_site_over_its_cap_is_refused_and_recorded_and_the_run_goes_on(network: Network) -> None:
    coordinator = network.coordinator
    study = _study("bc-one-refuses", rounds=1, min_sites=2)
    caps = {"hospital-a": 3.0, "hospital-b": 3.0, "hospital-c": 0.05}
    run_id = _propose_and_run(network, study, caps)

    (recorded,) = _rounds(coordinator, run_id)
    assert recorded["participants"] == ["hospital-a", "hospital-b"]
    assert [(r["site"], r["kind"]) for r in recorded["refused"]] == [
        ("hospital-c", "budget.refused")
    ]
    refusals = [
        e
        for e in coordinator.ledger.iter_entries(kind="budget.refused", actor="hospital-c")
        if e.payload["run_id"] == run_id
    ]
    assert len(refusals) == 1
    assert refusals[0].payload["epsilon_requested"] > caps["hospital-c"]
    coordinator.ledger.verify(coordinator.ledger.identity_public_key)


def test_a_withdrawn_approval_is_refused_at_the_site_and_the_refusal_reaches_the_ledger(
    network: Network,
) -> None:
    coordinator = network.coordinator
    study = _study("bc-withdrawn", rounds=1, min_sites=2)
    coordinator.propose_study(ADMIN, study.to_document())
    for name in SITES:
        statement = approve(network.sites[name], study, epsilon_cap=3.0)
        coordinator.record_statement(
            ADMIN, statement.kind, name, statement.payload, statement.signature
        )
    # hospital-c's operator withdraws the approval at the site; the coordinator is not told.
    with Site.open(network.sites["hospital-c"].directory) as site:
        refuse_study(site, study, reason="ethics approval withdrawn")
    run = coordinator.start_run(ADMIN, study.study_hash, poll_interval=0.1, node_wait=60).value
    run_id = run.run_id
    assert wait_run(coordinator, run_id, timeout=300).state == "finished:completed"

    (recorded,) = _rounds(coordinator, run_id)
    assert recorded["participants"] == ["hospital-a", "hospital-b"]
    assert [(r["site"], r["kind"]) for r in recorded["refused"]] == [
        ("hospital-c", "approval.missing")
    ]
    (refusal,) = [
        e
        for e in coordinator.ledger.iter_entries(kind="approval.missing", actor="hospital-c")
        if e.payload["run_id"] == run_id
    ]
    assert "ethics approval withdrawn" in refusal.payload["reason"]
    coordinator.ledger.verify(coordinator.ledger.identity_public_key)


def test_receipts_signed_with_a_key_the_ledger_does_not_hold_are_dropped(network: Network) -> None:
    coordinator = network.coordinator
    site = network.sites["hospital-b"]
    # The coordinator is told hospital-b rotated its key; hospital-b still signs with the old one.
    coordinator.revoke_site_key(ADMIN, "hospital-b", reason="rotation ordered by the network")
    # A new signing key; hospital-b keeps its SuperNode, whose registration stands.
    new_key = generate_signing_key()
    coordinator.enrol_site(
        ADMIN,
        "hospital-b",
        public_key_pem=new_key.public.pem(),
        supernode_public_key=site.supernode_public_key,
        proof=sign_enrolment(
            new_key, log_id=coordinator.ledger.log_id, name="hospital-b", role="site"
        ),
    )
    study = _study("bc-wrong-key", rounds=1, min_sites=2)
    coordinator.propose_study(ADMIN, study.to_document())
    for name in ("hospital-a", "hospital-c"):
        statement = approve(network.sites[name], study, epsilon_cap=3.0)
        coordinator.record_statement(
            ADMIN, statement.kind, name, statement.payload, statement.signature
        )
    # hospital-b's approval is signed with its old key: the coordinator refuses to record it.
    statement = approve(site, study, epsilon_cap=3.0)
    with pytest.raises(SignatureError):
        coordinator.record_statement(
            ADMIN, statement.kind, "hospital-b", statement.payload, statement.signature
        )
    assert set(coordinator.reads.approvals(study.study_hash)) == {"hospital-a", "hospital-c"}
    run_id = coordinator.start_run(
        ADMIN, study.study_hash, poll_interval=0.1, node_wait=60
    ).value.run_id
    assert wait_run(coordinator, run_id, timeout=300).state == "finished:completed"
    (recorded,) = _rounds(coordinator, run_id)
    assert recorded["participants"] == ["hospital-a", "hospital-c"]
    coordinator.ledger.verify(coordinator.ledger.identity_public_key)


def test_an_unregistered_supernode_cannot_join(network: Network, tmp_path: Path) -> None:
    coordinator = network.coordinator
    write_supernode_key_pair(tmp_path, comment="intruder")
    argv = [
        sys.executable, "-m", "veracity.client.supernode_runner", "--",
        "--root-certificates", str(coordinator.home.tls.ca_cert),
        "--superlink", coordinator.home.superlink_address,
        "--auth-supernode-private-key", str(tmp_path / "supernode"),
        "--isolation", "process", "--host", "127.0.0.1", "--port", str(free_port()),
        "--max-retries", "0",
    ]  # fmt: skip
    env = flower_environment(tmp_path / "flwr")
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode != 0
    assert "Failed to activate" in done.stdout + done.stderr
    assert time.monotonic() - started < 120
    names = {node.name for node in coordinator.federation.list_nodes()}
    assert names == set(SITES)
