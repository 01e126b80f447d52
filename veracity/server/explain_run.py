"""One explanation run, from the ServerApp's side: ask, check, combine, store, record.

:func:`execute_explanation` sends every matched site one ``query.explain`` message with the
terms, the model's study and the model's weights. Each site answers with its noisy sums of
clipped attributions and a signed analysis receipt, or refuses with a signed statement
(:mod:`veracity.client.explanation`). For each answer the coordinator checks the receipt
(the enrolled site's signature under the analysis receipt domain; the study, the
explanation query id, the terms' hash, and that ``answer_hash`` is the hash of the answer
it came with), records each refusal as the site's ledger entry, and, when at least
``min_sites`` sites answered, combines them into the report
(:mod:`veracity.server.explanation`), keeps the report and its plot in the registry and
records ``model.explained`` with the report's hash and every site's signed receipt.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from flwr.app import ConfigRecord, Message, RecordDict

from veracity.contracts.analysis import SignedAnalysisReceipt
from veracity.contracts.explanation import (
    EXPLANATION_QUERY_ID,
    ExplanationReply,
    ExplanationTerms,
    SiteExplanation,
    terms_hash,
)
from veracity.contracts.messages import ARRAYS_RECORD, ExplainInstruction, ExplanationRecord
from veracity.contracts.refusals import REFUSAL_KINDS
from veracity.core.canonical import canonical_json
from veracity.errors import InputError, SignatureError, VeracityError
from veracity.flower_serde import weights_to_record
from veracity.server.analysis_run import check_site_receipt
from veracity.server.coordinator.service import CoordinatorService
from veracity.server.coordinator.unit_of_work import SERVER_APP
from veracity.server.explanation import GatheredExplanation, explanation_report, report_svg
from veracity.server.polling_grid import PollingGrid, replies_by_site, reply_record
from veracity.tasks.spec import ModelSpec
from veracity.tasks.study import Study
from veracity.tasks.weights import Weights, weights_hash

__all__ = [
    "MESSAGE_TYPE",
    "ExplainedModel",
    "ExplanationOutcome",
    "GatheredExplanation",
    "execute_explanation",
    "gather_explanation",
]

log = logging.getLogger(__name__)


class ExplainedModel(Protocol):
    """What an explanation needs of a model: its layout, input names and weights."""

    @property
    def spec(self) -> ModelSpec:
        """The model's architecture and input layout."""

    @property
    def features(self) -> Sequence[str]:
        """The names of its inputs (features, or channels)."""

    @property
    def weights(self) -> Weights:
        """Its weights."""


#: The Flower message type of an explanation request (``@app.query("explain")``).
MESSAGE_TYPE = "query.explain"


@dataclass(frozen=True)
class ExplanationOutcome:
    """What one explanation run did: the report's hash (``None``: not recorded) and why not."""

    report_hash: str | None
    sites: tuple[str, ...]
    refused: tuple[str, ...]


def gather_explanation(
    coordinator: CoordinatorService,
    grid: PollingGrid,
    study: Study,
    terms: ExplanationTerms,
    model: ExplainedModel,
    *,
    run_id: str,
    sites_by_node: dict[int, str],
    timeout: float,
    record_refusal: Callable[[str, str, dict[str, object], str], None],
) -> GatheredExplanation:
    """Ask every matched site to explain ``model`` under ``terms``; combine what checks out.

    Nothing is stored or recorded here but the sites' refusals
    (``record_refusal(site, kind, payload, signature)``). ``model`` need not be in the
    registry yet: a release asks before it stores its model (see
    :func:`veracity.server.release.release_model`).

    Raises
    ------
    InputError
        If ``model``'s weights are not those ``terms.model_hash`` names.
    """
    if weights_hash(model.weights) != terms.model_hash:
        raise InputError("the weights to explain are not the model the terms name")
    instruction = ExplainInstruction(
        terms=canonical_json(terms.to_json()).decode("utf-8"),
        study=canonical_json(study.to_document()).decode("utf-8"),
        run_id=run_id,
    )
    messages = [
        Message(
            RecordDict(
                {
                    ExplainInstruction.RECORD: ConfigRecord(instruction.to_record()),
                    ARRAYS_RECORD: weights_to_record(dict(model.weights)),
                }
            ),
            dst_node_id=node,
            message_type=MESSAGE_TYPE,
        )
        for node in sites_by_node
    ]
    answers: dict[str, tuple[SiteExplanation, SignedAnalysisReceipt]] = {}
    refused: list[str] = []
    for site, reply in replies_by_site(grid, messages, sites_by_node, timeout=timeout):
        try:
            record = reply_record(reply, ExplanationRecord.RECORD)
            parsed = ExplanationReply.parse(
                json.loads(ExplanationRecord.from_record(record).reply_json),
                what=f"{site}'s explanation",
            )
        except (VeracityError, KeyError, ValueError) as err:
            log.warning("explanation reply of %s dropped: %s", site, err)
            refused.append(f"{site}: dropped ({err})")
            continue
        if parsed.refusal is not None:
            refusal = parsed.refusal
            try:
                statement = REFUSAL_KINDS[refusal.kind].parse(
                    refusal.payload, what=f"{site}'s {refusal.kind}"
                )
                record_refusal(site, refusal.kind, statement.to_json(), refusal.signature)
            except VeracityError as err:
                log.warning("refusal of %s not recorded: %s", site, err)
            refused.append(f"{site}: {refusal.kind}: {refusal.reason}")
            continue
        assert parsed.explanation is not None and parsed.receipt is not None  # noqa: S101, PT018
        try:
            check_site_receipt(
                coordinator,
                site,
                parsed.receipt,
                study_hash=terms.study_hash,
                query_id=EXPLANATION_QUERY_ID,
                expected_hash=terms_hash(terms),
                answer_query_hash=parsed.explanation.query_hash,
                answer_json=parsed.explanation.to_json(),
                what="explanation",
            )
        except (InputError, SignatureError) as err:
            log.warning("explanation of %s dropped: %s", site, err)
            refused.append(f"{site}: dropped ({err})")
            continue
        if len(parsed.explanation.values) != model.spec.n_features:
            # Signed, but not an answer about this model: one site must not sink the rest.
            reason = (
                f"{site} sent {len(parsed.explanation.values)} figures; the model has "
                f"{model.spec.n_features}"
            )
            log.warning("explanation of %s dropped: %s", site, reason)
            refused.append(f"{site}: dropped ({reason})")
            continue
        answers[site] = (parsed.explanation, parsed.receipt)
    sites = tuple(sorted(answers))
    receipts = tuple(receipt for _, (_, receipt) in sorted(answers.items()))
    if len(answers) < study.min_sites:
        refused.append(f"{len(answers)} site(s) answered; the study needs {study.min_sites}")
        return GatheredExplanation(terms, None, b"", receipts, sites, tuple(refused))
    report = explanation_report(
        spec=model.spec,
        features=model.features,
        terms=terms,
        sums={site: answer for site, (answer, _) in answers.items()},
    )
    return GatheredExplanation(terms, report, report_svg(report), receipts, sites, tuple(refused))


def execute_explanation(
    coordinator: CoordinatorService,
    grid: PollingGrid,
    study: Study,
    terms: ExplanationTerms,
    *,
    run_id: str,
    sites_by_node: dict[int, str],
    timeout: float,
    record_refusal: Callable[[str, str, dict[str, object], str], None],
) -> ExplanationOutcome:
    """Ask every matched site to explain the released ``terms.model_hash``; record the report.

    ``record_refusal(site, kind, payload, signature)`` records a site's signed refusal.

    Raises
    ------
    NotFound
        If the model is not in the registry.
    VeracityError
        If the ledger refuses the entry.
    """
    model = coordinator.registry.get(terms.model_hash)
    gathered = gather_explanation(
        coordinator,
        grid,
        study,
        terms,
        model,
        run_id=run_id,
        sites_by_node=sites_by_node,
        timeout=timeout,
        record_refusal=record_refusal,
    )
    if gathered.report is None:
        return ExplanationOutcome(None, gathered.sites, gathered.refused)
    hashed = coordinator.registry.put_explanation(terms.model_hash, gathered.report, gathered.plot)
    coordinator.record_explanation(SERVER_APP, gathered.entry(run_id))
    assert hashed == gathered.report_hash  # noqa: S101 - the registry hashes the same JSON
    return ExplanationOutcome(hashed, gathered.sites, gathered.refused)
