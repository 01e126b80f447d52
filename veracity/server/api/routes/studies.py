"""``/studies``: the admin proposes; sites named in a study read it and sign their decision."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request

from veracity.errors import InputError
from veracity.server.api.deps import (
    AdminDep,
    AdminOrSiteDep,
    PageDep,
    ServiceDep,
    SiteDep,
    action_id,
    declare_roles,
    forbid,
    own_site,
)
from veracity.server.api.problems import responses
from veracity.server.api.schemas import (
    HASH_PATTERN,
    DecisionIn,
    RecordedOut,
    StudyListOut,
    StudyOut,
    StudyProposedOut,
    StudySummaryOut,
)
from veracity.server.api.tokens import Role

__all__ = ["router"]

router = APIRouter(prefix="/studies", tags=["studies"])
StudyHashPath = Annotated[str, Path(pattern=HASH_PATTERN)]


@router.post(
    "",
    status_code=201,
    summary="Propose a study (study.proposed)",
    responses=responses(400, 401, 403, 404, 409, 413, 422),
)
def propose_study(
    document: Annotated[dict[str, Any], Body(description="The study document.")],
    principal: AdminDep,
    service: ServiceDep,
) -> StudyProposedOut:
    """Record the study; ``code_hash`` defaults to this coordinator's app bundle."""
    recorded = service.propose_study(principal, document)
    study = recorded.value.study
    return StudyProposedOut(
        study_id=study.study_id,
        study_hash=study.study_hash,
        code_hash=study.code_hash,
        seq=recorded.seq,
        action_id=action_id(recorded),
    )


@router.get("", summary="Proposed studies", responses=responses(401, 403, 422))
def list_studies(principal: AdminOrSiteDep, service: ServiceDep, page: PageDep) -> StudyListOut:
    """Every study (a site sees the studies that name it)."""
    site = principal.site if principal.role is Role.SITE else None
    records, following = page.of(service.reads.studies(site_name=site))
    items = [StudySummaryOut(**record.summary()) for record in records]
    return StudyListOut(items=items, next_offset=following)


@router.get(
    "/{study_hash}", summary="A study and its decisions", responses=responses(401, 403, 404, 422)
)
def get_study(
    study_hash: StudyHashPath, request: Request, principal: AdminOrSiteDep, service: ServiceDep
) -> StudyOut:
    """The document, each site's latest decision, and whether enough sites approved."""
    record = service.reads.study(study_hash)
    study = record.study
    if principal.role is Role.SITE and principal.site not in study.epsilon_caps:
        raise forbid(request, principal, f"study {study.study_id} does not name {principal.site}")
    approvals = service.reads.approvals(study_hash)
    return StudyOut(
        **record.summary(),
        study=study.to_document(),
        decisions={
            site: decision.to_json()
            for site, decision in service.reads.decisions(study_hash).items()
        },
        approved_by=sorted(approvals),
        ready=len(approvals) >= study.min_sites,
    )


@router.post(
    "/{study_hash}/decisions",
    status_code=201,
    summary="Record the site's signed approval or refusal",
    responses=responses(400, 401, 403, 404, 409, 413, 422),
)
def decide(
    study_hash: StudyHashPath,
    body: DecisionIn,
    request: Request,
    principal: SiteDep,
    service: ServiceDep,
) -> RecordedOut:
    """Record ``study.approved`` or ``study.refused`` as the token's site signed it."""
    site = own_site(principal)
    if body.payload.get("site") != site:
        raise forbid(request, principal, f"a token of site {site} decides only for it")
    require_payload_field(body.payload, "study_hash", study_hash)
    recorded = service.record_statement(principal, body.kind, site, body.payload, body.signature)
    entry = recorded.entry
    return RecordedOut(
        seq=entry.seq,
        kind=entry.kind,
        actor=entry.actor,
        hash=entry.hash,
        action_id=action_id(recorded),
    )


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


declare_roles(router)
