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
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from veracity.contracts.events import ROOT_ACTOR
from veracity.core.canonical import canonical_hash, canonical_json
from veracity.flower_serde import weights_from_record, weights_to_record
from veracity.ledger.statement import RECEIPT_DOMAIN, sign_document, sign_statement
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

    def __init__(self, sites: dict[str, SiteIdentity], study_hash: str) -> None:
        self.sites = sites
        self.study_hash = study_hash
        self.replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        """Not needed in process."""

    @property
    def run(self) -> Run:
        return Run.create_empty(int(RUN))

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(NODES)

    def get_nodes(self) -> Iterable[NodeInfo]:
        return [NodeInfo(node_id=node, name=name) for node, name in NODES.items()]

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
        server_round = int(str(request.content["config"]["server-round"]))
        current = weights_from_record(request.content.array_records["arrays"])
        step = 0.01 * (request.metadata.dst_node_id - 10)
        weights = {name: (array + step).astype(np.float32) for name, array in current.items()}
        receipt = {
            "site": site.name, "study": self.study_hash, "round": server_round, "run_id": RUN,
            "dataset_id": "bc", "dataset_commitment": "cd" * 32,
            "update_hash": weights_hash(weights), "accountant": "prv", "delta": 1e-5,
            "epsilon": 0.5 * server_round, "history": [[1.7, 0.1, 10 * server_round]],
            "max_grad_norm": 1.0, "num_examples": 100,
        }  # fmt: skip
        content = RecordDict(
            {
                "arrays": weights_to_record(weights),
                "metrics": MetricRecord({"num-examples": 100, "train-seconds": 0.1}),
                "receipt": ConfigRecord(
                    {
                        "json": canonical_json(receipt).decode(),
                        "signature": sign_document(site.key, RECEIPT_DOMAIN, receipt),
                        "noise-generator": "test",
                    }
                ),
            }
        )
        return Message(content, reply_to=request)


@dataclass
class _Network:
    coordinator: CoordinatorService
    sites: dict[str, SiteIdentity]


@pytest.fixture
def network(tmp_path: Path) -> Iterator[_Network]:
    coordinator = init_coordinator(
        tmp_path / "coordinator", superlink_port=free_port(), federation=InMemoryFederation()
    )
    sites = {name: make_site_identity(name) for name in NODES.values()}
    for site in sites.values():
        coordinator.enrol_site(
            SETUP,
            site.name,
            public_key_pem=site.key.public.pem(),
            supernode_public_key=site.supernode_public,
        )
        registered = {
            "site": site.name, "dataset_id": "bc", "commitment": "cd" * 32,
            "schema_hash": "ef" * 32, "rows": 100, "label": LABEL, "features": list(FEATURES),
            "signed_at": SIGNED_AT,
        }  # fmt: skip
        signature = sign_statement(site.key, "dataset.registered", site.name, registered)
        coordinator.record_statement(SETUP, "dataset.registered", site.name, registered, signature)
    try:
        yield _Network(coordinator, sites)
    finally:
        coordinator.close()


def _run(network: _Network, *, max_epsilon: float, rounds: int) -> Study:
    coordinator = network.coordinator
    plain = breast_cancer_study(
        study_id=f"bc-central-{max_epsilon}",
        epsilon_caps=dict.fromkeys(NODES.values(), 3.0),
        noise_multiplier=1.7,
        code_hash=build_fab().fab_hash,
        rounds=rounds,
    )
    central = {"noise_multiplier": 1.0, "clipping_norm": 1.0, "max_epsilon": max_epsilon}
    study = parse_study({**plain.to_document(), "central_dp": {**central, "delta": 1e-5}})
    coordinator.propose_study(SETUP, study.to_document())
    for site in network.sites.values():
        approval = {
            "study_hash": study.study_hash, "site": site.name, "dataset_id": "bc",
            "epsilon_cap": 3.0, "signed_at": SIGNED_AT,
        }  # fmt: skip
        signature = sign_statement(site.key, "study.approved", site.name, approval)
        coordinator.record_statement(SETUP, "study.approved", site.name, approval, signature)
    coordinator.ledger.append(
        "run.started",
        ROOT_ACTOR,
        {
            "run_id": RUN,
            "study_hash": study.study_hash,
            "fab_hash": study.code_hash,
            "config_hash": canonical_hash({}),
            "package_versions": package_versions(),
            "seed_commitment": canonical_hash({"model_seed": study.model_seed}),
        },
        signer=coordinator.root_key,
    )
    grid = PollingGrid(_SitesGrid(network.sites, study.study_hash), poll_interval=0.01)
    settings = RunSettings(
        run_id=RUN,
        study_hash=study.study_hash,
        fab_hash=study.code_hash,
        round_timeout=5.0,
        node_wait=1.0,
        started_timeout=1.0,
    )
    execute_run(coordinator, grid, settings)
    return study


def _rounds(coordinator: CoordinatorService) -> list[dict[str, Any]]:
    return [record.to_json() for record in coordinator.reads.rounds(RUN)]


def _run_finished(coordinator: CoordinatorService) -> dict[str, Any] | None:
    run = coordinator.reads.run(RUN)
    return None if run.finished is None else run.finished.to_json(run.run_id, run.study_hash)


def test_reaching_max_epsilon_stops_the_run_and_releases_the_last_model(
    network: _Network,
) -> None:
    coordinator = network.coordinator
    # noise 1.0: epsilon 4.73 after one round, 7.08 after two; the budget allows one.
    study = _run(network, max_epsilon=6.0, rounds=3)

    coordinator.ledger.verify(coordinator.root_key.public)
    (recorded,) = _rounds(coordinator)
    assert recorded["metrics"]["client-level-epsilon"] == pytest.approx(4.728507, abs=1e-6)
    assert recorded["metrics"]["client-level-delta"] == 1e-5
    finished = _run_finished(coordinator)
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

    coordinator.ledger.verify(coordinator.root_key.public)
    assert _rounds(coordinator) == []
    finished = _run_finished(coordinator)
    assert finished is not None
    assert finished["status"] == "stopped"
    assert finished["model_hash"] is None
    assert "round 1 would take epsilon past max_epsilon 4.0" in finished["reason"]
    assert list(coordinator.ledger.iter_entries(kind="model.released")) == []
