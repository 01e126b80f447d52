"""Signing in to the console: the API's own bearer token, held in a strict cookie.

A person signs in by pasting a token issued for them (``veracity server token create`` or
the Tokens screen). The console checks it with the API's :class:`TokenStore` and keeps it
in an ``HttpOnly``, ``SameSite=Strict`` cookie (``Secure`` over TLS) scoped to this origin;
every page looks the token up again, so an expired or revoked token is refused on the next
request, exactly as the API refuses it. The database still holds only the token's SHA-256.

Changes (forms that POST) carry a CSRF value derived from the token, ``SHA-256("veracity.
console.csrf" || 0x00 || token)``: another origin can neither read the cookie nor compute
it, and a POST whose ``Origin`` header names another origin is refused as well.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from fastapi import Request

from veracity.server.api.console.screens import Screen
from veracity.server.api.tokens import Principal, TokenStore

__all__ = [
    "COOKIE",
    "ConsoleUser",
    "SignInRequired",
    "ScreenForbidden",
    "CsrfRefused",
    "csrf_value",
    "current_user",
    "require_screen",
    "check_csrf",
    "safe_next",
]

log = logging.getLogger("veracity.server.api.console")

COOKIE = "veracity_console"
_CSRF_DOMAIN = b"veracity.console.csrf\x00"


class SignInRequired(Exception):
    """No valid token: the console answers with the sign-in page."""

    def __init__(self, next_path: str, reason: str) -> None:
        super().__init__(reason)
        self.next_path = next_path
        self.reason = reason

    def location(self) -> str:
        """Where to send the browser."""
        return f"/signin?next={quote(self.next_path, safe='/')}&reason={quote(self.reason)}"


class ScreenForbidden(Exception):
    """The signed-in role may not open this screen."""

    def __init__(self, user: ConsoleUser, screen: Screen, action: str | None = None) -> None:
        what = action if action is not None else f"open {screen.label}"
        super().__init__(f"a {user.principal.role.value} token may not {what}")
        self.user = user
        self.screen = screen


class CsrfRefused(Exception):
    """A change whose CSRF value or origin is not this console's."""


@dataclass(frozen=True)
class ConsoleUser:
    """The signed-in person: the token's principal and the form value that proves intent."""

    principal: Principal
    csrf: str


def csrf_value(token: str) -> str:
    """The CSRF value of the forms of a session signed in with ``token``."""
    return hashlib.sha256(_CSRF_DOMAIN + token.encode("utf-8")).hexdigest()


def safe_next(path: str | None) -> str:
    """``path`` if it is a path on this origin (never another host), else ``/``."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    parts = urlsplit(path)
    if parts.scheme or parts.netloc:
        return "/"
    return path


def current_user(request: Request) -> ConsoleUser:
    """The signed-in user of ``request``.

    Raises
    ------
    SignInRequired
        If there is no cookie, or its token is unknown, expired or revoked.
    """
    token = request.cookies.get(COOKIE)
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if not token:
        raise SignInRequired(here, "Sign in with a token to continue.")
    tokens: TokenStore = request.app.state.tokens
    info = tokens.lookup(token)
    if info is None:
        log.warning("console: unknown token refused for %s", request.url.path)
        raise SignInRequired(here, "That token is not known here. Sign in again.")
    refusal = info.refusal(tokens.clock())
    if refusal is not None:
        log.warning("console: %s token %s refused for %s", refusal, info.id, request.url.path)
        raise SignInRequired(here, f"Your token was refused: it is {refusal}. Sign in again.")
    request.state.principal = info.principal
    return ConsoleUser(principal=info.principal, csrf=csrf_value(token))


def require_screen(request: Request, screen: Screen) -> ConsoleUser:
    """The signed-in user, if their role may open ``screen``.

    Raises
    ------
    SignInRequired
        If nobody valid is signed in.
    ScreenForbidden
        If the role may not open the screen.
    """
    user = current_user(request)
    if user.principal.role not in screen.roles:
        raise ScreenForbidden(user, screen)
    return user


def check_csrf(request: Request, user: ConsoleUser, submitted: str) -> None:
    """Refuse a change not made from this console's own page.

    Raises
    ------
    CsrfRefused
        If the form's CSRF value is wrong or the request came from another origin.
    """
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        own = f"{request.url.scheme}://{request.url.netloc}"
        if origin != own:
            raise CsrfRefused(f"a change from {origin} is refused here")
    if not hmac.compare_digest(submitted.encode("ascii", "replace"), user.csrf.encode("ascii")):
        raise CsrfRefused("the form's check value is wrong; reload the page and try again")
