"""FastAPI dependencies as ``Annotated`` aliases: the service, settings, and who may call.

Every route under ``/api/v1`` takes its principal from one of the :class:`Allow` guards
below, which is how it declares its roles; :func:`veracity.server.api.app.create_app`
refuses to build an app with a route that declares none, and writes each route's roles
into the OpenAPI document as ``x-roles``. A request without a valid token is answered 401
and one whose token's role is not allowed 403; both are logged (never the token).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from veracity.errors import ConfigError
from veracity.server.api.ratelimit import RateLimiter
from veracity.server.api.settings import ApiSettings
from veracity.server.api.tokens import Principal, Role, TokenStore
from veracity.server.coordinator.service import CoordinatorService
from veracity.server.coordinator.unit_of_work import Recorded

__all__ = [
    "Page",
    "PageDep",
    "Allow",
    "ServiceDep",
    "TokensDep",
    "SettingsDep",
    "AuthenticatedDep",
    "AdminDep",
    "AuditDep",
    "SiteDep",
    "AdminOrSiteDep",
    "GlobalModelReaderDep",
    "ModelReaderDep",
    "CardReaderDep",
    "InferenceDep",
    "AnalystDep",
    "forbid",
    "clamp_limit",
    "roles_of",
    "declare_roles",
    "own_site",
    "action_id",
]

log = logging.getLogger("veracity.server.api.auth")

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="A token from `veracity server token create` (or POST /api/v1/tokens).",
)


# Dependencies that do no I/O are ``async def`` so FastAPI runs them on the event loop
# instead of a threadpool hop each; those that touch the database stay ``def``.


async def _service(request: Request) -> CoordinatorService:
    service: CoordinatorService = request.app.state.service
    return service


async def _tokens(request: Request) -> TokenStore:
    tokens: TokenStore = request.app.state.tokens
    return tokens


async def _settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


ServiceDep = Annotated[CoordinatorService, Depends(_service)]
TokensDep = Annotated[TokenStore, Depends(_tokens)]
SettingsDep = Annotated[ApiSettings, Depends(_settings)]


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "?"


def _unauthenticated(request: Request, reason: str) -> HTTPException:
    log.warning("401 %s %s from %s: %s", request.method, request.url.path, _client(request), reason)
    return HTTPException(
        status_code=401,
        detail="a valid bearer token is required (Authorization: Bearer TOKEN)",
        headers={"WWW-Authenticate": "Bearer"},
    )


def forbid(request: Request, principal: Principal, reason: str) -> HTTPException:
    """Log a refusal of ``principal`` and return the 403 to raise."""
    log.warning(
        "403 %s %s from %s: token %s (%s %s): %s",
        request.method,
        request.url.path,
        _client(request),
        principal.token_id,
        principal.role.value,
        principal.name,
        reason,
    )
    return HTTPException(status_code=403, detail=reason)


def authenticated(
    request: Request,
    tokens: TokensDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The principal of the request's bearer token.

    Raises
    ------
    HTTPException
        401 if the token is missing, unknown, expired or revoked.
    """
    if credentials is None:
        raise _unauthenticated(request, "no bearer token")
    info = tokens.lookup(credentials.credentials)
    if info is None:
        raise _unauthenticated(request, "unknown token")
    refusal = info.refusal(tokens.clock())
    if refusal is not None:
        raise _unauthenticated(request, f"{refusal} token {info.id} ({info.name})")
    principal = info.principal
    request.state.principal = principal
    return principal


AuthenticatedDep = Annotated[Principal, Depends(authenticated)]


class Allow:
    """A guard admitting the given roles: the route's declaration of who may call it."""

    def __init__(self, *roles: Role) -> None:
        self.roles = frozenset(roles)

    async def __call__(self, request: Request, principal: AuthenticatedDep) -> Principal:
        """The principal, if its role is allowed.

        Raises
        ------
        HTTPException
            403 if the role is not allowed here.
        """
        if principal.role not in self.roles:
            allowed = ", ".join(sorted(r.value for r in self.roles))
            raise forbid(
                request,
                principal,
                f"a {principal.role.value} token may not do this (allowed: {allowed})",
            )
        return principal


ADMIN = Allow(Role.ADMIN)
AUDIT = Allow(Role.ADMIN, Role.AUDITOR)
SITE = Allow(Role.SITE)
ADMIN_OR_SITE = Allow(Role.ADMIN, Role.SITE)
#: A run's global models: its sites (for replay), its auditors and admins.
GLOBAL_MODEL_READER = Allow(Role.ADMIN, Role.AUDITOR, Role.SITE)
MODEL_READER = Allow(Role.ADMIN, Role.SITE, Role.RESEARCHER)
#: A model's card and explanation reports: the model's readers and auditors, who check
#: them against the ledger (``veracity ledger check-card``).
CARD_READER = Allow(Role.ADMIN, Role.SITE, Role.RESEARCHER, Role.AUDITOR)
INFERENCE = Allow(Role.ADMIN, Role.RESEARCHER)
ANALYST = Allow(Role.ADMIN, Role.RESEARCHER)
ANY_ROLE = Allow(*Role)

AdminDep = Annotated[Principal, Depends(ADMIN)]
AuditDep = Annotated[Principal, Depends(AUDIT)]
SiteDep = Annotated[Principal, Depends(SITE)]
AdminOrSiteDep = Annotated[Principal, Depends(ADMIN_OR_SITE)]
GlobalModelReaderDep = Annotated[Principal, Depends(GLOBAL_MODEL_READER)]
ModelReaderDep = Annotated[Principal, Depends(MODEL_READER)]
CardReaderDep = Annotated[Principal, Depends(CARD_READER)]
AnyRoleDep = Annotated[Principal, Depends(ANY_ROLE)]
InferenceDep = Annotated[Principal, Depends(INFERENCE)]
AnalystDep = Annotated[Principal, Depends(ANALYST)]


def inference_requester(request: Request, principal: InferenceDep) -> str:
    """The requester name for ``inference.served``, after the token's rate limit.

    Raises
    ------
    HTTPException
        429 with ``Retry-After`` when the token has spent its allowance.
    """
    limiter: RateLimiter = request.app.state.inference_limiter
    if principal.token_id is None:  # pragma: no cover - every HTTP principal has a token
        raise forbid(request, principal, "inference needs an issued token")
    wait = limiter.acquire(principal.token_id)
    if wait is not None:
        seconds = max(1, int(wait + 0.999))
        log.warning(
            "429 %s %s: token %s (%s) over its inference rate",
            request.method,
            request.url.path,
            principal.token_id,
            principal.name,
        )
        raise HTTPException(
            status_code=429,
            detail=f"inference rate limit reached; retry in {seconds} s",
            headers={"Retry-After": str(seconds)},
        )
    return principal.name


def own_site(principal: Principal) -> str:
    """The site a site token acts for.

    Raises
    ------
    ConfigError
        If a site token has no site (the ``api_token`` table's check forbids it).
    """
    if principal.site is None:
        raise ConfigError(f"site token {principal.token_id} is bound to no site")
    return principal.site


def action_id(recorded: Recorded[Any]) -> int:
    """The ``api_action`` row of a change made through the API.

    Raises
    ------
    ConfigError
        If the change wrote none (the app's service has no audit hook: a wiring error).
    """
    if recorded.action_id is None:
        raise ConfigError("the change recorded no api_action row")
    return recorded.action_id


def roles_of(dependant: Dependant) -> frozenset[Role]:
    """The roles the :class:`Allow` guards among a route's dependencies admit."""
    found: set[Role] = set()
    for sub in dependant.dependencies:
        if isinstance(sub.call, Allow):
            found |= sub.call.roles
        found |= roles_of(sub)
    return frozenset(found)


def declare_roles(router: APIRouter) -> APIRouter:
    """Write each route's roles into its OpenAPI entry (``x-roles``) and description.

    Raises
    ------
    ConfigError
        If a route has no :class:`Allow` guard.
    """
    for route in router.routes:
        if not isinstance(route, APIRoute):
            continue
        roles = sorted(role.value for role in roles_of(route.dependant))
        if not roles:
            raise ConfigError(f"route {route.path} declares no roles")
        route.openapi_extra = {**(route.openapi_extra or {}), "x-roles": roles}
        note = f"Roles: {', '.join(roles)}."
        if note not in (route.description or ""):
            route.description = f"{route.description}\n\n{note}" if route.description else note
    return router


def clamp_limit(limit: int, settings: ApiSettings) -> int:
    """A page size no larger than the configured cap."""
    return max(1, min(limit, settings.page_size_max))


_Item = TypeVar("_Item")


@dataclass(frozen=True)
class Page:
    """Which slice of a list a request asked for: ``offset`` items skipped, ``limit`` kept."""

    offset: int
    limit: int

    def of(self, items: Sequence[_Item]) -> tuple[list[_Item], int | None]:
        """The page of ``items`` and the ``next_offset`` (None on the last page)."""
        end = self.offset + self.limit
        return list(items[self.offset : end]), end if end < len(items) else None


def _page(
    settings: SettingsDep,
    offset: Annotated[
        int, Query(ge=0, le=10**9, description="Items to skip: the previous page's next_offset.")
    ] = 0,
    limit: Annotated[
        int, Query(ge=1, le=10_000, description="Items per page (capped by the server).")
    ] = 100,
) -> Page:
    return Page(offset=offset, limit=clamp_limit(limit, settings))


#: ``?offset=&limit=`` of a list route; the answer's ``next_offset`` starts the next page.
PageDep = Annotated[Page, Depends(_page)]
