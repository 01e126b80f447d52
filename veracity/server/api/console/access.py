"""The admin's Tokens and sites screen: issue, list and revoke tokens; enrol sites, revoke keys.

Each change goes through the same store and service the API uses (``POST /api/v1/tokens``,
``POST /api/v1/sites``), as the signed-in admin, with the form's CSRF value checked. A new
token is shown once, on the page that issued it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Form, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from veracity.errors import VeracityError
from veracity.server.api.console.render import SECURITY_HEADERS, render
from veracity.server.api.console.screens import screen
from veracity.server.api.console.session import ConsoleUser, check_csrf, require_screen
from veracity.server.api.schemas import SITE_PATTERN
from veracity.server.api.tokens import Role, TokenStore
from veracity.server.coordinator.service import CoordinatorService

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

Csrf = Annotated[str, Form(max_length=100)]


def _page(
    request: Request,
    user: ConsoleUser,
    *,
    issued: str | None = None,
    message: str = "",
    error: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    tokens: TokenStore = request.app.state.tokens
    service: CoordinatorService = request.app.state.service
    return render(
        request,
        "access.html",
        user,
        active="access",
        tokens=tokens.list(),
        sites=service.reads.sites(),
        log_id=service.ledger.log_id,
        roles=[role.value for role in Role],
        issued=issued,
        message=message,
        error=error,
        status_code=status_code,
    )


@router.get("/access")
def access_page(request: Request) -> HTMLResponse:
    """Tokens (never the tokens themselves) and enrolled sites."""
    user = require_screen(request, screen("access"))
    return _page(request, user)


@router.post("/access/tokens")
def create_token(
    request: Request,
    csrf: Csrf,
    role: Annotated[str, Form(max_length=20)],
    name: Annotated[str, Form(max_length=128)],
    site: Annotated[str, Form(max_length=63)] = "",
    days: Annotated[int, Form(ge=1, le=3650)] = 30,
) -> HTMLResponse:
    """Issue a token and show it once."""
    user = require_screen(request, screen("access"))
    check_csrf(request, user, csrf)
    tokens: TokenStore = request.app.state.tokens
    try:
        issued = tokens.create(
            role=Role(role),
            name=name,
            site=site or None,
            expires_in=timedelta(days=days),
            created_by=user.principal,
        )
    except (VeracityError, ValueError) as err:
        return _page(request, user, error=str(err), status_code=400)
    return _page(
        request,
        user,
        issued=issued.token,
        message=f"Token {issued.info.id} issued to {issued.info.name} ({issued.info.role.value}).",
    )


@router.post("/access/tokens/{token_id}/revoke")
def revoke_token(
    request: Request, token_id: Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")], csrf: Csrf
) -> Response:
    """Revoke a token at once."""
    user = require_screen(request, screen("access"))
    check_csrf(request, user, csrf)
    tokens: TokenStore = request.app.state.tokens
    tokens.revoke(token_id, by=user.principal)
    return RedirectResponse("/access#tokens", status_code=303, headers=SECURITY_HEADERS)


@router.post("/access/sites")
def enrol_site(
    request: Request,
    csrf: Csrf,
    name: Annotated[str, Form(pattern=SITE_PATTERN)],
    public_key: Annotated[str, Form(max_length=4000)],
    supernode_public_key: Annotated[str, Form(max_length=4000)],
    proof: Annotated[str, Form(max_length=200)],
) -> HTMLResponse:
    """Enrol a site (``key.enrolled``) with its Ed25519 key and its SuperNode key."""
    user = require_screen(request, screen("access"))
    check_csrf(request, user, csrf)
    service: CoordinatorService = request.app.state.service
    try:
        recorded = service.enrol_site(
            user.principal,
            name,
            public_key_pem=public_key.strip() + "\n",
            supernode_public_key=supernode_public_key.strip(),
            proof=proof.strip(),
        )
    except VeracityError as err:
        return _page(request, user, error=str(err), status_code=400)
    return _page(request, user, message=f"Site {name} enrolled (entry {recorded.seq}).")


@router.post("/access/sites/{name}/revoke")
def revoke_site_key(
    request: Request,
    name: Annotated[str, Path(pattern=SITE_PATTERN)],
    csrf: Csrf,
    reason: Annotated[str, Form(min_length=1, max_length=500)],
) -> HTMLResponse:
    """Revoke a site's key (``key.revoked``)."""
    user = require_screen(request, screen("access"))
    check_csrf(request, user, csrf)
    service: CoordinatorService = request.app.state.service
    try:
        recorded = service.revoke_site_key(user.principal, name, reason=reason)
    except VeracityError as err:
        return _page(request, user, error=str(err), status_code=400)
    return _page(request, user, message=f"Key of {name} revoked (entry {recorded.seq}).")
