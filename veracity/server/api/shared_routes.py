"""Module-level routers included once per process and shared by every app built in it.

``FastAPI.include_router`` costs nothing when it is called: the app's first request that
reaches an included router builds every route of it again (its dependencies, parameters
and response model, about a millisecond a route), for that app alone. The admin API's
resource routers and the console's are module-level and the same for every app, and an
included route holds nothing of an app: its guards and stores are dependencies resolved
per request from ``request.app``. So the first app of a process includes them, and every
later app (each test's, each ``create_app``) serves the same included routes instead of
building them again.

The one thing an app gives the routers it includes itself is ``app.dependency_overrides``:
routes included here do not see it (nothing in Veracity overrides a dependency).
"""

from __future__ import annotations

import threading

from fastapi import APIRouter, FastAPI
from fastapi.routing import iter_route_contexts
from starlette.routing import BaseRoute

from veracity.errors import ConfigError

__all__ = ["include_shared"]


def include_shared(app: FastAPI, routers: tuple[APIRouter, ...], *, prefix: str = "") -> None:
    """Add ``routers`` under ``prefix`` to ``app``, as ``app.include_router`` would.

    The routes are built on the first call for these routers and prefix, and shared by
    every app they are added to afterwards. The routers must not change once included,
    and must have no startup or shutdown handlers or lifespan of their own (which
    ``include_router`` would add to the app, and which none of Veracity's routers have).

    Raises
    ------
    ConfigError
        If a router has startup or shutdown handlers.
    """
    key = (tuple(id(router) for router in routers), prefix)
    with _lock:
        shared = _included.get(key)
        if shared is None:
            shared = (routers, _include(routers, prefix))  # the routers keep their ids
            while len(_included) >= _MAX_INCLUDED:
                del _included[next(iter(_included))]
            _included[key] = shared
    app.router.routes.extend(shared[1])


#: Inclusions kept (Veracity has two: the admin API's resources and the console's pages).
_MAX_INCLUDED = 8
_lock = threading.Lock()
_included: dict[
    tuple[tuple[int, ...], str], tuple[tuple[APIRouter, ...], tuple[BaseRoute, ...]]
] = {}


def _include(routers: tuple[APIRouter, ...], prefix: str) -> tuple[BaseRoute, ...]:
    parent = APIRouter()
    for router in routers:
        if router.on_startup or router.on_shutdown:
            raise ConfigError("a shared router has startup or shutdown handlers")
        parent.include_router(router, prefix=prefix)
    # Build every route now, once: the lazy build on a first request would otherwise run
    # in whichever app's request came first, possibly two at once in two threads.
    for _context in iter_route_contexts(parent.routes):
        pass
    return tuple(parent.routes)
