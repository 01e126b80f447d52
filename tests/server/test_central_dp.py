"""Client-level DP at the coordinator: the audited strategy around Flower's server-side
fixed clipping with its RDP accountant, driven with real Flower messages."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import cast

import numpy as np
import numpy.typing as npt
import pytest
from dp_accounting import dp_event, privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from flwr.app import ConfigRecord, Message
from flwr.serverapp import (
    Grid,
    NeighboringRelation,
    PrivacyConfig,
    RdpAccountant,
    SamplingMethod,
)
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg
from flwr.supercore.task_identity import TaskIdentity

from tests.factories import (
    LOG_ID,
    budget_refused_document,
    receipt_document,
    refused_reply,
    trained_reply,
)
from veracity.contracts.events import Dropped
from veracity.crypto.keys import SigningKey, generate_signing_key
from veracity.errors import ConfigError
from veracity.flower_serde import weights_from_record, weights_to_record
from veracity.server.strategy import (
    CLIENT_DELTA_METRIC,
    CLIENT_EPSILON_METRIC,
    UNIFORM_WEIGHT_KEY,
    AuditedStrategy,
    RoundOutcome,
    aggregation_strategy,
)
from veracity.tasks.study import CentralDPConfig
from veracity.tasks.weights import weights_hash

STUDY = "ab" * 32
RUN = "42"
SITES = {1: "hospital-a", 2: "hospital-b", 3: "hospital-c"}
KEYS = {name: generate_signing_key() for name in SITES.values()}
DELTA = 1e-5

Weights = dict[str, npt.NDArray[np.float32]]


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    # Flower stamps messages with the running task's identity; tests play one task.
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


@pytest.fixture
def seeded_numpy() -> Iterator[None]:
    """Flower draws the noise from NumPy's global generator: seed it, then restore it."""
    state = np.random.get_state()
    np.random.seed(20260611)
    yield
    np.random.set_state(state)


class _Nodes:
    """The part of a Grid that FedAvg's sampling reads: the connected node ids."""

    def get_node_ids(self) -> list[int]:
        return list(SITES)


GRID = cast(Grid, _Nodes())


def _stack(
    *,
    noise_multiplier: float = 1.0,
    clipping_norm: float = 1.0,
    max_epsilon: float = 100.0,
    rounds: list[RoundOutcome] | None = None,
) -> AuditedStrategy:
    central = CentralDPConfig(
        noise_multiplier=noise_multiplier,
        clipping_norm=clipping_norm,
        max_epsilon=max_epsilon,
        delta=DELTA,
    )
    recorded: list[RoundOutcome] = [] if rounds is None else rounds
    return AuditedStrategy(
        aggregation_strategy(sites=len(SITES), central_dp=central, population=len(SITES)),
        study_hash=STUDY,
        run_id=RUN,
        min_sites=2,
        sites_by_node=SITES,
        site_key=lambda site: KEYS[site].public,
        log_id=LOG_ID,
        record_round=recorded.append,
        record_refusal=lambda *args: None,
    )


def _trained(
    request: Message, server_round: int, weights: Weights, *, examples: int = 100, **extra: float
) -> Message:
    site = SITES[request.metadata.dst_node_id]
    receipt = receipt_document(
        site=site,
        study=STUDY,
        round=server_round,
        run_id=RUN,
        update_hash=weights_hash(weights),
        num_examples=examples,
    )
    return trained_reply(request, KEYS[site], weights, receipt, examples=examples, metrics=extra)


def _refused(request: Message, key: SigningKey) -> Message:
    site = SITES[request.metadata.dst_node_id]
    payload = budget_refused_document(site=site, study_hash=STUDY, run_id=RUN)
    return refused_reply(request, key, payload)


def _global(shape: tuple[int, int] = (40, 50)) -> Weights:
    rng = np.random.default_rng(7)
    return {
        "b": rng.normal(size=shape[1]).astype(np.float32),
        "w": rng.normal(size=shape).astype(np.float32),
    }


def _shifted(weights: Weights, update: Weights) -> Weights:
    return {name: (weights[name] + update[name]).astype(np.float32) for name in weights}


def _flat(weights: Weights) -> npt.NDArray[np.float64]:
    return np.concatenate([weights[name].astype(np.float64).ravel() for name in sorted(weights)])


def _clipped(update: Weights, norm: float) -> npt.NDArray[np.float64]:
    flat = _flat(update)
    return flat * min(1.0, norm / float(np.linalg.norm(flat)))


def _constant_update(like: Weights, total_norm: float) -> Weights:
    size = sum(array.size for array in like.values())
    value = total_norm / np.sqrt(size)
    return {name: np.full(array.shape, value, dtype=np.float32) for name, array in like.items()}


def _round(
    strategy: AuditedStrategy,
    server_round: int,
    weights: Weights,
    updates: dict[int, Weights],
) -> Weights | None:
    requests = list(
        strategy.configure_train(server_round, weights_to_record(weights), ConfigRecord(), GRID)
    )
    replies = [
        _trained(r, server_round, _shifted(weights, updates[r.metadata.dst_node_id]))
        for r in requests
    ]
    arrays, _ = strategy.aggregate_train(server_round, replies)
    return None if arrays is None else cast(Weights, weights_from_record(arrays))


def _independent_epsilon(noise_multiplier: float, releases: int) -> float:
    accountant = rdp_privacy_accountant.RdpAccountant(
        neighboring_relation=privacy_accountant.NeighboringRelation.ADD_OR_REMOVE_ONE
    )
    accountant.compose(dp_event.GaussianDpEvent(noise_multiplier), releases)
    return float(accountant.get_epsilon(DELTA))


@pytest.mark.usefixtures("seeded_numpy")
def test_the_aggregate_is_the_mean_plus_gaussian_noise_of_the_calibrated_scale() -> None:
    start = _global()  # 2040 parameters: enough to measure the noise's spread
    updates = {node: _constant_update(start, 0.1 * node) for node in SITES}  # all within C
    strategy = _stack(noise_multiplier=1.0, clipping_norm=1.0)
    aggregate = _round(strategy, 1, start, updates)

    assert aggregate is not None
    plain_mean = _flat(start) + np.mean([_flat(u) for u in updates.values()], axis=0)
    noise = _flat(aggregate) - plain_mean
    expected_std = 1.0 * 1.0 / len(SITES)  # noise_multiplier * clipping_norm / sites
    n = noise.size
    assert abs(noise.std() - expected_std) < 4 * expected_std / np.sqrt(2 * n)
    assert abs(noise.mean()) < 4 * expected_std / np.sqrt(n)
    (outcome,) = strategy.outcomes
    assert outcome.participants == sorted(SITES.values())
    assert outcome.aggregated_model_hash == weights_hash(aggregate)


@pytest.mark.usefixtures("seeded_numpy")
def test_sites_weigh_equally_whatever_examples_or_weight_they_claim() -> None:
    start = _global(shape=(4, 5))
    rng = np.random.default_rng(5)
    updates = {
        node: {
            k: (0.05 * node * rng.normal(size=v.shape)).astype(np.float32) for k, v in start.items()
        }
        for node in SITES
    }
    assert all(np.linalg.norm(_flat(u)) < 1.0 for u in updates.values())  # nothing clipped
    examples = {1: 50, 2: 100, 3: 400}
    strategy = _stack(noise_multiplier=0.01, clipping_norm=1.0, max_epsilon=1e4)
    requests = list(strategy.configure_train(1, weights_to_record(start), ConfigRecord(), GRID))
    replies = [
        _trained(
            r,
            1,
            _shifted(start, updates[r.metadata.dst_node_id]),
            examples=examples[r.metadata.dst_node_id],
            **({UNIFORM_WEIGHT_KEY: 1000.0} if r.metadata.dst_node_id == 3 else {}),
        )
        for r in requests
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)

    assert arrays is not None
    aggregate = _flat(cast(Weights, weights_from_record(arrays)))
    equal = _flat(start) + np.mean([_flat(u) for u in updates.values()], axis=0)
    total = sum(examples.values())
    by_examples = _flat(start) + sum(examples[n] / total * _flat(u) for n, u in updates.items())
    tolerance = 6 * 0.01 * 1.0 / len(SITES)
    assert np.max(np.abs(aggregate - equal)) < tolerance
    assert np.max(np.abs(aggregate - by_examples)) > tolerance
    assert metrics is not None
    assert metrics["examples"] == float(total)


def test_without_central_dp_the_same_replies_average_exactly() -> None:
    start = _global()
    updates = {node: _constant_update(start, 0.1 * node) for node in SITES}
    plain = AuditedStrategy(
        aggregation_strategy(sites=len(SITES), central_dp=None, population=len(SITES)),
        study_hash=STUDY,
        run_id=RUN,
        min_sites=2,
        sites_by_node=SITES,
        site_key=lambda site: KEYS[site].public,
        log_id=LOG_ID,
        record_round=lambda outcome: None,
        record_refusal=lambda *args: None,
    )
    aggregate = _round(plain, 1, start, updates)

    assert aggregate is not None
    expected = _flat(start) + np.mean([_flat(u) for u in updates.values()], axis=0)
    np.testing.assert_allclose(_flat(aggregate), expected, atol=1e-6)


@pytest.mark.usefixtures("seeded_numpy")
def test_clipping_bounds_what_one_site_can_move_the_model() -> None:
    start = _global(shape=(4, 5))
    small = {2: _constant_update(start, 0.3), 3: _constant_update(start, 0.6)}
    rng = np.random.default_rng(3)
    outlier_a = {k: (v * 1e3).astype(np.float32) for k, v in _constant_update(start, 1.0).items()}
    outlier_b = {
        k: rng.normal(scale=1e5, size=v.shape).astype(np.float32) for k, v in start.items()
    }

    aggregates = []
    for outlier in (outlier_a, outlier_b):
        np.random.seed(99)  # the same noise both times: only the outlier's update differs
        aggregate = _round(_stack(clipping_norm=1.0), 1, start, {1: outlier, **small})
        assert aggregate is not None
        aggregates.append(_flat(aggregate))

    difference = aggregates[0] - aggregates[1]
    expected = (_clipped(outlier_a, 1.0) - _clipped(outlier_b, 1.0)) / len(SITES)
    np.testing.assert_allclose(difference, expected, atol=1e-4)
    assert np.linalg.norm(difference) <= 2 * 1.0 / len(SITES) + 1e-4


def test_client_level_epsilon_grows_each_round_and_matches_dp_accounting() -> None:
    rounds: list[RoundOutcome] = []
    strategy = _stack(noise_multiplier=1.0, max_epsilon=100.0, rounds=rounds)
    weights: Weights | None = _global(shape=(3, 4))
    for server_round in (1, 2, 3):
        assert weights is not None
        updates = {node: _constant_update(weights, 0.2) for node in SITES}
        weights = _round(strategy, server_round, weights, updates)

    epsilons = [outcome.metrics[CLIENT_EPSILON_METRIC] for outcome in rounds]
    assert epsilons == sorted(epsilons)
    assert len(set(epsilons)) == 3
    for releases, epsilon in enumerate(epsilons, start=1):
        assert epsilon == pytest.approx(_independent_epsilon(1.0, releases), rel=1e-9)
    # Flower's own run in the field notes printed 4.728507, 7.077392, 9.009959.
    assert epsilons == pytest.approx([4.728507, 7.077392, 9.009959], abs=1e-6)
    assert {outcome.metrics[CLIENT_DELTA_METRIC] for outcome in rounds} == {DELTA}


def test_the_round_that_would_exceed_max_epsilon_is_never_sent() -> None:
    rounds: list[RoundOutcome] = []
    strategy = _stack(noise_multiplier=1.0, max_epsilon=6.0, rounds=rounds)
    start = _global(shape=(3, 4))
    first = _round(strategy, 1, start, {node: _constant_update(start, 0.2) for node in SITES})
    assert first is not None

    second = list(strategy.configure_train(2, weights_to_record(first), ConfigRecord(), GRID))
    assert second == []
    reason = strategy.budget_exhausted or ""
    assert "round 2" in reason
    assert "max_epsilon 6.0" in reason
    assert "4.728507" in reason
    assert strategy.aggregate_train(2, []) == (None, None)
    assert list(strategy.configure_train(3, weights_to_record(first), ConfigRecord(), GRID)) == []
    assert [outcome.server_round for outcome in rounds] == [1]
    assert strategy.abort_reason is None


def test_under_central_dp_a_missing_site_stops_the_run_and_releases_nothing() -> None:
    rounds: list[RoundOutcome] = []
    strategy = _stack(rounds=rounds)
    start = _global(shape=(3, 4))
    requests = list(strategy.configure_train(1, weights_to_record(start), ConfigRecord(), GRID))
    replies = [
        _refused(r, KEYS[SITES[r.metadata.dst_node_id]])
        if r.metadata.dst_node_id == 3
        else _trained(r, 1, _shifted(start, _constant_update(start, 0.2)))
        for r in requests
    ]
    arrays, _ = strategy.aggregate_train(1, replies)

    assert arrays is None
    assert "central DP needs a verified update from each of the 3" in (strategy.abort_reason or "")
    assert "hospital-c (budget.refused)" in (strategy.abort_reason or "")
    (outcome,) = rounds
    assert outcome.aggregated_model_hash is None
    assert outcome.participants == ["hospital-a", "hospital-b"]
    assert CLIENT_EPSILON_METRIC not in outcome.metrics
    dp = cast(DifferentialPrivacyServerSideFixedClipping, strategy.inner)
    assert dp.accountant is not None
    assert dp.accountant.num_releases == 0


def test_an_update_that_does_not_fit_the_global_model_is_dropped() -> None:
    start = _global(shape=(3, 4))
    strategy = _stack()
    requests = list(strategy.configure_train(1, weights_to_record(start), ConfigRecord(), GRID))
    wrong = {"b": start["b"], "w": np.zeros((4, 3), dtype=np.float32)}
    replies = [_trained(r, 1, wrong if r.metadata.dst_node_id == 2 else start) for r in requests]
    strategy.aggregate_train(1, replies)

    (outcome,) = strategy.outcomes
    assert outcome.dropped == [
        Dropped(
            site="hospital-b",
            reason="update array 'w' does not have the global model's shape and type",
        )
    ]


def _without_accountant() -> DifferentialPrivacyServerSideFixedClipping:
    return DifferentialPrivacyServerSideFixedClipping(
        FedAvg(weighted_by_key=UNIFORM_WEIGHT_KEY),
        noise_multiplier=1.0,
        clipping_norm=1.0,
        num_sampled_clients=3,
    )


def _weighted_by_examples() -> DifferentialPrivacyServerSideFixedClipping:
    config = PrivacyConfig(
        target_delta=DELTA,
        population_size=3,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION,
        max_epsilon=10.0,
    )
    return DifferentialPrivacyServerSideFixedClipping(
        FedAvg(weighted_by_key="num-examples"),
        noise_multiplier=1.0,
        clipping_norm=1.0,
        num_sampled_clients=3,
        accountant=RdpAccountant(config),
    )


@pytest.mark.parametrize("build", [_without_accountant, _weighted_by_examples])
def test_central_dp_without_an_accountant_or_equal_weights_is_refused(
    build: Callable[[], DifferentialPrivacyServerSideFixedClipping],
) -> None:
    with pytest.raises(ConfigError, match="central DP needs an accountant"):
        AuditedStrategy(
            build(),
            study_hash=STUDY,
            run_id=RUN,
            min_sites=2,
            sites_by_node=SITES,
            site_key=lambda site: KEYS[site].public,
            log_id=LOG_ID,
            record_round=lambda outcome: None,
            record_refusal=lambda *args: None,
        )
