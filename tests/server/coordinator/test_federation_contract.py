"""One behavioural suite for the Federation port: the SuperLink in memory and the real one.

What the coordinator's compensation relies on is pinned here for both implementations
(Flower's linkstate tests its in-memory and SQL states the same way): a key the SuperLink
holds, registered or withdrawn, is refused; a withdrawn node stays listed as
``unregistered``; stopping a run that has ended answers False; unknown nodes and runs are
``NotFound``.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.sites import supernode_public_key
from veracity.crypto.tls import create_tls_material
from veracity.errors import Conflict, InputError, NotFound, TransportError
from veracity.server.coordinator import (
    CoordinatorHome,
    Federation,
    InMemoryFederation,
    SuperLinkFederation,
)
from veracity.server.fab import build_fab
from veracity.server.superlink import SuperLinkOptions, start_superlink
from veracity.supervise import ProcessGroup, free_port

# The bundle a run is started with: the real FAB, with a run config whose ServerApp finds
# no coordinator (so a run the real SuperLink starts ends by itself, failed).
CONFIG: dict[str, bool | int | float | str] = {
    "study-hash": "",
    "coordinator-dir": "/nonexistent",
    "poll-interval": 0.2,
    "round-timeout": 5.0,
    "node-wait": 1.0,
}


@pytest.fixture(scope="module")
def real_superlink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SuperLinkFederation]:
    base = tmp_path_factory.mktemp("superlink")
    create_tls_material(base / "tls")
    port = free_port()
    home = CoordinatorHome.at(base, superlink_port=port)
    with ProcessGroup() as group:
        start_superlink(home, SuperLinkOptions(port=port), group)
        yield SuperLinkFederation(home.superlink_address, ca_cert=home.tls.ca_cert, timeout=10.0)


@pytest.fixture(
    params=["memory", pytest.param("superlink", marks=[pytest.mark.integration, pytest.mark.slow])]
)
def federation(request: pytest.FixtureRequest) -> Federation:
    if request.param == "memory":
        return InMemoryFederation()
    real: SuperLinkFederation = request.getfixturevalue("real_superlink")
    return real


def _status(federation: Federation, node_id: int) -> str:
    return next(n.status for n in federation.list_nodes() if n.node_id == node_id)


def test_a_registered_key_is_listed_under_its_name(federation: Federation) -> None:
    key = supernode_public_key()
    node_id = federation.register_node("north", key)
    node = next(n for n in federation.list_nodes() if n.node_id == node_id)
    assert (node.name, node.status) == ("north", "registered")
    assert "BEGIN PUBLIC KEY" in str(node.public_key_pem)


def test_a_key_is_registered_once_and_never_again_once_withdrawn(federation: Federation) -> None:
    key = supernode_public_key()
    node_id = federation.register_node("north", key)
    with pytest.raises(Conflict):
        federation.register_node("north", key)
    with pytest.raises(Conflict):
        federation.register_node("elsewhere", key)
    federation.unregister_node(node_id)
    assert _status(federation, node_id) == "unregistered"
    with pytest.raises(Conflict):
        federation.register_node("north", key)
    # The site's way out is a new SuperNode key, under the same name.
    fresh = federation.register_node("north", supernode_public_key())
    assert _status(federation, fresh) == "registered"


def test_withdrawing_an_unknown_or_withdrawn_node_is_not_found(federation: Federation) -> None:
    node_id = federation.register_node("north", supernode_public_key())
    federation.unregister_node(node_id)
    with pytest.raises(NotFound):
        federation.unregister_node(node_id)
    with pytest.raises(NotFound):
        federation.unregister_node(12345)


def test_a_key_that_is_not_ecdsa_on_a_nist_curve_is_refused(federation: Federation) -> None:
    with pytest.raises(InputError):
        federation.register_node("north", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI nope")


def test_a_started_run_is_pending_and_stops_once(federation: Federation) -> None:
    fab = build_fab().content
    run_id = federation.start_run(fab, config=CONFIG)
    summary = federation.run(run_id)
    assert summary.fab_hash == hashlib.sha256(fab).hexdigest()
    assert summary.status in ("pending", "starting", "running")
    assert run_id in {run.run_id for run in federation.list_runs()}
    assert federation.stop_run(run_id) is True
    stopped = federation.run(run_id)
    assert (stopped.finished, stopped.state) == (True, "finished:stopped")
    assert federation.stop_run(run_id) is False


def test_unknown_runs_are_not_found(federation: Federation) -> None:
    with pytest.raises(NotFound):
        federation.run(42)
    with pytest.raises(NotFound):
        federation.stop_run(42)
    assert federation.logs(42, after=0.0, wait=0.2) == ("", 0.0)


def test_a_superlink_that_never_answers_fails_each_call_within_its_timeout(
    tmp_path: Path,
) -> None:
    create_tls_material(tmp_path / "tls")
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        port = silent.getsockname()[1]
        home = CoordinatorHome.at(tmp_path, superlink_port=port)
        federation = SuperLinkFederation(
            home.superlink_address, ca_cert=home.tls.ca_cert, timeout=1.0
        )
        started = time.monotonic()
        with pytest.raises(TransportError):
            federation.list_nodes()
        assert time.monotonic() - started < 4.0
