"""Routers included once per process serve every app as ``include_router`` would."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from veracity.errors import ConfigError
from veracity.server.api.app import API_PREFIX, RESOURCE_MODULES
from veracity.server.api.console import access as console_access
from veracity.server.api.console import ledger_pages, pages
from veracity.server.api.deps import declare_roles
from veracity.server.api.shared_routes import include_shared

RESOURCES = tuple(declare_roles(module.router) for module in RESOURCE_MODULES)  # as create_app
CONSOLE = (pages.router, console_access.router, ledger_pages.router)


def _included_each(prefix_routers: tuple[tuple[str, tuple[APIRouter, ...]], ...]) -> FastAPI:
    app = FastAPI()
    for prefix, routers in prefix_routers:
        for router in routers:
            app.include_router(router, prefix=prefix)
    return app


def _shared(prefix_routers: tuple[tuple[str, tuple[APIRouter, ...]], ...]) -> FastAPI:
    app = FastAPI()
    for prefix, routers in prefix_routers:
        include_shared(app, routers, prefix=prefix)
    return app


def test_shared_routes_give_the_openapi_document_and_route_table_of_include_router() -> None:
    layout = ((API_PREFIX, RESOURCES), ("", CONSOLE))
    reference, first, second = _included_each(layout), _shared(layout), _shared(layout)

    assert first.openapi() == reference.openapi()

    def table(app: FastAPI) -> list[tuple[object, ...]]:
        return [
            (c.path, sorted(c.methods or ()), c.name, getattr(c, "unique_id", None))
            for c in iter_route_contexts(app.routes)
        ]

    assert table(first) == table(second) == table(reference)
    assert len(table(reference)) > 50
    # The second app serves the first one's included routers, built once.
    shared = {id(r) for r in first.routes} & {id(r) for r in second.routes}
    assert len(shared) == len(RESOURCES) + len(CONSOLE)


def test_each_app_serving_shared_routes_answers_from_its_own_state() -> None:
    router = APIRouter()

    @router.get("/whoami/{n}")
    def whoami(n: int, request: Request) -> dict[str, object]:
        return {"app": request.app.state.name, "n": n}

    apps = [FastAPI(), FastAPI()]
    for name, app in zip(("one", "two"), apps, strict=True):
        app.state.name = name
        include_shared(app, (router,), prefix="/p")
    answers = [TestClient(app).get("/p/whoami/7").json() for app in apps]
    assert answers == [{"app": "one", "n": 7}, {"app": "two", "n": 7}]
    assert TestClient(apps[0]).get("/p/whoami/x").status_code == 422


def test_a_router_with_startup_handlers_is_not_shared() -> None:
    router = APIRouter(on_startup=[lambda: None])
    with pytest.raises(ConfigError, match="startup"):
        include_shared(FastAPI(), (router,))
