"""The web console: the coordinator's state at a glance, and an audit a person can check.

Served by the admin API's own application under ``/`` (the API stays under ``/api/v1``),
over the same TLS, signed in with the same bearer tokens and limited by the same roles
(:mod:`.screens` is the table). Pages are rendered on the server from Jinja2 templates
shipped in this package; the few scripts (vendored htmx for live run progress, and the
ledger explorer's proof checker, which verifies inclusion and consistency proofs with the
browser's own WebCrypto SHA-256 and Ed25519) are served from ``/static`` with everything
else, so a page makes no request to any other origin (its Content-Security-Policy says so).
"""

from __future__ import annotations

import inspect
import json

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from veracity.errors import VeracityError
from veracity.server.api.console import access, ledger_pages, pages
from veracity.server.api.console.render import SECURITY_HEADERS, render, static_dir
from veracity.server.api.console.session import (
    CsrfRefused,
    ScreenForbidden,
    SignInRequired,
)
from veracity.server.api.shared_routes import include_shared

__all__ = ["install_console"]


def _is_console(request: Request) -> bool:
    return not request.url.path.startswith(
        ("/api/", "/health", "/ready", "/docs", "/openapi", "/redoc")
    )


def install_console(app: FastAPI) -> None:
    """Add the console's pages, its static files and its error pages to ``app``."""
    app.mount("/static", StaticFiles(directory=static_dir()), name="console-static")
    include_shared(app, (pages.router, access.router, ledger_pages.router))

    previous = app.exception_handlers.get(VeracityError)

    async def sign_in(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SignInRequired)  # noqa: S101 - registered for this type only
        if request.headers.get("hx-request") == "true":
            return Response(status_code=401, headers={"HX-Redirect": exc.location()})
        return RedirectResponse(exc.location(), status_code=303, headers=SECURITY_HEADERS)

    async def forbidden(request: Request, exc: Exception) -> HTMLResponse:
        assert isinstance(exc, ScreenForbidden)  # noqa: S101 - registered for this type only
        return render(
            request,
            "error.html",
            exc.user,
            heading="Not for your role",
            detail=f"{exc}. Your role's screens are in the navigation above.",
            status_code=403,
        )

    async def csrf_refused(request: Request, exc: Exception) -> HTMLResponse:
        return render(
            request,
            "error.html",
            None,
            heading="Change refused",
            detail=str(exc),
            status_code=403,
        )

    async def console_error(request: Request, exc: Exception) -> Response:
        if previous is None:  # pragma: no cover - install_error_handlers runs first
            raise exc
        answer = previous(request, exc)  # logs it as the API would
        if inspect.isawaitable(answer):
            answer = await answer
        if not _is_console(request):
            return answer
        detail = json.loads(bytes(answer.body)).get("detail", "refused")
        heading = {404: "Not found", 409: "Conflict"}.get(answer.status_code, "Refused")
        if answer.status_code >= 500:
            heading = "The coordinator could not do this"
        return render(
            request,
            "error.html",
            None,
            heading=heading,
            detail=str(detail),
            status_code=answer.status_code,
        )

    app.add_exception_handler(SignInRequired, sign_in)
    app.add_exception_handler(ScreenForbidden, forbidden)
    app.add_exception_handler(CsrfRefused, csrf_refused)
    app.add_exception_handler(VeracityError, console_error)
