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
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from veracity import __version__
from veracity.contracts.base import Payload
from veracity.contracts.events import (
    ANY_ACTOR_KINDS,
    ROOT_ACTOR,
    SITE_KINDS,
    InferenceServed,
    KeyEnrolled,
    KeyRevoked,
    ModelReleased,
    RoundCompleted,
    RunFinished,
    RunStarted,
    RunStatus,
    StudyApproved,
    StudyProposed,
    StudyRefused,
    validate_payload,
)
from veracity.core.canonical import canonical_hash
from veracity.core.fields import check_site_name, format_timestamp
from veracity.crypto.keys import SigningKey, VerifyKey
from veracity.crypto.supernode import parse_supernode_public_key
from veracity.errors import ApprovalMissing, ConfigError, Conflict, InputError, NotFound
from veracity.ledger.checkpoint import Checkpoint
from veracity.ledger.entry import Entry
from veracity.ledger.ledger import Ledger
from veracity.server.coordinator import queries
from veracity.server.coordinator.audit_log import AuditLog
from veracity.server.coordinator.federation import Federation, RunSummary
from veracity.server.coordinator.home import CoordinatorHome
from veracity.server.coordinator.queries import CoordinatorReads
from veracity.server.coordinator.read_model import ReadModel
from veracity.server.coordinator.records import (
    EnrolledSite,
    ModelRecord,
    ReindexReport,
    RoundRecord,
    RunOutcome,
    RunRecord,
    StudyRecord,
)
from veracity.server.coordinator.unit_of_work import (
    INFERENCE,
    Actor,
    AuditHook,
    Recorded,
    UnitOfWork,
)
from veracity.server.fab import build_fab
from veracity.server.registry import ModelRegistry, ReleasedModel
from veracity.tasks.study import parse_study
from veracity.tasks.weights import weights_to_bytes

__all__ = ["CoordinatorService", "SITE_STATEMENT_KINDS", "package_versions"]

log = logging.getLogger(__name__)

#: Statements a site signs on its own machine and the coordinator records for it.
SITE_STATEMENT_KINDS = SITE_KINDS | ANY_ACTOR_KINDS


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour a run's results depend on."""
    versions = {"veracity": __version__}
    for name in ("flwr", "torch", "opacus", "dp-accounting", "tenseal", "numpy"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


class CoordinatorService:
    """Sites, studies, runs and models of one coordinator; every change a ledger entry.

    Open one with :func:`~.bootstrap.open_coordinator` (or create the coordinator with
    :func:`~.bootstrap.init_coordinator`).

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
        self.audit_log = AuditLog(ledger, root_key.public)
        self.registry = ModelRegistry(home.models)
        self._writes = threading.BoundedSemaphore(max_concurrent_writes)

    def close(self) -> None:
        """Release the database connections."""
        self.ledger.close()

    def __enter__(self) -> CoordinatorService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fingerprint(self) -> str:
        """A short identifier of this coordinator's root key."""
        return hashlib.sha256(self.root_key.public.raw).hexdigest()[:16]

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

    def _stop_submitted(self, run_id: int) -> None:
        self.federation.stop_run(run_id)

    # ------------------------------------------------------------------- sites
    def site_key(self, site: str) -> VerifyKey:
        """The Ed25519 key ``site`` holds now (from the ledger's own key index).

        Raises
        ------
        NotFound
            If the site is not enrolled (or its key was revoked).
        """
        record = self.ledger.key_at(site)
        if record is None:
            raise NotFound(f"site {site!r} is not enrolled")
        return record.key

    def enrol_site(
        self, actor: Actor, name: str, *, public_key_pem: str, supernode_public_key: str
    ) -> Recorded[EnrolledSite]:
        """Enrol a site: ``key.enrolled`` with its keys, then its SuperNode's registration.

        Raises
        ------
        InputError, Conflict, CryptoError
            A malformed name or key, or a site or key already enrolled (or a SuperNode key
            the SuperLink holds already).
        TransportError
            If the SuperLink does not answer.
        """
        check_site_name(name)
        if name == ROOT_ACTOR:
            raise InputError(f"{ROOT_ACTOR!r} is the root's name, not a site's")
        public_key = VerifyKey.from_pem(public_key_pem)
        supernode_key = supernode_public_key.strip()
        supernode_pem = (
            parse_supernode_public_key(supernode_key)
            .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
            .decode("ascii")
        )
        with self._change(actor, "site.enrol", name) as uow:
            if self.ledger.key_at(name) is not None:
                raise Conflict(f"site {name!r} is already enrolled")
            entry = uow.append_root(
                KeyEnrolled(
                    name=name,
                    role="site",
                    public_key=public_key.pem(),
                    valid_from=format_timestamp(),
                    supernode_public_key=supernode_key,
                )
            )
            uow.seal()
            held = self._registration(name, supernode_pem)
            node_id = (
                held
                if held is not None
                else uow.effect(
                    lambda: self.federation.register_node(name, supernode_key),
                    undo=self.federation.unregister_node,
                )
            )
        site = EnrolledSite(name=name, key_id=public_key.key_id, node_id=node_id, seq=entry.seq)
        return uow.recorded(site)

    def _registration(self, name: str, pem: str) -> int | None:
        """The node id under which the SuperLink holds this key for ``name``, if it does.

        A site that was revoked and enrols a new signing key keeps its SuperNode: its
        registration stands and is not made again (the SuperLink would refuse the key).
        """
        for node in self.federation.list_nodes():
            if node.name == name and node.status != "unregistered" and node.public_key_pem == pem:
                return node.node_id
        return None

    def revoke_site_key(self, actor: Actor, name: str, *, reason: str) -> Recorded[str]:
        """Revoke the key ``name`` holds now (``key.revoked``); returns the key id.

        Its later signatures are refused, and it no longer counts as approving anything.

        Raises
        ------
        InputError
            If ``name`` holds no site key.
        """
        with self._change(actor, "site.revoke", name) as uow:
            record = self.ledger.key_at(name)
            if record is None or name == ROOT_ACTOR:
                raise InputError(f"{name!r} holds no site key to revoke")
            uow.append_root(KeyRevoked(name=name, key_id=record.key_id, reason=reason))
        return uow.recorded(record.key_id)

    # -------------------------------------------------------------- statements
    def record_statement(
        self, actor: Actor, kind: str, site: str, payload: dict[str, Any], signature: str
    ) -> Recorded[Payload]:
        """Record a statement ``site`` signed on its own machine; the value is its model.

        Raises
        ------
        InputError
            If the kind is not a site statement, the payload is malformed or names another
            site, or an approval does not fit the study (site not in it, cap above the
            study's, dataset not registered by the site).
        NotFound
            If a decision names a study that was never proposed.
        Conflict
            If this signed statement was recorded before.
        SignatureError
            If the site did not sign it.
        """
        if kind not in SITE_STATEMENT_KINDS:
            raise InputError(f"{kind!r} is not a statement a site can make")
        if "site" in payload and payload["site"] != site:
            raise InputError(f"the statement names site {payload['site']!r}, not {site!r}")
        statement = validate_payload(kind, payload, actor=site)
        dataset_id = getattr(statement, "dataset_id", "")
        with self._change(actor, kind, f"{site} {dataset_id}") as uow:
            if isinstance(statement, StudyApproved | StudyRefused):
                self._check_decision(uow, site, statement)
            uow.append_signed(kind, site, payload, signature)
        return uow.recorded(statement)

    @staticmethod
    def _check_decision(
        uow: UnitOfWork, site: str, statement: StudyApproved | StudyRefused
    ) -> None:
        found = queries.study(uow.session, statement.study_hash)
        if found is None:
            raise NotFound(f"no study {statement.study_hash!r} was proposed")
        caps = found.study.epsilon_caps
        if site not in caps:
            raise InputError(f"study {found.study.study_id} does not include site {site!r}")
        if isinstance(statement, StudyApproved):
            if statement.epsilon_cap > caps[site]:
                raise InputError(
                    f"approved epsilon {statement.epsilon_cap} exceeds the study's cap "
                    f"{caps[site]} for {site}"
                )
            if queries.dataset(uow.session, site, statement.dataset_id) is None:
                raise InputError(f"{site} has not registered dataset {statement.dataset_id!r}")

    # ----------------------------------------------------------------- studies
    def propose_study(self, actor: Actor, document: dict[str, Any]) -> Recorded[StudyRecord]:
        """Record ``study.proposed``; its code hash is the FAB this coordinator submits.

        Raises
        ------
        InputError
            If the document is invalid, names a code hash other than this coordinator's
            FAB, or names sites that are not enrolled.
        Conflict
            If it was proposed before.
        """
        fab_hash = build_fab().fab_hash
        document = dict(document)
        if document.setdefault("code_hash", fab_hash) != fab_hash:
            raise InputError(f"code_hash must be this coordinator's app bundle hash {fab_hash}")
        study = parse_study(document)
        with self._change(actor, "study.propose", study.study_id) as uow:
            for site in study.epsilon_caps:
                found = queries.site(uow.session, site)
                if found is None or found.revoked:
                    raise InputError(f"site {site!r} in epsilon_caps is not enrolled")
            if queries.study(uow.session, study.study_hash) is not None:
                raise Conflict(f"study {study.study_hash} was already proposed")
            entry = uow.append_root(
                StudyProposed(
                    study_id=study.study_id,
                    study_hash=study.study_hash,
                    study=study.to_document(),
                    code_hash=study.code_hash,
                )
            )
        return uow.recorded(StudyRecord(study, proposed_seq=entry.seq, proposed_at=entry.ts))

    # -------------------------------------------------------------------- runs
    def start_run(
        self,
        actor: Actor,
        study_hash: str,
        *,
        poll_interval: float = 0.2,
        round_timeout: float = 600.0,
        node_wait: float = 120.0,
    ) -> Recorded[RunRecord]:
        """Submit a run of an approved study to the SuperLink and record ``run.started``.

        Raises
        ------
        NotFound
            If the study was never proposed.
        ApprovalMissing
            If fewer sites approved it than the study's ``min_sites``.
        ConfigError
            If the installed Veracity's app bundle is not the code the sites approved.
        TransportError
            If the SuperLink refuses or does not answer.
        """
        fab = build_fab()
        with self._change(actor, "run.start", study_hash) as uow:
            found = queries.study(uow.session, study_hash)
            if found is None:
                raise NotFound(f"no study {study_hash!r} was proposed")
            study = found.study
            approved = queries.approvals(uow.session, study_hash)
            if len(approved) < study.min_sites:
                raise ApprovalMissing(
                    f"{len(approved)} site(s) approved study {study.study_id}; "
                    f"it needs {study.min_sites}"
                )
            if fab.fab_hash != study.code_hash:
                raise ConfigError(
                    "this coordinator's Veracity differs from the code the sites approved "
                    f"({fab.fab_hash[:12]} != {study.code_hash[:12]}); propose the study again"
                )
            config: dict[str, bool | int | float | str] = {
                "study-hash": study_hash,
                "coordinator-dir": str(self.home.data_dir.resolve()),
                "poll-interval": poll_interval,
                "round-timeout": round_timeout,
                "node-wait": node_wait,
            }
            seeds = {"model_seed": study.model_seed, "nonce": secrets.token_hex(32)}
            flower_id = uow.effect(
                lambda: self.federation.start_run(fab.content, config=config),
                undo=self._stop_submitted,
            )
            run_id = str(flower_id)
            uow.effect(
                lambda: self.home.write_seeds(run_id, seeds),
                undo=lambda _path: self.home.remove_seeds(run_id),
            )
            entry = uow.append_root(
                RunStarted(
                    run_id=run_id,
                    study_hash=study_hash,
                    fab_hash=fab.fab_hash,
                    config_hash=canonical_hash(config),
                    package_versions=package_versions(),
                    seed_commitment=canonical_hash(seeds),
                )
            )
        started = RunRecord(run_id, study_hash, entry.seq, entry.ts, None, rounds_recorded=0)
        return uow.recorded(started)

    def stop_run(self, actor: Actor, run_id: str) -> Recorded[RunRecord]:
        """Record ``run.finished`` (stopped), then stop the run on the SuperLink.

        A run the SuperLink reports ended, with no ``run.finished`` recorded, is recorded as
        it ended (``stopped`` or ``failed``) instead.

        Raises
        ------
        NotFound
            If the run was not started through this coordinator.
        Conflict
            If it has a ``run.finished`` already.
        TransportError
            If the SuperLink does not answer (nothing is recorded).
        """
        with self._change(actor, "run.stop", run_id) as uow:
            run = self._unfinished_run(uow, run_id)
            summary = self.federation.run(int(run_id))
            if summary.finished:
                status: RunStatus = "stopped" if summary.sub_status == "stopped" else "failed"
                reason = (
                    f"the SuperLink reports the run {summary.state} and no run.finished was "
                    "recorded; recorded when a stop was asked for"
                )
            else:
                status, reason = "stopped", "stopped by the coordinator's admin"
            entry = self._append_finished(uow, run, status, reason, model_hash=None)
            uow.seal()
            if not summary.finished and not uow.effect(
                lambda: self.federation.stop_run(int(run_id))
            ):
                raise Conflict(f"the SuperLink did not stop run {run_id}; it has ended")
        return uow.recorded(self._finished_record(run, entry.seq, entry.ts, status, reason))

    def finish_run(
        self,
        actor: Actor,
        run_id: str,
        study_hash: str,
        *,
        status: RunStatus,
        reason: str,
        rounds_completed: int,
        model_hash: str | None,
    ) -> Recorded[None]:
        """Record how a run ended (``run.finished``) and sign a checkpoint.

        A run the coordinator never started (submitted to the SuperLink by someone else)
        is recorded too, so that every ServerApp run ends with exactly one ``run.finished``.

        Raises
        ------
        Conflict
            If the run has a ``run.finished`` already (a stop was recorded first).
        """
        with self._change(actor, "run.finish", run_id) as uow:
            row = queries.run(uow.session, run_id)
            if row is not None and row.finished is not None:
                raise Conflict(f"run {run_id} has finished ({row.finished.status})")
            uow.append_root(
                RunFinished(
                    run_id=run_id,
                    study_hash=study_hash,
                    status=status,
                    reason=reason[:2000],
                    rounds_completed=rounds_completed,
                    model_hash=model_hash,
                )
            )
            uow.checkpoint()
        return uow.recorded(None)

    def _unfinished_run(self, uow: UnitOfWork, run_id: str) -> RunRecord:
        run = queries.run(uow.session, run_id)
        if run is None:
            raise NotFound(f"run {run_id} was not started through this coordinator")
        if run.finished is not None:
            raise Conflict(f"run {run_id} has finished ({run.finished.status})")
        return run

    @staticmethod
    def _append_finished(
        uow: UnitOfWork, run: RunRecord, status: RunStatus, reason: str, *, model_hash: str | None
    ) -> Entry:
        return uow.append_root(
            RunFinished(
                run_id=run.run_id,
                study_hash=run.study_hash,
                status=status,
                reason=reason,
                rounds_completed=run.rounds_recorded,
                model_hash=model_hash,
            )
        )

    @staticmethod
    def _finished_record(
        run: RunRecord, seq: int, ts: str, status: RunStatus, reason: str
    ) -> RunRecord:
        outcome = RunOutcome(seq, ts, status, reason, run.rounds_recorded, model_hash=None)
        return RunRecord(
            run.run_id, run.study_hash, run.started_seq, run.started_at, outcome,
            rounds_recorded=run.rounds_recorded,
        )  # fmt: skip

    def record_round(self, actor: Actor, completed: RoundCompleted) -> Recorded[RoundRecord]:
        """Record ``round.completed`` and sign a checkpoint that covers it.

        Raises
        ------
        InputError, SignatureError
            If the ledger refuses it (a receipt not signed by its site's key).
        """
        with self._change(actor, "round.record", f"{completed.run_id} {completed.round}") as uow:
            entry = uow.append_root(completed)
            uow.checkpoint()
        return uow.recorded(RoundRecord(seq=entry.seq, completed=completed))

    def release(self, actor: Actor, released: ModelReleased) -> Recorded[ModelRecord]:
        """Record ``model.released`` (the model is in the registry already).

        Raises
        ------
        InputError
            If the ledger refuses the payload.
        """
        with self._change(actor, "model.release", released.model_hash) as uow:
            entry = uow.append_root(released)
        record = ModelRecord(
            model_hash=released.model_hash,
            seq=entry.seq,
            released_at=entry.ts,
            run_id=released.run_id,
            study_hash=released.study_hash,
            card_hash=released.card_hash,
        )
        return uow.recorded(record)

    def record_inference(self, served: InferenceServed) -> Recorded[None]:
        """Record ``inference.served`` for a batch about to be answered (not audited)."""
        with self._change(INFERENCE, "inference.served", served.model_hash, audited=False) as uow:
            uow.append_root(served)
        return uow.recorded(None)

    # ------------------------------------------------------------------ ledger
    def checkpoint(self, actor: Actor) -> Recorded[Checkpoint]:
        """Sign a checkpoint of the whole ledger now (a ``checkpoint`` entry)."""
        with self._change(actor, "ledger.checkpoint", "") as uow:
            checkpoint = uow.checkpoint()
        return uow.recorded(checkpoint, self.ledger.get(checkpoint.tree_size))

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
        """Every model in the registry (re-verified), with its release if it was released.

        Raises
        ------
        LedgerIntegrityError
            If a model's files were modified.
        """
        released = {record.model_hash: record for record in self.reads.models()}
        return [(self.registry.get(h), released.get(h)) for h in self.registry.list()]

    def model(self, model_hash: str) -> tuple[ReleasedModel, ModelRecord | None]:
        """A model of the registry (re-verified) and its release, if it was released.

        Raises
        ------
        NotFound
            If no such model is in the registry.
        LedgerIntegrityError
            If its files were modified.
        """
        return self.registry.get(model_hash), self.reads.model(model_hash)

    def weights(self, actor: Actor, model_hash: str) -> bytes:
        """The plaintext weights (``weights_to_bytes``); the download is audited.

        Raises
        ------
        NotFound, LedgerIntegrityError
            As :meth:`model`.
        """
        model = self.registry.get(model_hash)
        self.note_read(actor, "model.weights", model_hash)
        return weights_to_bytes(model.weights)

    # -------------------------------------------------------------- runs (read)
    def run_status(self, run_id: str) -> RunSummary:
        """What the SuperLink says of a run started here.

        Raises
        ------
        NotFound
            If the run was not started through this coordinator.
        TransportError
            If the SuperLink does not answer.
        """
        self.reads.run(run_id)
        return self.federation.run(int(run_id))

    def run_logs(self, run_id: str, *, after: float = 0.0, wait: float = 2.0) -> tuple[str, float]:
        """Log text of a run started here since ``after``; returns ``(text, latest)``.

        Raises
        ------
        NotFound
            If the run was not started through this coordinator.
        TransportError
            If the SuperLink does not answer.
        """
        self.reads.run(run_id)
        return self.federation.logs(int(run_id), after=after, wait=wait)
