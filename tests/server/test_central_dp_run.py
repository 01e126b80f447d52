"""A run with client-level DP, in process: the coordinator's side is real (ledger, study,
approvals, execute_run, registry); the SuperLink and the site agents are played by a Grid
that answers each training message at once with a signed update."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from tests.factories import receipt_document, trained_reply
from veracity.contracts.events import ROOT_ACTOR
from veracity.contracts.messages import HelloRecord
from veracity.core.canonical import canonical_hash
from veracity.flower_serde import weights_from_record
from veracity.ledger.possession import sign_enrolment
from veracity.ledger.statement import sign_statement
from veracity.server.coordinator import (
    CoordinatorService,
    InMemoryFederation,
    init_coordinator,
    operator,
    package_versions,
)
from veracity.server.fab import build_fab
from veracity.server.polling_grid import PollingGrid
from veracity.server.registry import ModelRegistry
from veracity.server.study_run import RunSettings, execute_run
from veracity.supervise import free_port
from veracity.tasks.breast_cancer import FEATURES, LABEL, breast_cancer_study
from veracity.tasks.study import Study, parse_study
from veracity.tasks.weights import weights_hash

from .conftest import SiteIdentity, make_site_identity

RUN = "7"
NODES = {11: "hospital-a", 12: "hospital-b", 13: "hospital-c"}
SIGNED_AT = "2026-06-11T09:00:00.000000Z"
SETUP = operator("test-setup")


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    # Flower stamps messages with the running task's identity; tests play one task.
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


class _SitesGrid(Grid):
    """Flower's Grid contract in one process: each site answers a training message with
    the global model moved by a small step and a receipt signed with its key."""

    def __init__(
        self,
        sites: dict[str, SiteIdentity],
        study_hash: str,
        run_id: str = RUN,
        *,
        log_id: str,
        gone_after_round: dict[int, int] | None = None,
        signed_for: dict[str, str] | None = None,
    ) -> None:
        self.sites = sites
        self.log_id = log_id
        #: site -> the log its receipts are signed for, where not ``log_id`` (an attack).
        self.signed_for = signed_for or {}
        self.study_hash = study_hash
        self.run_id = run_id
        self.replies: dict[str, Message] = {}
        #: node -> the last round it answers; after it, the node is no longer connected.
        self.gone_after_round = gone_after_round or {}
        self.last_round = 0

    def set_run(self, run: Run) -> None:
        """Not needed in process."""

    @property
    def run(self) -> Run:
        return Run.create_empty(int(self.run_id))

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def _connected(self) -> list[int]:
        return [n for n in NODES if self.last_round < self.gone_after_round.get(n, 10**6)]

    def get_node_ids(self) -> Iterable[int]:
        return self._connected()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return [NodeInfo(node_id=node, name=NODES[node]) for node in self._connected()]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            self.replies[message.metadata.message_id] = self._answer(message)
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(mid) for mid in list(message_ids) if mid in self.replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def _answer(self, request: Message) -> Message:
        site = self.sites[NODES[request.metadata.dst_node_id]]
        if request.metadata.message_type == "query.hello":
            hello = HelloRecord(site=site.name, version="0.0.0-test", code_hash="")
            content = RecordDict({HelloRecord.RECORD: ConfigRecord(hello.to_record())})
            return Message(content, reply_to=request)
        server_round = int(str(request.content["config"]["server-round"]))
        self.last_round = max(self.last_round, server_round)
        current = weights_from_record(request.content.array_records["arrays"])
        step = 0.01 * (request.metadata.dst_node_id - 10)
        weights = {name: (array + step).astype(np.float32) for name, array in current.items()}
        receipt = receipt_document(
            site=site.name,
            study=self.study_hash,
            round=server_round,
            run_id=self.run_id,
            update_hash=weights_hash(weights),
            epsilon=0.5 * server_round,
            history=[[1.7, 0.1, 10 * server_round]],
        )
        log_id = self.signed_for.get(site.name, self.log_id)
        return trained_reply(request, site.key, weights, receipt, log_id=log_id)


@dataclass
class _Network:
    coordinator: CoordinatorService
    sites: dict[str, SiteIdentity]


@pytest.fixture
def network(tmp_path: Path) -> Iterator[_Network]:
    yield from enrolled_network(tmp_path)


def enrolled_network(tmp_path: Path) -> Iterator[_Network]:
    """A coordinator with the three sites enrolled and their datasets registered."""
    coordinator = init_coordinator(
        tmp_path / "coordinator", superlink_port=free_port(), federation=InMemoryFederation()
    )
    try:
        yield enrol_sites(coordinator)
    finally:
        coordinator.close()


def enrol_sites(coordinator: CoordinatorService) -> _Network:
    """Enrol the three sites on ``coordinator`` and register their datasets."""
    sites = {name: make_site_identity(name) for name in NODES.values()}
    for site in sites.values():
        coordinator.enrol_site(
            SETUP,
            site.name,
            public_key_pem=site.key.public.pem(),
            proof=sign_enrolment(
                site.key, log_id=coordinator.ledger.log_id, name=site.name, role="site"
            ),
            supernode_public_key=site.supernode_public,
        )
        registered = {
            "site": site.name, "dataset_id": "bc", "commitment": "cd" * 32,
            "schema_hash": "ef" * 32, "rows": 100, "label": LABEL, "features": list(FEATURES),
            "signed_at": SIGNED_AT,
        }  # fmt: skip
        signature = sign_statement(
            site.key, "dataset.registered", site.name, registered, log_id=coordinator.ledger.log_id
        )
        coordinator.record_statement(SETUP, "dataset.registered", site.name, registered, signature)
    return _Network(coordinator, sites)


def _propose(network: _Network, *, max_epsilon: float, rounds: int, **terms: Any) -> Study:
    coordinator = network.coordinator
    plain = breast_cancer_study(
        study_id=f"bc-central-{max_epsilon}",
        epsilon_caps=dict.fromkeys(NODES.values(), 3.0),
        noise_multiplier=1.7,
        code_hash=build_fab().fab_hash,
        rounds=rounds,
        **terms,
    )
    central = {"noise_multiplier": 1.0, "clipping_norm": 1.0, "max_epsilon": max_epsilon}
    study = parse_study({**plain.to_document(), "central_dp": {**central, "delta": 1e-5}})
    coordinator.propose_study(SETUP, study.to_document())
    for site in network.sites.values():
        approval = {
            "study_hash": study.study_hash, "site": site.name, "dataset_id": "bc",
            "epsilon_cap": 3.0, "signed_at": SIGNED_AT,
        }  # fmt: skip
        signature = sign_statement(
            site.key, "study.approved", site.name, approval, log_id=coordinator.ledger.log_id
        )
        coordinator.record_statement(SETUP, "study.approved", site.name, approval, signature)
    return study


def _run(network: _Network, *, max_epsilon: float, rounds: int) -> Study:
    study = _propose(network, max_epsilon=max_epsilon, rounds=rounds)
    _execute(network, study)
    return study


def _execute(network: _Network, study: Study, run_id: str = RUN, **grid_terms: Any) -> None:
    coordinator = network.coordinator
    coordinator.ledger.append(
        "run.started",
        ROOT_ACTOR,
        {
            "run_id": run_id,
            "study_hash": study.study_hash,
            "fab_hash": study.code_hash,
            "config_hash": canonical_hash({}),
            "package_versions": package_versions(),
            "seed_commitment": canonical_hash({"model_seed": study.model_seed}),
        },
        signer=coordinator.root_key,
    )
    sites_grid = _SitesGrid(
        network.sites,
        study.study_hash,
        run_id,
        log_id=network.coordinator.ledger.log_id,
        **grid_terms,
    )
    grid = PollingGrid(sites_grid, poll_interval=0.01)
    settings = RunSettings(
        run_id=run_id,
        study_hash=study.study_hash,
        fab_hash=study.code_hash,
        round_timeout=5.0,
        node_wait=1.0,
        started_timeout=1.0,
    )
    execute_run(coordinator, grid, settings)


def _rounds(coordinator: CoordinatorService, run_id: str) -> list[dict[str, Any]]:
    return [record.to_json() for record in coordinator.reads.rounds(run_id)]


def _run_finished(coordinator: CoordinatorService, run_id: str) -> dict[str, Any] | None:
    run = coordinator.reads.run(run_id)
    return None if run.finished is None else run.finished.to_json(run.run_id, run.study_hash)


def test_reaching_max_epsilon_stops_the_run_and_releases_the_last_model(
    network: _Network,
) -> None:
    coordinator = network.coordinator
    # noise 1.0: epsilon 4.73 after one round, 7.08 after two; the budget allows one.
    study = _run(network, max_epsilon=6.0, rounds=3)

    coordinator.ledger.verify(coordinator.ledger.identity_public_key)
    (recorded,) = _rounds(coordinator, RUN)
    assert recorded["metrics"]["client-level-epsilon"] == pytest.approx(4.728507, abs=1e-6)
    assert recorded["metrics"]["client-level-delta"] == 1e-5
    finished = _run_finished(coordinator, RUN)
    assert finished is not None
    assert finished["status"] == "stopped"
    assert finished["rounds_completed"] == 1
    assert "round 2 would take epsilon past max_epsilon 6.0" in finished["reason"]
    assert finished["model_hash"] == recorded["aggregated_model_hash"]
    (released,) = [e.payload for e in coordinator.ledger.iter_entries(kind="model.released")]
    assert released["model_hash"] == finished["model_hash"]
    assert (
        released["metrics"]["client-level-epsilon"] == recorded["metrics"]["client-level-epsilon"]
    )
    card = ModelRegistry(coordinator.home.models).get(released["model_hash"]).card
    client_level = card["privacy"]["client_level"]
    assert client_level["epsilon"] == recorded["metrics"]["client-level-epsilon"]
    assert client_level["delta"] == 1e-5
    assert client_level["max_epsilon"] == 6.0
    assert client_level["noise_stddev"] == pytest.approx(1.0 / 3)
    assert client_level["rounds"] == 1
    assert set(card["privacy"]["per_site"]) == set(NODES.values())
    assert card["training"]["study_hash"] == study.study_hash


def test_a_budget_too_small_for_one_round_ends_the_run_without_a_model(
    network: _Network,
) -> None:
    coordinator = network.coordinator
    _run(network, max_epsilon=4.0, rounds=2)

    coordinator.ledger.verify(coordinator.ledger.identity_public_key)
    assert _rounds(coordinator, RUN) == []
    finished = _run_finished(coordinator, RUN)
    assert finished is not None
    assert finished["status"] == "stopped"
    assert finished["model_hash"] is None
    assert "round 1 would take epsilon past max_epsilon 4.0" in finished["reason"]
    assert list(coordinator.ledger.iter_entries(kind="model.released")) == []


def test_the_client_level_accountant_composes_across_runs_of_a_study(
    network: _Network,
) -> None:
    coordinator = network.coordinator
    # noise 1.0, no amplification: 4.73 after one release, 7.08 after two, 8.93 after three,
    # 10.5 after four (Flower's RDP); the budget of 10 allows three releases in all.
    study = _propose(network, max_epsilon=10.0, rounds=2, runs=2)
    _execute(network, study, "7")
    _execute(network, study, "8")

    first, second = _rounds(coordinator, "7"), _rounds(coordinator, "8")
    assert [r["metrics"]["client-level-epsilon"] for r in first] == pytest.approx(
        [4.728507, 7.077392], abs=1e-6
    )
    # Before, the second run's accountant started from zero: 4.73 again, and two rounds.
    (only,) = second
    assert only["metrics"]["client-level-epsilon"] > 7.077392
    finished = _run_finished(coordinator, "8")
    assert finished is not None
    assert finished["status"] == "stopped"
    assert finished["rounds_completed"] == 1
    assert "round 2 would take epsilon past max_epsilon 10.0" in finished["reason"]
    assert "over 3 round(s)" in finished["reason"]


def test_the_card_reports_client_level_replace_one_epsilon_and_the_trust_it_needs(
    network: _Network,
) -> None:
    from dp_accounting import dp_event
    from dp_accounting.rdp import rdp_privacy_accountant

    _run(network, max_epsilon=10.0, rounds=2)
    coordinator = network.coordinator
    rounds = _rounds(coordinator, RUN)
    # Replacing one of n clipped updates moves the mean by 2C/n: noise multiplier 1.0 / 2.
    expected = []
    for releases in (1, 2):
        accountant = rdp_privacy_accountant.RdpAccountant()
        accountant.compose(dp_event.GaussianDpEvent(0.5), releases)
        expected.append(accountant.get_epsilon(1e-5))
    replaced = [r["metrics"]["client-level-epsilon-replace-one"] for r in rounds]
    assert replaced == pytest.approx(expected, abs=1e-9)
    assert all(
        r["metrics"]["client-level-epsilon-replace-one"] > r["metrics"]["client-level-epsilon"]
        for r in rounds
    )
    (released,) = [e.payload for e in coordinator.ledger.iter_entries(kind="model.released")]
    card = ModelRegistry(coordinator.home.models).get(released["model_hash"]).card
    client_level = card["privacy"]["client_level"]
    assert client_level["epsilon_replace_one"] == replaced[-1]
    assert "not against the coordinator" in client_level["trust"]


def test_a_site_that_goes_offline_under_central_dp_ends_the_run_with_run_finished(
    network: _Network,
) -> None:
    coordinator = network.coordinator
    study = _propose(network, max_epsilon=50.0, rounds=3, min_sites=2)

    # hospital-c answers round 1 and is gone from round 2: before, Flower raised
    # "The configured sample size does not match num_sampled_clients: 2 != 3" and the run
    # died without run.finished.
    _execute(network, study, RUN, gone_after_round={13: 1})

    assert [r["round"] for r in _rounds(coordinator, RUN)] == [1]
    finished = _run_finished(coordinator, RUN)
    assert finished is not None
    assert finished["status"] == "insufficient_sites"
    assert "central DP needs every one of the 3 site(s)" in finished["reason"]
    assert finished["model_hash"] is None
    coordinator.ledger.verify(coordinator.ledger.identity_public_key)


def test_an_unexpected_error_in_a_run_is_recorded_as_failed_with_its_reason(
    network: _Network, monkeypatch: pytest.MonkeyPatch
) -> None:
    coordinator = network.coordinator
    study = _propose(network, max_epsilon=50.0, rounds=2)

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("the disk is full")

    monkeypatch.setattr("veracity.server.study_run.release_model", broken)
    with pytest.raises(RuntimeError, match="disk is full"):
        _execute(network, study, RUN)

    finished = _run_finished(coordinator, RUN)
    assert finished is not None
    assert finished["status"] == "failed"
    assert finished["reason"] == "internal error: RuntimeError: the disk is full"
    assert finished["rounds_completed"] == 2


def test_a_receipt_signed_for_another_log_is_dropped_naming_the_log(network: _Network) -> None:
    # hospital-c's reply carries a receipt it signed for another log (a dishonest relay
    # replaying a round of that log here): the coordinator's receipt check drops it.
    coordinator = network.coordinator
    study = _propose(network, max_epsilon=50.0, rounds=1)
    other_log = "ab" * 32
    _execute(network, study, RUN, signed_for={"hospital-c": other_log})
    assert _rounds(coordinator, RUN) == []
    finished = _run_finished(coordinator, RUN)
    assert finished is not None
    assert finished["status"] == "insufficient_sites"
    assert "without update: hospital-c (hospital-c's receipt" in finished["reason"]
    assert (
        f"for this log {coordinator.ledger.log_id} (forged, or signed for another log)"
        in (finished["reason"])
    )
    assert finished["model_hash"] is None
    coordinator.ledger.verify(coordinator.ledger.identity_public_key)
