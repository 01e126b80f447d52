"""``/analyses``: run an approved analysis study and read its answers (admin, researcher).

A run of an analysis study asks every approving site its queries once over Flower's query
messages; the answers are the ``analysis.answered`` entries of that run (combined figures,
standard errors, 95% intervals and every site's signed receipt).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from veracity.contracts.analysis import AnalysisStudy
from veracity.errors import InputError
from veracity.server.api.deps import AnalystDep, ServiceDep, action_id, declare_roles
from veracity.server.api.problems import responses
from veracity.server.api.schemas import (
    HASH_PATTERN,
    RUN_ID_PATTERN,
    AnalysisResultsOut,
    AnalysisRunIn,
    RunStartedOut,
)

__all__ = ["router"]

router = APIRouter(prefix="/analyses", tags=["analyses"])
StudyPath = Annotated[str, Path(pattern=HASH_PATTERN)]
RunIdPath = Annotated[str, Path(pattern=RUN_ID_PATTERN)]


@router.post(
    "",
    status_code=201,
    summary="Run an approved analysis study (run.started)",
    responses=responses(400, 401, 403, 404, 409, 413, 422, 503),
)
def run_analysis(body: AnalysisRunIn, principal: AnalystDep, service: ServiceDep) -> RunStartedOut:
    """Submit a run that asks the study's queries of every approving site."""
    if not isinstance(service.reads.study(body.study_hash).study, AnalysisStudy):
        raise InputError(f"study {body.study_hash} is a training study, not an analysis")
    recorded = service.start_run(principal, body.study_hash)
    return RunStartedOut(
        run_id=recorded.value.run_id,
        study_hash=body.study_hash,
        seq=recorded.seq,
        action_id=action_id(recorded),
    )


@router.get(
    "/{study_hash}/runs/{run_id}",
    summary="An analysis run's state and answers",
    responses=responses(401, 403, 404, 422),
)
def analysis_results(
    study_hash: StudyPath, run_id: RunIdPath, principal: AnalystDep, service: ServiceDep
) -> AnalysisResultsOut:
    """The run's ``run.finished`` (``null`` while it runs) and its ``analysis.answered``."""
    run = service.reads.run(run_id)
    if run.study_hash != study_hash:
        raise InputError(f"run {run_id} is not a run of study {study_hash}")
    answers = [
        entry.payload
        for entry in service.ledger.iter_entries(kind="analysis.answered")
        if entry.payload["run_id"] == run_id and entry.payload["study_hash"] == study_hash
    ]
    finished = None if run.finished is None else run.finished.to_json(run_id, study_hash)
    return AnalysisResultsOut(
        study_hash=study_hash, run_id=run_id, finished=finished, answers=answers
    )


declare_roles(router)
