"""HTTP adapter for encrypted inference: a FastAPI router over :class:`InferenceService`.

The admin API mounts :func:`inference_router` under ``/api/v1`` with its own authentication
dependency; :func:`standalone_app` mounts it alone with static bearer tokens (tests,
benchmarks, a single-purpose deployment). Routes (relative to the mount point):

``GET  /inference/models/{model_hash}``
    The model's public description (JSON): features, scaling, family, HE parameters,
    layouts and wire limits.
``POST /inference/contexts``
    Upload a public-context envelope; answers ``{"context_hash": ...}`` (201).
``POST /inference/models/{model_hash}/predict``
    A request envelope in, a response envelope out (``application/vnd.veracity.he.v1``).

Bodies are read as a stream and refused with 413 as soon as they pass the limit (and before
reading at all when ``Content-Length`` already says so). Errors are JSON
``{"error": code, "detail": message}``: 400 malformed, truncated or mismatched input, 403
``budget_exhausted`` (the requester's query budget for the model is spent), 404 unknown
model, 413 too large, 415 wrong media type, 422 refused cryptographic material (secret
keys, insecure or wrong parameters), 429 ``rate_limited`` with ``Retry-After`` (requests or
predictions over the requester's rate).
"""

# No ``from __future__ import annotations`` here: the routes annotate parameters with a
# dependency made inside inference_router(), and FastAPI resolves string annotations in the
# module's globals only, where that local does not exist.

import hmac
import logging
import math
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from veracity.errors import CryptoError, InputError, QueryBudgetExceeded, VeracityError
from veracity.he.wire import CONTENT_TYPE
from veracity.server.inference import InferenceService

__all__ = ["inference_router", "standalone_app", "bearer_token_authenticator"]

log = logging.getLogger("veracity.server.inference")

_ACCEPTED_TYPES = {CONTENT_TYPE, "application/octet-stream"}


class _TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds the limit of {limit} bytes")


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": code, "detail": detail})


def _domain_error(err: VeracityError) -> JSONResponse:
    if isinstance(err, QueryBudgetExceeded):
        if err.retry_after is None:
            return _error(403, "budget_exhausted", str(err))
        seconds = max(1, math.ceil(err.retry_after))
        response = _error(429, "rate_limited", f"{err}; retry in {seconds} s")
        response.headers["Retry-After"] = str(seconds)
        return response
    if isinstance(err, CryptoError):
        return _error(422, "crypto_refused", str(err))
    if isinstance(err, InputError):
        return _error(400, "input_refused", str(err))
    return _error(400, "refused", str(err))


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InputError("malformed Content-Length header")
        if int(declared) > limit:
            raise _TooLarge(limit)
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise _TooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def inference_router(
    service: InferenceService,
    *,
    authenticate: Callable[..., Any],
) -> APIRouter:
    """The encrypted-inference routes, authenticated by ``authenticate``.

    Parameters
    ----------
    service
        The inference service (one per worker process).
    authenticate
        A FastAPI dependency returning the requester's identity (a non-empty string) or
        raising ``HTTPException(401/403)``; it is recorded in ``inference.served``.
    """
    router = APIRouter(prefix="/inference", tags=["inference"])
    requester_dependency = Depends(authenticate)

    @router.get("/models/{model_hash}", summary="Public description of a released model")
    def describe(model_hash: str, requester: Annotated[str, requester_dependency]) -> Response:
        if not service.has_model(model_hash):
            return _error(404, "not_found", f"no released model {model_hash}")
        try:
            return JSONResponse(service.describe(model_hash))
        except VeracityError as err:
            return _domain_error(err)

    @router.post("/contexts", status_code=201, summary="Upload a public CKKS context")
    async def upload_context(
        request: Request, requester: Annotated[str, requester_dependency]
    ) -> Response:
        if _media_type(request) not in _ACCEPTED_TYPES:
            return _error(415, "unsupported_media_type", f"send {CONTENT_TYPE}")
        try:
            body = await _read_body(request, service.limits.max_context_bytes)
            context_hash = await run_in_threadpool(service.upload_context, body)
        except _TooLarge as err:
            return _error(413, "too_large", str(err))
        except VeracityError as err:
            log.info("context from %s refused: %s", requester, err)
            return _domain_error(err)
        return JSONResponse(status_code=201, content={"context_hash": context_hash})

    @router.post(
        "/models/{model_hash}/predict",
        summary="Evaluate the model on encrypted patients",
        response_class=Response,
    )
    async def predict(
        model_hash: str, request: Request, requester: Annotated[str, requester_dependency]
    ) -> Response:
        if not service.has_model(model_hash):
            return _error(404, "not_found", f"no released model {model_hash}")
        if _media_type(request) not in _ACCEPTED_TYPES:
            return _error(415, "unsupported_media_type", f"send {CONTENT_TYPE}")
        try:
            body = await _read_body(request, service.limits.max_request_bytes)
            response = await run_in_threadpool(
                service.serve, body, requester=requester, model_hash=model_hash
            )
        except _TooLarge as err:
            return _error(413, "too_large", str(err))
        except VeracityError as err:
            log.info("request from %s refused: %s", requester, err)
            return _domain_error(err)
        return Response(content=response, media_type=CONTENT_TYPE)

    return router


def bearer_token_authenticator(tokens: Mapping[str, str]) -> Callable[..., str]:
    """A dependency accepting ``Authorization: Bearer TOKEN`` for the tokens in ``tokens``.

    ``tokens`` maps each token to the requester name it authenticates. Comparison is
    constant-time. Meant for tests and single-purpose deployments; the admin API has its
    own token store.
    """
    scheme = HTTPBearer(auto_error=False)
    known = [(token.encode(), name) for token, name in tokens.items()]

    def authenticate(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(scheme)],
    ) -> str:
        from fastapi import HTTPException

        if credentials is not None:
            offered = credentials.credentials.encode()
            for token, name in known:
                if hmac.compare_digest(offered, token):
                    return name
        raise HTTPException(
            status_code=401,
            detail={"error": "unauthenticated", "detail": "a valid bearer token is required"},
            headers={"WWW-Authenticate": "Bearer"},
        )

    return authenticate


def standalone_app(service: InferenceService, *, tokens: Mapping[str, str]) -> FastAPI:
    """An app serving only encrypted inference under ``/api/v1``, with static bearer tokens.

    ``GET /health`` answers ``{"status": "ok"}`` without authentication.
    """
    app = FastAPI(title="Veracity encrypted inference", version="1")
    app.include_router(
        inference_router(service, authenticate=bearer_token_authenticator(tokens)),
        prefix="/api/v1",
    )

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
