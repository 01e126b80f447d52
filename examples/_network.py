"""What the signal and image examples share: a coordinator, sites on loopback, one study run.

Every site is a real site directory (keys, store, registered dataset) with its own
SuperNode; the coordinator runs a Flower SuperLink with TLS. The study is proposed through
the coordinator service, approved by each site operator, run, and the released model (with
its card) read back from the registry. All processes stop when the block ends.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from veracity.client.budget import Segment, poisson_sampling, replace_one_epsilon
from veracity.localnet import LocalSite, approve, enrol, start_nodes, wait_run
from veracity.server.coordinator import CoordinatorService, init_coordinator, operator
from veracity.server.fab import build_fab
from veracity.server.registry import ReleasedModel
from veracity.server.release import EVALUATION_DIR
from veracity.server.superlink import SuperLinkOptions, start_superlink
from veracity.supervise import ProcessGroup, free_port, stopping_on_signals
from veracity.tasks.study import Study

DELTA = 1e-5


def code_hash() -> str:
    """The hash of the Flower app bundle the sites approve."""
    return build_fab().fab_hash


def noise_for(epsilon: float, *, rows: int, batch: int, steps_per_round: int, rounds: int) -> float:
    """The smallest noise multiplier (to 0.001) whose replace-one epsilon over the study is
    within ``epsilon`` at the site with ``rows`` examples (the smallest site spends most).
    """
    sampling = poisson_sampling(rows, batch)
    steps = rounds * steps_per_round * sampling.steps_per_epoch
    low, high = 0.3, 50.0
    while high - low > 1e-3:
        middle = (low + high) / 2
        if replace_one_epsilon((Segment(middle, sampling.sample_rate, steps),), DELTA) <= epsilon:
            high = middle
        else:
            low = middle
    return round(high + 5e-4, 3)


@dataclass
class Outcome:
    """A finished run: its id and end, the released model (if any) and the ledger check."""

    run_id: str
    status: str
    model: ReleasedModel | None
    epsilons: dict[str, float]
    ledger_entries: int


@contextmanager
def network(root: Path) -> Iterator[tuple[CoordinatorService, ProcessGroup]]:
    """A coordinator under ``root/coordinator`` with its SuperLink running."""
    port = free_port()
    coordinator = init_coordinator(root / "coordinator", superlink_port=port)
    group = ProcessGroup()
    with stopping_on_signals(group), coordinator:
        start_superlink(coordinator.home, SuperLinkOptions(port=port), group)
        yield coordinator, group


def run_study(
    coordinator: CoordinatorService,
    group: ProcessGroup,
    sites: list[LocalSite],
    study: Study,
    *,
    evaluation: tuple[np.ndarray, np.ndarray] | None = None,
    timeout: float = 1800.0,
) -> Outcome:
    """Enrol the sites, start their nodes, then :func:`run_another` for ``study``."""
    for site in sites:
        enrol(coordinator, site)
    start_nodes(coordinator, sites, group, idle_poll=0.2)
    return run_another(coordinator, sites, study, evaluation=evaluation, timeout=timeout)


def run_another(
    coordinator: CoordinatorService,
    sites: list[LocalSite],
    study: Study,
    *,
    evaluation: tuple[np.ndarray, np.ndarray] | None = None,
    timeout: float = 1800.0,
) -> Outcome:
    """With the sites enrolled and their nodes up: hold out ``evaluation`` at the
    coordinator, propose ``study``, have every site approve it, run it to its end.
    """
    me = operator()
    if evaluation is not None:
        folder = coordinator.home.data_dir / EVALUATION_DIR
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / f"{study.study_id}.npz", x=evaluation[0], y=evaluation[1])
    coordinator.propose_study(me, study.to_document())
    for site in sites:
        statement = approve(site, study, epsilon_cap=study.epsilon_caps[site.name])
        coordinator.record_statement(
            me, statement.kind, site.name, statement.payload, statement.signature
        )
    run_id = coordinator.start_run(me, study.study_hash, poll_interval=0.1).value.run_id
    summary = wait_run(coordinator, run_id, timeout=timeout)
    finished = coordinator.reads.run(run_id).finished
    epsilons: dict[str, float] = {}
    for recorded in coordinator.reads.rounds(run_id):
        completed = recorded.completed
        epsilons |= {r.receipt.site: r.receipt.epsilon for r in completed.receipts}
        print(
            f"round {completed.round}: {completed.participants} epsilon "
            f"{ {k: round(v, 3) for k, v in epsilons.items()} }",
            file=sys.stderr,
            flush=True,
        )
    model_hash = None if finished is None else finished.model_hash
    model = coordinator.registry.get(model_hash) if model_hash else None
    report = coordinator.ledger.verify(coordinator.ledger.identity_public_key)
    status = summary.state if finished is None else finished.status
    return Outcome(run_id, status, model, epsilons, report.entries)


def emit(summary: dict[str, Any], json_path: Path | None) -> None:
    """Print the summary (and write it as JSON where asked)."""
    text = json.dumps(summary, indent=2, default=float)
    print(text)
    if json_path is not None:
        json_path.write_text(text + "\n", encoding="utf-8")


def per_class(card: dict[str, Any]) -> Callable[[str], dict[str, Any]]:
    """Look up a class's metrics in a card's evaluation."""
    evaluation = card.get("evaluation") or {}
    return lambda name: dict(evaluation.get("per_class", {}).get(name, {}))
