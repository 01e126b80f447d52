"""The SuperLink keeps its state in memory but its SuperNode registrations on disk.

With Flower's plain in-memory state (``--database :flwr-in-memory:``) a restarted
SuperLink knows no SuperNode: every site would have to be enrolled again, and a withdrawn
key could be registered again. These tests restart it for real (SIGKILL) and check that
registrations and withdrawals are as they were, with the same node ids.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flwr.server.superlink.linkstate import SqlLinkState
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NodeStatus
from flwr.supercore.object_store import ObjectStore, ObjectStoreFactory
from flwr.superlink.federation import NoOpFederationManager

from tests.server.sites import supernode_public_key
from veracity.crypto.tls import create_tls_material
from veracity.errors import ConfigError, Conflict
from veracity.server.coordinator import CoordinatorHome, SuperLinkFederation
from veracity.server.superlink import SuperLinkOptions, start_superlink
from veracity.server.superlink_process import (
    DurableNodesLinkState,
    PathScoped,
    _Factory,
    path_scoped_middleware,
)
from veracity.supervise import ManagedProcess, ProcessGroup, free_port


@pytest.fixture
def home(tmp_path: Path) -> CoordinatorHome:
    create_tls_material(tmp_path / "tls")
    return CoordinatorHome.at(tmp_path, superlink_port=free_port())


def _kill(process: ManagedProcess, group: ProcessGroup) -> None:
    assert process.popen is not None
    os.killpg(process.popen.pid, signal.SIGKILL)
    process.popen.wait(timeout=30)
    group.processes.remove(process)
    process.stop()


@pytest.fixture
def group() -> Iterator[ProcessGroup]:
    with ProcessGroup() as processes:
        yield processes


@pytest.mark.integration
@pytest.mark.slow
def test_registrations_and_withdrawals_survive_a_superlink_killed_and_restarted(
    home: CoordinatorHome, group: ProcessGroup
) -> None:
    options = SuperLinkOptions(port=home.superlink_port)
    superlink = start_superlink(home, options, group)
    federation = SuperLinkFederation(home.superlink_address, ca_cert=home.tls.ca_cert)
    kept_key, withdrawn_key = supernode_public_key(), supernode_public_key()
    kept = federation.register_node("north", kept_key)
    withdrawn = federation.register_node("south", withdrawn_key)
    federation.unregister_node(withdrawn)
    before = {n.node_id: (n.name, n.status) for n in federation.list_nodes()}

    _kill(superlink, group)
    for process in list(group.processes):  # its ServerApp executor goes with it
        _kill(process, group)
    start_superlink(home, options, group)

    after = {n.node_id: (n.name, n.status) for n in federation.list_nodes()}
    assert after == before == {kept: ("north", "registered"), withdrawn: ("south", "unregistered")}
    with pytest.raises(Conflict):
        federation.register_node("south", withdrawn_key)
    with pytest.raises(Conflict):
        federation.register_node("north", kept_key)


@pytest.mark.filterwarnings("ignore:No path_separator found:DeprecationWarning")  # Flower's alembic
def test_nodes_of_a_flower_sqlite_state_are_imported_once_with_their_ids(tmp_path: Path) -> None:
    old = SqlLinkState(str(tmp_path / "superlink.db"), NoOpFederationManager(), _store())
    old.initialize()
    key, gone_key = b"key-one", b"key-two"
    node_id = old.create_node("owner", "owner", key, 10.0, name="north")
    gone = old.create_node("owner", "owner", gone_key, 10.0, name="south")
    old.delete_node("owner", gone)

    registry = tmp_path / "nodes.db"
    state = DurableNodesLinkState(registry, NoOpFederationManager(), _store())
    assert state.import_nodes(tmp_path / "superlink.db") == 2
    assert state.import_nodes(tmp_path / "superlink.db") == 0  # only into an empty registry

    again = DurableNodesLinkState(registry, NoOpFederationManager(), _store())
    assert again.get_node_id_by_public_key(key) == node_id
    assert (again.nodes[node_id].name, again.nodes[node_id].status) == (
        "north",
        NodeStatus.REGISTERED,
    )
    assert again.nodes[gone].status == NodeStatus.UNREGISTERED
    with pytest.raises(ValueError, match="already in use"):
        again.create_node("owner", "owner", gone_key, 10.0)


def test_a_node_registered_and_withdrawn_in_memory_is_so_after_a_restart(tmp_path: Path) -> None:
    registry = tmp_path / "nodes.db"
    state = DurableNodesLinkState(registry, NoOpFederationManager(), _store())
    kept = state.create_node("owner", "owner", b"kept", 10.0, name="north", location="x")
    gone = state.create_node("owner", "owner", b"gone", 10.0, name="south")
    state.delete_node("owner", gone)
    with pytest.raises(ValueError, match="already unregistered"):
        state.delete_node("owner", gone)

    again = DurableNodesLinkState(registry, NoOpFederationManager(), _store())
    assert again.nodes[kept].status == NodeStatus.REGISTERED
    assert (again.nodes[kept].name, again.nodes[kept].location) == ("north", "x")
    assert again.nodes[gone].status == NodeStatus.UNREGISTERED
    assert again.acknowledge_node_heartbeat(kept, 10.0)  # its SuperNode comes back online
    assert not again.acknowledge_node_heartbeat(gone, 10.0)
    assert again.nodes[kept].status == NodeStatus.ONLINE


def test_the_registry_is_private_and_an_unreadable_old_state_does_not_stop_the_superlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: the registry took the umask's 0644, and an old superlink.db without a node
    # table made every start fail (the import was retried, and failed, at each start).
    folder = tmp_path / "data?dir#1"  # characters a file: URI must escape
    folder.mkdir()
    broken = folder / "superlink.db"
    sqlite3.connect(broken).execute("CREATE TABLE other (x)").connection.close()
    registry = folder / "nodes.db"
    monkeypatch.setattr(_Factory, "registry", registry)
    monkeypatch.setattr(_Factory, "import_from", broken)
    factory = _Factory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())

    with caplog.at_level(logging.ERROR, logger="veracity.server.superlink_process"):
        state = factory.state()

    assert isinstance(state, DurableNodesLinkState)
    assert str(broken) in caplog.text
    assert registry.stat().st_mode & 0o777 == 0o600
    with pytest.raises(sqlite3.OperationalError, match="no such table: node"):
        state.import_nodes(broken)  # the file the URI names, not a path cut at "?"


def _store() -> ObjectStore:
    return ObjectStoreFactory().store()


def _recording_app(calls: list[str]) -> Any:
    """A Starlette app with one BaseHTTPMiddleware, scoped to ``/v1/control/``, that records."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    class Recording(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            calls.append(request.url.path)
            response = await call_next(request)
            response.headers["x-seen"] = "1"
            return response

    async def ok(request: Request) -> Response:
        return PlainTextResponse(request.url.path)

    return Starlette(
        routes=[Route("/v1/control/list-runs", ok), Route("/v1/runtime/pull-object", ok)],
        middleware=[Middleware(PathScoped, prefix="/v1/control/", middleware=Recording)],
    )


def test_a_path_scoped_middleware_runs_for_its_prefix_only() -> None:
    """#16: Flower's Control-API middlewares ran (and cost) on every ServerApp object request."""
    from tests.server.api.conftest import TestClient

    calls: list[str] = []
    with TestClient(_recording_app(calls)) as client:
        control = client.get("/v1/control/list-runs")
        runtime = client.get("/v1/runtime/pull-object")
    assert (control.status_code, control.text, control.headers.get("x-seen")) == (
        200,
        "/v1/control/list-runs",
        "1",
    )
    assert (runtime.status_code, runtime.text, runtime.headers.get("x-seen")) == (
        200,
        "/v1/runtime/pull-object",
        None,
    )
    assert calls == ["/v1/control/list-runs"]


def test_flowers_one_api_middlewares_are_scoped_and_the_rest_kept_in_order() -> None:
    """The SuperLink's own list: six wrapped with their prefixes, order and the others kept."""
    from flwr.superlink import main as superlink_app

    flower = superlink_app._get_middleware()
    scoped = path_scoped_middleware(flower)
    assert len(scoped) == len(flower)
    prefixes = {}
    for original, item in zip(flower, scoped, strict=True):
        if item.cls is PathScoped:
            assert item.kwargs["middleware"] is original.cls
            prefixes[getattr(original.cls, "__name__", "")] = item.kwargs["prefix"]
        else:
            assert item is original
    assert prefixes == {
        "ControlSensitiveResponseMiddleware": "/v1/control/",
        "ControlAuthenticationMiddleware": "/v1/control/",
        "ControlLicenseMiddleware": "/v1/control/",
        "ControlEventLogMiddleware": "/v1/control/",
        "NodeAuthMiddleware": "/v1/fleet/",
        "FleetEventLogMiddleware": "/v1/fleet/",
    }
    with pytest.raises(ConfigError, match="NodeAuthMiddleware"):
        path_scoped_middleware(
            [m for m in flower if getattr(m.cls, "__name__", "") != "NodeAuthMiddleware"]
        )
