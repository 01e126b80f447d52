"""The coordinator application service: every change to the federation, in one place.

The admin API, the CLI, the demo's local network and the ServerApp all call
:class:`CoordinatorService`. Each command takes the acting :class:`~.unit_of_work.Actor`,
runs as one :class:`~.unit_of_work.UnitOfWork` (one transaction holding the ledger's write
lock: the ledger entries, their read-model rows, the audit record) and returns a
:class:`~.unit_of_work.Recorded` (the entry with its seq, the typed result, the audit id).
Payloads are built from the contract models (:mod:`veracity.contracts.events`).

The SuperLink is reached only through the :class:`~.federation.Federation` port, and the
order of effects against it is decided here, once:

* **Enrolment registers the SuperNode last**, after every row of the change is written and
  just before the commit: Flower never registers a withdrawn key again, so a change that
  fails before that point must leave the SuperLink untouched. If the commit itself fails,
  the registration is withdrawn (the site then makes a new SuperNode key).
* **A start submits first** (the run id is in ``run.started``): if anything after it fails,
  the commit included, the run is stopped and its seeds file removed.
* **A stop records first and stops last**: ``run.finished`` (stopped) is written, then the
  SuperLink is asked, then the change commits. A run that has ended on the SuperLink without
  a ``run.finished`` (its ServerApp died, or a stop's commit failed) is recorded as it ended
  when a stop is asked for.

Reads (:attr:`CoordinatorService.reads`) come from the read model as typed records.

The commands live in two groups over one shared core (:mod:`.core`: the state and the unit
of work): :mod:`.sites` (enrolments, revocations, statements, studies) and :mod:`.runs`
(runs, rounds, releases, inferences); this module adds checkpoints, audited reads, the
released models and the rebuild of the read model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.orm import Session

from veracity.contracts.base import Payload
from veracity.contracts.events import ModelDownloaded
from veracity.errors import NotFound, StaleCheckpoint
from veracity.ledger.checkpoint import Checkpoint
from veracity.server.coordinator.core import package_versions
from veracity.server.coordinator.records import (
    ModelRecord,
    ReindexReport,
)
from veracity.server.coordinator.runs import RunCommands
from veracity.server.coordinator.sites import SITE_STATEMENT_KINDS, SiteCommands
from veracity.server.coordinator.unit_of_work import (
    Actor,
    Recorded,
)
from veracity.server.registry import ReleasedModel
from veracity.tasks.weights import weights_to_bytes

__all__ = ["CoordinatorService", "SITE_STATEMENT_KINDS", "package_versions"]

_T = TypeVar("_T")


class CoordinatorService(SiteCommands, RunCommands):
    """Sites, studies, runs and models of one coordinator; every change a ledger entry.

    Open one with :func:`~.bootstrap.open_coordinator` (or create the coordinator with
    :func:`~.bootstrap.init_coordinator`); its parameters are :class:`~.core.ServiceCore`'s.
    """

    def close(self) -> None:
        """Release the database connections."""
        self.ledger.close()

    def __enter__(self) -> CoordinatorService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fingerprint(self) -> str:
        """A short identifier of this coordinator's identity key (the one auditors trust)."""
        return hashlib.sha256(self.ledger.identity_public_key.raw).hexdigest()[:16]

    # ------------------------------------------------------------------ ledger
    def checkpoint(self, actor: Actor) -> Recorded[Checkpoint]:
        """Verify the entries since the last checkpoint, sign the log and record it.

        The signature covers committed entries only and is made before the change's
        transaction opens; the ``checkpoint`` entry and the audit record commit together.

        Raises
        ------
        LedgerIntegrityError
            If an entry since the last checkpoint fails verification (nothing is signed).
        """
        for _ in range(4):
            signed = self.ledger.sign_checkpoint()  # verified, then signed: no transaction open
            try:
                with self._change(actor, "ledger.checkpoint", "") as uow:
                    entry = uow.record_checkpoint(signed)
            except StaleCheckpoint:
                continue  # a racing signer recorded a newer checkpoint: sign the head again
            return uow.recorded(signed, entry)
        signed = self.ledger.sign_checkpoint()
        with self._change(actor, "ledger.checkpoint", "") as uow:
            entry = uow.record_checkpoint(signed)
        return uow.recorded(signed, entry)

    def record_change(
        self,
        actor: Actor,
        action: str,
        target: str,
        write: Callable[[Session], tuple[_T, Payload]],
    ) -> Recorded[_T]:
        """A change of another table, recorded by a root event in the same transaction.

        ``write`` makes the change in the session it is given and returns its result and
        the root payload that records it (token issue and revocation use it): both commit
        together or neither does.

        Raises
        ------
        InputError
            If ``write`` refuses, or the payload breaks a ledger rule (nothing is kept).
        """
        with self._change(actor, action, target) as uow:
            value, payload = write(uow.session)
            uow.append_root(payload)
        return uow.recorded(value)

    def note_read(self, actor: Actor, action: str, target: str) -> int | None:
        """Audit a sensitive read (plaintext weights): the audit record's id, if audited."""
        if self.audit_hook is None:
            return None
        with self._change(actor, action, target) as uow:
            pass
        return uow.action_id

    def reindex(self) -> ReindexReport:
        """Rebuild the read model from the whole log."""
        rows = self.read_model.rebuild()
        return ReindexReport(entries=self.ledger.size(), rows=rows)

    # ------------------------------------------------------------------ models
    def models(self) -> list[tuple[ReleasedModel, ModelRecord | None]]:
        """Every released model (re-verified) with its release; never an unreleased one.

        Raises
        ------
        LedgerIntegrityError
            If a model's files were modified.
        """
        return [
            (self.registry.get(record.model_hash), record)
            for record in self.reads.models()
            if record.model_hash in self.registry
        ]

    def model(self, model_hash: str) -> tuple[ReleasedModel, ModelRecord | None]:
        """A released model (re-verified) and its release.

        Raises
        ------
        NotFound
            If no such model was released (its files alone are not enough).
        LedgerIntegrityError
            If its files were modified.
        """
        release = self.reads.model(model_hash)
        if release is None:
            raise NotFound(f"no released model {model_hash}")
        return self.registry.get(model_hash), release

    def weights(self, actor: Actor, model_hash: str) -> bytes:
        """The plaintext weights (``weights_to_bytes``); the download is a ledger event.

        ``model.downloaded`` (naming who asked) commits before the weights are returned: a
        download whose entry cannot be written hands nothing out.

        Raises
        ------
        NotFound, LedgerIntegrityError
            As :meth:`model`.
        """
        model, _ = self.model(model_hash)
        data = weights_to_bytes(model.weights)

        def write(_session: Session) -> tuple[None, Payload]:
            return None, ModelDownloaded(model_hash=model_hash)

        self.record_change(actor, "model.weights", model_hash, write)
        return data
