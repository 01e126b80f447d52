"""The coordinator service's state and its unit of work, shared by its command groups.

:class:`ServiceCore` holds what every command needs (the home, the ledger, the root key,
the federation, the read model, the audit hook) and opens each command's
:class:`~.unit_of_work.UnitOfWork`: one transaction holding the ledger's write lock, the
read model caught up first, the audit record written when the command's entries are, and
the undo steps of its external effects run if anything fails, the commit included.
"""

from __future__ import annotations

import importlib.metadata
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from veracity import __version__
from veracity.crypto.keys import SigningKey
from veracity.ledger.ledger import Ledger
from veracity.server.coordinator.audit_log import AuditLog
from veracity.server.coordinator.federation import Federation
from veracity.server.coordinator.home import CoordinatorHome
from veracity.server.coordinator.queries import CoordinatorReads
from veracity.server.coordinator.read_model import ReadModel
from veracity.server.coordinator.unit_of_work import (
    Actor,
    AuditHook,
    UnitOfWork,
)
from veracity.server.registry import ModelRegistry

__all__ = ["ServiceCore", "package_versions"]


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour a run's results depend on."""
    versions = {"veracity": __version__}
    for name in ("flwr", "torch", "opacus", "dp-accounting", "tenseal", "numpy"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


class ServiceCore:
    """The state of a coordinator service (see :class:`~.service.CoordinatorService`).

    Parameters
    ----------
    home
        The data directory and configuration.
    ledger
        The opened ledger (its engine also holds the read model and the API tables).
    root_key
        The root signing key.
    federation
        The SuperLink (or an in-memory one).
    audit
        Records who made each change (the admin API's ``api_action``), if given.
    max_concurrent_writes
        Changes run at once in this process; the rest wait here rather than holding
        database connections while they queue for the ledger's write lock.
    """

    def __init__(
        self,
        home: CoordinatorHome,
        ledger: Ledger,
        root_key: SigningKey,
        *,
        federation: Federation,
        audit: AuditHook | None = None,
        max_concurrent_writes: int = 4,
    ) -> None:
        self.home = home
        self.ledger = ledger
        self.root_key = root_key
        self.federation = federation
        self.audit_hook = audit
        self.read_model = ReadModel(ledger)
        #: The coordinator's state as typed records (the read model).
        self.reads = CoordinatorReads(self.read_model)
        #: The ledger as auditors read it (info, pages, verification, export).
        self.audit_log = AuditLog(ledger, ledger.identity_public_key)
        self.registry = ModelRegistry(home.models)
        self._writes = threading.BoundedSemaphore(max_concurrent_writes)

    # ------------------------------------------------------------ unit of work
    @contextmanager
    def _change(
        self, actor: Actor, action: str, target: str, *, audited: bool = True
    ) -> Iterator[UnitOfWork]:
        uow: UnitOfWork | None = None
        try:
            with self._writes, self.ledger.transaction() as session:
                self.read_model.catch_up(session)
                uow = UnitOfWork(
                    session,
                    actor=actor,
                    action=action,
                    target=target[:200],
                    ledger=self.ledger,
                    read_model=self.read_model,
                    root_key=self.root_key,
                    audit=self.audit_hook if audited else None,
                )
                yield uow
                uow.seal()
        except BaseException:  # undo what happened outside, whatever stopped the change
            if uow is not None:
                uow.undo()
            raise
