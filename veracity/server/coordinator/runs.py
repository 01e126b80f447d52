"""Runs: the coordinator service's second command group.

A start submits first (the run id is in ``run.started``) and is undone (run stopped, seeds
forgotten) if the change does not commit. A stop records ``run.finished`` first and asks the
SuperLink last, so a stop that is not recorded leaves the run running; a run the SuperLink
reports ended without a ``run.finished`` (its ServerApp died with the coordinator's host) is
recorded as it ended when a stop is asked for, and by :meth:`RunCommands.record_ended_runs`,
which the admin API calls when it starts and then periodically. Every run ends with exactly
one ``run.finished``. Rounds are recorded with a checkpoint
that covers them.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from veracity.contracts.events import (
    AnalysisAnswered,
    InferenceServed,
    ModelExplained,
    ModelReleased,
    RoundCompleted,
    RunFinished,
    RunStarted,
    RunStatus,
    UpdatesPruned,
)
from veracity.contracts.explanation import ExplanationTerms, ReleaseExplanation
from veracity.core.canonical import canonical_hash, canonical_json
from veracity.core.fields import format_timestamp
from veracity.errors import ApprovalMissing, Conflict, InputError, NotFound
from veracity.ledger.entry import Entry
from veracity.server.coordinator import queries
from veracity.server.coordinator.core import ServiceCore, package_versions
from veracity.server.coordinator.federation import RunSummary
from veracity.server.coordinator.records import (
    ModelRecord,
    RoundRecord,
    RunOutcome,
    RunRecord,
)
from veracity.server.coordinator.unit_of_work import (
    INFERENCE,
    Actor,
    Recorded,
    UnitOfWork,
)
from veracity.server.fab import build_fab
from veracity.server.round_archive import PrunePlan, UpdateStore, plan_prune
from veracity.tasks.study import Study

__all__ = ["PRUNED_PER_ENTRY", "RunCommands"]

#: Hashes one ``updates.pruned`` entry lists at most: about 3.4 MB of JSON, inside the 8 MiB
#: an entry may take (``veracity.ledger.verify.MAX_ENTRY_BYTES``).
PRUNED_PER_ENTRY = 50_000

#: Why a run the SuperLink no longer knows is recorded failed: its state is in memory, and a
#: restarted SuperLink keeps only its SuperNode registrations (veracity.server.superlink_process).
LOST_RUN_REASON = "the SuperLink has no record of the run (its state was lost on a restart)"


class RunCommands(ServiceCore):
    """Starting, stopping and finishing runs; their rounds, release and inferences."""

    def _stop_submitted(self, run_id: int) -> None:
        self.federation.stop_run(run_id)

    def start_run(
        self,
        actor: Actor,
        study_hash: str,
        *,
        poll_interval: float = 0.2,
        round_timeout: float = 600.0,
        node_wait: float = 120.0,
        explain: ExplanationTerms | None = None,
        explain_at_release: ReleaseExplanation | None = None,
    ) -> Recorded[RunRecord]:
        """Submit a run of an approved study to the SuperLink and record ``run.started``.

        With ``explain``, the run trains nothing: it asks the study's sites to explain the
        released model the terms name, and records ``model.explained`` (the terms are in
        the run config, so ``run.started``'s ``config_hash`` covers them). With
        ``explain_at_release``, a training run asks its sites to explain the final model
        before releasing it, and the report goes into the model card (also in the config).

        Raises
        ------
        NotFound
            If the study was never proposed.
        ApprovalMissing
            If fewer sites approved it than the study's ``min_sites``.
        Conflict
            If the installed Veracity's app bundle is not the code the sites approved (the
            coordinator's Veracity changed since the study was proposed).
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
                raise Conflict(
                    f"study {study.study_id} was approved for code {study.code_hash}, but "
                    f"this coordinator's Veracity builds {fab.fab_hash}; install the approved "
                    "version, or propose the study again and have its sites approve it"
                )
            config: dict[str, bool | int | float | str] = {
                "study-hash": study_hash,
                "coordinator-dir": str(self.home.data_dir.resolve()),
                "poll-interval": poll_interval,
                "round-timeout": round_timeout,
                "node-wait": node_wait,
            }
            if explain is not None:
                if explain.study_hash != study_hash:
                    raise InputError("the explanation's terms name another study")
                released = queries.model(uow.session, explain.model_hash)
                if released is None or released.study_hash != study_hash:
                    raise NotFound(
                        f"no model {explain.model_hash} was released from study {study.study_id}"
                    )
                config["explain"] = canonical_json(explain.to_json()).decode("utf-8")
            if explain_at_release is not None:
                if explain is not None or not isinstance(study, Study):
                    raise InputError(
                        "an explanation at release needs a training run of a training study"
                    )
                config["explain-at-release"] = canonical_json(explain_at_release.to_json()).decode(
                    "utf-8"
                )
            seeds = {
                "model_seed": study.model_seed if isinstance(study, Study) else 0,
                "nonce": secrets.token_hex(32),
            }
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
            summary = self._superlink_run(run_id)
            status: RunStatus
            if summary is None:
                status, reason = "failed", LOST_RUN_REASON
            elif summary.finished:
                status = "stopped" if summary.sub_status == "stopped" else "failed"
                reason = (
                    f"the SuperLink reports the run {summary.state} and no run.finished was "
                    "recorded; recorded when a stop was asked for"
                )
            else:
                status, reason = "stopped", "stopped by the coordinator's admin"
            entry = self._append_finished(uow, run, status, reason, model_hash=None)
            uow.seal()
            if (
                summary is not None
                and not summary.finished
                and not uow.effect(lambda: self.federation.stop_run(int(run_id)))
            ):
                raise Conflict(f"the SuperLink did not stop run {run_id}; it has ended")
        return uow.recorded(self._finished_record(run, entry.seq, entry.ts, status, reason))

    def record_ended_runs(self, actor: Actor) -> list[str]:
        """Record ``run.finished`` for runs the SuperLink reports ended but nobody recorded.

        A ServerApp killed without its SuperLink leaves its run ``running`` in the ledger;
        the SuperLink marks it failed once the ServerApp's heartbeat stops. A restarted
        SuperLink (with or without its host) no longer knows any earlier run: its state is
        in memory. Each such run is recorded ``failed`` (``stopped`` if it was stopped)
        with the rounds the ledger holds, so its budget is neither lost nor counted twice:
        only recorded rounds, with their receipts, are in the ledger.
        Returns the run ids recorded now.

        Raises
        ------
        TransportError
            If the SuperLink does not answer (nothing is recorded).
        """
        recorded: list[str] = []
        for run in self.reads.runs():
            if run.finished is not None:
                continue
            summary = self._superlink_run(run.run_id)
            if summary is not None and not summary.finished:
                continue
            if summary is None:
                status: RunStatus = "failed"
                reason = LOST_RUN_REASON
            else:
                status = "stopped" if summary.sub_status == "stopped" else "failed"
                reason = f"the SuperLink reports the run {summary.state}" + (
                    f" ({summary.details})" if summary.details else ""
                )
            reason += "; its ServerApp recorded no end, so the coordinator recorded it"
            try:
                with self._change(actor, "run.finish", run.run_id) as uow:
                    current = self._unfinished_run(uow, run.run_id)
                    self._append_finished(uow, current, status, reason[:2000], model_hash=None)
                    uow.checkpoint()
            except Conflict:
                continue  # its ServerApp (or another worker) recorded it meanwhile
            recorded.append(run.run_id)
        return recorded

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

    def record_analysis(
        self, actor: Actor, answered: Sequence[AnalysisAnswered]
    ) -> Recorded[list[int]]:
        """Record an analysis run's ``analysis.answered`` entries, then one checkpoint.

        One change for the run's answers (one transaction, one checkpoint signed after it),
        not one per query; returns their seqs, in order.

        Raises
        ------
        InputError, SignatureError
            If the ledger refuses one (a receipt not signed by its site's key): then none
            is recorded.
        """
        if not answered:
            raise InputError("an analysis run records at least one answer")
        with self._change(actor, "analysis.record", answered[0].run_id) as uow:
            seqs = [uow.append_root(one).seq for one in answered]
            uow.checkpoint()
        return uow.recorded(seqs)

    # --- explanations (#19) -----------------------------------------------------------
    def record_explanation(self, actor: Actor, explained: ModelExplained) -> Recorded[int]:
        """Record ``model.explained`` (its report is in the registry already), then a checkpoint.

        Raises
        ------
        NotFound
            If the model was never released.
        InputError, SignatureError
            If the ledger refuses it (a receipt not signed by its site's key).
        """
        with self._change(actor, "model.explain", explained.model_hash) as uow:
            if queries.model(uow.session, explained.model_hash) is None:
                raise NotFound(f"model {explained.model_hash} was never released")
            entry = uow.append_root(explained)
            uow.checkpoint()
        return uow.recorded(entry.seq)

    # --- retention of the round archive (#19) ------------------------------------------
    def prune_updates(
        self,
        actor: Actor,
        *,
        older_than_days: int,
        include_released: bool = False,
        dry_run: bool = False,
        now: datetime | None = None,
        per_entry: int = PRUNED_PER_ENTRY,
    ) -> tuple[PrunePlan, int | None]:
        """Delete the archived round files of runs that finished ``older_than_days`` ago.

        See :func:`veracity.server.round_archive.plan_prune` for what is eligible (a
        released model's run is kept unless ``include_released``). Unless ``dry_run`` or
        nothing is eligible, ``updates.pruned`` (runs, hashes, bytes) is recorded first and
        the files deleted after; returns the plan and the seq of its first ``updates.pruned``
        entry (``None``: nothing recorded). A prune of more than ``per_entry`` files is
        recorded in consecutive entries of at most ``per_entry`` hashes each (an entry holds
        at most 8 MiB). The plan is made under the ledger's write lock, so that a concurrent
        prune (another thread or API worker) never records a file this one recorded.

        Raises
        ------
        InputError
            If ``older_than_days`` is negative or the ledger refuses the entry.
        """
        if older_than_days < 0:
            raise InputError("older_than_days must be 0 or more")
        moment = (now or datetime.now(UTC)) - timedelta(days=older_than_days)
        before = format_timestamp(moment)
        store = UpdateStore(self.home.updates)
        plan = plan_prune(self.ledger, store, before=before, include_released=include_released)
        if dry_run or not (plan.removed or plan.leftover):
            return plan, None
        seqs: list[int] = []
        with self._change(actor, "updates.prune", f"before {before}") as uow:
            plan = plan_prune(self.ledger, store, before=before, include_released=include_released)
            for index, batch in enumerate(plan.batches(per_entry)):
                entry = uow.append_root(
                    UpdatesPruned(
                        older_than_days=older_than_days,
                        before=before,
                        include_released=include_released,
                        runs=list(batch.runs),
                        kept_released=list(plan.kept_released) if index == 0 else [],
                        removed=list(batch.removed),
                        removed_bytes=batch.removed_bytes,
                    )
                )
                seqs.append(entry.seq)
        for digest in (*plan.removed, *plan.leftover):  # recorded first: never unrecorded
            store.path(digest).unlink(missing_ok=True)
        return plan, (seqs[0] if seqs else None)

    def release(
        self, actor: Actor, released: ModelReleased, *, explained: ModelExplained | None = None
    ) -> Recorded[ModelRecord]:
        """Record ``model.released`` (the model is in the registry already).

        ``explained``: the explanation asked for at release (its report is in the card and
        the registry already); its ``model.explained`` is recorded right after
        ``model.released``, in the same change, then a checkpoint.

        Raises
        ------
        InputError
            If the ledger refuses a payload, or ``explained`` is of another model or run.
        """
        if explained is not None and (explained.model_hash, explained.run_id) != (
            released.model_hash,
            released.run_id,
        ):
            raise InputError("the explanation recorded at release must be of that model and run")
        with self._change(actor, "model.release", released.model_hash) as uow:
            entry = uow.append_root(released)
            if explained is not None:
                uow.append_root(explained)
                uow.checkpoint()
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

    # -------------------------------------------------------------- runs (read)
    def run_status(self, run_id: str) -> RunSummary | None:
        """What the SuperLink says of a run started here (None: it no longer knows it).

        A SuperLink keeps runs in memory: after a restart it knows none of the runs before.

        Raises
        ------
        NotFound
            If the run was not started through this coordinator.
        TransportError
            If the SuperLink does not answer.
        """
        self.reads.run(run_id)
        return self._superlink_run(run_id)

    def _superlink_run(self, run_id: str) -> RunSummary | None:
        """What the SuperLink says of ``run_id``; None once a restart made it forget the run.

        Raises
        ------
        TransportError
            If the SuperLink does not answer.
        """
        try:
            return self.federation.run(int(run_id))
        except NotFound:  # a restarted SuperLink keeps no runs (in-memory state)
            return None

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
