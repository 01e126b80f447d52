"""One mapping from errors to HTTP answers: ``{"error": code, "detail": message}``, never a trace.

=============================  ======  =========================================
error                          status  code
=============================  ======  =========================================
no or bad bearer token         401     ``unauthenticated`` (``WWW-Authenticate``)
role or site not allowed       403     ``forbidden``
``NotFound``                   404     ``not_found``
``Conflict``                   409     ``conflict``
``ApprovalMissing``            409     ``approval_missing``
``PrivacyBudgetExceeded``      409     ``budget_exceeded``
``LedgerIntegrityError``       409     ``integrity_failure`` (stored data fails its checks)
body over the size limit       413     ``too_large``
request fails the schema       422     ``invalid_request``
``InputError``                 422     ``input_refused``
``CryptoError``                422     ``crypto_refused``
``SignatureError``             422     ``signature_invalid``
``ProofError``                 422     ``proof_invalid``
inference rate exceeded        429     ``rate_limited`` (``Retry-After``)
``ConfigError``                500     ``server_misconfigured`` (generic detail)
anything unexpected            500     ``internal`` (generic detail)
``TransportError``             503     ``superlink_unavailable``
database unreachable           503     ``storage_unavailable``
=============================  ======  =========================================

A bad signature on a site's statement is 422, not 403: the caller's token was accepted
(authorisation passed) and the statement it carries failed verification, which is a
property of the content. 403 is kept for role and site-binding refusals, so a client can
tell "you may not" from "what you sent does not verify". Details of 500s go to the log
with a request id the answer repeats.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from veracity.errors import (
    ApprovalMissing,
    ConfigError,
    Conflict,
    CryptoError,
    InputError,
    LedgerIntegrityError,
    NotFound,
    PrivacyBudgetExceeded,
    ProofError,
    SignatureError,
    TransportError,
    VeracityError,
    VerificationError,
)

__all__ = ["ErrorBody", "error_response", "status_for", "install_error_handlers", "responses"]

log = logging.getLogger("veracity.server.api")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}

_DESCRIPTIONS = {
    400: "Malformed request",
    401: "No valid bearer token",
    403: "The token's role or site may not do this",
    404: "Not found",
    409: "Refused by the current state",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Invalid input, or a signature or proof that does not verify",
    429: "Inference rate limit reached for this token",
    500: "Server error (details in the server log)",
    503: "The SuperLink or the database did not answer",
}


class ErrorBody(BaseModel):
    """Every error the API answers: a stable code and a message for people."""

    error: str
    detail: str


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A JSON error answer."""
    return JSONResponse(
        status_code=status, content={"error": code, "detail": detail}, headers=headers
    )


def status_for(error: VeracityError) -> tuple[int, str]:
    """HTTP status and error code for a Veracity error (the table above)."""
    table: list[tuple[type[VeracityError], int, str]] = [
        (NotFound, 404, "not_found"),
        (Conflict, 409, "conflict"),
        (ApprovalMissing, 409, "approval_missing"),
        (PrivacyBudgetExceeded, 409, "budget_exceeded"),
        (LedgerIntegrityError, 409, "integrity_failure"),
        (SignatureError, 422, "signature_invalid"),
        (ProofError, 422, "proof_invalid"),
        (VerificationError, 422, "verification_failed"),
        (CryptoError, 422, "crypto_refused"),
        (InputError, 422, "input_refused"),
        (TransportError, 503, "superlink_unavailable"),
        (ConfigError, 500, "server_misconfigured"),
    ]
    for kind, status, code in table:
        if isinstance(error, kind):
            return status, code
    return 500, "internal"


def _request_id() -> str:
    return secrets.token_hex(6)


def _validation_detail(error: RequestValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item.get("loc", ()))
        parts.append(f"{where}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request does not match the API schema"


def install_error_handlers(app: FastAPI) -> None:
    """Register the one mapping from errors to JSON answers on ``app``."""

    async def veracity_error(request: Request, error: VeracityError) -> JSONResponse:
        status, code = status_for(error)
        if status >= 500:
            request_id = _request_id()
            log.error(
                "%s %s failed (request %s): %s",
                request.method,
                request.url.path,
                request_id,
                error,
                exc_info=error if not isinstance(error, TransportError) else None,
            )
            if isinstance(error, TransportError):
                detail = f"the SuperLink did not answer; try again (request {request_id})"
            else:
                detail = f"the server is misconfigured; see its log (request {request_id})"
            return error_response(status, code, detail)
        log.info("%s %s refused: %s %s", request.method, request.url.path, status, error)
        return error_response(status, code, str(error))

    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        detail = str(error.detail)
        code = _HTTP_CODES.get(error.status_code, "error")
        headers = dict(error.headers) if error.headers is not None else None
        return error_response(error.status_code, code, detail, headers=headers)

    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _validation_detail(error))

    async def database_error(request: Request, error: sa.exc.SQLAlchemyError) -> JSONResponse:
        request_id = _request_id()
        if isinstance(error, sa.exc.IntegrityError):
            log.info("%s %s conflicted in the database: %s", request.method, request.url, error)
            return error_response(409, "conflict", "a concurrent change conflicted; try again")
        log.error(
            "%s %s: database error (request %s)",
            request.method,
            request.url.path,
            request_id,
            exc_info=error,
        )
        if isinstance(error, (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)):
            return error_response(
                503,
                "storage_unavailable",
                f"the database did not answer; try again (request {request_id})",
            )
        return error_response(
            500, "internal", f"internal error; see the server log (request {request_id})"
        )

    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        request_id = _request_id()
        log.error(
            "%s %s crashed (request %s)",
            request.method,
            request.url.path,
            request_id,
            exc_info=error,
        )
        return error_response(
            500, "internal", f"internal error; see the server log (request {request_id})"
        )

    app.add_exception_handler(VeracityError, veracity_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(sa.exc.SQLAlchemyError, database_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, unexpected)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for the error statuses a route can answer."""
    return {
        status: {"model": ErrorBody, "description": _DESCRIPTIONS.get(status, "Error")}
        for status in statuses
    }
