"""``/models``: released models and their cards; plaintext weights and query budgets for admins."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from veracity.contracts.explanation import ExplanationTerms, terms_hash
from veracity.errors import NotFound
from veracity.server.api.budget import BudgetStore, set_budget_recorded
from veracity.server.api.deps import (
    AdminDep,
    CardReaderDep,
    ModelReaderDep,
    PageDep,
    ServiceDep,
    action_id,
    declare_roles,
)
from veracity.server.api.problems import responses
from veracity.server.api.schemas import (
    HASH_PATTERN,
    ExplainIn,
    ExplanationListOut,
    ExplanationOut,
    ExplanationStartedOut,
    ModelListOut,
    ModelOut,
    ModelSummaryOut,
    QueryBudgetIn,
    QueryBudgetListOut,
    QueryBudgetOut,
)
from veracity.tasks.study import Study

__all__ = ["router"]

router = APIRouter(prefix="/models", tags=["models"])
ModelHashPath = Annotated[str, Path(pattern=HASH_PATTERN)]


@router.get("", summary="Released models", responses=responses(401, 403, 409, 422))
def list_models(principal: ModelReaderDep, service: ServiceDep, page: PageDep) -> ModelListOut:
    """Every model in the registry, with its ``model.released`` seq."""
    models, following = page.of(service.models())
    return ModelListOut(
        next_offset=following,
        items=[
            ModelSummaryOut(
                model_hash=model.model_hash,
                name=str(model.card.get("name", "")),
                family=model.spec.family.value,
                n_features=model.spec.n_features,
                label=model.label,
                card_hash=model.card_hash,
                released_seq=None if release is None else release.seq,
            )
            for model, release in models
        ],
    )


@router.get("/{model_hash}", summary="A model's card", responses=responses(401, 403, 404, 409, 422))
def get_model(model_hash: ModelHashPath, principal: CardReaderDep, service: ServiceDep) -> ModelOut:
    """Architecture, features, scaling and the model card (lineage, privacy, metrics)."""
    model, release = service.model(model_hash)
    return ModelOut(
        model_hash=model.model_hash,
        model=model.spec.to_dict(),
        features=list(model.features),
        label=model.label,
        scaling=[[m, s] for m, s in model.scaling],
        card=dict(model.card),
        card_hash=model.card_hash,
        description_hash=model.description_hash,
        released_seq=None if release is None else release.seq,
        explanations=[
            {
                "seq": entry.seq,
                "report_hash": entry.payload["report_hash"],
                "top_features": entry.payload["top_features"],
                "epsilon": entry.payload["terms"]["epsilon"],
            }
            for entry in service.ledger.iter_entries(kind="model.explained")
            if entry.payload["model_hash"] == model.model_hash
        ],
    )


@router.get(
    "/{model_hash}/weights",
    summary="Download the plaintext weights (admin)",
    response_class=Response,
    responses={
        200: {
            "description": "The weights (veracity.tasks.weights format, no pickles).",
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        },
        **responses(401, 403, 404, 409, 422),
    },
)
def get_weights(model_hash: ModelHashPath, principal: AdminDep, service: ServiceDep) -> Response:
    """The weights file; its hash is the model hash. Each download is recorded."""
    data = service.weights(principal, model_hash)
    return Response(
        content=data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{model_hash}.npz"'},
    )


# --- explanations (#19) -------------------------------------------------------------------
@router.post(
    "/{model_hash}/explanations",
    status_code=201,
    summary="Ask the sites to explain a released model (admin; an explanation run)",
    responses=responses(400, 401, 403, 404, 409, 422, 503),
)
def explain_model(
    model_hash: ModelHashPath, body: ExplainIn, principal: AdminDep, service: ServiceDep
) -> ExplanationStartedOut:
    """Start an explanation run of the model's study (it trains nothing).

    Each site computes its records' integrated gradients, clipped, summed and noised,
    charged to its budget; the run records ``model.explained``. Follow it with
    ``GET /runs/{run_id}``.
    """
    release = service.reads.model(model_hash)
    if release is None:
        raise NotFound(f"no released model {model_hash}")
    found = service.reads.study(release.study_hash)
    if not isinstance(found.study, Study):
        raise NotFound(f"model {model_hash} was not released by a training study proposed here")
    terms = ExplanationTerms(
        model_hash=model_hash,
        study_hash=release.study_hash,
        steps=body.steps,
        clip_norm=body.clip_norm,
        epsilon=body.epsilon,
        delta=body.delta if body.delta is not None else found.study.dp.delta,
    )
    recorded = service.start_run(principal, release.study_hash, explain=terms)
    return ExplanationStartedOut(
        run_id=recorded.value.run_id,
        model_hash=model_hash,
        study_hash=release.study_hash,
        terms_hash=terms_hash(terms),
        seq=recorded.seq,
        action_id=action_id(recorded),
    )


@router.get(
    "/{model_hash}/explanations",
    summary="A model's explanation reports",
    responses=responses(401, 403, 404, 409, 422),
)
def list_explanations(
    model_hash: ModelHashPath, principal: CardReaderDep, service: ServiceDep, page: PageDep
) -> ExplanationListOut:
    """Every ``model.explained`` of the model, oldest first, with its report and SVG plot.

    Each report is re-hashed against its entry's ``report_hash`` when read.
    """
    service.model(model_hash)
    entries = [
        entry
        for entry in service.ledger.iter_entries(kind="model.explained")
        if entry.payload["model_hash"] == model_hash
    ]
    chosen, following = page.of(entries)
    items = []
    for entry in chosen:
        payload = entry.payload
        report, plot = service.registry.explanation(model_hash, payload["report_hash"])
        items.append(
            ExplanationOut(
                seq=entry.seq,
                run_id=payload["run_id"],
                report_hash=payload["report_hash"],
                terms=payload["terms"],
                top_features=payload["top_features"],
                records=payload["records"],
                sites=sorted(r["receipt"]["site"] for r in payload["receipts"]),
                report=report,
                plot_svg=plot.decode("utf-8"),
            )
        )
    return ExplanationListOut(items=items, next_offset=following)


RequesterPath = Annotated[
    str, Path(min_length=1, max_length=128, description="The requester (its token's name).")
]


def _budgets(request: Request) -> BudgetStore:
    store: BudgetStore = request.app.state.budgets
    return store


@router.get(
    "/{model_hash}/budgets",
    summary="Query budgets of a model (admin)",
    responses=responses(401, 403, 404, 409, 422),
)
def list_budgets(
    model_hash: ModelHashPath,
    request: Request,
    principal: AdminDep,
    service: ServiceDep,
    page: PageDep,
) -> QueryBudgetListOut:
    """Every requester with a budget set for this model or predictions charged to it."""
    service.model(model_hash)
    budgets, following = page.of(_budgets(request).list(model_hash))
    items = [QueryBudgetOut(**b.to_json()) for b in budgets]
    return QueryBudgetListOut(items=items, next_offset=following)


@router.put(
    "/{model_hash}/budgets/{requester}",
    summary="Set how many predictions a requester may get from a model (admin)",
    responses=responses(401, 403, 404, 409, 422),
)
def set_budget(
    model_hash: ModelHashPath,
    requester: RequesterPath,
    body: QueryBudgetIn,
    request: Request,
    principal: AdminDep,
    service: ServiceDep,
) -> QueryBudgetOut:
    """Allow ``budget`` predictions in all; past it, inference answers 403.

    A logistic model is determined by d + 1 exact predictions (d features): a budget above
    that lets the requester reconstruct it. The change is a ledger event
    (``inference.budget_set``, naming who set it), committed with the budget itself.
    """
    service.model(model_hash)
    budget = set_budget_recorded(
        service, _budgets(request), principal, requester, model_hash, body.budget
    )
    return QueryBudgetOut(**budget.to_json())


declare_roles(router)
