"""Site-side replay: seconds to replay a round against the original round's training.

A real site (``veracity site`` directory, registered breast-cancer partition, approved
study) trains ``--rounds`` rounds through ``SiteAgent.handle_train`` with OS-drawn round
seeds, as in production; then ``replay_run`` re-trains every round from the global model
and seed it kept and checks each update hash. For each model family the figures are, per
round (median over rounds):

* the DP-SGD loop alone: replay's ``train_round`` against the original's (the recorded
  ``train_seconds``); the goal is a ratio near 1 (replay does the same work);
* the whole call: ``replay_run`` per round (checks the data file, rebuilds the trainer,
  re-trains, signs) against ``handle_train`` (checks the request and approval, reserves
  the budget, trains, signs the receipt, keeps the round).

    python benchmarks/replay_bench.py                 # 5 rounds, logistic and poly-mlp
    python benchmarks/replay_bench.py --rounds 3 --json out.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

# Opacus installs a top-level package named `benchmarks` that shadows this folder, so the
# harness is imported from the script's own directory (first on sys.path when run).
from harness import Figure, Report

from veracity.client.approvals import approve_study
from veracity.client.datasets import register_dataset
from veracity.client.replay import replay_run
from veracity.client.service import SiteAgent, TrainReply, TrainRequest
from veracity.client.site import Site, init_site
from veracity.tasks import breast_cancer
from veracity.tasks.spec import ModelFamily
from veracity.tasks.torch_models import build_model, model_weights

SITE = "hospital-a"
RUN = "1"


def _measure(
    family: ModelFamily, rounds: int, root: Path, noise_multiplier: float
) -> dict[str, float]:
    split = breast_cancer.federated_split(1, seed=0)
    init_site(root, SITE)
    csv = breast_cancer.write_csv(split.sites[0], root / "patients.csv")
    study = breast_cancer.breast_cancer_study(
        study_id=f"replay-bench-{family.value}",
        epsilon_caps={SITE: 50.0},
        noise_multiplier=noise_multiplier,
        code_hash="c0de" * 16,
        family=family,
        rounds=rounds,
        min_sites=1,
    )
    with Site.open(root) as site:
        register_dataset(
            site, dataset_id="bc", path=csv, label=breast_cancer.LABEL, epsilon_budget=100.0
        )
        approve_study(site, study, dataset_id="bc", epsilon_cap=50.0)
    weights = model_weights(build_model(study.model_spec, seed=study.model_seed))
    handle_seconds: list[float] = []
    with SiteAgent.open(root) as agent:
        for number in range(1, rounds + 1):
            request = TrainRequest(
                study=study.to_document(),
                study_hash=study.study_hash,
                run_id=RUN,
                round=number,
                code_hash=study.code_hash,
                weights=weights,
            )
            started = time.perf_counter()
            outcome = agent.handle_train(request)
            handle_seconds.append(time.perf_counter() - started)
            if not isinstance(outcome, TrainReply):
                raise SystemExit(f"round {number} was refused: {outcome.reason}")
            weights = outcome.weights
    with Site.open(root) as site:
        started = time.perf_counter()
        outcome_replay = replay_run(site, RUN)
        replay_total = time.perf_counter() - started
    if not outcome_replay.confirmed:
        raise SystemExit(f"the replay failed: {outcome_replay.statement.payload}")
    return {
        "train_loop": statistics.median(r.train_seconds for r in outcome_replay.rounds),
        "replay_loop": statistics.median(r.replay_seconds for r in outcome_replay.rounds),
        "handle_train": statistics.median(handle_seconds),
        "replay_call": replay_total / rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="rounds to train and replay")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    report = Report("Site-side replay: seconds per round, replay against the original round")
    # Distinct noise multipliers: the accountant's cache would otherwise serve the second
    # family's identical histories and make its handle_train look cheaper.
    for family, noise_multiplier in ((ModelFamily.LOGISTIC, 1.0), (ModelFamily.POLY_MLP, 1.1)):
        with tempfile.TemporaryDirectory() as tmp:
            figures = _measure(family, args.rounds, Path(tmp) / "site", noise_multiplier)
        report.add(
            Figure(
                f"{family.value}: DP-SGD loop of a replayed round",
                figures["replay_loop"],
                "s",
                baseline=figures["train_loop"],
                baseline_name="the original round's loop",
                goal="ratio about 1 (the same work)",
                higher_is_better=False,
            )
        )
        report.add(
            Figure(
                f"{family.value}: replay_run per round (all checks, signing)",
                figures["replay_call"],
                "s",
                baseline=figures["handle_train"],
                baseline_name="handle_train per round",
                higher_is_better=False,
            )
        )
    report.notes.append(
        f"{args.rounds} rounds of one breast-cancer partition (about 150 rows), 1 local "
        "epoch, batch 32, 1 torch thread; medians over rounds (replay_run: total / rounds); "
        "handle_train includes the budget's PLD accounting, which replay does not need"
    )
    report.print()
    if args.json is not None:
        report.write_json(args.json)


if __name__ == "__main__":
    main()
