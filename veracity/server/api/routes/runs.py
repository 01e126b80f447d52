"""``/runs``: start a run of an approved study on the SuperLink, follow it, stop it (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from veracity.server.api.deps import (
    AdminDep,
    PageDep,
    ServiceDep,
    SettingsDep,
    action_id,
    declare_roles,
)
from veracity.server.api.problems import responses
from veracity.server.api.schemas import (
    RUN_ID_PATTERN,
    RoundListOut,
    RunListOut,
    RunLogsOut,
    RunOut,
    RunStartedOut,
    RunStartIn,
    RunStoppedOut,
    RunSummaryOut,
)

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
    """Submit the study's app bundle to the SuperLink; the run then waits for its sites."""
    recorded = service.start_run(principal, body.study_hash)
    return RunStartedOut(
        run_id=recorded.value.run_id,
        study_hash=body.study_hash,
        seq=recorded.seq,
        action_id=action_id(recorded),
    )


@router.get("", summary="Runs started here", responses=responses(401, 403, 422))
def list_runs(principal: AdminDep, service: ServiceDep, page: PageDep) -> RunListOut:
    """Every run started through this coordinator, with its recorded outcome."""
    runs, following = page.of(service.reads.runs())
    return RunListOut(items=[RunSummaryOut(**run.summary()) for run in runs], next_offset=following)


@router.get("/{run_id}", summary="A run's status", responses=responses(401, 403, 404, 422, 503))
def get_run(run_id: RunIdPath, principal: AdminDep, service: ServiceDep) -> RunOut:
    """The ledger's record of the run and what the SuperLink says about it."""
    run = service.reads.run(run_id)
    summary = service.run_status(run_id)
    return RunOut(
        **run.summary(), rounds_completed=run.rounds_recorded, superlink=summary.to_dict()
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
