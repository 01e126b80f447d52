"""The coordinator's client for the SuperLink Control API (protobuf over HTTPS).

Flower 1.42's open-source Control API has no authentication, so it listens on loopback
only and this client (used by the admin API and the CLI) is its only caller. Every call has
a timeout; failures become :class:`~veracity.errors.TransportError`. Uses flwr's internal
``ControlHttpClient`` (flwr is pinned to 1.42.0).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from veracity.crypto.supernode import parse_supernode_public_key
from veracity.errors import Conflict, InputError, NotFound, TransportError

__all__ = ["ControlClient", "RunSummary", "NodeSummary", "ConfigValue"]

log = logging.getLogger(__name__)

ConfigValue = bool | int | float | str
_T = TypeVar("_T")

#: HTTP answers of the Control API that are refusals by its state, not transport failures:
#: 404 for an unknown node or run, 412 for a key it holds already (registered or withdrawn)
#: or a run that has ended.
_REFUSALS: dict[int, type[InputError]] = {404: NotFound, 412: Conflict}


@dataclass(frozen=True)
class RunSummary:
    """What the SuperLink knows about one run."""

    run_id: int
    status: str
    sub_status: str
    details: str
    fab_hash: str
    pending_at: str
    running_at: str
    finished_at: str
    bytes_sent: int
    bytes_recv: int

    @property
    def finished(self) -> bool:
        """True once the run has ended (completed, failed or stopped)."""
        return self.status == "finished"

    @property
    def state(self) -> str:
        """``status`` or ``status:sub_status`` as ``flwr ls`` shows it."""
        return f"{self.status}:{self.sub_status}" if self.sub_status else self.status

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (the run id as a string: it exceeds 2**53)."""
        return {
            "run_id": str(self.run_id),
            "status": self.state,
            "details": self.details,
            "fab_hash": self.fab_hash,
            "pending_at": self.pending_at,
            "running_at": self.running_at,
            "finished_at": self.finished_at,
            "bytes_sent": self.bytes_sent,
            "bytes_recv": self.bytes_recv,
        }


@dataclass(frozen=True)
class NodeSummary:
    """A SuperNode registered with the SuperLink."""

    node_id: int
    name: str
    #: ``registered``, ``online``, ``offline`` or ``unregistered`` (withdrawn).
    status: str
    #: The SuperNode's public key, PEM SubjectPublicKeyInfo.
    public_key_pem: str


class ControlClient:
    """Submit, list, follow and stop runs; register SuperNodes.

    Parameters
    ----------
    address
        ``HOST:PORT`` of the SuperLink.
    ca_cert
        The CA certificate that signed the SuperLink's certificate.
    timeout
        Seconds allowed for each call.
    """

    def __init__(self, address: str, *, ca_cert: Path, timeout: float = 10.0) -> None:
        from flwr.supercore.control import ControlHttpClient

        self.address = address
        self.timeout = timeout
        self._ca_cert = ca_cert
        # An SSLContext, not a path: httpx deprecates verify=<str>.
        verify = ssl.create_default_context(cafile=str(ca_cert))
        self._client = ControlHttpClient(
            f"https://{address}", interceptors=(), verify=verify, timeout=timeout
        )

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, fn: Any, request: Any) -> Any:
        try:
            return fn(request)
        except Exception as err:
            status = getattr(getattr(err, "response", None), "status_code", None)
            if status in _REFUSALS:
                raise _REFUSALS[status](f"SuperLink {self.address}: {what} refused") from err
            raise TransportError(f"SuperLink {self.address}: {what} failed: {err}") from err

    # ------------------------------------------------------------------ nodes
    def register_node(self, openssh_public_key: bytes, *, name: str) -> int:
        """Register a site's SuperNode key (SuperNode authentication); returns its node id.

        Raises
        ------
        InputError
            If the key is not an OpenSSH EC public key on a NIST curve.
        Conflict
            If the SuperLink holds this key already, registered or withdrawn (Flower never
            registers a withdrawn key again).
        TransportError
            If the SuperLink fails or does not answer.
        """
        from flwr.proto.control_pb2 import RegisterNodeRequest
        from flwr.supercore.primitives.asymmetric import public_key_to_bytes

        key = parse_supernode_public_key(openssh_public_key.decode("ascii", errors="replace"))
        response = self._call(
            "register-node",
            self._client.RegisterNode,
            RegisterNodeRequest(public_key=public_key_to_bytes(key), name=name),
        )
        if not response.node_id:
            raise TransportError(f"SuperLink {self.address} did not register node {name!r}")
        return int(response.node_id)

    def unregister_node(self, node_id: int) -> None:
        """Withdraw a SuperNode's registration.

        Raises
        ------
        NotFound
            If no registered node has this id (never registered, or withdrawn already).
        TransportError
            If the SuperLink fails or does not answer.
        """
        from flwr.proto.control_pb2 import UnregisterNodeRequest

        self._call(
            "unregister-node", self._client.UnregisterNode, UnregisterNodeRequest(node_id=node_id)
        )

    def list_nodes(self) -> list[NodeSummary]:
        """Every SuperNode registration (withdrawn ones too, as ``unregistered``)."""
        from flwr.proto.control_pb2 import ListNodesRequest

        response = self._call("list-nodes", self._client.ListNodes, ListNodesRequest())
        return [
            NodeSummary(int(n.node_id), n.name, n.status, _text(n.public_key))
            for n in response.nodes_info
        ]

    # ------------------------------------------------------------------- runs
    def start_run(self, fab: bytes, *, config: dict[str, ConfigValue]) -> int:
        """Submit ``fab`` with run-config overrides; returns the Flower run id."""
        from flwr.common.serde import fab_to_proto, user_config_to_proto
        from flwr.proto.control_pb2 import StartRunRequest
        from flwr.supercore.fab import Fab

        fab_hash = hashlib.sha256(fab).hexdigest()
        request = StartRunRequest(
            fab=fab_to_proto(Fab(fab_hash, fab, {})), override_config=user_config_to_proto(config)
        )
        response = self._call("start-run", self._client.StartRun, request)
        if not response.HasField("run_id"):
            raise TransportError(f"SuperLink {self.address} refused the run: {response.note}")
        return int(response.run_id)

    def list_runs(self, run_id: int | None = None) -> list[RunSummary]:
        """All runs, or the one with ``run_id``."""
        from flwr.proto.control_pb2 import ListRunsRequest

        request = ListRunsRequest(run_id=run_id) if run_id is not None else ListRunsRequest()
        response = self._call("list-runs", self._client.ListRuns, request)
        return [_summary(run) for run in response.run_dict.values()]

    def run(self, run_id: int) -> RunSummary:
        """The run ``run_id``.

        Raises
        ------
        NotFound
            If the SuperLink has no such run.
        """
        runs = self.list_runs(run_id)
        if not runs:
            raise NotFound(f"no run {run_id} on the SuperLink")
        return runs[0]

    def stop_run(self, run_id: int) -> bool:
        """Ask the SuperLink to stop ``run_id``; True if it stopped, False if it had ended.

        Raises
        ------
        NotFound
            If the SuperLink has no such run.
        """
        from flwr.proto.control_pb2 import StopRunRequest

        try:
            response = self._call("stop-run", self._client.StopRun, StopRunRequest(run_id=run_id))
        except Conflict:  # the run has ended
            return False
        return bool(response.success)

    def wait(self, run_id: int, *, timeout: float, interval: float = 0.5) -> RunSummary:
        """Poll until the run finishes.

        Raises
        ------
        TransportError
            If it has not finished after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            summary = self.run(run_id)
            if summary.finished:
                return summary
            if time.monotonic() >= deadline:
                raise TransportError(f"run {run_id} still {summary.state} after {timeout:.0f} s")
            time.sleep(interval)

    def logs(self, run_id: int, *, after: float = 0.0, wait: float = 2.0) -> tuple[str, float]:
        """Log text of ``run_id`` since ``after``; returns ``(text, latest_timestamp)``.

        A live run's stream stays open on the SuperLink until the run ends, so it is read
        in a thread over a connection of its own, which is closed after ``wait`` seconds:
        the SuperLink sees the disconnect and ends its side of the stream. (A stream left
        open until its run ended, as an earlier version did, kept a SuperLink worker
        polling the run for each call and stalled its other calls for 10 s and more.)
        A finished run's stream ends by itself once its log is sent. A run the SuperLink
        does not know has no log: ``("", after)``.
        """
        from flwr.proto.control_pb2 import StreamLogsRequest
        from flwr.supercore.control import ControlHttpClient

        try:
            self.run(run_id)
        except NotFound:
            return "", after  # as for a run that never logged (the federation contract)
        stream = ControlHttpClient(
            f"https://{self.address}",
            interceptors=(),
            verify=ssl.create_default_context(cafile=str(self._ca_cert)),
            timeout=self.timeout,
        )
        chunks: queue.Queue[tuple[str, float] | None] = queue.Queue()

        def read() -> None:
            try:
                for item in stream.StreamLogs(
                    StreamLogsRequest(run_id=run_id, after_timestamp=after)
                ):
                    chunks.put((item.log_output, item.latest_timestamp))
            except Exception as err:  # noqa: BLE001 - a closed stream ends the read
                log.debug("log stream of run %s ended: %s", run_id, err)
            finally:
                chunks.put(None)

        reader = threading.Thread(target=read, name=f"logs-{run_id}", daemon=True)
        reader.start()
        deadline = time.monotonic() + wait
        text: list[str] = []
        latest = after
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = chunks.get(timeout=remaining)
                except queue.Empty:
                    break
                if item is None:
                    break
                text.append(item[0])
                latest = max(latest, item[1])
        finally:
            stream.close()  # the SuperLink ends its side of a live run's stream
            reader.join(timeout=self.timeout)
        return "".join(text), latest


def _text(value: str | bytes) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else value


def _summary(run: Any) -> RunSummary:
    return RunSummary(
        run_id=int(run.run_id),
        status=run.status.status,
        sub_status=run.status.sub_status,
        details=run.status.details,
        fab_hash=run.fab_hash,
        pending_at=run.pending_at,
        running_at=run.running_at,
        finished_at=run.finished_at,
        bytes_sent=int(run.bytes_sent),
        bytes_recv=int(run.bytes_recv),
    )
