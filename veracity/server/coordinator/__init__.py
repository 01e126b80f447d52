"""The coordinator: one application service over the ledger, the read model and the SuperLink.

``home``            :class:`CoordinatorHome`: the data directory, its layout, ``coordinator.json``
``bootstrap``       :func:`init_coordinator` / :func:`open_coordinator`
``service``         :class:`CoordinatorService`: every command (enrol, statements, studies,
                    runs, rounds, releases, checkpoints), each one unit of work; its
                    command groups ``sites`` and ``runs`` over ``core`` (state, unit of work)
``unit_of_work``    :class:`UnitOfWork`, :class:`Actor`, :class:`Recorded`, the audit hook
``federation``      the :class:`Federation` port and :class:`SuperLinkFederation`
``memory_federation``  :class:`InMemoryFederation`, the same port without processes
``read_model``      the fold of the log into the ``coord_*`` tables (``tables``), in each
                    change's transaction
``queries``         typed reads of the read model (:class:`CoordinatorReads`)
``records``         the typed records those reads return
``audit_log``       the ledger as auditors read it (pages, checkpoints, verify, export)

Nothing here imports torch, TenSEAL or FastAPI; Flower only through the Control API client
and the FAB builder, when they are used.
"""

from veracity.server.coordinator.bootstrap import init_coordinator, open_coordinator
from veracity.server.coordinator.federation import Federation, SuperLinkFederation
from veracity.server.coordinator.home import CoordinatorHome
from veracity.server.coordinator.memory_federation import InMemoryFederation
from veracity.server.coordinator.service import CoordinatorService, package_versions
from veracity.server.coordinator.unit_of_work import (
    SERVER_APP,
    Actor,
    Recorded,
    SystemActor,
    operator,
)

__all__ = [
    "CoordinatorHome",
    "CoordinatorService",
    "Federation",
    "SuperLinkFederation",
    "InMemoryFederation",
    "Actor",
    "SystemActor",
    "SERVER_APP",
    "Recorded",
    "operator",
    "init_coordinator",
    "open_coordinator",
    "package_versions",
]
