"""The contract holds at the federation's boundary, with real processes on 127.0.0.1.

One SuperLink and three site agents, one of which (``hospital-c``) runs a worker that signs
receipts the ledger's contract refuses and whose accountant cannot bound rounds at a tiny
noise multiplier (``tests/rogue_worker.py``). What a site sends is checked with the very
models the ledger records it with, so:

* a receipt the ledger would refuse costs only the site that sent it: its update is
  dropped and the round is recorded with the others (before the contract package, the
  coordinator accepted it, the ledger then refused ``round.completed`` and the whole run
  was recorded ``failed``);
* a signed ``budget.refused`` whose round the accountant cannot bound
  (``epsilon_requested: null``) is recorded as the site's own entry (before, the ledger
  schema refused ``null`` and the coordinator dropped the signed refusal).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from veracity.client import supernode
from veracity.localnet import LocalSite, approve, create_site, enrol, start_nodes, wait_run
from veracity.server.coordinator import CoordinatorService, init_coordinator, operator
from veracity.server.coordinator.records import RunOutcome
from veracity.server.fab import build_fab
from veracity.server.superlink import SuperLinkOptions, start_superlink
from veracity.supervise import ProcessGroup, free_port, python_module_argv
from veracity.tasks.breast_cancer import breast_cancer_study, federated_split
from veracity.tasks.spec import ModelFamily
from veracity.tasks.study import Study

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SITES = ("hospital-a", "hospital-b", "hospital-c")
ROGUE = "hospital-c"
ROGUE_WORKER = Path(__file__).with_name("rogue_worker.py")
ADMIN = operator("admin")


@dataclass
class Network:
    coordinator: CoordinatorService
    sites: dict[str, LocalSite]


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    root = tmp_path_factory.mktemp("network")
    port = free_port()
    coordinator = init_coordinator(root / "coordinator", superlink_port=port)
    split = federated_split(len(SITES), seed=0, skew=0.6)

    with ProcessGroup() as group, pytest.MonkeyPatch.context() as patch:
        start_superlink(coordinator.home, SuperLinkOptions(port=port), group)
        sites = {
            name: create_site(root / "sites" / name, name, partition)
            for name, partition in zip(SITES, split.sites, strict=True)
        }
        for site in sites.values():
            enrol(coordinator, site)
        honest = [sites[name] for name in SITES if name != ROGUE]
        start_nodes(coordinator, honest, group, idle_poll=0.2)

        def rogue_argv(module: str, *args: str) -> list[str]:
            if module == "veracity.client.worker":
                return [sys.executable, str(ROGUE_WORKER), *args]
            return python_module_argv(module, *args)

        patch.setattr(supernode, "python_module_argv", rogue_argv)
        start_nodes(coordinator, [sites[ROGUE]], group, idle_poll=0.2)
        try:
            yield Network(coordinator, sites)
        finally:
            coordinator.close()


def _run(network: Network, study: Study) -> str:
    coordinator = network.coordinator
    coordinator.propose_study(ADMIN, study.to_document())
    for name in SITES:
        statement = approve(network.sites[name], study, epsilon_cap=3.0)
        coordinator.record_statement(
            ADMIN, statement.kind, name, statement.payload, statement.signature
        )
    run = coordinator.start_run(ADMIN, study.study_hash, poll_interval=0.1, node_wait=60).value
    wait_run(coordinator, run.run_id, timeout=300)
    return run.run_id


def _finished(coordinator: CoordinatorService, run_id: str) -> RunOutcome | None:
    return coordinator.reads.run(run_id).finished


def _study(study_id: str, *, noise_multiplier: float) -> Study:
    return breast_cancer_study(
        study_id=study_id,
        epsilon_caps=dict.fromkeys(SITES, 3.0),
        noise_multiplier=noise_multiplier,
        code_hash=build_fab().fab_hash,
        family=ModelFamily.LOGISTIC,
        rounds=1,
        min_sites=2,
    )


def test_a_receipt_the_ledger_would_refuse_drops_that_site_not_the_run(network: Network) -> None:
    coordinator = network.coordinator
    run_id = _run(network, _study("bc-rogue-receipt", noise_multiplier=1.7))

    finished = _finished(coordinator, run_id)
    assert finished is not None
    assert finished.status == "completed", finished.reason
    (recorded,) = coordinator.reads.rounds(run_id)
    assert recorded.completed.participants == ["hospital-a", "hospital-b"]
    assert [d.site for d in recorded.completed.dropped] == [ROGUE]
    assert "accountant" in recorded.completed.dropped[0].reason
    coordinator.ledger.verify(coordinator.ledger.identity_public_key)


def test_a_signed_refusal_of_an_unboundable_round_is_recorded(network: Network) -> None:
    coordinator = network.coordinator
    # At noise 0.5 a round would cost about 15 against caps of 3: every site refuses, and
    # hospital-c's accountant cannot bound the round at all, so its signed refusal says
    # epsilon_requested: null.
    run_id = _run(network, _study("bc-unboundable", noise_multiplier=0.5))

    refusals = {
        e.actor: e.payload
        for e in coordinator.ledger.iter_entries(kind="budget.refused")
        if e.payload["run_id"] == run_id
    }
    assert sorted(refusals) == sorted(SITES)
    assert refusals[ROGUE]["epsilon_requested"] is None
    assert all(refusals[name]["epsilon_requested"] > 3.0 for name in SITES if name != ROGUE)
    finished = _finished(coordinator, run_id)
    assert finished is not None
    assert finished.status == "insufficient_sites"
    coordinator.ledger.verify(coordinator.ledger.identity_public_key)
