"""``/runs``: start, follow and stop runs (admin); download a run's archive (auditor).

The archive (every round's received updates and model, by hash) is what ``veracity ledger
replay`` recomputes the aggregation from.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import IO, Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse

from veracity.server.api.deps import (
    AdminDep,
    AuditDep,
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
