"""Rendering the console's pages: Jinja2 templates shipped in the package, strict headers.

Every console response carries a Content-Security-Policy that lets the page load scripts,
styles, images and data only from its own origin (``'self'``), submit forms only to it and
never be framed; the templates use no inline script, so nothing else is allowed. The API's
own pages (``/docs``) are left as FastAPI serves them.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from veracity import __version__
from veracity.server.api.console.screens import screens_for
from veracity.server.api.console.session import ConsoleUser

__all__ = ["SECURITY_HEADERS", "render", "templates_dir", "static_dir", "HTMX_FILE"]

#: The vendored htmx (0BSD licence beside it in ``static/``).
HTMX_FILE = "htmx-2.0.11.min.js"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def templates_dir() -> str:
    """The package's template folder."""
    return str(resources.files("veracity.server.api.console") / "templates")


def static_dir() -> str:
    """The package's static folder (script, styles, licences)."""
    return str(resources.files("veracity.server.api.console") / "static")


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def _short(value: Any, length: int = 12) -> str:
    text = str(value)
    return text if len(text) <= length + 1 else text[:length] + "…"


def _epsilon(value: Any) -> str:
    return "—" if value is None else f"{float(value):.3f}"


_env = Environment(
    loader=FileSystemLoader(templates_dir()),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["pretty"] = _pretty
_env.filters["short"] = _short
_env.filters["eps"] = _epsilon
_env.globals["version"] = __version__
_env.globals["htmx_file"] = HTMX_FILE


def render(
    request: Request,
    template: str,
    user: ConsoleUser | None,
    *,
    active: str = "",
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """The page ``template`` for ``user``, with the navigation their role may see."""
    nav = [] if user is None else screens_for(user.principal.role)
    text = _env.get_template(template).render(
        request=request, user=user, nav=nav, active=active, **context
    )
    return HTMLResponse(text, status_code=status_code, headers=SECURITY_HEADERS)
