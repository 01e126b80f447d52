"""One run of a study, from the ServerApp's side: checks, rounds, release, record.

The Flower adapter (:mod:`veracity.server.flower_app`) hands a Grid and the run config to
:func:`execute_run`; everything else is here. Before any training it checks that the run
was started through the coordinator (``run.started`` is in the ledger), that the code
running is the code the sites approved, and which connected nodes belong to approving
sites (the node's registered name and SuperNode key must match the site's enrolment). It
ends every run with exactly one ``run.finished`` saying why.

With the study's client-level DP (``study.central_dp``), a run that reaches its
``max_epsilon`` before its last round ends ``stopped``: the model of the last completed
round (every round of it within the budget, and already sent to the sites) is released
with ``run.finished`` naming it and the reason; if not even the first round fits, nothing
is released.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from flwr.app import ConfigRecord

from veracity.contracts.analysis import AnalysisStudy
from veracity.contracts.base import SiteStatement
from veracity.contracts.events import KINDS, RunStatus
from veracity.contracts.explanation import ExplanationTerms, ReleaseExplanation
from veracity.contracts.messages import train_config
from veracity.core.canonical import canonical_json, parse_json_object
from veracity.errors import Conflict, VeracityError
from veracity.flower_serde import weights_from_record, weights_to_record
from veracity.server.analysis_run import execute_analysis
from veracity.server.coordinator.service import CoordinatorService
from veracity.server.coordinator.site_software import record_site_software
from veracity.server.coordinator.unit_of_work import SERVER_APP
from veracity.server.explain_run import execute_explanation, gather_explanation
from veracity.server.explanation import GatheredExplanation
from veracity.server.polling_grid import PollingGrid
from veracity.server.release import release_model
from veracity.server.round_archive import UpdateStore
from veracity.server.site_hello import ask_site_software
from veracity.server.strategy import AuditedStrategy, RoundOutcome, aggregation_strategy
from veracity.tasks.spec import ModelSpec
from veracity.tasks.study import AnyStudy, Study
from veracity.tasks.weights import Weights, weights_hash

__all__ = ["RunSettings", "execute_run", "match_nodes_to_sites"]

log = logging.getLogger(__name__)

#: Longest wait for the nodes' ``query.hello`` answers at the start of a run (seconds).
HELLO_TIMEOUT = 10.0


@dataclass(frozen=True)
class RunSettings:
    """The run config the coordinator submitted with the run."""

    run_id: str
    study_hash: str
    fab_hash: str
    round_timeout: float
    node_wait: float
    started_timeout: float = 30.0
    #: An explanation run's terms (JSON text of ``ExplanationTerms``); empty: train.
    explain: str = ""
    #: A training run's explanation at release (JSON text of ``ReleaseExplanation``).
    explain_at_release: str = ""


def _openssh_key_matches(enrolled_openssh: str, node_public_key_pem: bytes) -> bool:
    from cryptography.hazmat.primitives import serialization

    try:
        enrolled = serialization.load_ssh_public_key(enrolled_openssh.encode())
        connected = serialization.load_pem_public_key(node_public_key_pem)
    except (ValueError, TypeError):
        return False
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(enrolled.public_bytes(*raw) == connected.public_bytes(*raw))


def match_nodes_to_sites(
    coordinator: CoordinatorService, grid: PollingGrid, approved: set[str]
) -> dict[int, str]:
    """Map connected nodes to approving sites.

    A node counts for a site when its registered name is the site's and the SuperNode key
    it authenticated with is the one the site enrolled.
    """
    matched: dict[int, str] = {}
    for node in grid.get_nodes():
        if node.name not in approved:
            continue
        enrolled = coordinator.reads.site(node.name).supernode_public_key or ""
        if node.public_key and not _openssh_key_matches(enrolled, node.public_key):
            log.warning("node %s claims %s with another key; ignored", node.node_id, node.name)
            continue
        matched[int(node.node_id)] = node.name
    return matched


class _Finished(Exception):
    """Ends a run early with a recorded status."""

    def __init__(self, status: RunStatus, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def _wait_for_sites(
    coordinator: CoordinatorService,
    grid: PollingGrid,
    study: AnyStudy,
    approved: set[str],
    wait: float,
) -> dict[int, str]:
    deadline = time.monotonic() + wait
    while True:
        matched = match_nodes_to_sites(coordinator, grid, approved)
        if len(matched) == len(approved) or (
            len(matched) >= study.min_sites and time.monotonic() >= deadline
        ):
            return matched
        if time.monotonic() >= deadline:
            raise _Finished(
                "insufficient_sites",
                f"{len(matched)} approving site(s) connected within {wait:.0f} s; "
                f"the study needs {study.min_sites}",
            )
        time.sleep(0.5)


def _record_site_software(
    coordinator: CoordinatorService,
    grid: PollingGrid,
    sites_by_node: dict[int, str],
    settings: RunSettings,
) -> None:
    """Keep what software each matched node runs (for the console; never fails the run)."""
    try:
        reports = ask_site_software(
            grid,
            sites_by_node,
            run_id=settings.run_id,
            timeout=min(settings.round_timeout, HELLO_TIMEOUT),
        )
        record_site_software(coordinator.home.data_dir, reports)
    except (OSError, VeracityError) as err:
        log.warning("site software of run %s not recorded: %s", settings.run_id, err)


def _write_timing(
    coordinator: CoordinatorService, run_id: str, began: float, outcomes: list[RoundOutcome]
) -> None:
    """Keep the run's timing marks beside its seeds (for benchmarks; not in the ledger)."""
    runs = coordinator.home.runs
    runs.mkdir(exist_ok=True)
    rounds = [
        {
            "round": o.server_round,
            **o.timing,
            "train_seconds_max": o.metrics.get("train-seconds-max"),
        }
        for o in outcomes
    ]
    document = {"run_id": run_id, "main_started": began, "rounds": rounds}
    (runs / f"{run_id}.timing.json").write_text(json.dumps(document, indent=2), encoding="utf-8")


def _finish(
    coordinator: CoordinatorService,
    run_id: str,
    study_hash: str,
    status: RunStatus,
    reason: str,
    rounds_completed: int,
    model_hash: str | None = None,
) -> None:
    """Record ``run.finished``, unless an admin's stop recorded it first (then say so)."""
    try:
        coordinator.finish_run(
            SERVER_APP,
            run_id,
            study_hash,
            status=status,
            reason=reason,
            rounds_completed=rounds_completed,
            model_hash=model_hash,
        )
    except Conflict:
        log.warning("run %s already has its run.finished (stopped); this end (%s) is not recorded",
                    run_id, reason)  # fmt: skip


def _run_analysis(
    coordinator: CoordinatorService,
    grid: PollingGrid,
    settings: RunSettings,
    study: AnalysisStudy,
    sites_by_node: dict[int, str],
) -> None:
    """An analysis study's run: every query asked once, ended with ``run.finished``."""

    def record_refusal(site: str, kind: str, payload: dict[str, object], signature: str) -> None:
        try:
            coordinator.record_statement(SERVER_APP, kind, site, payload, signature)
        except Conflict:
            log.info("%s of %s is already in the ledger", kind, site)

    outcome = execute_analysis(
        coordinator,
        grid,
        study,
        run_id=settings.run_id,
        sites_by_node=sites_by_node,
        timeout=settings.round_timeout,
        record_refusal=record_refusal,
    )
    answered = len(outcome.answered)
    reason = f"{answered} of {len(study.queries)} query(ies) answered"
    if outcome.unanswered:
        reason += "; not answered: " + "; ".join(
            f"{query}: {why}" for query, why in sorted(outcome.unanswered.items())
        )
    status: RunStatus = "completed" if answered else "insufficient_sites"
    _finish(coordinator, settings.run_id, study.study_hash, status, reason[:10_000], answered)


def _run_explanation(
    coordinator: CoordinatorService,
    grid: PollingGrid,
    settings: RunSettings,
    study: Study,
    sites_by_node: dict[int, str],
) -> None:
    """An explanation run: the sites explain the released model, ended with ``run.finished``."""
    terms = ExplanationTerms.parse(
        parse_json_object(settings.explain, what="explanation terms"), what="explanation terms"
    )
    if terms.study_hash != study.study_hash:
        raise _Finished("failed", "the explanation's terms name another study")

    def record_refusal(site: str, kind: str, payload: dict[str, object], signature: str) -> None:
        try:
            coordinator.record_statement(SERVER_APP, kind, site, payload, signature)
        except Conflict:
            log.info("%s of %s is already in the ledger", kind, site)

    outcome = execute_explanation(
        coordinator,
        grid,
        study,
        terms,
        run_id=settings.run_id,
        sites_by_node=sites_by_node,
        timeout=settings.round_timeout,
        record_refusal=record_refusal,
    )
    if outcome.report_hash is None:
        raise _Finished(
            "insufficient_sites",
            ("explanation not recorded: " + "; ".join(outcome.refused))[:10_000],
        )
    reason = f"model {terms.model_hash} explained by {len(outcome.sites)} site(s)"
    if outcome.refused:
        reason += "; not contributing: " + "; ".join(outcome.refused)
    _finish(coordinator, settings.run_id, study.study_hash, "completed", reason[:10_000], 0)


@dataclass(frozen=True)
class _Final:
    """The final model as an explanation needs it (the registry stores the same features)."""

    spec: ModelSpec
    features: tuple[str, ...]
    weights: Weights


def _explain_at_release(
    coordinator: CoordinatorService,
    grid: PollingGrid,
    settings: RunSettings,
    study: Study,
    sites_by_node: dict[int, str],
    final: Weights,
) -> GatheredExplanation:
    """Ask the sites to explain the final model before it is released (its card gets the report)."""
    asked = ReleaseExplanation.parse(
        parse_json_object(settings.explain_at_release, what="explanation at release"),
        what="explanation at release",
    )

    def record_refusal(site: str, kind: str, payload: dict[str, object], signature: str) -> None:
        try:
            coordinator.record_statement(SERVER_APP, kind, site, payload, signature)
        except Conflict:
            log.info("%s of %s is already in the ledger", kind, site)

    return gather_explanation(
        coordinator,
        grid,
        study,
        asked.for_model(weights_hash(final), study.study_hash),
        _Final(study.model_spec, tuple(study.features), final),
        run_id=settings.run_id,
        sites_by_node=sites_by_node,
        timeout=settings.round_timeout,
        record_refusal=record_refusal,
    )


def execute_run(coordinator: CoordinatorService, grid: PollingGrid, settings: RunSettings) -> None:
    """Run the study ``settings.study_hash`` as Flower run ``settings.run_id``.

    Raises
    ------
    Exception
        Any error is re-raised after ``run.finished`` (failed, with the reason) is
        recorded, so Flower marks the run failed too and no run ends unrecorded.
    """
    study_hash, run_id = settings.study_hash, settings.run_id
    rounds_done = 0
    began = time.time()
    try:
        started = coordinator.reads.wait_run(run_id, timeout=settings.started_timeout)
        if started is None:
            raise _Finished("failed", "run was not started through the coordinator")
        if started.study_hash != study_hash:
            raise _Finished("failed", "run config names another study than run.started")
        study = coordinator.reads.study(study_hash).study
        if settings.fab_hash != study.code_hash:
            raise _Finished("failed", "the app bundle is not the code the sites approved")
        approvals = coordinator.reads.approvals(study_hash)
        if len(approvals) < study.min_sites:
            raise _Finished(
                "insufficient_sites",
                f"{len(approvals)} site(s) approved; the study needs {study.min_sites}",
            )
        sites_by_node = _wait_for_sites(
            coordinator, grid, study, set(approvals), settings.node_wait
        )
        _record_site_software(coordinator, grid, sites_by_node, settings)

        if isinstance(study, AnalysisStudy):
            _run_analysis(coordinator, grid, settings, study, sites_by_node)
            return
        if settings.explain:
            _run_explanation(coordinator, grid, settings, study, sites_by_node)
            return

        kept = UpdateStore(coordinator.home.updates)

        def record_round(outcome: RoundOutcome) -> None:
            if outcome.aggregated_model_hash is None or outcome.aggregated is None:
                return  # an aborted round: run.finished will say why
            # Kept before the round is recorded: every recorded round can be archived.
            for update in outcome.updates.values():
                kept.put(update)
            kept.put(outcome.aggregated)
            coordinator.record_round(
                SERVER_APP, outcome.payload(run_id=run_id, study_hash=study_hash)
            )

        def record_refusal(site: str, statement: SiteStatement, signature: str) -> None:
            if statement.KIND not in KINDS:  # only ledger event kinds become entries
                return
            try:
                coordinator.record_statement(
                    SERVER_APP, statement.KIND, site, statement.to_json(), signature
                )
            except Conflict:
                # A site answers a repeated request with the statement it already signed.
                log.info("%s of %s is already in the ledger", statement.KIND, site)

        # Client-level DP composes across the study's runs: earlier releases count.
        released_before = (
            [
                len(entry.payload["participants"])
                for entry in coordinator.ledger.iter_entries(kind="round.completed")
                if entry.payload["study_hash"] == study_hash
            ]
            if study.central_dp is not None
            else []
        )
        strategy = AuditedStrategy(
            aggregation_strategy(
                sites=len(sites_by_node),
                central_dp=study.central_dp,
                population=len(study.epsilon_caps),
                released_before=released_before,
            ),
            study_hash=study_hash,
            run_id=run_id,
            min_sites=study.min_sites,
            sites_by_node=sites_by_node,
            site_key=coordinator.site_key,
            log_id=bytes.fromhex(coordinator.ledger.log_id),
            record_round=record_round,
            record_refusal=record_refusal,
            node_wait=settings.node_wait,
        )
        initial = study.model_spec.initial_weights(study.model_seed)
        config = train_config(
            study=canonical_json(study.to_document()).decode("utf-8"),
            study_hash=study_hash,
            run_id=run_id,
            code_hash=settings.fab_hash,
        )
        result = strategy.start(
            grid=grid,
            initial_arrays=weights_to_record(initial),
            num_rounds=study.rounds,
            timeout=settings.round_timeout,
            train_config=ConfigRecord(config),
        )
        rounds_done = sum(1 for o in strategy.outcomes if o.aggregated_model_hash is not None)
        _write_timing(coordinator, run_id, began, strategy.outcomes)
        if strategy.abort_reason is not None:
            raise _Finished("insufficient_sites", strategy.abort_reason)
        status: RunStatus = "completed"
        reason = f"{rounds_done} round(s) completed"
        if strategy.budget_exhausted is not None:
            if rounds_done == 0:
                raise _Finished("stopped", f"{strategy.budget_exhausted}; no model released")
            status = "stopped"
            reason = (
                f"{strategy.budget_exhausted}; {rounds_done} of {study.rounds} round(s) "
                f"completed, the model of round {rounds_done} is released"
            )
        final = weights_from_record(result.arrays)
        explained = None
        if settings.explain_at_release:
            explained = _explain_at_release(
                coordinator, grid, settings, study, sites_by_node, final
            )
            if explained.report is None:
                reason += "; explanation at release not recorded: " + "; ".join(explained.refused)
        model_hash = release_model(
            coordinator, study, run_id, final, strategy.outcomes, explanation=explained
        )
        reason = reason[:10_000]
        _finish(coordinator, run_id, study_hash, status, reason, rounds_done, model_hash)
    except _Finished as finished:
        log.warning("run %s ends: %s", run_id, finished.reason)
        _finish(coordinator, run_id, study_hash, finished.status, finished.reason, rounds_done)
    except VeracityError as err:
        _finish(coordinator, run_id, study_hash, "failed", str(err), rounds_done)
        raise
    except Exception as err:  # the ServerApp's top level: every run ends with run.finished
        log.exception("run %s failed", run_id)
        reason = f"internal error: {type(err).__name__}: {err}"
        _finish(
            coordinator, run_id, study_hash, "failed", reason, len(coordinator.reads.rounds(run_id))
        )
        raise
