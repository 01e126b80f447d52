"""``/datasets``: a site submits its signed ``dataset.registered``; registrations are read."""

from __future__ import annotations

from fastapi import APIRouter, Request

from veracity.server.api.deps import (
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
from veracity.server.api.schemas import DatasetListOut, DatasetOut, RecordedOut, SignedStatementIn
from veracity.server.api.tokens import Role

__all__ = ["router"]

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.post(
    "",
    status_code=201,
    summary="Record a site-signed dataset registration",
    responses=responses(400, 401, 403, 404, 409, 413, 422),
)
def register_dataset(
    body: SignedStatementIn, request: Request, principal: SiteDep, service: ServiceDep
) -> RecordedOut:
    """Record ``dataset.registered`` as the token's site signed it."""
    site = own_site(principal)
    if body.payload.get("site") != site:
        raise forbid(request, principal, f"a token of site {site} registers only its own")
    recorded = service.record_statement(
        principal, "dataset.registered", site, body.payload, body.signature
    )
    entry = recorded.entry
    return RecordedOut(
        seq=entry.seq,
        kind=entry.kind,
        actor=entry.actor,
        hash=entry.hash,
        action_id=action_id(recorded),
    )


@router.get("", summary="Registered datasets", responses=responses(401, 403, 422))
def list_datasets(principal: AdminOrSiteDep, service: ServiceDep, page: PageDep) -> DatasetListOut:
    """The latest registration per site and dataset id (a site sees only its own)."""
    site = principal.site if principal.role is Role.SITE else None
    records, following = page.of(service.reads.datasets(site_name=site))
    items = [DatasetOut(**record.to_json()) for record in records]
    return DatasetListOut(items=items, next_offset=following)


declare_roles(router)
