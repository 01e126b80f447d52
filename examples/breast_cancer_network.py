"""A breast-cancer study across three hospitals, driven through the coordinator's service layer.

Where ``veracity demo`` goes through the admin API as people would, this example calls the
Python API directly, which is what you would script for your own study: it creates a
coordinator and three sites under a directory, starts the SuperLink and the sites'
SuperNodes on 127.0.0.1, proposes a study with the HE-friendly MLP, has every site approve
it, runs it, and prints each round's participants and the sites' epsilon. All processes
stop when it ends.

    python examples/breast_cancer_network.py [DIR] [--rounds N] [--epsilon-cap E]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from veracity.localnet import approve, create_site, enrol, start_nodes, wait_run
from veracity.server.coordinator import init_coordinator, operator
from veracity.server.fab import build_fab
from veracity.server.superlink import SuperLinkOptions, start_superlink
from veracity.supervise import ProcessGroup, free_port, stopping_on_signals
from veracity.tasks.breast_cancer import breast_cancer_study, federated_split
from veracity.tasks.spec import ModelFamily

SITES = ("hospital-a", "hospital-b", "hospital-c")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("directory", nargs="?", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epsilon-cap", type=float, default=3.0)
    args = parser.parse_args()
    root = args.directory or Path(tempfile.mkdtemp(prefix="veracity-example-"))

    port = free_port()
    coordinator = init_coordinator(root / "coordinator", superlink_port=port)
    me = operator()
    split = federated_split(len(SITES), seed=0, skew=0.6)
    group = ProcessGroup()
    with stopping_on_signals(group), coordinator:
        start_superlink(coordinator.home, SuperLinkOptions(port=port), group)
        sites = [
            create_site(root / "sites" / name, name, partition)
            for name, partition in zip(SITES, split.sites, strict=True)
        ]
        for site in sites:
            enrol(coordinator, site)
        start_nodes(coordinator, sites, group, idle_poll=0.2)
        study = breast_cancer_study(
            study_id="breast-cancer-example",
            epsilon_caps=dict.fromkeys(SITES, args.epsilon_cap),
            noise_multiplier=2.2,  # replace-one epsilon 2.94 per site after 3 rounds
            code_hash=build_fab().fab_hash,
            family=ModelFamily.POLY_MLP,
            rounds=args.rounds,
            min_sites=2,
            learning_rate=1.0,
        )
        coordinator.propose_study(me, study.to_document())
        for site in sites:
            statement = approve(site, study, epsilon_cap=args.epsilon_cap)
            coordinator.record_statement(
                me, statement.kind, site.name, statement.payload, statement.signature
            )
        run_id = coordinator.start_run(me, study.study_hash, poll_interval=0.1).value.run_id
        print(f"run {run_id}: {wait_run(coordinator, run_id, timeout=900).state}")
        for recorded in coordinator.reads.rounds(run_id):
            completed = recorded.completed
            epsilons = {r.receipt.site: round(r.receipt.epsilon, 3) for r in completed.receipts}
            print(f"round {completed.round}: {completed.participants} epsilon {epsilons}")
        print(f"finished: {coordinator.reads.run(run_id).finished}")
        report = coordinator.ledger.verify(coordinator.ledger.identity_public_key)
        print(f"ledger verified: {report.entries} entries, {report.checkpoints} checkpoints")
        print(f"everything is under {root}")


if __name__ == "__main__":
    main()
