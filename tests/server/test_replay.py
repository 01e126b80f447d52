"""The auditor's replay of a run's aggregation: a real coordinator (ledger, study, approvals,
execute_run, update store) driven in process by the signed-reply Grid of the central-DP
tests, then archived, exported as a bundle and replayed."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

from tests.server.test_central_dp_run import (  # noqa: F401 - a fixture, registered by name
    NODES,
    SETUP,
    SIGNED_AT,
    _execute,
    _Network,
    _propose,
    _SitesGrid,
    _task_identity,
    enrolled_network,
)
from veracity.cli import main
from veracity.errors import ReplayMismatch
from veracity.flower_serde import weights_from_record, weights_to_record
from veracity.ledger.statement import sign_statement
from veracity.server.fab import build_fab
from veracity.server.replay import replay_aggregation
from veracity.server.round_archive import UpdateStore, write_archive
from veracity.tasks.breast_cancer import breast_cancer_study
from veracity.tasks.study import Study
from veracity.tasks.weights import weights_to_bytes

RUN = "7"


@pytest.fixture
def network(tmp_path: Path) -> Iterator[_Network]:
    yield from enrolled_network(tmp_path)


def _propose_plain(network: _Network, *, rounds: int, **options: Any) -> Study:
    coordinator = network.coordinator
    study = breast_cancer_study(
        **{"study_id": "bc-replay", **options},
        epsilon_caps=dict.fromkeys(NODES.values(), 3.0),
        noise_multiplier=1.7,
        code_hash=build_fab().fab_hash,
        rounds=rounds,
    )
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


def _archive_and_bundle(network: _Network, tmp_path: Path) -> tuple[Path, Path]:
    coordinator = network.coordinator
    archive = tmp_path / "archive"
    write_archive(coordinator.ledger, UpdateStore(coordinator.home.updates), RUN, archive)
    bundle = tmp_path / "ledger.bundle"
    coordinator.ledger.export_bundle(bundle)
    return bundle, archive


def _round_updates(network: _Network, server_round: int) -> dict[str, str]:
    (payload,) = [
        e.payload
        for e in network.coordinator.ledger.iter_entries(kind="round.completed")
        if e.payload["round"] == server_round
    ]
    return {r["receipt"]["site"]: r["receipt"]["update_hash"] for r in payload["receipts"]}


def test_an_honest_runs_archive_replays_every_round(network: _Network, tmp_path: Path) -> None:
    _execute(network, _propose_plain(network, rounds=2), RUN)
    bundle, archive = _archive_and_bundle(network, tmp_path)

    report = replay_aggregation(
        bundle, archive, trusted_root=network.coordinator.ledger.identity_public_key
    )

    assert (report.run_id, report.rounds, report.updates) == (RUN, 2, 6)
    assert report.released_model_hash == report.final_model_hash


def test_a_changed_update_in_the_archive_fails_the_replay_at_its_round(
    network: _Network, tmp_path: Path
) -> None:
    _execute(network, _propose_plain(network, rounds=2), RUN)
    bundle, archive = _archive_and_bundle(network, tmp_path)
    update_hash = _round_updates(network, 2)["hospital-b"]
    path = archive / "weights" / f"{update_hash}.npz"
    weights = UpdateStore(archive / "weights").get(update_hash)
    first = sorted(weights)[0]
    weights[first] = weights[first] + np.float32(0.001)
    path.write_bytes(weights_to_bytes(weights))

    with pytest.raises(ReplayMismatch, match="update of hospital-b") as caught:
        replay_aggregation(
            bundle, archive, trusted_root=network.coordinator.ledger.identity_public_key
        )
    assert caught.value.round == 2


def test_a_coordinator_that_swaps_an_update_before_aggregation_is_caught(
    network: _Network, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    honest = FedAvg.aggregate_train

    def swapping(
        self: FedAvg, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        # The dishonest coordinator aggregates another update in place of hospital-c's in
        # round 2, and archives and records the update hospital-c signed for.
        replies = list(replies)
        if server_round == 2:
            reply = replies[-1]
            weights = weights_from_record(reply.content.array_records["arrays"])
            reply.content["arrays"] = weights_to_record({k: v * 0 for k, v in weights.items()})
        return honest(self, server_round, replies)

    monkeypatch.setattr(FedAvg, "aggregate_train", swapping)
    _execute(network, _propose_plain(network, rounds=3), RUN)
    monkeypatch.undo()
    bundle, archive = _archive_and_bundle(network, tmp_path)

    with pytest.raises(ReplayMismatch, match="FedAvg of the receipted updates") as caught:
        replay_aggregation(
            bundle, archive, trusted_root=network.coordinator.ledger.identity_public_key
        )
    assert caught.value.round == 2


class _UnsignedWeightGrid(_SitesGrid):
    """Sites whose unsigned ``num-examples`` metric disagrees with their signed receipt."""

    def _answer(self, request: Message) -> Message:
        reply = super()._answer(request)
        if request.metadata.message_type != "query.hello":
            node = request.metadata.dst_node_id
            reply.content.metric_records["metrics"]["num-examples"] = 50 * (node - 10)
        return reply


class _ReversedGrid(_SitesGrid):
    """The replies of a round arrive in the reverse of the sites' order."""

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return list(reversed(list(super().pull_messages(message_ids))))


def test_fedavg_weighs_by_the_signed_row_count_so_the_replay_matches(
    network: _Network, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tests.server.test_central_dp_run._SitesGrid", _UnsignedWeightGrid)
    _execute(network, _propose_plain(network, rounds=2), RUN)
    bundle, archive = _archive_and_bundle(network, tmp_path)

    report = replay_aggregation(
        bundle, archive, trusted_root=network.coordinator.ledger.identity_public_key
    )

    assert report.rounds == 2


def test_replies_arriving_in_any_order_are_aggregated_in_site_order(
    network: _Network, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tests.server.test_central_dp_run._SitesGrid", _ReversedGrid)
    _execute(network, _propose_plain(network, rounds=3), RUN)
    bundle, archive = _archive_and_bundle(network, tmp_path)

    report = replay_aggregation(
        bundle, archive, trusted_root=network.coordinator.ledger.identity_public_key
    )

    assert report.rounds == 3


def test_the_cli_replays_and_exits_1_naming_the_round_that_differs(
    network: _Network, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _execute(network, _propose_plain(network, rounds=2), RUN)
    bundle, archive = _archive_and_bundle(network, tmp_path)
    root = tmp_path / "root.pub"
    root.write_text(network.coordinator.ledger.identity_public_key.pem(), encoding="utf-8")
    args = ["ledger", "replay", "--bundle", str(bundle), "--archive", str(archive)]
    args += ["--trust", str(root), "--format", "json"]

    assert main(args) == 0
    document: dict[str, Any] = __import__("json").loads(capsys.readouterr().out)
    assert (document["ok"], document["rounds"]) == (True, 2)

    update_hash = _round_updates(network, 1)["hospital-a"]
    (archive / "weights" / f"{update_hash}.npz").unlink()
    assert main(args) == 1
    assert "round 1:" in capsys.readouterr().err


def test_a_central_dp_runs_noised_aggregates_replay(network: _Network, tmp_path: Path) -> None:
    _execute(network, _propose(network, max_epsilon=50.0, rounds=3), RUN)
    bundle, archive = _archive_and_bundle(network, tmp_path)

    report = replay_aggregation(
        bundle, archive, trusted_root=network.coordinator.ledger.identity_public_key
    )

    assert (report.rounds, report.updates) == (3, 9)


def test_a_central_dp_aggregate_without_its_noise_is_caught(
    network: _Network, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A coordinator that claims client-level DP but adds no noise from round 2 on.
    honest = DifferentialPrivacyServerSideFixedClipping._add_noise_to_aggregated_arrays
    calls = []

    def noiseless(
        self: DifferentialPrivacyServerSideFixedClipping, arrays: ArrayRecord
    ) -> ArrayRecord:
        calls.append(1)
        return honest(self, arrays) if len(calls) == 1 else arrays

    monkeypatch.setattr(
        DifferentialPrivacyServerSideFixedClipping, "_add_noise_to_aggregated_arrays", noiseless
    )
    _execute(network, _propose(network, max_epsilon=50.0, rounds=3), RUN)
    monkeypatch.undo()
    bundle, archive = _archive_and_bundle(network, tmp_path)

    with pytest.raises(ReplayMismatch, match="not noise of the accounted sigma") as caught:
        replay_aggregation(
            bundle, archive, trusted_root=network.coordinator.ledger.identity_public_key
        )
    assert caught.value.round == 2


def test_a_released_model_that_is_not_the_last_aggregate_is_caught(
    network: _Network, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from veracity.server import study_run
    from veracity.server.release import release_model as honest

    def swapped(
        coordinator: Any, study: Any, run_id: str, final: Any, outcomes: Any, **options: Any
    ) -> str:
        other = {name: array + np.float32(0.5) for name, array in final.items()}
        return honest(coordinator, study, run_id, other, outcomes, **options)

    monkeypatch.setattr(study_run, "release_model", swapped)
    _execute(network, _propose_plain(network, rounds=2), RUN)
    monkeypatch.undo()
    bundle, archive = _archive_and_bundle(network, tmp_path)

    with pytest.raises(ReplayMismatch, match="the run released model") as caught:
        replay_aggregation(
            bundle, archive, trusted_root=network.coordinator.ledger.identity_public_key
        )
    assert caught.value.round == 2


def test_a_run_whose_ledger_leaves_a_round_out_is_refused_at_that_round(
    network: _Network, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    coordinator = network.coordinator
    honest = type(coordinator).record_round

    def leaving_round_one_out(self: Any, actor: Any, payload: Any) -> Any:
        # A dishonest coordinator that never records round 1: the auditor must not replay
        # round 2 as if it were the first.
        return None if payload.round == 1 else honest(self, actor, payload)

    monkeypatch.setattr(type(coordinator), "record_round", leaving_round_one_out)
    _execute(network, _propose_plain(network, rounds=2), RUN)
    monkeypatch.undo()
    bundle, archive = _archive_and_bundle(network, tmp_path)

    missing = r"round 2 of run .* where round 1 should be"
    with pytest.raises(ReplayMismatch, match=missing) as caught:
        replay_aggregation(bundle, archive, trusted_root=coordinator.ledger.identity_public_key)
    assert caught.value.round == 1
