"""Client-level DP at the coordinator: what it adds to the coordinator's work per round.

Every figure is printed beside a baseline measured in the same run: the coordinator's
share of a round (``AuditedStrategy.configure_train`` + ``aggregate_train`` for three
sites, receipts verified) with Flower's server-side fixed clipping and RDP accountant
around FedAvg, against the same audited FedAvg without it. Rounds run one after another,
so the accountant's prospective check (which replays every composed round) is measured as
the run grows. Replies (signed receipts) are built outside the timed calls; the sites'
training, the transport and the ledger writes are not included (``federation_bench.py``
measures whole rounds).

    python benchmarks/central_dp_bench.py                  # 100 rounds, two model sizes
    python benchmarks/central_dp_bench.py --rounds 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity
from harness import Figure, Report

from veracity.core.canonical import canonical_json
from veracity.crypto.keys import generate_signing_key
from veracity.flower_serde import weights_from_record, weights_to_record
from veracity.ledger.statement import RECEIPT_DOMAIN, sign_bound
from veracity.server.strategy import AuditedStrategy, aggregation_strategy
from veracity.tasks.study import CentralDPConfig
from veracity.tasks.weights import weights_hash

STUDY, RUN = "ab" * 32, "1"
SITES = {1: "hospital-a", 2: "hospital-b", 3: "hospital-c"}
KEYS = {name: generate_signing_key() for name in SITES.values()}
LOG_ID = bytes(range(1, 33))  # the log every site signature binds
Weights = dict[str, npt.NDArray[np.float32]]


class _Nodes:
    """The part of a Grid that FedAvg's sampling reads."""

    def get_node_ids(self) -> list[int]:
        return list(SITES)


def _reply(request: Message, server_round: int, weights: Weights) -> Message:
    site = SITES[request.metadata.dst_node_id]
    receipt = {
        "site": site, "study": STUDY, "round": server_round, "run_id": RUN, "dataset_id": "d",
        "dataset_commitment": "cd" * 32, "update_hash": weights_hash(weights),
        "accountant": "pld", "neighbouring": "replace-one",
        "delta": 1e-5, "epsilon": 1.0, "history": [[1.0, 0.1, 10]],
        "max_grad_norm": 1.0, "num_examples": 150, "epsilon_add_remove": 0.5,
        "noise_generator": "test",
    }  # fmt: skip
    content = RecordDict(
        {
            "arrays": weights_to_record(weights),
            "metrics": MetricRecord({"num-examples": 150, "train-seconds": 1.0}),
            "receipt": ConfigRecord(
                {
                    "json": canonical_json(receipt).decode(),
                    "signature": sign_bound(KEYS[site], RECEIPT_DOMAIN, LOG_ID, receipt),
                }
            ),
        }
    )
    return Message(content, reply_to=request)


def _strategy(central: CentralDPConfig | None) -> AuditedStrategy:
    return AuditedStrategy(
        aggregation_strategy(sites=len(SITES), central_dp=central, population=len(SITES)),
        study_hash=STUDY,
        run_id=RUN,
        min_sites=len(SITES),
        sites_by_node=SITES,
        site_key=lambda site: KEYS[site].public,
        log_id=LOG_ID,
        record_round=lambda outcome: None,
        record_refusal=lambda *args: None,
    )


def run_rounds(strategy: AuditedStrategy, start: Weights, rounds: int, seed: int) -> list[float]:
    """Seconds of coordinator work in each of ``rounds`` rounds."""
    rng = np.random.default_rng(seed)
    grid = cast(Grid, _Nodes())
    weights, seconds = start, []
    for server_round in range(1, rounds + 1):
        began = time.perf_counter()
        requests = list(
            strategy.configure_train(server_round, weights_to_record(weights), ConfigRecord(), grid)
        )
        configured = time.perf_counter() - began
        replies = [
            _reply(
                request,
                server_round,
                {
                    k: (v + 0.01 * rng.standard_normal(v.shape)).astype(np.float32)
                    for k, v in weights.items()
                },
            )
            for request in requests
        ]
        began = time.perf_counter()
        arrays, _ = strategy.aggregate_train(server_round, replies)
        seconds.append(configured + time.perf_counter() - began)
        if arrays is None:
            raise RuntimeError(f"round {server_round} released nothing: {strategy.abort_reason}")
        weights = cast(Weights, weights_from_record(arrays))
    return seconds


def _model(parameters: int, seed: int) -> Weights:
    rng = np.random.default_rng(seed)
    hidden = max(1, parameters // 32)
    return {
        "fc1.weight": rng.normal(size=(hidden, 30)).astype(np.float32),
        "fc1.bias": rng.normal(size=hidden).astype(np.float32),
        "fc2.weight": rng.normal(size=(1, hidden)).astype(np.float32),
        "fc2.bias": rng.normal(size=1).astype(np.float32),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=100, help="rounds per run")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0

    central = CentralDPConfig(
        noise_multiplier=5.0, clipping_norm=1.0, max_epsilon=1e5, delta=1e-5
    )  # a budget that admits every round, so each round is a full release
    report = Report(f"client-level DP at the coordinator (3 sites, {args.rounds} rounds)")
    for label, parameters in (("breast-cancer MLP", 16 * 32), ("1M-parameter MLP", 1_000_000)):
        start = _model(parameters, seed=0)
        size = sum(v.size for v in start.values())
        plain = run_rounds(_strategy(None), start, args.rounds, seed=1)
        private_strategy = _strategy(central)
        private = run_rounds(private_strategy, start, args.rounds, seed=1)
        report.add(
            Figure(
                f"{label} ({size:,} parameters): median coordinator ms per round",
                statistics.median(private) * 1e3,
                "ms",
                baseline=statistics.median(plain) * 1e3,
                baseline_name="audited FedAvg without central DP",
                higher_is_better=False,
            )
        )
        tail = max(1, args.rounds // 10)
        report.add(
            Figure(
                f"{label}: mean ms per round over the last {tail} rounds",
                statistics.mean(private[-tail:]) * 1e3,
                "ms",
                baseline=statistics.mean(plain[-tail:]) * 1e3,
                baseline_name="audited FedAvg without central DP",
                higher_is_better=False,
            )
        )
        dp = private_strategy.central_dp
        spent = dp.privacy_spent() if dp is not None else None
        if spent is not None:
            report.notes.append(
                f"{label}: client-level epsilon {spent.epsilon:.3f} at delta {spent.delta:g} "
                f"after {spent.num_releases} rounds (noise multiplier {central.noise_multiplier})"
            )
    report.print()
    if args.json is not None:
        report.write_json(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
