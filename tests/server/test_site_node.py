"""``veracity site start`` runs a SuperNode that joins over TLS and stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from veracity.client.site import Site, init_site
from veracity.crypto.supernode import load_supernode_public_key
from veracity.server.coordinator import CoordinatorService, operator
from veracity.supervise import wait_for

pytestmark = pytest.mark.integration


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def test_site_start_joins_the_superlink_and_stops_its_children(
    coordinator_with_superlink: CoordinatorService, tmp_path: Path
) -> None:
    coordinator = coordinator_with_superlink
    site_dir = tmp_path / "hospital-a"
    init_site(site_dir, "hospital-a")
    with Site.open(site_dir) as site:
        public_pem = site.key.public.pem()
        proof = site.enrolment_proof(coordinator.ledger.log_id)
    coordinator.enrol_site(
        operator("alice"),
        "hospital-a",
        public_key_pem=public_pem,
        proof=proof,
        supernode_public_key=load_supernode_public_key(site_dir / "keys" / "supernode.pub"),
    )
    argv = [
        sys.executable, "-m", "veracity", "site", "start",
        "--superlink", coordinator.home.superlink_address,
        "--ca-cert", str(coordinator.home.tls.ca_cert),
        "--data-dir", str(site_dir), "--idle-poll", "0.2",
    ]  # fmt: skip
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log)
    try:

        def online() -> bool:
            return any(
                n.name == "hospital-a" and n.status == "online"
                for n in coordinator.federation.list_nodes()
            )

        wait_for(online, timeout=180, what="hospital-a online")
        assert _processes_mentioning(str(site_dir))
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=60)  # raises if the agent does not stop
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        log.close()
    wait_for(lambda: not _processes_mentioning(str(site_dir)), timeout=30, what="children gone")
