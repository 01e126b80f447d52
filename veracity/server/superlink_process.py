"""The SuperLink process: Flower's ``flower-superlink`` with in-memory state and durable nodes.

Flower 1.42 splits each message into 12-13 objects, each pushed and pulled as its own
request, and with ``--database FILE`` every request is several SQLAlchemy transactions on
the SuperLink's SQLite file (WAL and ``synchronous=NORMAL`` are already Flower's own
settings); the SuperLink was the busiest process of a federated round. Its in-memory
state (``--database :flwr-in-memory:``) serves the same requests at a fraction of the CPU
but forgets SuperNode registrations on a restart.

So this process runs Flower's in-memory state with one change: SuperNode registrations
and withdrawals are written to a small SQLite file (``--node-registry``) before they are
answered, and read back when the process starts, with the same node ids, names and public
keys (a withdrawn key stays withdrawn: Flower refuses to register its key again). Runs,
messages and objects stay in memory: the runs a restart forgets are recorded ``failed``
by the coordinator (:meth:`RunCommands.record_ended_runs`). The first start beside a
SuperLink SQLite file of the earlier layout (``--import-from``) imports its nodes.

Each of Flower's eight request middlewares is a Starlette ``BaseHTTPMiddleware`` (an
anyio task group and memory streams per request), and six of them act on one API only
(the Control API's authentication, licence, sensitive-response and event-log checks under
``/v1/control/``; node authentication and the Fleet event log under ``/v1/fleet/``) and
pass every other request straight on. This process runs each of those six only for the
requests under its prefix (:class:`PathScoped`), so that a ServerApp's object request
crosses two middlewares instead of eight; what each middleware does to the requests it
handles is unchanged.

Usage: ``python -m veracity.server.superlink_process --node-registry FILE
[--import-from OLD_DB] FLOWER_SUPERLINK_ARGS...`` (``--database`` is set here).
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import sys
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flwr.proto.node_pb2 import NodeInfo
from flwr.server.superlink.linkstate import InMemoryLinkState, LinkState, LinkStateFactory
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NodeStatus
from flwr.supercore.utils import int64_to_uint64, uint64_to_int64

__all__ = ["DurableNodesLinkState", "PathScoped", "main", "path_scoped_middleware"]

log = logging.getLogger(__name__)

# ASGI's callable types (as Starlette spells them), without importing the web framework.
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS node (
    node_id INTEGER PRIMARY KEY,
    public_key BLOB NOT NULL UNIQUE,
    owner_aid TEXT NOT NULL,
    owner_name TEXT NOT NULL,
    name TEXT,
    location TEXT,
    heartbeat_interval REAL NOT NULL,
    registered_at TEXT NOT NULL,
    unregistered_at TEXT
)
"""
_COLUMNS = (
    "node_id, public_key, owner_aid, owner_name, name, location, heartbeat_interval, "
    "registered_at, unregistered_at"
)


class DurableNodesLinkState(InMemoryLinkState):
    """Flower's in-memory LinkState whose SuperNode registrations survive a restart.

    Raises (from :meth:`create_node` and :meth:`delete_node`) ``sqlite3.Error`` when the
    registry cannot be written; the change is then not made in memory either.
    """

    def __init__(self, registry: Path, *args: Any) -> None:
        super().__init__(*args)
        registry.touch(mode=0o600, exist_ok=True)  # its -wal and -shm files take its mode
        registry.chmod(0o600)
        self._registry = sqlite3.connect(registry, check_same_thread=False, isolation_level=None)
        self._registry.execute("PRAGMA journal_mode=WAL")
        self._registry.execute("PRAGMA synchronous=FULL")
        self._registry.execute(_SCHEMA)
        self._registry_lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        rows = self._registry.execute(f"SELECT {_COLUMNS} FROM node").fetchall()  # noqa: S608 - constant
        with self.lock:
            for node_id, key, owner_aid, owner_name, name, location, interval, at, gone in rows:
                node = NodeInfo(
                    node_id=int64_to_uint64(node_id),
                    owner_aid=owner_aid,
                    owner_name=owner_name,
                    status=NodeStatus.UNREGISTERED if gone else NodeStatus.REGISTERED,
                    registered_at=at,
                    unregistered_at=gone,
                    online_until=None,
                    heartbeat_interval=interval,
                    public_key=key,
                    location=location,
                    name=name,
                )
                self.nodes[node.node_id] = node
                self.node_public_key_to_node_id[key] = node.node_id
                self.owner_to_node_ids.setdefault(owner_aid, set()).add(node.node_id)

    def import_nodes(self, flower_db: Path) -> int:
        """Copy the nodes of a Flower SQLite state file into an empty registry; returns how many.

        Raises
        ------
        sqlite3.Error
            If ``flower_db`` has no readable ``node`` table.
        """
        if self._registry.execute("SELECT count(*) FROM node").fetchone()[0]:
            return 0
        source = sqlite3.connect(f"{flower_db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = source.execute(
                "SELECT node_id, public_key, owner_aid, owner_name, name, location, "
                "heartbeat_interval, registered_at, unregistered_at FROM node "
                "WHERE node_id IS NOT NULL AND public_key IS NOT NULL"
            ).fetchall()
        finally:
            source.close()
        with self._registry_lock:
            self._registry.execute("BEGIN IMMEDIATE")
            try:
                self._registry.executemany(
                    f"INSERT INTO node ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                    [(*r[:4], r[4], r[5], r[6] or 0.0, r[7] or "", r[8]) for r in rows],
                )
                self._registry.execute("COMMIT")
            except BaseException:
                self._registry.execute("ROLLBACK")
                raise
        self._load()
        return len(rows)

    def create_node(
        self,
        owner_aid: str,
        owner_name: str,
        public_key: bytes,
        heartbeat_interval: float,
        *,
        location: str | None = None,
        name: str | None = None,
    ) -> int:
        """Flower's ``create_node``, written to the registry before it returns."""
        with self.lock:
            node_id = super().create_node(
                owner_aid,
                owner_name,
                public_key,
                heartbeat_interval,
                location=location,
                name=name,
            )
            if node_id == 0:
                return node_id
            node = self.nodes[node_id]
            try:
                with self._registry_lock:
                    self._registry.execute(
                        f"INSERT INTO node ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",  # noqa: S608
                        (
                            uint64_to_int64(node_id),
                            public_key,
                            owner_aid,
                            owner_name,
                            name,
                            location,
                            heartbeat_interval,
                            node.registered_at,
                        ),
                    )
            except BaseException:
                del self.nodes[node_id]
                del self.node_public_key_to_node_id[public_key]
                self.owner_to_node_ids[owner_aid].discard(node_id)
                raise
            return node_id

    def delete_node(self, owner_aid: str, node_id: int) -> None:
        """Flower's ``delete_node`` (a withdrawal), written to the registry first."""
        with self.lock:
            node = self.nodes.get(node_id)
            if (
                node is not None
                and node.status != NodeStatus.UNREGISTERED
                and (node.owner_aid == owner_aid)
            ):
                with self._registry_lock:
                    self._registry.execute(
                        "UPDATE node SET unregistered_at = ? WHERE node_id = ?",
                        (datetime.now(UTC).isoformat(), uint64_to_int64(node_id)),
                    )
            super().delete_node(owner_aid, node_id)  # Flower's ValueError if it cannot


class _Factory(LinkStateFactory):
    """Flower's factory, making a :class:`DurableNodesLinkState` for the in-memory database."""

    registry: Path | None = None
    import_from: Path | None = None

    def state(self) -> LinkState:
        """The process's one LinkState, made on first use."""
        if self.state_instance is not None:
            return self.state_instance
        if self.registry is not None and self.database == FLWR_IN_MEMORY_DB_NAME:
            with self._state_lock:
                if not isinstance(self.state_instance, DurableNodesLinkState):
                    self.state_instance = self._durable(self.registry)
        return super().state()

    def _durable(self, registry: Path) -> DurableNodesLinkState:
        state = DurableNodesLinkState(
            registry, self.federation_manager, self.objectstore_factory.store()
        )
        if self.import_from is not None and self.import_from.is_file():
            try:
                state.import_nodes(self.import_from)
            except sqlite3.Error as err:  # start anyway: the coordinator stays up
                log.error(
                    "could not import the SuperNode registrations of %s (%s): start without "
                    "them; sites whose SuperNodes cannot connect are enrolled again "
                    "(veracity admin sites enrol), or restore that file and restart",
                    self.import_from,
                    err,
                )
        return state


#: Flower 1.42's middlewares that act only on requests under one prefix (and pass every
#: other request on unchanged), by class name.
_SCOPED_MIDDLEWARE: dict[str, str] = {
    "ControlSensitiveResponseMiddleware": "/v1/control/",
    "ControlAuthenticationMiddleware": "/v1/control/",
    "ControlLicenseMiddleware": "/v1/control/",
    "ControlEventLogMiddleware": "/v1/control/",
    "NodeAuthMiddleware": "/v1/fleet/",
    "FleetEventLogMiddleware": "/v1/fleet/",
}


class PathScoped:
    """An ASGI middleware that runs ``middleware`` only for HTTP requests under ``prefix``.

    Other HTTP requests go straight to the wrapped app, skipping the middleware's
    per-request machinery; non-HTTP scopes (lifespan, websockets) go through
    ``middleware``, which passes them on as before.
    """

    def __init__(self, app: ASGIApp, /, *, prefix: str, middleware: Any, **kwargs: Any) -> None:
        self.app = app
        self.prefix = prefix
        self.scoped: ASGIApp = middleware(app, **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch one ASGI call."""
        if scope["type"] == "http" and not str(scope["path"]).startswith(self.prefix):
            await self.app(scope, receive, send)
        else:
            await self.scoped(scope, receive, send)


def path_scoped_middleware(middleware: list[Any]) -> list[Any]:
    """Flower's middleware list with each one-API middleware wrapped in :class:`PathScoped`.

    Raises
    ------
    ConfigError
        If a middleware named in ``_SCOPED_MIDDLEWARE`` is missing (this flwr's SuperLink
        differs from 1.42's, so its scoping cannot be assumed).
    """
    from veracity.errors import ConfigError

    names = {getattr(m.cls, "__name__", "") for m in middleware}
    missing = sorted(set(_SCOPED_MIDDLEWARE) - names)
    if missing:
        raise ConfigError(
            f"this flwr's SuperLink has no {', '.join(missing)}: its middlewares differ "
            "from flwr 1.42's"
        )
    scoped: list[Any] = []
    for item in middleware:
        prefix = _SCOPED_MIDDLEWARE.get(getattr(item.cls, "__name__", ""))
        if prefix is None or item.args:
            scoped.append(item)
        else:
            # The list's own Middleware class (Starlette's), so as not to import it here.
            scoped.append(type(item)(PathScoped, prefix=prefix, middleware=item.cls, **item.kwargs))
    return scoped


def main(argv: list[str] | None = None) -> None:
    """Start Flower's SuperLink with :class:`DurableNodesLinkState`."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--node-registry", type=Path, required=True)
    parser.add_argument("--import-from", type=Path, default=None)
    ours, flower_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    _Factory.registry = ours.node_registry.resolve()
    _Factory.import_from = ours.import_from.resolve() if ours.import_from else None

    from flwr.superlink import config_loader
    from flwr.superlink import main as superlink_app
    from flwr.superlink.cli import flower_superlink

    config_loader.LinkStateFactory = _Factory  # type: ignore[attr-defined]
    flower_middleware = superlink_app._get_middleware
    superlink_app._get_middleware = lambda: path_scoped_middleware(flower_middleware())
    sys.argv = ["flower-superlink", *flower_args, "--database", FLWR_IN_MEMORY_DB_NAME]
    flower_superlink()


if __name__ == "__main__":
    main()
