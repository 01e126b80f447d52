"""What the admin API does, in plain Python: each change one transaction with its ledger entry.

:class:`ApiService` sits between the HTTP routes and the :class:`Coordinator`. Every state
change runs in one database transaction that holds the ledger's write lock: it inserts the
``api_action`` row (who did it, through which token), lets the coordinator append the
ledger entry in the same session, then links the two. Either both commit or neither does.
Effects outside the database are undone when the transaction fails after them: a SuperNode
registration is withdrawn, a submitted run is stopped.

Authorisation (which role may call what, a site token acting only for its site) belongs to
the HTTP layer; this module trusts the principal it is given.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from veracity.core.fields import format_timestamp
from veracity.errors import Conflict, InputError, LedgerIntegrityError, NotFound
from veracity.ledger import store
from veracity.ledger.checkpoint import Checkpoint
from veracity.ledger.entry import Entry
from veracity.server.api.db import ActionRow
from veracity.server.api.tokens import Clock, Principal, TokenStore, utc_now
from veracity.server.coordinator import Coordinator
from veracity.server.registry import ModelRegistry, ReleasedModel
from veracity.tasks.study import Study
from veracity.tasks.weights import weights_to_bytes

__all__ = ["ApiService", "Recorded", "study_summary"]


@dataclass(frozen=True)
class Recorded:
    """The outcome of a state change: what it returned and the ledger entry it wrote."""

    seq: int | None
    action_id: int
    value: Any = None

    @property
    def entry_seq(self) -> int:
        """The entry's seq, for changes that always write one.

        Raises
        ------
        LedgerIntegrityError
            If this change wrote no entry.
        """
        if self.seq is None:
            raise LedgerIntegrityError("the change recorded no ledger entry")
        return self.seq


@dataclass
class _Change:
    session: Session
    row: ActionRow
    head: int
    seqs: list[int] = field(default_factory=list)

    def appended(self, kind: str) -> int:
        """Seq of the first ``kind`` entry appended in this transaction.

        Raises
        ------
        LedgerIntegrityError
            If the change appended no such entry (a coordinator contract was broken).
        """
        seq = self.session.scalar(
            select(func.min(store.EntryRow.seq)).where(
                store.EntryRow.kind == kind, store.EntryRow.seq > self.head
            )
        )
        if seq is None:
            raise LedgerIntegrityError(f"the change recorded no {kind} entry")
        return int(seq)


def study_summary(study: Study, seq: int | None = None) -> dict[str, Any]:
    """A study's listing: identity, sites, terms at a glance."""
    return {
        "study_id": study.study_id,
        "study_hash": study.study_hash,
        "title": study.title,
        "sites": sorted(study.epsilon_caps),
        "min_sites": study.min_sites,
        "rounds": study.rounds,
        "code_hash": study.code_hash,
        "proposed_seq": seq,
    }


class ApiService:
    """The admin API's operations over one coordinator.

    Parameters
    ----------
    coordinator
        The opened coordinator (its ledger's engine also holds the API tables).
    clock
        The current time (tokens, action timestamps).
    max_concurrent_writes
        State changes run at once in this process; the rest wait here rather than
        holding database connections while they queue for the ledger's write lock.
    """

    def __init__(
        self,
        coordinator: Coordinator,
        *,
        clock: Clock = utc_now,
        max_concurrent_writes: int = 4,
    ) -> None:
        self.coordinator = coordinator
        self.clock = clock
        self.tokens = TokenStore(coordinator.ledger.engine, clock=clock)
        self.registry = ModelRegistry(coordinator.paths.models)
        self._writes = threading.BoundedSemaphore(max_concurrent_writes)
        self._verify_lock = threading.Lock()

    @property
    def ledger(self) -> Any:
        """The coordinator's ledger."""
        return self.coordinator.ledger

    # ------------------------------------------------------------------ changes
    @contextmanager
    def _change(self, principal: Principal, action: str, target: str) -> Iterator[_Change]:
        with self._writes, self.coordinator.transaction() as session:
            head = session.scalar(select(func.max(store.EntryRow.seq)))
            row = ActionRow(
                at=format_timestamp(self.clock()),
                token_id=principal.token_id,
                actor=principal.name,
                role=principal.role.value,
                action=action,
                target=target[:200],
                ledger_seq=None,
            )
            session.add(row)
            session.flush()
            change = _Change(session=session, row=row, head=-1 if head is None else int(head))
            yield change
            session.flush()

    @staticmethod
    def _link(change: _Change, seq: int) -> None:
        change.row.ledger_seq = seq
        change.session.flush()

    def enrol_site(
        self,
        principal: Principal,
        name: str,
        *,
        public_key_pem: str,
        supernode_public_key: str,
    ) -> Recorded:
        """Enrol a site (``key.enrolled``) and register its SuperNode key with the SuperLink.

        The entry and the API's action row are written first; the SuperLink is told last,
        so a failed write leaves it untouched. If the commit itself then fails, the
        registration is withdrawn (and Flower will not accept that SuperNode key again:
        the site makes a new one).

        Raises
        ------
        InputError, Conflict, CryptoError
            A malformed name or key, or a site or key already enrolled.
        TransportError
            If the SuperLink refuses or does not answer.
        """
        node_id: int | None = None
        try:
            with self._change(principal, "site.enrol", name) as change:
                recorded = self.coordinator.enrol_site(
                    name,
                    public_key_pem=public_key_pem,
                    supernode_public_key=supernode_public_key,
                    register_node=False,
                    session=change.session,
                )
                self._link(change, recorded.seq)
                # The SuperLink hears of the enrolment last, once every row is written:
                # Flower cannot register a withdrawn key again, so a failure before this
                # point must leave it untouched. Only a failed commit needs the withdrawal.
                node_id = self.coordinator.register_supernode(name, supernode_public_key)
        except BaseException:
            if node_id is not None:
                self.coordinator.withdraw_node(node_id)
            raise
        enrolled = replace(recorded, node_id=node_id)
        return Recorded(seq=enrolled.seq, action_id=change.row.id, value=enrolled)

    def record_statement(
        self,
        principal: Principal,
        kind: str,
        site: str,
        payload: dict[str, Any],
        signature: str,
    ) -> Recorded:
        """Record a statement ``site`` signed (dataset, decision, co-signature, note).

        Raises
        ------
        InputError, NotFound, Conflict
            As :meth:`Coordinator.record_statement`; a replayed statement is a Conflict.
        SignatureError
            If ``site`` did not sign it.
        """
        with self._change(principal, kind, f"{site} {payload.get('dataset_id', '')}") as change:
            entry: Entry = self.coordinator.record_statement(
                kind, site, payload, signature, session=change.session
            )
            self._link(change, entry.seq)
        return Recorded(seq=entry.seq, action_id=change.row.id, value=entry)

    def propose_study(self, principal: Principal, document: dict[str, Any]) -> Recorded:
        """Record ``study.proposed``.

        Raises
        ------
        InputError, Conflict
            As :meth:`Coordinator.propose_study`.
        """
        target = str(document.get("study_id", ""))
        with self._change(principal, "study.propose", target) as change:
            study = self.coordinator.propose_study(document, session=change.session)
            seq = change.appended("study.proposed")
            self._link(change, seq)
        return Recorded(seq=seq, action_id=change.row.id, value=study)

    def start_run(self, principal: Principal, study_hash: str) -> Recorded:
        """Submit a run of an approved study to the SuperLink and record ``run.started``.

        Raises
        ------
        NotFound
            If no such study was proposed.
        ApprovalMissing
            If too few sites approved it.
        TransportError
            If the SuperLink refuses or does not answer.
        """
        run_id: str | None = None
        try:
            with self._change(principal, "run.start", study_hash) as change:
                run_id = self.coordinator.start_run(study_hash, session=change.session)
                seq = change.appended("run.started")
                self._link(change, seq)
        except BaseException:
            if run_id is not None:
                self.coordinator.withdraw_run(run_id)
            raise
        return Recorded(seq=seq, action_id=change.row.id, value=run_id)

    def stop_run(self, principal: Principal, run_id: str) -> Recorded:
        """Stop a run and record ``run.finished`` (stopped) unless it has finished already.

        Raises
        ------
        NotFound
            If the run was not started through this coordinator.
        Conflict
            If the SuperLink did not stop it (it had ended).
        TransportError
            If the SuperLink does not answer.
        """
        finished = self.coordinator.run_finished(run_id)
        if finished is not None:
            raise Conflict(f"run {run_id} has finished ({finished['status']})")
        if self.coordinator.run_started(run_id) is None:
            raise NotFound(f"run {run_id} was not started through this coordinator")
        summary = self.coordinator.run_status(run_id)
        if summary.finished:
            raise Conflict(f"run {run_id} has ended on the SuperLink ({summary.state})")
        with self._change(principal, "run.stop", run_id) as change:
            accepted = self.coordinator.stop_run(run_id, session=change.session)
            if not accepted:
                raise Conflict(f"the SuperLink did not stop run {run_id}; it has ended")
            seq = change.session.scalar(
                select(func.min(store.EntryRow.seq)).where(
                    store.EntryRow.kind == "run.finished", store.EntryRow.seq > change.head
                )
            )
            if seq is not None:
                self._link(change, int(seq))
        return Recorded(seq=None if seq is None else int(seq), action_id=change.row.id)

    def checkpoint(self, principal: Principal) -> Recorded:
        """Sign a checkpoint of the whole ledger now."""
        with self._change(principal, "ledger.checkpoint", "") as change:
            checkpoint = self.ledger.checkpoint(session=change.session)
            self._link(change, checkpoint.tree_size)
        return Recorded(seq=checkpoint.tree_size, action_id=change.row.id, value=checkpoint)

    def note_read(self, principal: Principal, action: str, target: str) -> None:
        """Record a sensitive read (plaintext weights) in ``api_action``; no ledger entry."""
        with self._writes, Session(self.ledger.engine) as session, session.begin():
            session.add(
                ActionRow(
                    at=format_timestamp(self.clock()),
                    token_id=principal.token_id,
                    actor=principal.name,
                    role=principal.role.value,
                    action=action,
                    target=target[:200],
                    ledger_seq=None,
                )
            )

    # ------------------------------------------------------------------ reads
    def actions(self, *, since: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """``api_action`` rows with ``id >= since``, oldest first."""
        with Session(self.ledger.engine) as session:
            rows = session.execute(
                select(ActionRow).where(ActionRow.id >= since).order_by(ActionRow.id).limit(limit)
            ).scalars()
            return [
                {
                    "id": row.id,
                    "at": row.at,
                    "token_id": row.token_id,
                    "actor": row.actor,
                    "role": row.role,
                    "action": row.action,
                    "target": row.target,
                    "ledger_seq": row.ledger_seq,
                }
                for row in rows
            ]

    def site(self, name: str) -> dict[str, Any]:
        """An enrolled site: its enrolment and current key id.

        Raises
        ------
        NotFound
            If it was never enrolled.
        """
        enrolment = self.coordinator.enrolment(name)
        record = self.ledger.key_at(name)
        return {
            "name": name,
            "key_id": record.key_id if record is not None else None,
            "public_key": enrolment["public_key"],
            "supernode_public_key": enrolment.get("supernode_public_key"),
            "valid_from": enrolment["valid_from"],
            "enrolled_seq": record.enrolled_seq if record is not None else None,
        }

    def studies(self, *, site: str | None = None) -> list[dict[str, Any]]:
        """Every proposed study (only those naming ``site``, when given)."""
        out = []
        for entry in self.ledger.iter_entries(kind="study.proposed"):
            study = Study.model_validate(entry.payload["study"])
            if site is None or site in study.epsilon_caps:
                out.append(study_summary(study, entry.seq))
        return out

    def study(self, study_hash: str) -> tuple[Study, dict[str, Any]]:
        """A study's document and state: decisions per site, approvals, whether it can run.

        Raises
        ------
        NotFound
            If no such study was proposed.
        """
        study = self.coordinator.study(study_hash)
        decisions = self.coordinator.decisions(study_hash)
        approvals = self.coordinator.approvals(study_hash)
        proposed = next(
            (
                e.seq
                for e in self.ledger.iter_entries(kind="study.proposed")
                if e.payload.get("study_hash") == study_hash
            ),
            None,
        )
        state = {
            **study_summary(study, proposed),
            "study": study.to_document(),
            "decisions": decisions,
            "approved_by": sorted(approvals),
            "ready": len(approvals) >= study.min_sites,
        }
        return study, state

    def run(self, run_id: str) -> dict[str, Any]:
        """A run started here: its ledger record and the SuperLink's view.

        Raises
        ------
        NotFound
            If the run was not started through this coordinator.
        TransportError
            If the SuperLink does not answer.
        """
        started = self.coordinator.run_started(run_id)
        if started is None:
            raise NotFound(f"run {run_id} was not started through this coordinator")
        summary = self.coordinator.run_status(run_id)
        return {
            "run_id": run_id,
            "study_hash": started["study_hash"],
            "started_seq": started["seq"],
            "started_at": started["ts"],
            "finished": self.coordinator.run_finished(run_id),
            "rounds_completed": len(self.coordinator.rounds(run_id)),
            "superlink": summary.to_dict(),
        }

    def models(self) -> list[dict[str, Any]]:
        """Released models: hash, name, family, features, and the ``model.released`` seq."""
        released = {
            e.payload["model_hash"]: e.seq for e in self.ledger.iter_entries(kind="model.released")
        }
        out = []
        for model_hash in self.registry.list():
            model = self.registry.get(model_hash)
            out.append(
                {
                    "model_hash": model_hash,
                    "name": str(model.card.get("name", "")),
                    "family": model.spec.family.value,
                    "n_features": model.spec.n_features,
                    "label": model.label,
                    "card_hash": model.card_hash,
                    "released_seq": released.get(model_hash),
                }
            )
        return out

    def model(self, model_hash: str) -> tuple[ReleasedModel, int | None]:
        """A released model (verified) and its ``model.released`` seq.

        Raises
        ------
        NotFound
            If no such model is in the registry.
        LedgerIntegrityError
            If its files were modified.
        """
        model = self.registry.get(model_hash)
        seq = next(
            (
                e.seq
                for e in self.ledger.iter_entries(kind="model.released")
                if e.payload.get("model_hash") == model_hash
            ),
            None,
        )
        return model, seq

    def weights(self, principal: Principal, model_hash: str) -> bytes:
        """The plaintext weights (``weights_to_bytes``); the download is recorded.

        Raises
        ------
        NotFound, LedgerIntegrityError
            As :meth:`model`.
        """
        model = self.registry.get(model_hash)
        self.note_read(principal, "model.weights", model_hash)
        data: bytes = weights_to_bytes(model.weights)
        return data

    # ------------------------------------------------------------------ ledger
    def ledger_info(self) -> dict[str, Any]:
        """Log id, size, the coordinator's root public key and the newest checkpoint."""
        latest = self.ledger.latest_checkpoint()
        root = self.coordinator.root_key.public
        return {
            "log_id": self.ledger.log_id,
            "size": self.ledger.size(),
            "root_public_key": root.pem(),
            "root_key_id": root.key_id,
            "latest_checkpoint": None if latest is None else latest.to_json(),
        }

    def entries(
        self, *, since: int, limit: int, kind: str | None, actor: str | None
    ) -> tuple[list[Entry], int | None]:
        """One page of entries from ``since`` and where the next page starts (or None)."""
        page: list[Entry] = self.ledger.entries(
            since=since, kind=kind, actor=actor, limit=limit + 1
        )
        following = page[limit].seq if len(page) > limit else None
        return page[:limit], following

    def verify(self, *, root_signatures: Literal["all", "tail"]) -> dict[str, Any]:
        """Verify the whole ledger against the coordinator's root key; the report.

        One verification runs at a time per process (it reads every entry).
        """
        with self._verify_lock:
            try:
                report = self.ledger.verify(
                    self.coordinator.root_key.public, root_signatures=root_signatures
                )
            except LedgerIntegrityError as err:
                return {
                    "ok": False,
                    "entries": None,
                    "checkpoints": None,
                    "first_bad_seq": err.seq,
                    "reason": err.reason,
                    "log_id": None,
                    "root_hash": None,
                    "signatures_checked": None,
                    "receipts_checked": None,
                }
        document: dict[str, Any] = report.to_json()
        return document

    def checkpoint_for(self, size: int) -> Checkpoint | None:
        """The signed checkpoint of exactly ``size`` entries, if one was made."""
        for checkpoint in self.ledger.checkpoints():
            if checkpoint.tree_size == size:
                found: Checkpoint = checkpoint
                return found
        return None

    def checkpoints(self, *, since_size: int, limit: int) -> list[Checkpoint]:
        """Signed checkpoints with ``tree_size >= since_size``, oldest first."""
        listed: list[Checkpoint] = [
            c for c in self.ledger.checkpoints() if c.tree_size >= since_size
        ]
        return listed[:limit]

    def export_bundle(self, directory: Path) -> tuple[Path, dict[str, Any]]:
        """Export the ledger as an offline-verifiable bundle file in ``directory``."""
        path = directory / "ledger-bundle.jsonl"
        summary: dict[str, Any] = self.ledger.export_bundle(path)
        return path, summary


def require_payload_field(payload: dict[str, Any], name: str, expected: str) -> None:
    """Refuse a statement whose ``payload[name]`` is not ``expected``.

    Raises
    ------
    InputError
        Naming the field and both values.
    """
    given = payload.get(name)
    if given != expected:
        raise InputError(f"the statement's {name} is {given!r}, not {expected!r}")
