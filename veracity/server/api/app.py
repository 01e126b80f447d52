"""The admin API application: ``create_app(settings)``.

The coordinator's front door. Flower's Control API has no authentication in open-source
Flower, so the SuperLink listens on loopback and this API, with bearer tokens and roles,
is the only way in; every change it makes is a ledger entry committed in the same
transaction as the API's own record of who made it.

Routes live under ``/api/v1`` (one router per resource, ``veracity/server/api/routes``),
plus the encrypted-inference router (``veracity/server/api/inference.py``); ``/health``
answers without a token, and so does ``/ready`` (the database and the SuperLink answer);
OpenAPI at ``/openapi.json`` and ``/docs``; the web console
(``veracity/server/api/console``) everywhere else under ``/``. Each route's roles
are written into the OpenAPI document as ``x-roles``. ``docs/api.md`` has the table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import anyio.to_thread
import sqlalchemy as sa
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from veracity import __version__
from veracity.contracts.events import InferenceServed
from veracity.server.api import db
from veracity.server.api.actions import ApiActions
from veracity.server.api.budget import BudgetStore, StoreMeter
from veracity.server.api.console import install_console
from veracity.server.api.deps import declare_roles, inference_requester, roles_of
from veracity.server.api.inference import inference_body_limit, inference_router
from veracity.server.api.jobs import LedgerJobs
from veracity.server.api.limits import BodySizeLimit
from veracity.server.api.problems import install_error_handlers, responses
from veracity.server.api.ratelimit import RateLimiter
from veracity.server.api.routes import (
    access,
    analyses,
    datasets,
    ledger,
    models,
    runs,
    sites,
    statements,
    studies,
    witness,
)
from veracity.server.api.schemas import HealthOut, ReadyOut
from veracity.server.api.settings import ApiSettings, load_api_settings
from veracity.server.api.shared_routes import include_shared
from veracity.server.api.tokens import Clock, Role, TokenStore, utc_now
from veracity.server.coordinator.bootstrap import open_coordinator, superlink_federation
from veracity.server.coordinator.federation import Federation
from veracity.server.coordinator.home import CoordinatorHome
from veracity.server.coordinator.service import CoordinatorService
from veracity.server.inference import InferenceService
from veracity.server.registry import ModelRegistry, ReleasedModels

__all__ = ["create_app", "app_from_environment", "API_PREFIX", "route_roles"]

log = logging.getLogger("veracity.server.api")

API_PREFIX = "/api/v1"
#: The modules whose routers make the admin API's resources (under ``API_PREFIX``, with the
#: inference router); their routers are module-level and shared by every app.
RESOURCE_MODULES = (
    sites,
    datasets,
    studies,
    statements,
    runs,
    analyses,
    models,
    ledger,
    witness,
    access,
)
#: How long a configured bootstrap admin token stays valid once adopted.
BOOTSTRAP_LIFETIME = timedelta(days=3650)


def route_roles(app: FastAPI) -> dict[tuple[str, str], frozenset[Role]]:
    """``{(method, path): roles}`` of every route under ``/api/v1``."""
    table: dict[tuple[str, str], frozenset[Role]] = {}
    for context in iter_route_contexts(app.routes):
        path = context.path
        dependant = getattr(context, "dependant", None)
        if path is None or not path.startswith(API_PREFIX) or dependant is None:
            continue
        for method in context.methods or ():
            table[(method, path)] = roles_of(dependant)
    return table


def _inference_routes(inference: InferenceService) -> APIRouter:
    router = inference_router(inference, authenticate=inference_requester)
    for route in router.routes:
        if isinstance(route, APIRoute):
            route.responses = {**route.responses, **responses(403, 429)}
    return declare_roles(router)


def create_app(
    settings: ApiSettings,
    *,
    clock: Clock = utc_now,
    rate_clock: Callable[[], float] = time.time,
    federation: Federation | None = None,
) -> FastAPI:
    """Build the admin API for the coordinator in ``settings.data_dir``.

    Nothing is opened here: the lifespan opens the coordinator (its database must hold
    the ledger and the API tables at the current revision; ``veracity server init``
    creates them) when the server starts, and closes it when the server stops.

    Parameters
    ----------
    settings
        Where the coordinator lives and how to serve it.
    clock
        The current time (token expiry, action timestamps); injectable for tests.
    rate_clock
        Seconds since the epoch for the inference rate limit; injectable for tests.
    federation
        The SuperLink the coordinator service talks to (default: the real one of the
        data directory); tests give an in-memory one.

    Raises
    ------
    ConfigError
        If a route declares no roles (a programming error caught at start-up).
    """
    layout = CoordinatorHome.at(settings.data_dir)  # where the files are; nothing is read

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The one coordinator service behind every route: the real SuperLink behind its
        # federation port (asked nothing until a route needs it), api_action as its audit hook.
        home = CoordinatorHome.load(settings.data_dir)
        if settings.superlink_port is not None:
            home = home.with_superlink_port(settings.superlink_port)
        service = open_coordinator(
            home,
            federation=federation
            if federation is not None
            else superlink_federation(home, timeout=settings.control_timeout),
            audit=ApiActions(clock=clock),
            max_concurrent_writes=max(1, settings.api_threads // 2),
        )
        try:
            db.check_schema(service.ledger.engine)
            app.state.tokens = TokenStore(service.ledger.engine, clock=clock)
            if settings.bootstrap_admin_token is not None:
                app.state.tokens.ensure(
                    settings.bootstrap_admin_token.get_secret_value(),
                    expires_in=BOOTSTRAP_LIFETIME,
                )
            app.state.service = service
            app.state.inference_limiter = RateLimiter(
                service.ledger.engine,
                per_minute=settings.inference_rate_per_minute,
                burst=settings.inference_burst,
                clock=rate_clock,
            )
            app.state.budgets = BudgetStore(
                service.ledger.engine,
                default_budget=settings.inference_default_budget,
                patients_per_minute=settings.inference_patients_per_minute,
                patient_burst=settings.inference_patient_burst,
                clock=rate_clock,
                now=clock,
            )
            # Each request may hold two pooled connections (a write and a read); keep the
            # requests served at once within what the pool (5 + 10 overflow) can give.
            anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
            app.state.ledger_jobs = LedgerJobs(
                Path(settings.data_dir).absolute() / "ledger-jobs",
                slots=settings.ledger_job_slots,
            )
            log.info("admin API serving %s", settings.data_dir)
            yield
        finally:
            jobs = getattr(app.state, "ledger_jobs", None)
            if jobs is not None:
                await jobs.aclose()
            service.close()

    app = FastAPI(
        title="Veracity coordinator API",
        version=__version__,
        description=(
            "The coordinator's only door: sites, datasets, studies, runs, models, encrypted "
            "inference and the audit ledger. Bearer tokens with roles admin, site, "
            "researcher, auditor; every change is a ledger entry."
        ),
        lifespan=lifespan,
        docs_url=None,  # served below from Swagger UI's packaged files, not from a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    install_error_handlers(app)

    def record_served(served: InferenceServed) -> None:
        service: CoordinatorService = app.state.service
        service.record_inference(served)

    # Uploaded contexts are stored by hash in the data directory, where every worker
    # process finds them (each request then loads and re-checks the stored context).
    def is_released(model_hash: str) -> bool:
        service: CoordinatorService = app.state.service
        return service.reads.model(model_hash) is not None

    inference = InferenceService(
        ReleasedModels(ModelRegistry(layout.models), is_released),
        recorder=record_served,
        context_dir=layout.data_dir / "he-contexts",
        meter=StoreMeter(lambda: app.state.budgets),  # made by the lifespan
    )

    def limit_for(path: str) -> int:
        return inference_body_limit(inference.limits, path) or settings.max_body_bytes

    app.add_middleware(BodySizeLimit, limit_for=limit_for)

    # declare_roles refuses a route without roles: every route under API_PREFIX comes
    # from these routers and the inference router (``route_roles`` lists them all). The
    # resource routers are module-level: their routes are built once per process.
    resources = tuple(declare_roles(module.router) for module in RESOURCE_MODULES)
    include_shared(app, resources, prefix=API_PREFIX)
    app.include_router(_inference_routes(inference), prefix=API_PREFIX)

    @app.get("/health", tags=["system"], summary="Liveness (no token needed)")
    def health() -> HealthOut:
        """``{"status": "ok"}`` while the server runs."""
        return HealthOut(status="ok")

    @app.get(
        "/ready",
        tags=["system"],
        summary="Readiness: the database and the SuperLink answer (no token needed)",
        responses=responses(503),
    )
    def ready() -> ReadyOut:
        """``{"status": "ready", ...}`` once a database query and a SuperLink call succeed.

        503 ``storage_unavailable`` or ``superlink_unavailable`` otherwise (``/health``
        stays the cheap liveness check: it touches neither).
        """
        service: CoordinatorService = app.state.service
        with service.ledger.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        service.federation.list_runs()
        return ReadyOut(status="ready", database="ok", superlink="ok")

    _install_docs(app)
    install_console(app)  # the web console under / (after the API's error handlers)
    return app


#: Where /docs loads Swagger UI's script, style and icon from: this server.
DOCS_STATIC = "/docs/static"


def _install_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI from the installed ``swagger-ui-bundle``, never another origin."""
    from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount(DOCS_STATIC, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_STATIC}/favicon-32x32.png",
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def docs_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()


def app_from_environment() -> FastAPI:
    """The app for ``uvicorn --factory``: settings from ``VERACITY_*`` variables.

    Raises
    ------
    ConfigError
        If a setting is invalid.
    """
    from veracity.output import configure_logging

    configure_logging(verbose=False)
    return create_app(load_api_settings())
