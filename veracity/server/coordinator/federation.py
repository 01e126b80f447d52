"""The federation port: what the coordinator asks of the SuperLink.

:class:`Federation` is the interface the coordinator service depends on; it names exactly
the SuperLink calls the coordinator makes (SuperNode registrations, runs, their status and
logs). :class:`SuperLinkFederation` is the real one, over the SuperLink's Control API
(:class:`~veracity.server.control.ControlClient`, one connection per call, each call with a
timeout); :class:`~veracity.server.coordinator.memory_federation.InMemoryFederation` keeps
the same state in memory, so that the service's logic is tested without processes (Flower
keeps an in-memory link state beside its SQL one for the same reason).
``tests/server/coordinator/test_federation_contract.py`` runs one behavioural suite against
both.

Every method MUST raise :class:`~veracity.errors.TransportError` when the SuperLink refuses
or does not answer, and nothing else for that reason: the service's compensation (undo a
registration, stop a run) relies on it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from veracity.server.control import ConfigValue, ControlClient, NodeSummary, RunSummary

__all__ = ["Federation", "SuperLinkFederation", "NodeSummary", "RunSummary", "ConfigValue"]

log = logging.getLogger(__name__)


class Federation(Protocol):
    """The SuperLink as the coordinator sees it."""

    def register_node(self, name: str, supernode_public_key: str) -> int:
        """Register a site's SuperNode key under ``name``; returns the node id.

        MUST refuse (``TransportError``) a key it holds already, registered or withdrawn:
        Flower never lets a withdrawn key connect again.

        Raises
        ------
        InputError
            If the key is not an OpenSSH ECDSA key on a NIST curve.
        TransportError
            If the SuperLink refuses or does not answer.
        """
        ...

    def unregister_node(self, node_id: int) -> None:
        """Withdraw a registration (the node keeps its id with status ``unregistered``).

        Raises
        ------
        TransportError
            If the SuperLink refuses (unknown node) or does not answer.
        """
        ...

    def list_nodes(self) -> list[NodeSummary]:
        """Every SuperNode registration, withdrawn ones included."""
        ...

    def start_run(self, fab: bytes, *, config: dict[str, ConfigValue]) -> int:
        """Submit an app bundle with run-config overrides; returns the Flower run id."""
        ...

    def stop_run(self, run_id: int) -> bool:
        """Stop a run; True if the SuperLink stopped it, False if it had ended already."""
        ...

    def run(self, run_id: int) -> RunSummary:
        """What the SuperLink knows of ``run_id``.

        Raises
        ------
        NotFound
            If it has no such run.
        TransportError
            If it does not answer.
        """
        ...

    def list_runs(self) -> list[RunSummary]:
        """Every run the SuperLink knows."""
        ...

    def logs(self, run_id: int, *, after: float, wait: float) -> tuple[str, float]:
        """Log text of ``run_id`` since ``after``, read for at most ``wait`` seconds.

        Returns ``(text, latest)``; pass ``latest`` as ``after`` to continue.
        """
        ...


class SuperLinkFederation:
    """The real SuperLink, over its Control API (TLS, loopback).

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
        self.address = address
        self.ca_cert = ca_cert
        self.timeout = timeout

    @contextmanager
    def _client(self) -> Iterator[ControlClient]:
        client = ControlClient(self.address, ca_cert=self.ca_cert, timeout=self.timeout)
        try:
            yield client
        finally:
            client.close()

    def register_node(self, name: str, supernode_public_key: str) -> int:
        """See :meth:`Federation.register_node`."""
        with self._client() as client:
            return client.register_node(supernode_public_key.strip().encode(), name=name)

    def unregister_node(self, node_id: int) -> None:
        """See :meth:`Federation.unregister_node`."""
        with self._client() as client:
            client.unregister_node(node_id)

    def list_nodes(self) -> list[NodeSummary]:
        """See :meth:`Federation.list_nodes`."""
        with self._client() as client:
            return client.list_nodes()

    def start_run(self, fab: bytes, *, config: dict[str, ConfigValue]) -> int:
        """See :meth:`Federation.start_run`."""
        with self._client() as client:
            return client.start_run(fab, config=config)

    def stop_run(self, run_id: int) -> bool:
        """See :meth:`Federation.stop_run`."""
        with self._client() as client:
            return client.stop_run(run_id)

    def run(self, run_id: int) -> RunSummary:
        """See :meth:`Federation.run`."""
        with self._client() as client:
            return client.run(run_id)

    def list_runs(self) -> list[RunSummary]:
        """See :meth:`Federation.list_runs`."""
        with self._client() as client:
            return client.list_runs()

    def logs(self, run_id: int, *, after: float, wait: float) -> tuple[str, float]:
        """See :meth:`Federation.logs`."""
        with self._client() as client:
            return client.logs(run_id, after=after, wait=wait)
