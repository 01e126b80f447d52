"""HTTP adapter for encrypted inference: a FastAPI router over :class:`InferenceService`.

The admin API mounts :func:`inference_router` under ``/api/v1`` with its own authentication
dependency; :func:`create_inference_app` mounts it alone with static bearer tokens (tests,
benchmarks, a single-purpose deployment). Routes (relative to the mount point):

``GET  /inference/models/{model_hash}``
    The model's public description (JSON): features, scaling, family, HE parameters,
    layouts and wire limits.
``POST /inference/contexts``
    Upload a public-context envelope; answers ``{"context_hash": ...}`` (201).
``POST /inference/models/{model_hash}/predict``
    A request envelope in, a response envelope out (``application/vnd.veracity.he.v1``).

The routes raise Veracity errors and leave the answer to the one error contract
(:mod:`veracity.server.api.problems`): problem details, 403 ``budget_exhausted`` (the
requester's query budget for the model is spent), 404 unknown model, 413 too large, 415
wrong media type, 422 refused input or cryptographic material, 429 ``rate_limited`` with
``Retry-After`` (requests or predictions over the requester's rate). Body sizes are enforced
by :class:`~veracity.server.api.limits.BodySizeLimit` with :func:`inference_body_limit`
per path, before the body is read when ``Content-Length`` already says it is too large.
"""

# No ``from __future__ import annotations`` here: the routes annotate parameters with a
# dependency made inside inference_router(), and FastAPI resolves string annotations in the
# module's globals only, where that local does not exist.

import hmac
import logging
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from veracity.errors import NotFound, VeracityError
from veracity.he.wire import CONTENT_TYPE, WireLimits
from veracity.server.api.limits import BodySizeLimit
from veracity.server.api.problems import install_error_handlers, responses
from veracity.server.inference import InferenceService

__all__ = [
    "inference_router",
    "inference_body_limit",
    "create_inference_app",
    "bearer_token_authenticator",
]

log = logging.getLogger("veracity.server.inference")

_ACCEPTED_TYPES = {CONTENT_TYPE, "application/octet-stream"}
#: Body limit of any other path of :func:`create_inference_app` (none takes a body).
_OTHER_BODY_BYTES = 64 * 1024


def inference_body_limit(limits: WireLimits, path: str) -> int | None:
    """The body limit of the inference route at ``path`` (any mount point), else ``None``."""
    if path.endswith("/inference/contexts"):
        return limits.max_context_bytes
    if "/inference/models/" in path and path.endswith("/predict"):
        return limits.max_request_bytes
    return None


def _released(service: InferenceService, model_hash: str) -> None:
    if not service.has_model(model_hash):
        raise NotFound(f"no released model {model_hash}")


async def _envelope(request: Request) -> bytes:
    """The request body, if it is sent as an envelope (the size limit is the middleware's)."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type not in _ACCEPTED_TYPES:
        raise HTTPException(status_code=415, detail=f"send {CONTENT_TYPE}")
    return await request.body()


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

    @router.get(
        "/models/{model_hash}",
        summary="Public description of a released model",
        responses=responses(401, 404, 422),
    )
    def describe(model_hash: str, requester: Annotated[str, requester_dependency]) -> Response:
        _released(service, model_hash)
        return JSONResponse(service.describe(model_hash))

    @router.post(
        "/contexts",
        status_code=201,
        summary="Upload a public CKKS context",
        responses=responses(400, 401, 413, 415, 422),
    )
    async def upload_context(
        request: Request, requester: Annotated[str, requester_dependency]
    ) -> Response:
        body = await _envelope(request)
        try:
            context_hash = await run_in_threadpool(service.upload_context, body)
        except VeracityError as err:
            log.info("context from %s refused: %s", requester, err)
            raise
        return JSONResponse(status_code=201, content={"context_hash": context_hash})

    @router.post(
        "/models/{model_hash}/predict",
        summary="Evaluate the model on encrypted patients",
        response_class=Response,
        responses=responses(400, 401, 403, 404, 413, 415, 422, 429),
    )
    async def predict(
        model_hash: str, request: Request, requester: Annotated[str, requester_dependency]
    ) -> Response:
        _released(service, model_hash)
        body = await _envelope(request)
        try:
            response = await run_in_threadpool(
                service.serve, body, requester=requester, model_hash=model_hash
            )
        except VeracityError as err:
            log.info("request from %s refused: %s", requester, err)
            raise
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
        if credentials is not None:
            offered = credentials.credentials.encode()
            for token, name in known:
                if hmac.compare_digest(offered, token):
                    return name
        raise HTTPException(
            status_code=401,
            detail="a valid bearer token is required (Authorization: Bearer TOKEN)",
            headers={"WWW-Authenticate": "Bearer"},
        )

    return authenticate


def create_inference_app(service: InferenceService, *, tokens: Mapping[str, str]) -> FastAPI:
    """An app serving only encrypted inference under ``/api/v1``, with static bearer tokens.

    It answers errors with the admin API's contract (problem details, the same table) and
    limits bodies per path as the admin API does. ``GET /health`` answers
    ``{"status": "ok"}`` without authentication.
    """
    app = FastAPI(title="Veracity encrypted inference", version="1")
    install_error_handlers(app)
    limits = service.limits
    app.add_middleware(
        BodySizeLimit,
        limit_for=lambda path: inference_body_limit(limits, path) or _OTHER_BODY_BYTES,
    )
    app.include_router(
        inference_router(service, authenticate=bearer_token_authenticator(tokens)),
        prefix="/api/v1",
    )

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
