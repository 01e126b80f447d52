"""``/runs``: start, follow and stop runs (admin); download a run's archive (auditor).

The archive (every round's received updates and model, by hash) is what ``veracity ledger
replay`` recomputes the aggregation from.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import IO, Annotated

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import StreamingResponse

from veracity.contracts.explanation import ReleaseExplanation
from veracity.errors import InputError, NotFound
from veracity.server.api.deps import (
    AdminDep,
    AuditDep,
    GlobalModelReaderDep,
    PageDep,
    ServiceDep,
    SettingsDep,
    action_id,
    declare_roles,
)
from veracity.server.api.problems import responses
from veracity.server.api.schemas import (
    HASH_PATTERN,
    RUN_ID_PATTERN,
    PruneIn,
    PruneOut,
    RoundListOut,
    RunListOut,
    RunLogsOut,
    RunOut,
    RunStartedOut,
    RunStartIn,
    RunStoppedOut,
    RunSummaryOut,
)
from veracity.server.api.tokens import Role
from veracity.tasks.study import Study

__all__ = ["router"]

router = APIRouter(prefix="/runs", tags=["runs"])
RunIdPath = Annotated[str, Path(pattern=RUN_ID_PATTERN)]


@router.post(
    "",
    status_code=201,
    summary="Start a run of an approved study (run.started)",
    responses=responses(400, 401, 403, 404, 409, 413, 422, 503),
)
def start_run(body: RunStartIn, principal: AdminDep, service: ServiceDep) -> RunStartedOut:
    """Submit the study's app bundle to the SuperLink; the run then waits for its sites.

    With ``explain_at_release`` the run asks its sites, once trained, to explain the final
    model (integrated gradients, charged to their budgets) before releasing it: the model
    card holds the report, and ``model.explained`` is recorded with ``model.released``.
    """
    asked = None
    if body.explain_at_release is not None:
        found = service.reads.study(body.study_hash)
        if not isinstance(found.study, Study):
            raise InputError("an explanation at release needs a training study")
        options = body.explain_at_release
        asked = ReleaseExplanation(
            steps=options.steps,
            clip_norm=options.clip_norm,
            epsilon=options.epsilon,
            delta=options.delta if options.delta is not None else found.study.dp.delta,
        )
    recorded = service.start_run(principal, body.study_hash, explain_at_release=asked)
    return RunStartedOut(
        run_id=recorded.value.run_id,
        study_hash=body.study_hash,
        seq=recorded.seq,
        action_id=action_id(recorded),
    )


@router.post(
    "/prune",
    summary="Delete old runs' archived updates (retention; updates.pruned)",
    responses=responses(400, 401, 403, 409, 422),
)
def prune_runs(body: PruneIn, principal: AdminDep, service: ServiceDep) -> PruneOut:
    """Delete the archived round files of runs that finished ``older_than_days`` ago.

    Runs whose model was released are kept (their replay needs them) unless
    ``include_released``; every deletion is recorded first as ``updates.pruned``;
    ``dry_run`` only says what would go.
    """
    plan, seq = service.prune_updates(
        principal,
        older_than_days=body.older_than_days,
        include_released=body.include_released,
        dry_run=body.dry_run,
    )
    return PruneOut(**plan.to_json(), dry_run=body.dry_run, seq=seq)


@router.get("", summary="Runs started here", responses=responses(401, 403, 422))
def list_runs(principal: AdminDep, service: ServiceDep, page: PageDep) -> RunListOut:
    """Every run started through this coordinator, with its recorded outcome."""
    runs, following = page.of(service.reads.runs())
    return RunListOut(items=[RunSummaryOut(**run.summary()) for run in runs], next_offset=following)


@router.get("/{run_id}", summary="A run's status", responses=responses(401, 403, 404, 422, 503))
def get_run(run_id: RunIdPath, principal: AdminDep, service: ServiceDep) -> RunOut:
    """The ledger's record of the run and what the SuperLink says about it.

    ``superlink`` is null once a restarted SuperLink no longer knows the run.
    """
    run = service.reads.run(run_id)
    summary = service.run_status(run_id)
    return RunOut(
        **run.summary(),
        rounds_completed=run.rounds_recorded,
        superlink=None if summary is None else summary.to_dict(),
    )


@router.get(
    "/{run_id}/rounds", summary="A run's completed rounds", responses=responses(401, 403, 404, 422)
)
def list_rounds(
    run_id: RunIdPath, principal: AdminDep, service: ServiceDep, page: PageDep
) -> RoundListOut:
    """The ``round.completed`` payloads (participants, receipts, metrics)."""
    service.reads.run(run_id)
    records, following = page.of(service.reads.rounds(run_id))
    return RoundListOut(items=[record.to_json() for record in records], next_offset=following)


@router.get(
    "/{run_id}/logs", summary="A run's log lines", responses=responses(401, 403, 404, 422, 503)
)
def run_logs(
    run_id: RunIdPath,
    principal: AdminDep,
    service: ServiceDep,
    settings: SettingsDep,
    after: Annotated[float, Query(ge=0, le=1e11, description="Timestamp to read after.")] = 0.0,
    wait: Annotated[float, Query(ge=0, le=60, description="Seconds to wait for lines.")] = 1.0,
) -> RunLogsOut:
    """Log text since ``after``, read for at most ``wait`` seconds (capped by the server)."""
    text, latest = service.run_logs(run_id, after=after, wait=min(wait, settings.log_wait_max))
    return RunLogsOut(run_id=run_id, text=text, latest=latest)


@router.get(
    "/{run_id}/archive",
    summary="A run's archive: every round's updates and model, by hash",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "A zip of index.json and weights/<hash>.npz; replay it with "
            "`veracity ledger replay --bundle FILE --archive DIR --trust root.pub`.",
            "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
        },
        **responses(401, 403, 404, 422),
    },
)
def run_archive(run_id: RunIdPath, principal: AuditDep, service: ServiceDep) -> StreamingResponse:
    """The updates each round aggregated (DP-protected at their site) and its model.

    The zip is written to a temporary file (unlinked at once; this runs in the server's
    thread pool, off the event loop), one weights file at a time, and streamed back from
    it in chunks: memory stays at one weights file whatever the archive's size.
    """
    from veracity.server.round_archive import UpdateStore, write_archive_zip

    service.reads.run(run_id)  # 404 for a run this coordinator never started
    spool = tempfile.TemporaryFile(dir=service.home.data_dir)  # noqa: SIM115 - closed by _chunks
    try:
        write_archive_zip(service.ledger, UpdateStore(service.home.updates), run_id, spool)
        size = spool.tell()
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return StreamingResponse(
        _chunks(spool),
        media_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="veracity-run-{run_id}.zip"',
            "Content-Length": str(size),
        },
    )


def _chunks(spool: IO[bytes], size: int = 1 << 20) -> Iterator[bytes]:
    """The file's content in chunks of ``size`` bytes; closes (and so frees) it at the end."""
    with spool:
        while chunk := spool.read(size):
            yield chunk


@router.get(
    "/{run_id}/models/{model_hash}",
    summary="A run's global model, by hash (for a site's replay)",
    response_class=Response,
    responses={
        200: {
            "description": "The weights (veracity.tasks.weights format); their hash is the "
            "model hash. X-Veracity-Round and X-Veracity-Seq name the ledger entry that names "
            "it (round 0: the initial model, named by run.started).",
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        },
        **responses(401, 403, 404, 409, 422),
    },
)
def run_global_model(
    run_id: RunIdPath,
    model_hash: Annotated[str, Path(pattern=HASH_PATTERN)],
    principal: GlobalModelReaderDep,
    service: ServiceDep,
) -> Response:
    """A global model the run's rounds started from (the initial model or a round's aggregate).

    Only hashes the ledger names as the run's global models are served, never a site's
    update, nor the last round's aggregate (the model: its weights are an administrator's
    recorded download); a site token gets them only for runs its site took part in or whose
    study it had approved when the run started. ``veracity site
    replay --server URL --token T`` fetches a global model the site no longer keeps and
    checks it against the hash it recorded.
    """
    from veracity.server.round_archive import UpdateStore, global_model

    run = service.reads.run(run_id)  # 404 for a run this coordinator never started
    study = service.reads.study(run.study_hash).study
    if not isinstance(study, Study):
        raise NotFound(f"run {run_id} trained no model")
    found = global_model(
        service.ledger,
        UpdateStore(service.home.updates),
        run_id,
        model_hash,
        initial=study.model_spec.initial_weights(study.model_seed),
        site=(principal.site or "") if principal.role is Role.SITE else None,
        approved={
            site
            for site, decision in service.reads.approvals(run.study_hash).items()
            if decision.seq < run.started_seq
        },
    )
    return Response(
        content=found.data,
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{model_hash}.npz"',
            "X-Veracity-Model-Hash": found.model_hash,
            "X-Veracity-Round": str(found.round),
            "X-Veracity-Seq": str(found.seq),
        },
    )


@router.post(
    "/{run_id}/stop",
    summary="Stop a run (run.finished: stopped)",
    responses=responses(401, 403, 404, 409, 422, 503),
)
def stop_run(run_id: RunIdPath, principal: AdminDep, service: ServiceDep) -> RunStoppedOut:
    """Ask the SuperLink to stop the run; record ``run.finished`` unless it has one."""
    recorded = service.stop_run(principal, run_id)
    return RunStoppedOut(
        run_id=run_id, stopped=True, seq=recorded.seq, action_id=action_id(recorded)
    )


declare_roles(router)
