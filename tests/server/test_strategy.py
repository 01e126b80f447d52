"""The audited strategy with real Flower messages: what is aggregated, dropped and refused."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from veracity.crypto.keys import SigningKey, VerifyKey, generate_signing_key
from veracity.flower_serde import weights_from_record, weights_to_record
from veracity.ledger.canonical import canonical_json
from veracity.ledger.statement import RECEIPT_DOMAIN, sign_document, sign_statement
from veracity.server.strategy import AuditedStrategy, RoundOutcome, round_metrics
from veracity.tasks.weights import weights_hash

STUDY = "ab" * 32
RUN = "42"
SITES = {1: "hospital-a", 2: "hospital-b", 3: "hospital-c", 4: "hospital-d"}


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    # Flower stamps messages with the running task's identity; tests play one task.
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def _request(node: int) -> Message:
    return Message(
        RecordDict({"config": ConfigRecord({"x": 1})}), dst_node_id=node, message_type="train"
    )


def _trained(
    node: int, key: SigningKey, weights: dict[str, Any], *, claimed: dict[str, Any] | None = None
) -> Message:
    receipt = {
        "site": SITES[node], "study": STUDY, "round": 1, "run_id": RUN, "dataset_id": "bc",
        "dataset_commitment": "cd" * 32, "update_hash": weights_hash(claimed or weights),
        "accountant": "pld", "neighbouring": "replace-one",
        "delta": 1e-5, "epsilon": 1.0, "history": [[1.5, 0.2, 5]],
        "max_grad_norm": 1.0, "num_examples": 100, "epsilon_add_remove": 0.5,
        "noise_generator": "test",
    }  # fmt: skip
    content = RecordDict(
        {
            "arrays": weights_to_record(weights),
            "metrics": MetricRecord({"num-examples": 100, "train-seconds": 0.5}),
            "receipt": ConfigRecord(
                {
                    "json": canonical_json(receipt).decode(),
                    "signature": sign_document(key, RECEIPT_DOMAIN, receipt),
                }
            ),
        }
    )
    return Message(content, reply_to=_request(node))


def _refused(node: int, key: SigningKey) -> Message:
    payload = {"site": SITES[node], "study_hash": STUDY, "reason": "cap"}
    record = ConfigRecord(
        {
            "kind": "budget.refused",
            "json": canonical_json(payload).decode(),
            "signature": sign_statement(key, "budget.refused", SITES[node], payload),
        }
    )
    return Message(RecordDict({"refusal": record}), reply_to=_request(node))


def _weights(value: float) -> dict[str, Any]:
    return {"w": np.full((2, 2), value, dtype=np.float32), "b": np.full(2, value, dtype=np.float32)}


def _strategy(
    keys: dict[str, VerifyKey], rounds: list[RoundOutcome], refusals: list[Any], min_sites: int
) -> AuditedStrategy:
    return AuditedStrategy(
        FedAvg(fraction_evaluate=0.0, train_metrics_aggr_fn=round_metrics),
        study_hash=STUDY,
        run_id=RUN,
        min_sites=min_sites,
        sites_by_node=SITES,
        site_key=keys.__getitem__,
        record_round=rounds.append,
        record_refusal=lambda *args: refusals.append(args),
    )


def test_only_verified_updates_are_aggregated_and_the_rest_recorded() -> None:
    signing = {name: generate_signing_key() for name in SITES.values()}
    keys = {name: key.public for name, key in signing.items()}
    rounds: list[RoundOutcome] = []
    refusals: list[Any] = []
    strategy = _strategy(keys, rounds, refusals, min_sites=2)
    replies = [
        _trained(1, signing["hospital-a"], _weights(1.0)),
        # hospital-b's receipt names other weights than the ones that arrived
        _trained(2, signing["hospital-b"], _weights(9.0), claimed=_weights(2.0)),
        _refused(3, signing["hospital-c"]),
        _trained(4, signing["hospital-d"], _weights(3.0)),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)

    assert arrays is not None
    assert metrics is not None
    averaged = weights_from_record(arrays)
    np.testing.assert_allclose(averaged["w"], np.full((2, 2), 2.0))
    (outcome,) = rounds
    assert outcome.participants == ["hospital-a", "hospital-d"]
    assert [d["site"] for d in outcome.dropped] == ["hospital-b"]
    assert "update_hash" in outcome.dropped[0]["reason"]
    assert outcome.refused == [{"site": "hospital-c", "kind": "budget.refused", "reason": "cap"}]
    assert outcome.aggregated_model_hash == weights_hash(averaged)
    assert [args[0] for args in refusals] == ["hospital-c"]
    assert strategy.abort_reason is None


def test_a_receipt_by_another_key_is_dropped_and_too_few_sites_stop_the_run() -> None:
    signing = {name: generate_signing_key() for name in SITES.values()}
    keys = {name: key.public for name, key in signing.items()}
    rounds: list[RoundOutcome] = []
    strategy = _strategy(keys, rounds, [], min_sites=2)
    replies = [
        _trained(1, signing["hospital-a"], _weights(1.0)),
        _trained(2, generate_signing_key(), _weights(2.0)),  # not hospital-b's key
    ]
    arrays, _ = strategy.aggregate_train(1, replies)

    assert arrays is None
    assert "hospital-b" in (strategy.abort_reason or "")
    (outcome,) = rounds
    assert outcome.aggregated_model_hash is None
    assert outcome.dropped[0]["site"] == "hospital-b"
    # Once stopped, later rounds send nothing (the grid is never consulted).
    no_grid: Any = None
    nothing = strategy.configure_train(2, weights_to_record(_weights(0.0)), ConfigRecord(), no_grid)
    assert list(nothing) == []


class _Connected:
    """The part of a Grid the strategy reads before sampling: which nodes are connected."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def test_a_round_samples_the_connected_sites_and_stops_when_too_few_remain() -> None:
    keys = {name: generate_signing_key().public for name in SITES.values()}
    strategy = AuditedStrategy(
        FedAvg(fraction_evaluate=0.0, min_train_nodes=4, min_available_nodes=4),
        study_hash=STUDY,
        run_id=RUN,
        min_sites=2,
        sites_by_node=SITES,
        site_key=keys.__getitem__,
        record_round=lambda outcome: None,
        record_refusal=lambda *args: None,
        node_wait=0.2,
    )
    arrays = weights_to_record(_weights(0.0))
    three: Any = _Connected([1, 2, 4])
    sent = list(strategy.configure_train(1, arrays, ConfigRecord(), three))
    assert sorted(m.metadata.dst_node_id for m in sent) == [1, 2, 4]  # no wait for node 3

    one: Any = _Connected([1])
    assert list(strategy.configure_train(2, arrays, ConfigRecord(), one)) == []
    assert "1 approving site(s) connected" in (strategy.abort_reason or "")
