"""The audited strategy with real Flower messages: what is aggregated, dropped and refused."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from tests.factories import (
    LOG_ID,
    budget_refused_document,
    receipt_document,
    refused_reply,
    trained_reply,
)
from veracity.contracts.events import Refused
from veracity.crypto.keys import SigningKey, VerifyKey, generate_signing_key
from veracity.flower_serde import weights_from_record, weights_to_record
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
    receipt = receipt_document(
        site=SITES[node], study=STUDY, run_id=RUN, update_hash=weights_hash(claimed or weights)
    )
    return trained_reply(_request(node), key, weights, receipt)


def _refused(node: int, key: SigningKey) -> Message:
    payload = budget_refused_document(site=SITES[node], study_hash=STUDY, run_id=RUN)
    return refused_reply(_request(node), key, payload)


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
        log_id=LOG_ID,
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
    assert [d.site for d in outcome.dropped] == ["hospital-b"]
    assert "update_hash" in outcome.dropped[0].reason
    assert outcome.refused == [Refused(site="hospital-c", kind="budget.refused", reason="cap")]
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
    assert outcome.dropped[0].site == "hospital-b"
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
        log_id=LOG_ID,
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


def test_the_superlinks_error_reply_for_a_dead_sites_upload_does_not_end_the_run() -> None:
    # A site died after its reply's message reached the SuperLink but before its update
    # did: Flower's grid answers with its own error message, sent from no site's node.
    from flwr.app import Error, Metadata
    from flwr.app.message import make_message
    from flwr.common.constant import ErrorCode

    signing = {name: generate_signing_key() for name in SITES.values()}
    keys = {name: key.public for name, key in signing.items()}
    rounds: list[RoundOutcome] = []
    strategy = _strategy(keys, rounds, [], min_sites=2)
    unavailable = make_message(
        metadata=Metadata(
            run_id=1,
            message_id="",
            src_node_id=7,  # the SuperLink's own node, not a site's
            dst_node_id=7,
            reply_to_message_id="ab" * 32,
            group_id="",
            created_at=0.0,
            ttl=0,
            message_type="system",
        ),
        error=Error(code=ErrorCode.MESSAGE_UNAVAILABLE, reason="objects unavailable"),
    )
    replies = [
        _trained(1, signing["hospital-a"], _weights(1.0)),
        _trained(2, signing["hospital-b"], _weights(3.0)),
        unavailable,
    ]

    arrays, _ = strategy.aggregate_train(1, replies)

    assert arrays is not None
    assert strategy.abort_reason is None
    (outcome,) = rounds
    assert outcome.participants == ["hospital-a", "hospital-b"]
    assert all(d.site in SITES.values() for d in outcome.dropped)
