"""``/tokens``, ``/actions``, ``/whoami``: who may use the API, and what they did with it."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Query

from veracity.server.api import actions
from veracity.server.api.deps import (
    AdminDep,
    AnyRoleDep,
    PageDep,
    ServiceDep,
    SettingsDep,
    TokensDep,
    clamp_limit,
    declare_roles,
)
from veracity.server.api.problems import responses
from veracity.server.api.schemas import (
    ActionListOut,
    ActionOut,
    PrincipalOut,
    TokenCreatedOut,
    TokenCreateIn,
    TokenListOut,
    TokenOut,
)
from veracity.server.api.tokens import issue_token, revoke_token_recorded

__all__ = ["router"]

router = APIRouter(tags=["access"])
TokenIdPath = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")]


@router.get("/whoami", summary="The token's principal", responses=responses(401))
def whoami(principal: AnyRoleDep) -> PrincipalOut:
    """Name, role and (for site tokens) site of the request's token."""
    return PrincipalOut(**principal.to_json())


@router.post(
    "/tokens",
    status_code=201,
    summary="Issue a token (shown once)",
    responses=responses(400, 401, 403, 413, 422),
)
def create_token(
    body: TokenCreateIn, principal: AdminDep, tokens: TokensDep, service: ServiceDep
) -> TokenCreatedOut:
    """Issue a token (``token.issued``); only its SHA-256 is stored, so this is the only copy."""
    issued = issue_token(
        service,
        tokens,
        principal,
        role=body.role,
        name=body.name,
        site=body.site,
        expires_in=timedelta(days=body.expires_in_days),
    )
    return TokenCreatedOut(token=issued.token, info=TokenOut(**issued.info.to_json()))


@router.get("/tokens", summary="Issued tokens", responses=responses(401, 403, 422))
def list_tokens(principal: AdminDep, tokens: TokensDep, page: PageDep) -> TokenListOut:
    """Every token's record (never the token)."""
    infos, following = page.of(tokens.list())
    return TokenListOut(items=[TokenOut(**info.to_json()) for info in infos], next_offset=following)


@router.post(
    "/tokens/{token_id}/revoke",
    summary="Revoke a token",
    responses=responses(401, 403, 404, 422),
)
def revoke_token(
    token_id: TokenIdPath, principal: AdminDep, tokens: TokensDep, service: ServiceDep
) -> TokenOut:
    """Revoke a token at once (``token.revoked``; revoking it again changes nothing)."""
    return TokenOut(**revoke_token_recorded(service, tokens, principal, token_id).to_json())


@router.get("/actions", summary="What was done through the API", responses=responses(401, 403, 422))
def list_actions(
    principal: AdminDep,
    service: ServiceDep,
    settings: SettingsDep,
    since: Annotated[int, Query(ge=0, le=2**53)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> ActionListOut:
    """State-changing calls, token creations and weight downloads, oldest first."""
    size = clamp_limit(limit, settings)
    rows = actions.list_actions(service.ledger.engine, since=since, limit=size + 1)
    following = rows[size]["id"] if len(rows) > size else None
    return ActionListOut(items=[ActionOut(**row) for row in rows[:size]], next_since=following)


declare_roles(router)
