"""``/statements``: other site-signed statements (checkpoint co-signatures, notes, replays)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from veracity.server.api.deps import (
    ServiceDep,
    SiteDep,
    action_id,
    declare_roles,
    forbid,
    own_site,
)
from veracity.server.api.problems import responses
from veracity.server.api.schemas import RecordedOut, StatementIn

__all__ = ["router"]

router = APIRouter(prefix="/statements", tags=["statements"])


@router.post(
    "",
    status_code=201,
    summary="Record a site-signed co-signature, note, budget refusal or replay outcome",
    responses=responses(400, 401, 403, 404, 409, 413, 422),
)
def record_statement(
    body: StatementIn, request: Request, principal: SiteDep, service: ServiceDep
) -> RecordedOut:
    """Record a site statement as signed (a co-signature, note, refusal or replay)."""
    site = own_site(principal)
    if "site" in body.payload and body.payload["site"] != site:
        raise forbid(request, principal, f"a token of site {site} speaks only for it")
    recorded = service.record_statement(principal, body.kind, site, body.payload, body.signature)
    entry = recorded.entry
    return RecordedOut(
        seq=entry.seq,
        kind=entry.kind,
        actor=entry.actor,
        hash=entry.hash,
        action_id=action_id(recorded),
    )


declare_roles(router)
