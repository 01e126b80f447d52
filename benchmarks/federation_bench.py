"""Seconds per federated round, Veracity against a bare Flower app, in the same run.

Both run in deployment mode on 127.0.0.1: a SuperLink with TLS and SuperNode
authentication, three SuperNodes with the breast-cancer partitions, the same poly_mlp model.

* Baseline: a bare Flower app (benchmarks/bare_flower_app: FedAvg, plain SGD, no DP, no
  receipts, no ledger) on stock Flower: ``flower-supernode --isolation subprocess`` (one
  fresh ``flwr-clientapp`` process per message) and Flower's own Grid (3 s polling).
* Veracity: a study with Opacus DP-SGD at every site, signed receipts verified every round,
  ``round.completed`` and a signed checkpoint per round, on Veracity's stack (warm ClientApp
  worker with its site agent and accountants loaded, ServerApp poll loop, SuperNode and
  worker polling every 0.1 s / 0.05 s while a run is active, backing off to ``--idle-poll``
  seconds when idle).

Each round is split into ClientApp start-up, training (the slowest site's handler), the
coordinator's aggregation and recording, and the rest (polling and transfers).

With ``--namespaces`` (root and iproute2), Veracity runs a second time with each site in its
own Linux network namespace, joined to the coordinator's by a veth pair (its own address,
``veracity site start`` as its operator runs it), and its seconds per round are reported
beside the loopback figure. This kernel has no ``netem``: the links add no delay.

Usage: ``python benchmarks/federation_bench.py [--rounds 3] [--namespaces] [--json out.json]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Figure, Report

from veracity.crypto.supernode import write_supernode_key_pair
from veracity.localnet import approve, create_site, enrol, start_nodes, wait_run
from veracity.server.control import ControlClient
from veracity.server.coordinator import init_coordinator, operator
from veracity.server.fab import build_fab
from veracity.server.superlink import SuperLinkOptions, start_superlink
from veracity.supervise import ManagedProcess, ProcessGroup, flower_environment, free_port, wait_for
from veracity.tasks.breast_cancer import breast_cancer_study, federated_split, standardise
from veracity.tasks.spec import ModelFamily

SITES = ("hospital-a", "hospital-b", "hospital-c")
BARE_APP = Path(__file__).resolve().parent / "bare_flower_app"


def run_baseline(root: Path, rounds: int) -> dict[str, Any]:
    """The bare app on stock Flower; returns per-round timings."""
    from flwr.cli.build import build_fab_from_disk

    split = federated_split(len(SITES), seed=0, skew=0.6)
    port = free_port()
    coordinator = init_coordinator(root / "coordinator", superlink_port=port)
    home = coordinator.home
    with ProcessGroup() as group:
        start_superlink(home, SuperLinkOptions(port=port), group)
        with ControlClient(home.superlink_address, ca_cert=home.tls.ca_cert) as control:
            for name, partition in zip(SITES, split.sites, strict=True):
                site_dir = root / name
                key, public = write_supernode_key_pair(site_dir / "keys", comment=name)
                control.register_node(public.read_bytes(), name=name)
                data = site_dir / "data.npz"
                np.savez(
                    data, x=standardise(partition.features), y=partition.labels.astype(np.float32)
                )
                argv = [
                    "flower-supernode",
                    "--root-certificates", str(home.tls.ca_cert),
                    "--superlink", home.superlink_address,
                    "--auth-supernode-private-key", str(key),
                    "--isolation", "subprocess",
                    "--host", "127.0.0.1", "--port", str(free_port()),
                    "--node-config", f'data-path="{data}"',
                ]  # fmt: skip
                group.start(
                    ManagedProcess(
                        name=f"stock-supernode[{name}]",
                        argv=argv,
                        log_path=site_dir / "supernode.log",
                        env=flower_environment(site_dir / "flwr"),
                        cwd=site_dir,
                    )
                )

            def all_online() -> bool:
                online = sum(n.status == "online" for n in control.list_nodes())
                return bool(online == len(SITES))

            wait_for(all_online, timeout=120, what="stock SuperNodes online")
            timing_path = root / "timing.json"
            started = time.time()
            run_id = control.start_run(
                build_fab_from_disk(BARE_APP),
                config={"num-server-rounds": rounds, "timing-path": str(timing_path)},
            )
            summary = control.wait(run_id, timeout=1200)
            elapsed = time.time() - started
        coordinator.close()
    if summary.state != "finished:completed":
        raise RuntimeError(f"baseline run ended {summary.state}: {summary.details}")
    timings: list[dict[str, Any]] = json.loads(timing_path.read_text(encoding="utf-8"))
    rows = [
        {
            "wall": t["end"] - t["start"],
            "startup": t["startup_max"],
            "train": t["train_max"],
            "aggregate": t["aggregate"],
        }
        for t in timings
    ]
    return {"rounds": rows, "run_seconds": elapsed}


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def site_namespaces(count: int) -> Iterator[list[tuple[str, str]]]:
    """``count`` namespaces, each joined to this one by a veth pair.

    Yields ``(namespace, coordinator address as the site sees it)`` per site; removes the
    namespaces (and whatever runs in them) afterwards.
    """
    tag = f"vb{os.getpid() % 100000}"
    made: list[tuple[str, str]] = []
    try:
        for index in range(count):
            name, host = f"{tag}-{index}", f"{tag}h{index}"
            _ip("netns", "add", name)
            made.append((name, f"10.215.{index}.1"))
            _ip("-n", name, "link", "set", "lo", "up")
            _ip("link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", name)
            _ip("addr", "add", f"10.215.{index}.1/30", "dev", host)
            _ip("link", "set", host, "up")
            _ip("-n", name, "addr", "add", f"10.215.{index}.2/30", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
        yield made
    finally:
        for name, _address in made:
            listed = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
            for pid in listed.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _start_in_namespaces(
    sites: list[Any],
    namespaces: list[tuple[str, str]],
    port: int,
    ca_cert: Path,
    group: ProcessGroup,
    idle_poll: float,
) -> None:
    """``veracity site start`` in each site's namespace; returns once every worker is ready."""
    ready = []
    for site, (namespace, address) in zip(sites, namespaces, strict=True):
        marker = site.directory / "logs" / "worker.ready"
        marker.unlink(missing_ok=True)
        ready.append(marker)
        argv = [
            "ip", "netns", "exec", namespace, sys.executable, "-m", "veracity", "site", "start",
            "--superlink", f"{address}:{port}", "--ca-cert", str(ca_cert),
            "--data-dir", str(site.directory), "--idle-poll", str(idle_poll),
        ]  # fmt: skip
        group.start(
            ManagedProcess(
                name=f"site start[{site.name}]",
                argv=argv,
                log_path=site.directory / "logs" / "site-start.log",
                env=flower_environment(site.directory / "flwr"),
            )
        )
    wait_for(lambda: all(m.exists() for m in ready), timeout=300, what="the sites' workers")


def run_veracity(
    root: Path, rounds: int, idle_poll: float, namespaces: list[tuple[str, str]] | None = None
) -> dict[str, Any]:
    """A Veracity study with DP and audit on Veracity's stack; returns per-round timings.

    With ``namespaces``, each site runs in its own network namespace (see
    :func:`site_namespaces`) and reaches the SuperLink over its veth pair.
    """
    split = federated_split(len(SITES), seed=0, skew=0.6)
    port = free_port()
    hosts = tuple(address for _name, address in namespaces or [])
    coordinator = init_coordinator(root / "coordinator", superlink_port=port, tls_hosts=hosts)
    me = operator()
    with ProcessGroup() as group:
        bind = "0.0.0.0" if namespaces else "127.0.0.1"  # noqa: S104 - the veth pairs only
        start_superlink(coordinator.home, SuperLinkOptions(host=bind, port=port), group)
        sites = [
            create_site(root / name, name, partition)
            for name, partition in zip(SITES, split.sites, strict=True)
        ]
        for site in sites:
            enrol(coordinator, site)
        warm_started = time.time()
        if namespaces:
            ca_cert = coordinator.home.tls.ca_cert
            _start_in_namespaces(sites, namespaces, port, ca_cert, group, idle_poll)
        else:
            start_nodes(coordinator, sites, group, idle_poll=idle_poll)
        warm_up = time.time() - warm_started
        study = breast_cancer_study(
            study_id="bench",
            epsilon_caps=dict.fromkeys(SITES, 10.0),
            noise_multiplier=1.0,
            code_hash=build_fab().fab_hash,
            family=ModelFamily.POLY_MLP,
            rounds=rounds,
            min_sites=len(SITES),
            learning_rate=0.5,
        )
        coordinator.propose_study(me, study.to_document())
        for site in sites:
            statement = approve(site, study, epsilon_cap=10.0)
            coordinator.record_statement(
                me, statement.kind, site.name, statement.payload, statement.signature
            )
        started = time.time()
        run = coordinator.start_run(me, study.study_hash, poll_interval=0.1, node_wait=60).value
        summary = wait_run(coordinator, run.run_id, timeout=1200)
        elapsed = time.time() - started
        timing = json.loads((coordinator.home.runs / f"{run.run_id}.timing.json").read_text())
        coordinator.close()
    if summary.state != "finished:completed":
        raise RuntimeError(f"Veracity run ended {summary.state}: {summary.details}")
    rows = [
        {
            "wall": t["recorded"] - t["start"],
            "startup": 0.0,
            "train": t["train_seconds_max"] or 0.0,
            "aggregate": t["recorded"] - t["replies"],
        }
        for t in timing["rounds"]
    ]
    return {
        "rounds": rows,
        "run_seconds": elapsed,
        "warm_up": warm_up,
        "run_start": timing["main_started"] - started,
    }


def _mean(rows: list[dict[str, float]], key: str) -> float:
    return statistics.fmean(row[key] for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle-poll", type=float, default=1.0)
    parser.add_argument(
        "--namespaces",
        action="store_true",
        help="also run Veracity with each site in its own network namespace (root)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="veracity-federation-bench-"))
    across: dict[str, Any] | None = None
    try:
        baseline = run_baseline(root / "baseline", args.rounds)
        veracity = run_veracity(root / "veracity", args.rounds, args.idle_poll)
        if args.namespaces:
            with site_namespaces(len(SITES)) as namespaces:
                across = run_veracity(root / "netns", args.rounds, args.idle_poll, namespaces)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    report = Report(f"Federated rounds: 3 sites, TLS + SuperNode auth, {args.rounds} rounds")
    b_rows, v_rows = baseline["rounds"], veracity["rounds"]
    labels = {
        "wall": "seconds per round",
        "startup": "ClientApp start-up per round (slowest site)",
        "train": "site training per round (slowest site's handler)",
        "aggregate": "aggregation + recording per round",
    }
    for part, label in labels.items():
        report.add(
            Figure(
                label,
                _mean(v_rows, part),
                "s",
                _mean(b_rows, part),
                "bare Flower app",
                higher_is_better=False,
                goal="<= 1.5 s" if part == "wall" else None,
            )
        )
    if across is not None:
        label = "Veracity, sites in network namespaces: seconds per round"
        report.add(
            Figure(
                label,
                _mean(across["rounds"], "wall"),
                "s",
                _mean(v_rows, "wall"),
                "Veracity on loopback",
                higher_is_better=False,
            )
        )
        walls = [round(r["wall"], 2) for r in across["rounds"]]
        report.notes.append(f"per-round Veracity across namespaces: {walls}")
    for name, rows in (("Veracity", v_rows), ("bare Flower", b_rows)):
        rest = [r["wall"] - r["startup"] - r["train"] - r["aggregate"] for r in rows]
        label = f"{name}: polling and transfers per round"
        report.add(Figure(label, statistics.fmean(rest), "s", higher_is_better=False))
    report.add(
        Figure(
            "whole run (submit to finished)",
            veracity["run_seconds"],
            "s",
            baseline["run_seconds"],
            "bare Flower app",
            higher_is_better=False,
        )
    )
    label = "Veracity: one-time worker warm-up (3 sites in parallel)"
    report.add(Figure(label, veracity["warm_up"], "s", higher_is_better=False))
    label = "Veracity: run submitted to ServerApp main()"
    report.add(Figure(label, veracity["run_start"], "s", higher_is_better=False))
    report.notes.append(
        "Veracity rounds include Opacus DP-SGD, PRV accounting, receipt signing and "
        "verification, round.completed and a signed checkpoint; the baseline has none."
    )
    report.notes.append(
        f"per-round Veracity: {[round(r['wall'], 2) for r in v_rows]}; "
        f"baseline: {[round(r['wall'], 2) for r in b_rows]}"
    )
    report.print()
    if args.json:
        report.write_json(args.json)


if __name__ == "__main__":
    main()
