"""``/ledger``: entries, verification, proofs, checkpoints, export and provenance.

Readable by auditors and admins; only an admin signs a new checkpoint.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from veracity.contracts.events import KINDS, NAME_PATTERN
from veracity.errors import Conflict, InputError, NotFound
from veracity.ledger.checkpoint import Checkpoint
from veracity.ledger.entry import Entry
from veracity.server.api.deps import (
    AdminDep,
    AuditDep,
    ServiceDep,
    SettingsDep,
    clamp_limit,
    declare_roles,
)
from veracity.server.api.jobs import LedgerJobs
from veracity.server.api.problems import responses
from veracity.server.api.schemas import (
    HASH_PATTERN,
    CheckpointListOut,
    CheckpointOut,
    ConsistencyOut,
    EntryOut,
    EntryPageOut,
    InclusionOut,
    LedgerInfoOut,
    LedgerJobIn,
    LedgerJobOut,
    VerifyOut,
)
from veracity.server.coordinator.audit_log import check_tail_request

__all__ = ["router"]

router = APIRouter(prefix="/ledger", tags=["ledger"])

#: Largest sequence number or tree size a request may name (JSON-safe integers).
MAX_SEQ = 2**53
Seq = Annotated[int, Query(ge=0, le=MAX_SEQ)]
Size = Annotated[int, Query(ge=1, le=MAX_SEQ)]
Limit = Annotated[int, Query(ge=1, le=10_000, description="Page size (capped by the server).")]
KindFilter = Annotated[str | None, Query(pattern=r"^[a-z]+(\.[a-z]+)?$", max_length=64)]
ActorFilter = Annotated[str | None, Query(pattern=NAME_PATTERN)]
RootSignatures = Annotated[
    Literal["all", "tail"],
    Query(description="'tail' skips root signatures a checkpoint already covers."),
]
NoWitnesses = Annotated[
    bool,
    Query(description="With 'tail': trust the log key's checkpoint, which no witness checked."),
]
JobIdPath = Annotated[str, Path(pattern=r"^[0-9a-f]{24}$")]


def _jobs(request: Request) -> LedgerJobs:
    jobs: LedgerJobs = request.app.state.ledger_jobs
    return jobs


JobsDep = Annotated[LedgerJobs, Depends(_jobs)]


def entry_out(entry: Entry) -> EntryOut:
    """The JSON form of an entry, with its exact hashed bytes."""
    return EntryOut(**entry.to_json(), body=entry.body.decode("utf-8"))


def checkpoint_out(checkpoint: Checkpoint | None) -> CheckpointOut | None:
    """The JSON form of a checkpoint (or None)."""
    return None if checkpoint is None else CheckpointOut(**checkpoint.to_json())


@router.get("", summary="The log's identity, size and root key", responses=responses(401, 403))
def ledger_info(principal: AuditDep, service: ServiceDep) -> LedgerInfoOut:
    """Log id, size, the coordinator's root public key and the newest checkpoint."""
    return LedgerInfoOut(**service.audit_log.info())


@router.get("/entries", summary="Entries, paged", responses=responses(401, 403, 422))
def list_entries(
    principal: AuditDep,
    service: ServiceDep,
    settings: SettingsDep,
    since: Seq = 0,
    limit: Limit = 100,
    kind: KindFilter = None,
    actor: ActorFilter = None,
) -> EntryPageOut:
    """Entries with ``seq >= since`` in order, optionally of one kind or actor."""
    if kind is not None and kind not in KINDS:
        raise InputError(f"no event kind {kind!r}")
    entries, following = service.audit_log.entries(
        since=since, limit=clamp_limit(limit, settings), kind=kind, actor=actor
    )
    return EntryPageOut(entries=[entry_out(e) for e in entries], next_since=following)


@router.get("/entries/{seq}", summary="One entry", responses=responses(401, 403, 404, 422))
def get_entry(
    seq: Annotated[int, Path(ge=0, le=MAX_SEQ)], principal: AuditDep, service: ServiceDep
) -> EntryOut:
    """The entry at ``seq``."""
    return entry_out(service.ledger.get(seq))


@router.get("/verify", summary="Verify the whole ledger", responses=responses(401, 403, 422))
async def verify(
    principal: AuditDep,
    service: ServiceDep,
    jobs: JobsDep,
    root_signatures: RootSignatures = "all",
    no_witnesses: NoWitnesses = False,
) -> VerifyOut:
    """Recompute every hash, link, signature, receipt and checkpoint against the root key.

    ``tail`` needs ``no_witnesses=true`` (the server holds no witness policy): 422 without.
    It waits for a free ledger job slot without holding a request thread; for a large ledger,
    ``POST /ledger/jobs`` answers at once instead.
    """
    check = functools.partial(
        service.audit_log.verify, root_signatures=root_signatures, no_witnesses=no_witnesses
    )
    check_tail_request(root_signatures, no_witnesses)  # before taking a job slot
    report: dict[str, Any] = await jobs.run_now(check)
    return VerifyOut(**report)


@router.post(
    "/jobs",
    status_code=202,
    summary="Start a verification or an export in the background",
    responses=responses(401, 403, 409, 422),
)
async def start_job(
    body: LedgerJobIn, principal: AuditDep, service: ServiceDep, jobs: JobsDep
) -> LedgerJobOut:
    """Queue the job and answer at once; ``GET /ledger/jobs/{id}`` follows it."""
    audit_log = service.audit_log
    mode = body.root_signatures
    if body.kind == "verify":
        check_tail_request(mode, body.no_witnesses)  # refused at once, not in the job

    def work(directory: FilePath) -> dict[str, Any]:
        if body.kind == "verify":
            report: dict[str, Any] = audit_log.verify(
                root_signatures=mode, no_witnesses=body.no_witnesses
            )
            return report
        _path, summary = audit_log.export_bundle(directory)
        return {k: summary[k] for k in ("entries", "checkpoints", "bytes", "sha256")}

    job = jobs.start(body.kind, principal.name, work)
    return LedgerJobOut(**job.to_json())


@router.get(
    "/jobs/{job_id}", summary="A background ledger job", responses=responses(401, 403, 404, 422)
)
def get_job(job_id: JobIdPath, principal: AuditDep, jobs: JobsDep) -> LedgerJobOut:
    """Its status and, once done, the report or the bundle's size and SHA-256."""
    return LedgerJobOut(**jobs.get(job_id).to_json())


@router.get(
    "/jobs/{job_id}/bundle",
    summary="The bundle an export job wrote",
    response_class=FileResponse,
    responses={
        200: {
            "description": "The bundle (JSON Lines); verify it with `veracity ledger verify`.",
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        },
        **responses(401, 403, 404, 409, 422),
    },
)
def job_bundle(job_id: JobIdPath, principal: AuditDep, jobs: JobsDep) -> FileResponse:
    """The file of a finished export job (kept until the job is evicted)."""
    job = jobs.get(job_id)
    if job.kind != "export":
        raise NotFound(f"ledger job {job_id} is a {job.kind}, it wrote no bundle")
    bundle = jobs.bundle(job)
    if bundle is None or job.result is None:
        raise Conflict(f"ledger job {job_id} is {job.status}; its bundle is not ready")
    return FileResponse(
        bundle,
        media_type="application/x-ndjson",
        filename=f"veracity-ledger-{job.result['entries']}.jsonl",
        headers={"X-Bundle-SHA256": str(job.result["sha256"])},
    )


@router.get(
    "/proofs/inclusion", summary="Inclusion proof of an entry", responses=responses(401, 403, 422)
)
def inclusion_proof(
    principal: AuditDep,
    service: ServiceDep,
    seq: Seq,
    tree_size: Annotated[int | None, Query(ge=1, le=MAX_SEQ)] = None,
) -> InclusionOut:
    """RFC 9162 proof that entry ``seq`` is in the tree of ``tree_size`` entries.

    ``tree_size`` defaults to the newest checkpoint covering the entry, so the proof can
    be checked against a signed root; that checkpoint is returned with it.
    """
    proof = service.ledger.inclusion_proof(seq, tree_size)
    return InclusionOut(
        proof=proof.to_json(),
        checkpoint=checkpoint_out(service.audit_log.checkpoint_for(proof.tree_size)),
    )


@router.get(
    "/proofs/consistency",
    summary="Consistency proof between two tree sizes",
    responses=responses(401, 403, 422),
)
def consistency_proof(
    principal: AuditDep,
    service: ServiceDep,
    old_size: Size,
    new_size: Annotated[int | None, Query(ge=1, le=MAX_SEQ)] = None,
) -> ConsistencyOut:
    """RFC 9162 proof that the tree of ``new_size`` (default: all) extends ``old_size``."""
    proof = service.ledger.consistency_proof(old_size, new_size)
    return ConsistencyOut(
        proof=proof.to_json(),
        old_checkpoint=checkpoint_out(service.audit_log.checkpoint_for(proof.old_size)),
        new_checkpoint=checkpoint_out(service.audit_log.checkpoint_for(proof.new_size)),
    )


@router.get("/checkpoints", summary="Signed checkpoints", responses=responses(401, 403, 422))
def list_checkpoints(
    principal: AuditDep,
    service: ServiceDep,
    settings: SettingsDep,
    since_size: Seq = 0,
    limit: Limit = 100,
) -> CheckpointListOut:
    """Checkpoints with ``tree_size >= since_size``, oldest first."""
    size = clamp_limit(limit, settings)
    listed = service.audit_log.checkpoints(since_size=since_size, limit=size + 1)
    following = listed[size - 1].tree_size + 1 if len(listed) > size else None
    items = [CheckpointOut(**c.to_json()) for c in listed[:size]]
    return CheckpointListOut(items=items, next_since_size=following)


@router.get(
    "/checkpoints/latest", summary="The newest checkpoint", responses=responses(401, 403, 404)
)
def latest_checkpoint(principal: AuditDep, service: ServiceDep) -> CheckpointOut:
    """The newest root-signed checkpoint."""
    latest = service.ledger.latest_checkpoint()
    if latest is None:
        raise NotFound("no checkpoint has been signed yet")
    return CheckpointOut(**latest.to_json())


@router.post(
    "/checkpoints",
    status_code=201,
    summary="Sign a checkpoint now (admin)",
    responses=responses(401, 403),
)
def sign_checkpoint(principal: AdminDep, service: ServiceDep) -> CheckpointOut:
    """Sign a checkpoint of the whole ledger and record it (as a ``checkpoint`` entry)."""
    recorded = service.checkpoint(principal)
    return CheckpointOut(**recorded.value.to_json())


@router.get(
    "/export",
    summary="Export the ledger as an offline-verifiable bundle",
    response_class=FileResponse,
    responses={
        200: {
            "description": "The bundle (JSON Lines); verify it with `veracity ledger verify`.",
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        },
        **responses(401, 403),
    },
)
async def export_bundle(principal: AuditDep, service: ServiceDep, jobs: JobsDep) -> FileResponse:
    """Every entry, checkpoint and key event in one file (removed once sent).

    It waits for a free ledger job slot without holding a request thread; for a large ledger,
    ``POST /ledger/jobs`` with ``{"kind": "export"}`` answers at once instead.
    """
    directory = FilePath(tempfile.mkdtemp(prefix="veracity-export-"))
    try:
        path, summary = await jobs.run_now(
            functools.partial(service.audit_log.export_bundle, directory)
        )
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return FileResponse(
        path,
        media_type="application/x-ndjson",
        filename=f"veracity-ledger-{summary['entries']}.jsonl",
        headers={"X-Bundle-SHA256": summary["sha256"]},
        background=BackgroundTask(shutil.rmtree, directory, ignore_errors=True),
    )


@router.get(
    "/provenance/{model_hash}",
    summary="W3C PROV-JSON lineage of a model",
    responses=responses(401, 403, 404, 422),
)
def provenance(
    model_hash: Annotated[str, Path(pattern=HASH_PATTERN)],
    principal: AuditDep,
    service: ServiceDep,
) -> dict[str, Any]:
    """Sites, datasets, study, run, rounds and release of the model, from the entries."""
    document: dict[str, Any] = service.ledger.provenance(model_hash)
    return document


declare_roles(router)
