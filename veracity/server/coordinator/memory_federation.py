"""A SuperLink kept in memory: the :class:`~.federation.Federation` port without processes.

It keeps what the SuperLink's Control API keeps (SuperNode registrations by key, runs and
their states) and refuses what it refuses, answer for answer: a key it holds already,
registered or withdrawn, is refused (``Conflict``); an unknown node or run is ``NotFound``;
stopping a run that has ended answers False. ``tests/server/coordinator/
test_federation_contract.py`` holds it to the same suite as the real SuperLink. It runs no
ServerApp: a run stays ``pending`` until :meth:`InMemoryFederation.finish` ends it, as the
SuperLink would when its ServerApp exits.

``reachable = False`` makes every call fail with ``TransportError``, as a SuperLink that is
down or hung does.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from cryptography.hazmat.primitives import serialization

from veracity.crypto.supernode import parse_supernode_public_key
from veracity.errors import Conflict, InputError, NotFound, TransportError
from veracity.server.control import ConfigValue, NodeSummary, RunSummary

__all__ = ["InMemoryFederation", "SubmittedRun"]

_FINISHED_STATES = frozenset({"completed", "failed", "stopped"})


@dataclass(frozen=True)
class SubmittedRun:
    """A run as submitted: its bundle's hash and its run-config overrides."""

    run_id: int
    fab_hash: str
    config: dict[str, ConfigValue]


def _now() -> str:
    return datetime.now(UTC).isoformat()


class InMemoryFederation:
    """The SuperLink's registrations and runs, in this process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[int, NodeSummary] = {}
        self._runs: dict[int, RunSummary] = {}
        self._submitted: dict[int, SubmittedRun] = {}
        self._logs: dict[int, list[tuple[float, str]]] = {}
        #: False: every call fails as against a SuperLink that is down.
        self.reachable = True
        #: Every call made, in order (``"register_node"``, ``"stop_run"`` ...).
        self.calls: list[str] = []

    def _enter(self, call: str) -> None:
        self.calls.append(call)
        if not self.reachable:
            raise TransportError(f"SuperLink (in memory): {call} failed: unreachable")

    # ------------------------------------------------------------------ nodes
    def register_node(self, name: str, supernode_public_key: str) -> int:
        """See :meth:`Federation.register_node`."""
        key = parse_supernode_public_key(supernode_public_key)
        pem = key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")
        with self._lock:
            self._enter("register_node")
            if any(node.public_key_pem == pem for node in self._nodes.values()):
                raise Conflict("SuperLink (in memory): register-node refused")
            node_id = secrets.randbits(63) or 1
            self._nodes[node_id] = NodeSummary(node_id, name, "registered", pem)
            return node_id

    def unregister_node(self, node_id: int) -> None:
        """See :meth:`Federation.unregister_node`."""
        with self._lock:
            self._enter("unregister_node")
            node = self._nodes.get(node_id)
            if node is None or node.status == "unregistered":
                raise NotFound("SuperLink (in memory): unregister-node refused")
            self._nodes[node_id] = replace(node, status="unregistered")

    def list_nodes(self) -> list[NodeSummary]:
        """See :meth:`Federation.list_nodes`."""
        with self._lock:
            self._enter("list_nodes")
            return list(self._nodes.values())

    # ------------------------------------------------------------------- runs
    def start_run(self, fab: bytes, *, config: dict[str, ConfigValue]) -> int:
        """See :meth:`Federation.start_run`."""
        with self._lock:
            self._enter("start_run")
            run_id = secrets.randbits(63) or 1
            fab_hash = hashlib.sha256(fab).hexdigest()
            self._runs[run_id] = RunSummary(
                run_id=run_id,
                status="pending",
                sub_status="",
                details="",
                fab_hash=fab_hash,
                pending_at=_now(),
                running_at="",
                finished_at="",
                bytes_sent=0,
                bytes_recv=0,
            )
            self._submitted[run_id] = SubmittedRun(run_id, fab_hash, dict(config))
            return run_id

    def _get(self, run_id: int) -> RunSummary:
        run = self._runs.get(run_id)
        if run is None:
            raise NotFound(f"no run {run_id} on the SuperLink")
        return run

    def stop_run(self, run_id: int) -> bool:
        """See :meth:`Federation.stop_run`."""
        with self._lock:
            self._enter("stop_run")
            if self._get(run_id).finished:
                return False
            self._finish_locked(run_id, "stopped", "")
            return True

    def run(self, run_id: int) -> RunSummary:
        """See :meth:`Federation.run`."""
        with self._lock:
            self._enter("run")
            return self._get(run_id)

    def list_runs(self) -> list[RunSummary]:
        """See :meth:`Federation.list_runs`."""
        with self._lock:
            self._enter("list_runs")
            return list(self._runs.values())

    def logs(self, run_id: int, *, after: float, wait: float) -> tuple[str, float]:
        """See :meth:`Federation.logs` (it never waits: the lines are all here)."""
        with self._lock:
            self._enter("logs")
            lines = [(at, text) for at, text in self._logs.get(run_id, []) if at > after]
        if not lines:
            return "", after
        return "".join(text for _, text in lines), max(at for at, _ in lines)

    # ------------------------------------------- what the ServerApp's side does
    def submitted(self, run_id: int) -> SubmittedRun:
        """What was submitted as ``run_id``.

        Raises
        ------
        NotFound
            If no such run was started.
        """
        with self._lock:
            found = self._submitted.get(run_id)
        if found is None:
            raise NotFound(f"no run {run_id} on the SuperLink")
        return found

    def log(self, run_id: int, text: str, *, at: float) -> None:
        """Append a log line of ``run_id`` (as its ServerApp would print it)."""
        with self._lock:
            self._get(run_id)
            self._logs.setdefault(run_id, []).append((at, text))

    def forget_runs(self) -> None:
        """Drop every run, as a restarted SuperLink does.

        Its runs are kept in memory, its SuperNode registrations on disk
        (:mod:`veracity.server.superlink_process`).
        """
        with self._lock:
            self._runs.clear()
            self._submitted.clear()
            self._logs.clear()

    def finish(self, run_id: int, state: str, details: str = "") -> None:
        """End a run as the SuperLink does when its ServerApp exits.

        Raises
        ------
        InputError
            If ``state`` is not ``completed``, ``failed`` or ``stopped``.
        NotFound
            If no such run was started.
        """
        if state not in _FINISHED_STATES:
            raise InputError(f"{state!r} is not how a run ends")
        with self._lock:
            self._finish_locked(run_id, state, details)

    def _finish_locked(self, run_id: int, state: str, details: str) -> None:
        run = self._get(run_id)
        self._runs[run_id] = replace(
            run, status="finished", sub_status=state, details=details, finished_at=_now()
        )
