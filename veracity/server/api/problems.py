"""One error contract over HTTP: RFC 9457 problem details, from one table, never a trace.

Every 4xx and 5xx the admin API and the inference routes answer (including what FastAPI
and Starlette produce themselves: unknown routes, wrong methods, schema failures) is
``application/problem+json``::

    {"type": "urn:veracity:problem:conflict", "title": "Refused by the current state",
     "status": 409, "detail": "site north is already enrolled",
     "instance": "/api/v1/sites", "code": "conflict"}

``type`` is ``urn:veracity:problem:`` + ``code`` (an identifier to compare, not a URL to
fetch); ``title`` is fixed per type; ``detail`` says what happened this time; ``instance``
is the request path; ``code`` is the stable extension clients switch on. 500s and 503s add
``request_id``, which the server log repeats beside the details.

=============================  ======  =========================================
error                          status  code
=============================  ======  =========================================
malformed HTTP request         400     ``bad_request`` (bad ``Content-Length``, undecodable body)
no or bad bearer token         401     ``unauthenticated`` (``WWW-Authenticate``)
role or site not allowed       403     ``forbidden``
``NotFound``, unknown route    404     ``not_found``
method not allowed             405     ``method_not_allowed`` (``Allow``)
``Conflict``                   409     ``conflict``
``ApprovalMissing``            409     ``approval_missing``
``PrivacyBudgetExceeded``      409     ``budget_exceeded``
``LedgerIntegrityError``       409     ``integrity_failure`` (stored data fails its checks)
body over the size limit       413     ``too_large``
wrong media type               415     ``unsupported_media_type``
request fails the schema       422     ``invalid_request``
``InputError``                 422     ``input_refused``
``CryptoError``                422     ``crypto_refused``
``SignatureError``             422     ``signature_invalid``
``ProofError``                 422     ``proof_invalid``
``VerificationError``          422     ``verification_failed``
``QueryBudgetExceeded``, spent  403     ``budget_exhausted`` (the model's query budget)
inference rate exceeded        429     ``rate_limited`` (``Retry-After``; also a
                                       ``QueryBudgetExceeded`` with ``retry_after``)
``ConfigError``                500     ``server_misconfigured`` (generic detail)
anything unexpected            500     ``internal`` (generic detail)
``TransportError``             503     ``superlink_unavailable``
database unreachable           503     ``storage_unavailable``
=============================  ======  =========================================

A bad signature on a site's statement is 422, not 403: the caller's token was accepted
(authorisation passed) and the statement it carries failed verification, which is a
property of the content. 403 is kept for role and site-binding refusals, so a client can
tell "you may not" from "what you sent does not verify". An ``InputError`` is 422 on every
route, the inference routes included (a malformed envelope is refused content, as a
malformed study document is).
"""

from __future__ import annotations

import http
import logging
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
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
    QueryBudgetExceeded,
    SignatureError,
    TransportError,
    VeracityError,
    VerificationError,
)

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "PROBLEM_TYPE_PREFIX",
    "Problem",
    "ProblemType",
    "PROBLEM_TYPES",
    "problem_for",
    "problem_document",
    "problem_response",
    "install_error_handlers",
    "responses",
]

log = logging.getLogger("veracity.server.api")

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:veracity:problem:"


@dataclass(frozen=True)
class ProblemType:
    """One kind of problem: its HTTP status, stable code and fixed title."""

    status: int
    code: str
    title: str

    @property
    def uri(self) -> str:
        """The RFC 9457 ``type`` member."""
        return f"{PROBLEM_TYPE_PREFIX}{self.code}"


#: Every problem type the API answers, by code (the table in the module docstring).
PROBLEM_TYPES: dict[str, ProblemType] = {
    kind.code: kind
    for kind in (
        ProblemType(400, "bad_request", "Malformed HTTP request"),
        ProblemType(401, "unauthenticated", "No valid bearer token"),
        ProblemType(403, "forbidden", "The token's role or site may not do this"),
        ProblemType(403, "budget_exhausted", "The query budget for this model is spent"),
        ProblemType(404, "not_found", "Not found"),
        ProblemType(405, "method_not_allowed", "Method not allowed"),
        ProblemType(409, "conflict", "Refused by the current state"),
        ProblemType(409, "approval_missing", "A site has not approved this study"),
        ProblemType(409, "budget_exceeded", "Privacy budget exceeded"),
        ProblemType(409, "integrity_failure", "Stored data fails its integrity checks"),
        ProblemType(413, "too_large", "Request body too large"),
        ProblemType(415, "unsupported_media_type", "Unsupported media type"),
        ProblemType(422, "invalid_request", "The request does not match the API schema"),
        ProblemType(422, "input_refused", "Input refused"),
        ProblemType(422, "crypto_refused", "Cryptographic material refused"),
        ProblemType(422, "signature_invalid", "A signature does not verify"),
        ProblemType(422, "proof_invalid", "A proof does not verify"),
        ProblemType(422, "verification_failed", "Verification failed"),
        ProblemType(429, "rate_limited", "Rate limit reached for this token"),
        ProblemType(500, "server_misconfigured", "Server misconfigured"),
        ProblemType(500, "internal", "Internal server error"),
        ProblemType(503, "superlink_unavailable", "The SuperLink did not answer"),
        ProblemType(503, "storage_unavailable", "The database did not answer"),
    )
}

#: The one mapping from the error tree to problem types; a subclass not listed takes its
#: nearest listed ancestor's row (``NotFound`` is an ``InputError`` with a row of its own).
_ERROR_CODES: dict[type[VeracityError], str] = {
    InputError: "input_refused",
    NotFound: "not_found",
    Conflict: "conflict",
    VerificationError: "verification_failed",
    LedgerIntegrityError: "integrity_failure",
    SignatureError: "signature_invalid",
    ProofError: "proof_invalid",
    PrivacyBudgetExceeded: "budget_exceeded",
    ApprovalMissing: "approval_missing",
    CryptoError: "crypto_refused",
    ConfigError: "server_misconfigured",
    TransportError: "superlink_unavailable",
    QueryBudgetExceeded: "budget_exhausted",
}

#: Statuses that Starlette, FastAPI or a guard raise as ``HTTPException``.
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
}

_DESCRIPTIONS = {
    400: "Malformed HTTP request",
    401: "No valid bearer token",
    403: "The token's role or site may not do this",
    404: "Not found",
    409: "Refused by the current state",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Invalid input, or a signature or proof that does not verify",
    429: "Rate limit reached for this token",
    500: "Server error (details in the server log)",
    503: "The SuperLink or the database did not answer",
}


class Problem(BaseModel):
    """An RFC 9457 problem document, with the stable ``code`` extension."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    code: str
    request_id: str | None = None


def problem_for(error: VeracityError) -> ProblemType:
    """The problem type of a Veracity error (the table above; ``internal`` if unlisted)."""
    for kind in type(error).__mro__:
        code = _ERROR_CODES.get(kind)
        if code is not None:
            return PROBLEM_TYPES[code]
    return PROBLEM_TYPES["internal"]


def _http_problem(status: int) -> ProblemType:
    code = _HTTP_CODES.get(status)
    if code is not None:
        return PROBLEM_TYPES[code]
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return ProblemType(status, phrase.lower().replace(" ", "_").replace("-", "_"), phrase)


def problem_document(
    kind: ProblemType, detail: str, *, instance: str | None, request_id: str | None = None
) -> dict[str, Any]:
    """The JSON members of one problem (absent members left out)."""
    document: dict[str, Any] = {
        "type": kind.uri,
        "title": kind.title,
        "status": kind.status,
        "detail": detail,
        "code": kind.code,
    }
    if instance is not None:
        document["instance"] = instance
    if request_id is not None:
        document["request_id"] = request_id
    return document


def problem_response(
    kind: ProblemType,
    detail: str,
    *,
    instance: str | None,
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An ``application/problem+json`` answer."""
    return JSONResponse(
        status_code=kind.status,
        content=problem_document(kind, detail, instance=instance, request_id=request_id),
        headers=headers,
        media_type=PROBLEM_CONTENT_TYPE,
    )


def _request_id() -> str:
    return secrets.token_hex(6)


def _validation_detail(error: RequestValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item.get("loc", ()))
        parts.append(f"{where}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request does not match the API schema"


def _server_error(
    request: Request, kind: ProblemType, what: str, error: BaseException, *, trace: bool = True
) -> JSONResponse:
    """Log a 5xx with a fresh request id and answer a generic detail that repeats it."""
    request_id = _request_id()
    log.error(
        "%s %s failed (request %s): %s",
        request.method,
        request.url.path,
        request_id,
        error,
        exc_info=error if trace else None,
    )
    return problem_response(
        kind,
        f"{what} (request {request_id})",
        instance=request.url.path,
        request_id=request_id,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` as problem details, and say so in its OpenAPI document.

    Registers the handlers for Veracity errors, HTTP errors (Starlette's and the guards'),
    request validation, database errors and anything unexpected, and adds the ``Problem``
    schema to the OpenAPI components that :func:`responses` refers to.
    """

    async def veracity_error(request: Request, error: VeracityError) -> JSONResponse:
        if isinstance(error, QueryBudgetExceeded) and error.retry_after is not None:
            seconds = max(1, math.ceil(error.retry_after))
            return problem_response(
                PROBLEM_TYPES["rate_limited"],
                f"{error}; retry in {seconds} s",
                instance=request.url.path,
                headers={"Retry-After": str(seconds)},
            )
        kind = problem_for(error)
        if kind.code == "superlink_unavailable":
            what = "the SuperLink did not answer; try again"
            return _server_error(request, kind, what, error, trace=False)
        if kind.code == "server_misconfigured":
            return _server_error(request, kind, "the server is misconfigured; see its log", error)
        if kind.status >= 500:
            return _server_error(request, kind, "internal error; see the server log", error)
        log.info("%s %s refused: %s %s", request.method, request.url.path, kind.status, error)
        return problem_response(kind, str(error), instance=request.url.path)

    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        headers = dict(error.headers) if error.headers is not None else None
        return problem_response(
            _http_problem(error.status_code),
            str(error.detail),
            instance=request.url.path,
            headers=headers,
        )

    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return problem_response(
            PROBLEM_TYPES["invalid_request"],
            _validation_detail(error),
            instance=request.url.path,
        )

    async def database_error(request: Request, error: sa.exc.SQLAlchemyError) -> JSONResponse:
        if isinstance(error, sa.exc.IntegrityError):
            log.info("%s %s conflicted in the database: %s", request.method, request.url, error)
            return problem_response(
                PROBLEM_TYPES["conflict"],
                "a concurrent change conflicted; try again",
                instance=request.url.path,
            )
        if isinstance(error, (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)):
            kind, what = PROBLEM_TYPES["storage_unavailable"], "the database did not answer"
            return _server_error(request, kind, f"{what}; try again", error)
        what = "internal error; see the server log"
        return _server_error(request, PROBLEM_TYPES["internal"], what, error)

    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        what = "internal error; see the server log"
        return _server_error(request, PROBLEM_TYPES["internal"], what, error)

    app.add_exception_handler(VeracityError, veracity_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(sa.exc.SQLAlchemyError, database_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, unexpected)
    app.openapi = _with_problem_schema(app, app.openapi)  # type: ignore[method-assign]


def _with_problem_schema(
    app: FastAPI, build: Callable[[], dict[str, Any]]
) -> Callable[[], dict[str, Any]]:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components["Problem"] = Problem.model_json_schema()
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for the error statuses a route can answer (problem details)."""
    problem = {"schema": {"$ref": "#/components/schemas/Problem"}}
    return {
        status: {
            "description": _DESCRIPTIONS.get(status, "Error"),
            "content": {PROBLEM_CONTENT_TYPE: problem},
        }
        for status in statuses
    }
