"""A research network across hosts: the coordinator, three sites and a clinic each in its own
Linux network namespace (its own address, a veth pair to one bridge), every step a
``veracity`` command run inside the namespace of the person who does it.

What crosses the network is only what crosses it in a real deployment: SuperNodes reach the
SuperLink, sites and the admin reach the admin API, the clinic sends encrypted queries; each
host keeps its own directory, and the files people hand over (public keys, ``ca.crt``, the
study documents, the ledger bundle and ``root.pub``) are copied from one to another. After
the training run and its release, the clinic predicts under encryption, a researcher on the
clinic's host runs an analysis study the sites approved, and an auditor there checks the
bundle (the analysis's receipts in it) offline. The
certificate names the coordinator's address (``server init --hostname``). The kernel here has
no ``netem``, so links have no artificial delay.

Skips (saying why) where network namespaces cannot be made: not root, or no ``ip``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.network_cli import (
    ANALYSIS_QUERIES,
    SITES,
    Shell,
    analysis_study,
    answered_in_bundle,
    check_analysis,
    wait_for,
    write_hospital_files,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(3600)]

SUBNET = "10.213.0"
COORDINATOR = f"{SUBNET}.1"
SUPERLINK_PORT, API_PORT = 9093, 8443


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass(frozen=True)
class Hosts:
    """Namespace name and address of each host."""

    names: dict[str, str]
    addresses: dict[str, str]


def _namespaces_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"vrprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as err:
        detail = getattr(err, "stderr", b"") or b""
        return f"ip netns add failed: {detail.decode(errors='replace').strip() or err}"
    _ip("netns", "del", probe)
    return None


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    """Five hosts on one bridge (in a sixth namespace, the switch), loopback up in each."""
    reason = _namespaces_unavailable()
    if reason is not None:
        pytest.skip(reason)
    tag = f"vr{os.getpid() % 100000}"
    roles = ["coord", *[f"site{site[-1]}" for site in SITES], "clinic"]
    names = {role: f"{tag}-{role}" for role in roles}
    addresses = {role: f"{SUBNET}.{index + 1}" for index, role in enumerate(roles)}
    switch = f"{tag}-sw"
    made: list[str] = []
    try:
        _ip("netns", "add", switch)
        made.append(switch)
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        for index, role in enumerate(roles):
            ns = names[role]
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            port = f"p{index}"
            _ip("-n", switch, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                "netns", ns)  # fmt: skip
            _ip("-n", switch, "link", "set", port, "master", "br0")
            _ip("-n", switch, "link", "set", port, "up")
            _ip("-n", ns, "addr", "add", f"{addresses[role]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        yield Hosts(names=names, addresses=addresses)
    finally:
        for ns in reversed(made):  # whatever this test started there and left running
            listed = subprocess.run(
                ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False
            )
            for pid in listed.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _in(hosts: Hosts, role: str, directory: Path) -> Shell:
    directory.mkdir(parents=True, exist_ok=True)
    return Shell(cwd=directory, prefix=("ip", "netns", "exec", hosts.names[role]))


def _hand_over(source: Path, destination: Path) -> Path:
    """A file given from one person to another (by mail, by USB stick)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, destination)
    return destination


def _propose_and_approve(coord: Shell, sites: dict[str, Shell], document: Path) -> str:
    """The admin proposes ``document`` and each site, handed it, approves it for its cohort.

    Returns the study's hash once every approval has reached the coordinator.
    """
    study_hash = str(coord.json("admin", "studies", "propose", str(document))["study_hash"])
    for shell in sites.values():
        _hand_over(document, shell.cwd / document.name)
        shell.run(
            "site", "approve", document.name, "--dataset", "cohort", "--epsilon-cap", "8",
            "--yes", "--data-dir", "site",
        )  # fmt: skip
    wait_for(
        f"the approvals of {document.name}, delivered by each site over the network",
        lambda: coord.json("admin", "studies", "show", study_hash)["ready"],
        timeout=120,
    )
    return study_hash


def test_a_study_across_five_hosts_through_the_cli(hosts: Hosts, tmp_path: Path) -> None:
    data = write_hospital_files(tmp_path / "source-data")
    coord = _in(hosts, "coord", tmp_path / "coordinator-host")
    sites = {site: _in(hosts, f"site{site[-1]}", tmp_path / f"{site}-host") for site in SITES}
    clinic = _in(hosts, "clinic", tmp_path / "clinic-host")
    shells = [coord, *sites.values(), clinic]
    try:
        _run(hosts, coord, sites, clinic, data)
    finally:
        codes = [code for shell in reversed(shells) for code in shell.stop_all()]
    assert all(code == 0 for code in codes), codes


def _run(
    hosts: Hosts, coord: Shell, sites: dict[str, Shell], clinic: Shell, data: dict[str, Path]
) -> None:
    server = f"https://{COORDINATOR}:{API_PORT}"
    # ---- coordinator host ----------------------------------------------------------------
    shown = coord.json(
        "server", "init", "--data-dir", "coord", "--hostname", COORDINATOR,
        "--superlink-port", str(SUPERLINK_PORT),
    )  # fmt: skip
    assert COORDINATOR in shown["certificate_hosts"].split()
    coord.start(
        "server", "start", "--data-dir", "coord", "--host", COORDINATOR,
        "--api-port", str(API_PORT), "--superlink-host", "0.0.0.0",  # noqa: S104 - its own namespace
        log=coord.cwd / "server.log", ready="Ctrl-C stops",
    )  # fmt: skip
    admin = coord.run(
        "server", "token", "create", "--role", "admin", "--name", "alice", "--data-dir", "coord"
    ).stdout.strip()
    coord.env.update(
        VERACITY_SERVER=server, VERACITY_TOKEN=admin, VERACITY_CA_CERT="coord/tls/ca.crt"
    )
    ca_cert = coord.cwd / "coord" / "tls" / "ca.crt"

    # ---- every site: keys to the admin, enrolment, token back, data, SuperNode -------------
    for site, shell in sites.items():
        made = shell.json("site", "init", "--name", site, "--data-dir", "site")
        proof = shell.run(
            "site", "enrolment-proof", "--log-id", shown["log_id"], "--data-dir", "site"
        ).stdout.strip()  # fmt: skip
        public = _hand_over(Path(made["public_key"]), coord.cwd / "inbox" / f"{site}.pub")
        supernode = _hand_over(
            Path(made["supernode_public_key"]), coord.cwd / "inbox" / f"{site}-supernode.pub"
        )
        coord.run(
            "admin", "sites", "enrol", site, "--public-key", str(public),
            "--supernode-public-key", str(supernode), "--proof", proof,
        )  # fmt: skip
        token = coord.run(
            "admin", "tokens", "create", "--role", "site", "--name", f"{site} operator",
            "--site", site,
        ).stdout.strip()  # fmt: skip
        _hand_over(ca_cert, shell.cwd / "ca.crt")
        _hand_over(data[site], shell.cwd / "patients.csv")
        shell.run(
            "site", "register-dataset", "--id", "cohort", "--path", "patients.csv",
            "--label", "diagnosis", "--data-dir", "site",
        )  # fmt: skip
        shell.start(
            "site", "start", "--superlink", f"{COORDINATOR}:{SUPERLINK_PORT}",
            "--ca-cert", "ca.crt", "--data-dir", "site", "--server", server,
            "--token", token, "--sync-every", "1",
            log=shell.cwd / "site.log", ready="Ctrl-C stops",
        )  # fmt: skip

    # ---- the study: written, proposed, reviewed and approved at every site -----------------
    _hand_over(data["reference"], coord.cwd / "reference.csv")
    proposed_file = coord.cwd / "STUDY.json"
    written = coord.json(
        "admin", "studies", "new", "--study-id", "bc-multihost",
        *[arg for site in SITES for arg in ("--site", site)],
        "--schema", "reference.csv", "--label", "diagnosis", "--epsilon-cap", "8",
        "--rounds", "2", "--out", str(proposed_file),
    )  # fmt: skip
    study_hash = _propose_and_approve(coord, sites, proposed_file)

    # ---- the run, watched from the coordinator host, and the release ----------------------
    watched = coord.json("admin", "runs", "start", study_hash, "--watch", timeout=900)
    assert watched["finished"]["status"] == "completed", watched["finished"]
    model = watched["finished"]["model_hash"]
    assert [m["model_hash"] for m in coord.json("admin", "models", "list")["items"]] == [model]

    # ---- a clinic on its own host: an encrypted prediction ---------------------------------
    clinic_token = coord.run(
        "admin", "tokens", "create", "--role", "researcher", "--name", "clinic"
    ).stdout.strip()
    _hand_over(ca_cert, clinic.cwd / "ca.crt")
    _hand_over(data["clinic"], clinic.cwd / "patients.csv")
    clinic.run(
        "predict", "--model", model, "--input", "patients.csv", "--id-column", "patient_id",
        "--server", server, "--token", clinic_token, "--ca-cert", "ca.crt", "--out", "scores.csv",
    )  # fmt: skip
    with (clinic.cwd / "scores.csv").open(encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == 8

    # ---- a researcher on the clinic's host: an analysis study the sites approved -----------
    analysis_file = coord.cwd / "ANALYSIS.json"
    document = analysis_study("bc-analysis-multihost", code_hash=written["code_hash"])
    analysis_file.write_text(json.dumps(document, indent=2), encoding="utf-8")
    analysis_hash = _propose_and_approve(coord, sites, analysis_file)
    _hand_over(analysis_file, clinic.cwd / "ANALYSIS.json")
    answered = clinic.json(
        "analysis", "run", "ANALYSIS.json", "--server", f"{server}/api/v1",
        "--token", clinic_token, "--ca-cert", "ca.crt", "--plot", "texture.png", timeout=900,
    )  # fmt: skip
    assert answered["study_hash"] == analysis_hash
    spent = check_analysis(answered, data)
    assert (clinic.cwd / "texture.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The site's own store holds the spend its receipts state (one site: each command costs).
    (dataset,) = sites["hospital-b"].json("site", "datasets", "--data-dir", "site")["datasets"]
    assert dataset["epsilon_spent"] == pytest.approx(spent["hospital-b"], rel=1e-9)

    # ---- an audit: the bundle fetched over the API, then checked offline -------------------
    auditor_token = coord.run(
        "admin", "tokens", "create", "--role", "auditor", "--name", "ethics board"
    ).stdout.strip()
    clinic.run(
        "admin", "ledger", "export", "--out", "ledger.jsonl", "--server", server,
        "--token", auditor_token, "--ca-cert", "ca.crt",
    )  # fmt: skip
    _hand_over(coord.cwd / "coord" / "keys" / "root.pub", clinic.cwd / "root.pub")
    report = clinic.json("ledger", "verify", "--bundle", "ledger.jsonl", "--trust", "root.pub")
    assert report["ok"] is True
    in_bundle = answered_in_bundle(clinic.cwd / "ledger.jsonl", answered["run_id"])
    assert sorted(in_bundle) == sorted(ANALYSIS_QUERIES)
    for query in answered["queries"]:  # every site's signed receipt, the epsilon it stated
        receipts = [r["receipt"] for r in in_bundle[query["query_id"]]["receipts"]]
        assert {r["site"]: r["epsilon"] for r in receipts} == query["epsilon"]
    provenance = clinic.json(
        "ledger", "provenance", model, "--bundle", "ledger.jsonl", "--trust", "root.pub"
    )
    assert f"veracity:model/{model}" in json.dumps(provenance)
    for shell in sites.values():
        assert shell.json("site", "outbox", "--data-dir", "site")["statements"] == []
