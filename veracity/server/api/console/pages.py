"""The console's screens for the network: sign-in, Overview, Runs, Privacy budgets, Studies, Models.

Thin handlers: each checks the signed-in role against :mod:`.screens`, reads through the
coordinator service (:mod:`.data`) and renders a template. A site token sees its own
site's budgets and the studies that name it, as the API shows it.
"""

from __future__ import annotations

import difflib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from veracity.errors import NotFound
from veracity.server.api.console import data
from veracity.server.api.console.charts import epsilon_chart
from veracity.server.api.console.render import SECURITY_HEADERS, render
from veracity.server.api.console.screens import screen
from veracity.server.api.console.session import (
    COOKIE,
    ConsoleUser,
    check_csrf,
    current_user,
    require_screen,
    safe_next,
)
from veracity.server.api.schemas import HASH_PATTERN, RUN_ID_PATTERN
from veracity.server.api.tokens import Role, TokenStore
from veracity.server.coordinator.service import CoordinatorService

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

HashPath = Annotated[str, Path(pattern=HASH_PATTERN)]
RunPath = Annotated[str, Path(pattern=RUN_ID_PATTERN)]


def _service(request: Request) -> CoordinatorService:
    service: CoordinatorService = request.app.state.service
    return service


def _site_of(user: ConsoleUser) -> str | None:
    return user.principal.site if user.principal.role is Role.SITE else None


# ------------------------------------------------------------------------- sign in
@router.get("/signin")
def signin_page(
    request: Request,
    next: Annotated[str, Query(max_length=2000)] = "/",
    reason: Annotated[str, Query(max_length=200)] = "",
) -> HTMLResponse:
    """The sign-in form."""
    return render(request, "signin.html", None, next=safe_next(next), reason=reason)


@router.post("/signin")
def signin(
    request: Request,
    token: Annotated[str, Form(max_length=200)],
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    """Check the token as the API would; keep it in a strict cookie and go on."""
    tokens: TokenStore = request.app.state.tokens
    token = token.strip()
    info = tokens.lookup(token)
    refusal = "unknown" if info is None else info.refusal(tokens.clock())
    if info is None or refusal is not None:
        return render(
            request,
            "signin.html",
            None,
            next=safe_next(next),
            reason=f"That token was refused ({refusal}).",
            status_code=401,
        )
    response = RedirectResponse(safe_next(next), status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/signout")
def signout(request: Request, csrf: Annotated[str, Form(max_length=100)] = "") -> Response:
    """Forget the cookie (the token itself stays valid until revoked or expired)."""
    response = RedirectResponse("/signin?reason=Signed%20out.", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


# ------------------------------------------------------------------------- overview
@router.get("/")
def overview(request: Request) -> HTMLResponse:
    """Sites, studies, runs in progress and the newest checkpoint, as the role may read."""
    user = require_screen(request, screen("overview"))
    service = _service(request)
    role = user.principal.role
    context: dict[str, Any] = {}
    contacts = data.last_contacts(service)
    software = data.site_software(service)
    if role is Role.ADMIN:
        context["sites"] = [
            (s, contacts.get(s.name), software.get(s.name)) for s in service.reads.sites()
        ]
    elif role is Role.SITE and user.principal.site is not None:
        try:
            own = service.reads.site(user.principal.site)
            context["sites"] = [(own, contacts.get(own.name), software.get(own.name))]
        except NotFound:
            context["sites"] = []
    if role in (Role.ADMIN, Role.SITE):
        context["studies"] = [
            (record, service.reads.decisions(record.study_hash))
            for record in service.reads.studies(site_name=_site_of(user))
        ]
    if role is Role.ADMIN:
        context["runs"] = data.runs_in_progress(service)
    if role in (Role.ADMIN, Role.AUDITOR):
        latest = service.ledger.latest_checkpoint()
        context["checkpoint"] = latest
        context["cosigned"] = (
            [] if latest is None else data.cosignatures(service).get(latest.tree_size, [])
        )
        context["witnessed"] = (
            [] if latest is None else data.witness_cosignatures(service).get(latest.tree_size, [])
        )
        context["size"] = service.ledger.size()
    if role in (Role.ADMIN, Role.SITE, Role.RESEARCHER):
        context["models"] = [release for _, release in service.models() if release is not None]
    return render(request, "overview.html", user, active="overview", **context)


# ----------------------------------------------------------------------------- runs
@router.get("/runs")
def runs_page(request: Request) -> HTMLResponse:
    """Every run, newest first, with its rounds so far."""
    user = require_screen(request, screen("runs"))
    runs = list(reversed(_service(request).reads.runs()))
    return render(request, "runs.html", user, active="runs", runs=runs)


def _progress_context(request: Request, run_id: str) -> dict[str, Any]:
    service = _service(request)
    run = service.reads.run(run_id)
    study = service.reads.find_study(run.study_hash)
    return {
        "run": run,
        "study": None if study is None else study.study,
        "rounds": data.round_rows(service, run_id),
    }


@router.get("/runs/{run_id}")
def run_page(request: Request, run_id: RunPath) -> HTMLResponse:
    """One run: live progress (updated in place while it runs) and, for admins, stop."""
    user = require_screen(request, screen("runs"))
    return render(request, "run.html", user, active="runs", **_progress_context(request, run_id))


@router.get("/runs/{run_id}/progress")
def run_progress(request: Request, run_id: RunPath) -> HTMLResponse:
    """The progress fragment the run page polls (htmx) until the run has finished."""
    user = require_screen(request, screen("runs"))
    return render(request, "_progress.html", user, **_progress_context(request, run_id))


@router.post("/runs/{run_id}/stop")
def stop_run(
    request: Request, run_id: RunPath, csrf: Annotated[str, Form(max_length=100)]
) -> Response:
    """Stop a run (``run.finished``: stopped), as the signed-in admin."""
    user = require_screen(request, screen("runs"))
    check_csrf(request, user, csrf)
    _service(request).stop_run(user.principal, run_id)
    return RedirectResponse(f"/runs/{run_id}", status_code=303, headers=SECURITY_HEADERS)


# -------------------------------------------------------------------------- budgets
@router.get("/budgets")
def budgets_page(request: Request) -> HTMLResponse:
    """Epsilon spent per site and dataset after every round, against the cap, as charts."""
    user = require_screen(request, screen("budgets"))
    service = _service(request)
    series = data.budget_series(service, site=_site_of(user))
    titles = {r.study_hash: r.study.study_id for r in service.reads.studies()}
    charts = [
        epsilon_chart(
            f"Epsilon spent by {item.site} / {item.dataset_id}",
            [(f"{p.ts[:16]} {p.label}", p.epsilon) for p in item.points],
            item.cap,
            key=f"chart-{index}",
        )
        for index, item in enumerate(series)
    ]
    return render(
        request,
        "budgets.html",
        user,
        active="budgets",
        series=list(zip(series, charts, strict=True)),
        titles=titles,
    )


# -------------------------------------------------------------------------- studies
@router.get("/studies")
def studies_page(request: Request) -> HTMLResponse:
    """Every study (those naming the site, for a site) with its decisions."""
    user = require_screen(request, screen("studies"))
    service = _service(request)
    studies = [
        (record, service.reads.decisions(record.study_hash))
        for record in reversed(service.reads.studies(site_name=_site_of(user)))
    ]
    return render(request, "studies.html", user, active="studies", studies=studies)


def _readable(request: Request, user: ConsoleUser, study_hash: str) -> Any:
    record = _service(request).reads.study(study_hash)
    site = _site_of(user)
    if site is not None and site not in record.study.epsilon_caps:
        raise NotFound(f"no study {study_hash!r} names site {site}")
    return record


@router.get("/studies/diff")
def study_diff(
    request: Request,
    old: Annotated[str, Query(pattern=HASH_PATTERN)],
    new: Annotated[str, Query(pattern=HASH_PATTERN)],
) -> HTMLResponse:
    """The line difference of two studies' documents (canonical JSON, indented)."""
    user = require_screen(request, screen("studies"))
    first, second = _readable(request, user, old), _readable(request, user, new)

    def lines(record: Any) -> list[str]:
        return json.dumps(record.study.to_document(), indent=2, sort_keys=True).splitlines()

    diff = list(
        difflib.unified_diff(
            lines(first),
            lines(second),
            fromfile=f"{first.study.study_id} {old[:12]}",
            tofile=f"{second.study.study_id} {new[:12]}",
            lineterm="",
        )
    )
    return render(
        request, "study_diff.html", user, active="studies", old=first, new=second, diff=diff
    )


@router.get("/studies/{study_hash}")
def study_page(request: Request, study_hash: HashPath) -> HTMLResponse:
    """A study in readable form, its decisions, and a form to compare it with another."""
    user = require_screen(request, screen("studies"))
    service = _service(request)
    record = _readable(request, user, study_hash)
    others = [
        r for r in service.reads.studies(site_name=_site_of(user)) if r.study_hash != study_hash
    ]
    return render(
        request,
        "study.html",
        user,
        active="studies",
        record=record,
        document=record.study.to_document(),
        decisions=service.reads.decisions(study_hash),
        others=others,
    )


# --------------------------------------------------------------------------- models
@router.get("/models")
def models_page(request: Request) -> HTMLResponse:
    """Released models with their release entries."""
    user = require_screen(request, screen("models"))
    models = list(_service(request).models())
    return render(request, "models.html", user, active="models", models=models)


@router.get("/models/{model_hash}")
def model_page(request: Request, model_hash: HashPath) -> HTMLResponse:
    """A model's card, lineage, metrics, release entry and inferences per requester."""
    user = require_screen(request, screen("models"))
    service = _service(request)
    model, release = service.model(model_hash)
    released = None if release is None else service.ledger.get(release.seq)
    counts = data.inference_counts(service).get(model_hash, {})
    return render(
        request,
        "model.html",
        user,
        active="models",
        model=model,
        release=release,
        released=released,
        counts=counts,
    )


@router.get("/whoami")
def whoami(request: Request) -> HTMLResponse:
    """Who is signed in (a small page the tests and people use)."""
    user = current_user(request)
    return render(request, "whoami.html", user)
