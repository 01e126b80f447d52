"""Faults in a running network, with the real processes on this machine.

One SuperLink (TLS, SuperNode authentication), its ServerApp processes and three sites
(SuperNode + warm worker each); the coordinator's service is this test process, as the
admin API and ``veracity server start`` are in a deployment. ``hospital-c`` runs in its
own network namespace (its own address, a veth pair to this one), started with ``veracity
site start`` as its operator would, so its link can be cut; without namespaces (not root)
it runs on loopback and the link test skips.

Each test breaks something in the middle of a round and then checks what the issue asks:
how the run ended (it continues without a killed site when ``min_sites`` allows, else ends
``insufficient_sites``; a run whose coordinator died is recorded ``failed`` once it is back),
that the ledger verifies, and that every site's books match the ledger: each receipt in a
``round.completed`` is a spend the site completed with the same epsilon, and the only
spends without a receipt are those the fault interrupted (reserved at the site, so they
still count against its budget: nothing is lost, nothing is counted twice).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from veracity.client.site import Site
from veracity.client.store import Spend
from veracity.client.supernode import SuperNodeOptions, start_site_node
from veracity.errors import TransportError
from veracity.localnet import LocalSite, approve, create_site, enrol
from veracity.server.coordinator import CoordinatorService, init_coordinator, operator
from veracity.server.coordinator.bootstrap import open_coordinator
from veracity.server.coordinator.unit_of_work import SUPERVISOR
from veracity.server.fab import build_fab
from veracity.server.superlink import SuperLinkOptions, start_superlink, superlink_argv
from veracity.supervise import ManagedProcess, ProcessGroup, flower_environment, free_port
from veracity.tasks.breast_cancer import breast_cancer_study, federated_split
from veracity.tasks.spec import ModelFamily
from veracity.tasks.study import Study

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(3600)]

SITES = ("hospital-a", "hospital-b", "hospital-c")
ADMIN = operator("admin")
#: The veth pair between this namespace and hospital-c's.
HOST_SIDE, SITE_SIDE = "10.214.0.1", "10.214.0.2"
ROUND_TIMEOUT, NODE_WAIT = 60.0, 30.0
T = TypeVar("T")


def _eventually(what: str, probe: Callable[[], T | None], *, timeout: float) -> T:
    """``probe()`` once it is not None or False; bounded by ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _namespace_for(tag: str) -> str | None:
    """A namespace joined to this one by a veth pair (``HOST_SIDE`` - ``SITE_SIDE``)."""
    if os.geteuid() != 0 or subprocess.run(["which", "ip"], capture_output=True).returncode:
        return None
    name = f"{tag}-c"
    try:
        _ip("netns", "add", name)
    except (subprocess.CalledProcessError, OSError):
        return None
    _ip("-n", name, "link", "set", "lo", "up")
    _ip("link", "add", f"{tag}h", "type", "veth", "peer", "name", "eth0", "netns", name)
    _ip("addr", "add", f"{HOST_SIDE}/30", "dev", f"{tag}h")
    _ip("link", "set", f"{tag}h", "up")
    _ip("-n", name, "addr", "add", f"{SITE_SIDE}/30", "dev", "eth0")
    _ip("-n", name, "link", "set", "eth0", "up")
    return name


def _drop_namespace(name: str) -> None:
    listed = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    for pid in listed.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@dataclass
class Network:
    """The running network and the means to break it."""

    root: Path
    coordinator: CoordinatorService
    group: ProcessGroup
    sites: dict[str, LocalSite]
    port: int
    superlink: ManagedProcess
    namespace: str | None
    link: str | None
    processes: dict[str, list[ManagedProcess]] = field(default_factory=dict)

    # ------------------------------------------------------------------ sites
    def start_site(self, name: str) -> None:
        """Start ``name``'s SuperNode and worker; return once its worker is ready."""
        site = self.sites[name]
        if name == SITES[2] and self.namespace is not None:
            ready = site.directory / "logs" / "worker.ready"
            ready.unlink(missing_ok=True)
            process = self.group.start(
                ManagedProcess(
                    name=f"site start[{name}]",
                    argv=[
                        "ip", "netns", "exec", self.namespace,
                        sys.executable, "-m", "veracity", "site", "start",
                        "--superlink", f"{HOST_SIDE}:{self.port}",
                        "--ca-cert", str(self.coordinator.home.tls.ca_cert),
                        "--data-dir", str(site.directory), "--idle-poll", "0.2",
                    ],
                    log_path=site.directory / "logs" / "site-start.log",
                    env=flower_environment(site.directory / "flwr"),
                )
            )  # fmt: skip
            _eventually(f"{name}'s worker", ready.exists, timeout=300)
            self.processes[name] = [process]
            return
        options = SuperNodeOptions(
            superlink=self.coordinator.home.superlink_address,
            ca_cert=self.coordinator.home.tls.ca_cert,
            idle_poll=0.2,
        )
        node = start_site_node(site.directory, options, self.group, timeout=300)
        self.processes[name] = [node.supernode, node.worker]

    def kill_site(self, name: str) -> None:
        """SIGKILL the site's processes (a machine that lost power)."""
        for process in self.processes.pop(name):
            assert process.popen is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.popen.pid, signal.SIGKILL)
            process.popen.wait(timeout=30)
            self.group.processes.remove(process)
            process.stop()  # closes its log

    def online(self) -> set[str]:
        """Sites whose SuperNode the SuperLink sees online now."""
        return {n.name for n in self.coordinator.federation.list_nodes() if n.status == "online"}

    def wait_all_online(self) -> None:
        _eventually("every site online", lambda: self.online() >= set(SITES), timeout=240)

    def restore(self) -> None:
        """Whatever a test broke runs again: the SuperLink, every site; the link is up."""
        if self.link is not None:
            _ip("link", "set", self.link, "up")
        if not self.superlink.alive():
            with contextlib.suppress(ValueError):
                self.group.processes.remove(self.superlink)
            if self._executor() is not None:
                self.start_superlink_alone()
            else:
                self.start_superlink()
        for name in SITES:
            if name not in self.processes:
                self.start_site(name)
        self.wait_all_online()

    # ------------------------------------------------------------------ coordinator
    def _executor(self) -> ManagedProcess | None:
        """The ServerApp executor beside the SuperLink (its runs' ServerApps are its children)."""
        found = [p for p in self.group.processes if p.name == "serverapp-executor"]
        return found[-1] if found and found[-1].alive() else None

    def start_superlink(self) -> None:
        """The SuperLink and its ServerApp executor, as ``server start`` runs them."""
        host = "127.0.0.1" if self.namespace is None else "0.0.0.0"  # noqa: S104 - veth only
        self.superlink = start_superlink(
            self.coordinator.home, SuperLinkOptions(host=host, port=self.port), self.group
        )

    def start_superlink_alone(self) -> None:
        """The SuperLink again, beside the executor that outlived it."""
        host = "127.0.0.1" if self.namespace is None else "0.0.0.0"  # noqa: S104 - veth only
        home = self.coordinator.home
        self.superlink = self.group.start(
            ManagedProcess(
                name="superlink",
                argv=superlink_argv(home, SuperLinkOptions(host=host, port=self.port)),
                log_path=home.logs / "superlink.log",
                env=flower_environment(home.flwr_home),
                cwd=home.data_dir,
            )
        )
        _eventually("the SuperLink's Control API", self._answers, timeout=120)

    def _answers(self) -> bool:
        try:
            self.coordinator.federation.list_runs()
        except TransportError:
            return False
        return True

    def kill_superlink(self, *, with_its_serverapps: bool) -> None:
        """SIGKILL the SuperLink (and the executor with its ServerApps, if asked)."""
        doomed = [self.superlink]
        executor = self._executor()
        if with_its_serverapps and executor is not None:
            doomed.append(executor)
        for process in doomed:
            popen = process.popen
            assert popen is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(timeout=30)
            self.group.processes.remove(process)
            process.stop()  # closes its log


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    root = tmp_path_factory.mktemp("faults")
    tag = f"vf{os.getpid() % 100000}"
    namespace = _namespace_for(tag)
    port = free_port()
    coordinator = init_coordinator(
        root / "coordinator",
        superlink_port=port,
        tls_hosts=(HOST_SIDE,) if namespace is not None else (),
    )
    split = federated_split(len(SITES), seed=0, skew=0.6)
    group = ProcessGroup()
    try:
        host = "127.0.0.1" if namespace is None else "0.0.0.0"  # noqa: S104 - veth only
        superlink = start_superlink(coordinator.home, SuperLinkOptions(host=host, port=port), group)
        sites = {
            name: create_site(root / "sites" / name, name, partition, epsilon_budget=100.0)
            for name, partition in zip(SITES, split.sites, strict=True)
        }
        for site in sites.values():
            enrol(coordinator, site)
        net = Network(
            root, coordinator, group, sites, port, superlink,
            namespace=namespace, link=None if namespace is None else f"{tag}h",
        )  # fmt: skip
        for name in SITES:
            net.start_site(name)
        net.wait_all_online()
        yield net
        coordinator = net.coordinator
    finally:
        group.stop_all()
        coordinator.close()
        if namespace is not None:
            _drop_namespace(namespace)


@pytest.fixture(autouse=True)
def restored(network: Network) -> Iterator[None]:
    """After each test, pass or fail, the network runs whole again for the next."""
    yield
    network.restore()


# ---------------------------------------------------------------------- helpers
def _study(network: Network, study_id: str, *, min_sites: int, rounds: int = 2) -> Study:
    study = breast_cancer_study(
        study_id=study_id,
        epsilon_caps=dict.fromkeys(SITES, 20.0),
        noise_multiplier=2.2,
        code_hash=build_fab().fab_hash,
        family=ModelFamily.POLY_MLP,
        rounds=rounds,
        min_sites=min_sites,
        learning_rate=0.5,
    )
    network.coordinator.propose_study(ADMIN, study.to_document())
    for name, site in network.sites.items():
        statement = approve(site, study, epsilon_cap=20.0)
        network.coordinator.record_statement(
            ADMIN, statement.kind, name, statement.payload, statement.signature
        )
    return study


def _start(network: Network, study: Study, *, round_timeout: float = ROUND_TIMEOUT) -> str:
    run = network.coordinator.start_run(
        ADMIN,
        study.study_hash,
        poll_interval=0.1,
        round_timeout=round_timeout,
        node_wait=NODE_WAIT,
    )
    return run.value.run_id


def _spends(site: LocalSite) -> list[Spend]:
    with Site.open(site.directory) as opened:
        return opened.store.list_spends()


def _spend_of(site: LocalSite, run_id: str, round: int) -> Spend | None:
    """The site's spend for that round, once it has reserved one (it is training)."""
    return next((s for s in _spends(site) if (s.run_id, s.round) == (run_id, round)), None)


def _finished(network: Network, run_id: str, *, timeout: float) -> dict[str, Any]:
    """The run's ``run.finished`` payload, once recorded."""

    def recorded() -> dict[str, Any] | None:
        run = network.coordinator.reads.run(run_id)
        return None if run.finished is None else run.finished.to_json(run_id, run.study_hash)

    return _eventually(f"run.finished of run {run_id}", recorded, timeout=timeout)


def _participants(network: Network, run_id: str) -> list[list[str]]:
    return [
        sorted(record.to_json()["participants"])
        for record in network.coordinator.reads.rounds(run_id)
    ]


def _check_books(network: Network) -> dict[str, list[tuple[str, int]]]:
    """The ledger verifies and every receipt is a completed spend at its site.

    Returns each site's spends that have no receipt, as ``(run_id, round)``.
    """
    coordinator = network.coordinator
    coordinator.ledger.verify(coordinator.ledger.identity_public_key)
    receipts: dict[str, dict[tuple[str, int], float]] = {name: {} for name in SITES}
    for entry in coordinator.ledger.iter_entries(kind="round.completed"):
        for signed in entry.payload["receipts"]:
            receipt = signed["receipt"]
            receipts[receipt["site"]][(receipt["run_id"], receipt["round"])] = receipt["epsilon"]
    finished = [e.payload["run_id"] for e in coordinator.ledger.iter_entries(kind="run.finished")]
    started = [e.payload["run_id"] for e in coordinator.ledger.iter_entries(kind="run.started")]
    assert sorted(finished) == sorted(started), "every run ends with exactly one run.finished"
    unreceipted: dict[str, list[tuple[str, int]]] = {}
    for name, site in network.sites.items():
        spends = {(s.run_id, s.round): s for s in _spends(site)}
        for key, epsilon in receipts[name].items():
            spend = spends.get(key)
            assert spend is not None, f"{name}: a receipt for {key} the site has no spend for"
            assert spend.status == "completed", (name, key, spend.status)
            assert spend.epsilon_dataset == pytest.approx(epsilon, abs=1e-9), (name, key)
        unreceipted[name] = sorted(set(spends) - set(receipts[name]))
    return unreceipted


def _rounds_of(keys: list[tuple[str, int]], run_id: str) -> list[int]:
    return [round for run, round in keys if run == run_id]


# ---------------------------------------------------------------------- tests
def test_a_site_killed_mid_round_drops_out_and_the_run_continues_with_the_others(
    network: Network,
) -> None:
    a, b, c = SITES
    study = _study(network, "fault-site-killed", min_sites=2)
    run_id = _start(network, study)
    _eventually("hospital-a training round 1", lambda: _spend_of(network.sites[a], run_id, 1),
                timeout=300)  # fmt: skip
    network.kill_site(a)

    finished = _finished(network, run_id, timeout=600)

    assert finished["status"] == "completed", finished
    rounds = _participants(network, run_id)
    assert len(rounds) == 2
    assert all(set(r) >= {b, c} for r in rounds), rounds
    assert a not in rounds[-1]
    unreceipted = _check_books(network)
    assert unreceipted[b] == unreceipted[c] == []
    assert set(_rounds_of(unreceipted[a], run_id)) <= {1}  # the round it was killed in


def test_a_site_killed_mid_round_ends_a_run_that_needs_every_site_insufficient_sites(
    network: Network,
) -> None:
    b = SITES[1]
    study = _study(network, "fault-every-site", min_sites=3)
    run_id = _start(network, study)
    _eventually("hospital-b training round 1", lambda: _spend_of(network.sites[b], run_id, 1),
                timeout=300)  # fmt: skip
    network.kill_site(b)

    finished = _finished(network, run_id, timeout=600)

    assert finished["status"] == "insufficient_sites", finished
    assert finished["model_hash"] is None
    unreceipted = _check_books(network)
    # Round 1 is never recorded: the others' spends for it count at their sites, with no
    # receipt in the ledger (no model was released from them).
    for name in SITES:
        assert set(_rounds_of(unreceipted[name], run_id)) <= {1}, name


def test_a_site_link_cut_for_30_s_and_restored_rejoins_and_the_run_completes(
    network: Network,
) -> None:
    if network.link is None:
        pytest.skip("cutting a link needs network namespaces (root and iproute2)")
    a, b, c = SITES
    study = _study(network, "fault-link-cut", min_sites=2, rounds=3)
    run_id = _start(network, study)
    _eventually("hospital-a training round 1", lambda: _spend_of(network.sites[a], run_id, 1),
                timeout=300)  # fmt: skip
    _ip("link", "set", network.link, "down")
    try:
        time.sleep(30)
    finally:
        _ip("link", "set", network.link, "up")

    finished = _finished(network, run_id, timeout=900)

    # A reply sent into the cut arrives once the SuperNode reconnects; when the outage
    # (the cut plus its reconnection) outlasts the SuperLink's heartbeat patience, the
    # SuperLink has already given up the instruction and refuses it, so that round goes
    # on without the site. The site is back for the last round.
    assert finished["status"] == "completed", finished
    rounds = _participants(network, run_id)
    assert len(rounds) == 3
    assert all({a, b} <= set(r) for r in rounds), rounds
    assert c in rounds[-1], rounds
    unreceipted = _check_books(network)
    assert _rounds_of(unreceipted[a], run_id) == _rounds_of(unreceipted[b], run_id) == []
    assert set(_rounds_of(unreceipted[c], run_id)) <= {1}  # the round of the cut, if lost


def test_the_superlink_killed_mid_round_and_restarted_leaves_the_run_recorded(
    network: Network,
) -> None:
    a = SITES[0]
    study = _study(network, "fault-superlink", min_sites=2)
    run_id = _start(network, study)
    _eventually("hospital-a training round 1", lambda: _spend_of(network.sites[a], run_id, 1),
                timeout=300)  # fmt: skip
    network.kill_superlink(with_its_serverapps=False)
    time.sleep(5)
    network.start_superlink_alone()

    def ended() -> bool:
        network.coordinator.record_ended_runs(SUPERVISOR)
        return network.coordinator.reads.run(run_id).finished is not None

    _eventually("the run's end, recorded", ended, timeout=600)

    finished = _finished(network, run_id, timeout=1)
    # The restarted SuperLink keeps no runs (in-memory state): the run is recorded failed.
    assert finished["status"] == "failed", finished
    assert finished["rounds_completed"] == len(network.coordinator.reads.rounds(run_id))
    unreceipted = _check_books(network)
    participants = _participants(network, run_id)
    for name in SITES:
        # A spend without a receipt is the round in flight at the kill (round 1), whose
        # reply the dead SuperLink lost: the round may still have completed without that
        # site (min_sites 2), and the site's spend stands unreceipted (the documented
        # cost of a lost reply). A failed run may also leave the round it failed in.
        # Every other spend of a completed round is receipted.
        lost = _rounds_of(unreceipted[name], run_id)
        for r in lost:
            if r <= finished["rounds_completed"]:
                assert r == 1, (name, lost)
                assert name not in participants[r - 1], (name, participants)
            else:
                assert finished["status"] == "failed" or r == 1, (name, lost)


def test_the_coordinator_killed_mid_run_and_restarted_records_the_run_failed(
    network: Network,
) -> None:
    a = SITES[0]
    study = _study(network, "fault-coordinator", min_sites=2)
    run_id = _start(network, study)
    _eventually("hospital-a training round 1", lambda: _spend_of(network.sites[a], run_id, 1),
                timeout=300)  # fmt: skip
    # The coordinator's host goes down: SuperLink, its ServerApp, the service.
    network.kill_superlink(with_its_serverapps=True)
    network.coordinator.close()
    network.coordinator = open_coordinator(network.root / "coordinator")
    network.start_superlink()
    assert network.coordinator.reads.run(run_id).finished is None

    def recorded() -> list[str] | None:
        return network.coordinator.record_ended_runs(SUPERVISOR) or None

    assert _eventually("the SuperLink to report the run ended", recorded, timeout=300) == [run_id]

    finished = _finished(network, run_id, timeout=1)
    assert finished["status"] == "failed", finished
    assert finished["model_hash"] is None
    assert finished["rounds_completed"] == len(network.coordinator.reads.rounds(run_id))
    assert network.coordinator.record_ended_runs(SUPERVISOR) == []  # recorded once
    unreceipted = _check_books(network)
    for name in SITES:  # only the interrupted round's spends lack a receipt
        assert all(r > finished["rounds_completed"] for r in _rounds_of(unreceipted[name], run_id))
