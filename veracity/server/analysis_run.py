"""One run of an analysis study, from the ServerApp's side: ask, check, combine, record.

:func:`execute_analysis` sends every matched site one ``query.analysis`` message (Flower's
query messages: the same SuperLink, TLS and SuperNode authentication as training) with the
study and its queries. Each site answers every query with its own noise, or refuses it
with a signed statement. For each reply the coordinator checks the receipt (the enrolled
site's signature under the analysis receipt domain, the study, query id and query hash,
and that ``answer_hash`` is the hash of the answer it came with), records each refusal as
the site's ledger entry, combines the answers of every query that at least ``min_sites``
sites answered (:mod:`veracity.analytics.combine`) and records ``analysis.answered`` with
the combined figures and every site's signed receipt: the run's answers in one change,
with one checkpoint after them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import ConfigRecord, Message, RecordDict

from veracity.analytics.combine import combine
from veracity.contracts.analysis import (
    ANALYSIS_RECEIPT_DOMAIN,
    AnalysisAnswered,
    AnalysisStudy,
    QueryReplies,
    SignedAnalysisReceipt,
    SiteAnswer,
    query_hash,
)
from veracity.contracts.messages import AnalysisInstruction, AnswersRecord
from veracity.contracts.refusals import REFUSAL_KINDS
from veracity.core.canonical import canonical_hash, canonical_json
from veracity.errors import InputError, SignatureError, VeracityError
from veracity.ledger.statement import verify_bound
from veracity.server.coordinator.service import CoordinatorService
from veracity.server.coordinator.unit_of_work import SERVER_APP
from veracity.server.polling_grid import PollingGrid, replies_by_site, reply_record

__all__ = ["MESSAGE_TYPE", "AnalysisOutcome", "execute_analysis"]

log = logging.getLogger(__name__)

#: The Flower message type of an analysis request (``@app.query("analysis")``).
MESSAGE_TYPE = "query.analysis"


@dataclass(frozen=True)
class AnalysisOutcome:
    """What one analysis run did: queries recorded, and refusals per query."""

    answered: tuple[str, ...]
    unanswered: dict[str, str]


def check_site_receipt(
    coordinator: CoordinatorService,
    site: str,
    signed: SignedAnalysisReceipt,
    *,
    study_hash: str,
    query_id: str,
    expected_hash: str,
    answer_query_hash: str,
    answer_json: object,
    what: str,
) -> None:
    """Check a site's signed receipt for one query answer (analytics or an explanation).

    Raises
    ------
    InputError
        If the receipt is of another site, another ``what``, or does not match the answer.
    SignatureError
        If the site's signature does not verify for this ledger's log (forged, or signed
        for another log or for none).
    """
    receipt = signed.receipt
    if receipt.site != site:
        raise InputError(f"{site} sent a receipt of {receipt.site}")
    if (receipt.study, receipt.query_id, receipt.query_hash) != (
        study_hash,
        query_id,
        expected_hash,
    ):
        raise InputError(f"{site}'s receipt is for another {what}")
    if answer_query_hash != expected_hash or receipt.answer_hash != canonical_hash(answer_json):
        raise InputError(f"{site}'s answer does not match its receipt")
    verify_bound(
        coordinator.site_key(site),
        ANALYSIS_RECEIPT_DOMAIN,
        coordinator.ledger.log_id,
        receipt.to_json(),
        signed.signature,
        what=f"{site}'s {what} receipt",
    )


def execute_analysis(
    coordinator: CoordinatorService,
    grid: PollingGrid,
    study: AnalysisStudy,
    *,
    run_id: str,
    sites_by_node: dict[int, str],
    timeout: float,
    record_refusal: Callable[[str, str, dict[str, object], str], None],
) -> AnalysisOutcome:
    """Ask every matched site all of ``study``'s queries; record what can be combined.

    ``record_refusal(site, kind, payload, signature)`` records a site's signed refusal.

    Raises
    ------
    VeracityError
        If the ledger refuses an entry.
    """
    query_ids = [query.query_id for query in study.queries]
    instruction = AnalysisInstruction(
        study=canonical_json(study.to_document()).decode("utf-8"),
        study_hash=study.study_hash,
        run_id=run_id,
        query_ids=json.dumps(query_ids),
    )
    messages = [
        Message(
            RecordDict({AnalysisInstruction.RECORD: ConfigRecord(instruction.to_record())}),
            dst_node_id=node,
            message_type=MESSAGE_TYPE,
        )
        for node in sites_by_node
    ]
    answers: dict[str, dict[str, tuple[SiteAnswer, SignedAnalysisReceipt]]] = {
        q: {} for q in query_ids
    }
    unanswered: dict[str, list[str]] = {q: [] for q in query_ids}
    for site, reply in replies_by_site(grid, messages, sites_by_node, timeout=timeout):
        try:
            record = reply_record(reply, AnswersRecord.RECORD)
            replies = QueryReplies.parse(
                json.loads(AnswersRecord.from_record(record).replies_json),
                what=f"{site}'s replies",
            )
        except (VeracityError, KeyError, ValueError) as err:
            log.warning("analysis reply of %s dropped: %s", site, err)
            for q in query_ids:
                unanswered[q].append(f"{site}: dropped ({err})")
            continue
        for item in replies.replies:
            if item.query_id not in answers:
                continue
            if item.refusal is not None:
                refusal = item.refusal
                try:
                    model = REFUSAL_KINDS[refusal.kind]
                    statement = model.parse(refusal.payload, what=f"{site}'s {refusal.kind}")
                    record_refusal(site, refusal.kind, statement.to_json(), refusal.signature)
                except VeracityError as err:
                    log.warning("refusal of %s not recorded: %s", site, err)
                unanswered[item.query_id].append(f"{site}: {refusal.kind}: {refusal.reason}")
                continue
            assert item.answer is not None and item.receipt is not None  # noqa: S101, PT018
            try:
                check_site_receipt(
                    coordinator,
                    site,
                    item.receipt,
                    study_hash=study.study_hash,
                    query_id=item.query_id,
                    expected_hash=query_hash(study, study.query(item.query_id)),
                    answer_query_hash=item.answer.query_hash,
                    answer_json=item.answer.to_json(),
                    what="study or query",
                )
            except (InputError, SignatureError) as err:
                log.warning("answer of %s to %s dropped: %s", site, item.query_id, err)
                unanswered[item.query_id].append(f"{site}: dropped ({err})")
                continue
            answers[item.query_id][site] = (item.answer, item.receipt)
    recorded: list[str] = []
    entries: list[AnalysisAnswered] = []
    for query in study.queries:
        got = answers[query.query_id]
        if len(got) < study.min_sites:
            unanswered[query.query_id].append(
                f"{len(got)} site(s) answered; the study needs {study.min_sites}"
            )
            continue
        combined = combine(
            study,
            query,
            # In site order, so the same answers always sum to the same floats.
            {site: (answer.values, answer.stds) for site, (answer, _) in sorted(got.items())},
        )
        entries.append(
            AnalysisAnswered(
                run_id=run_id,
                study_hash=study.study_hash,
                query_id=query.query_id,
                query_hash=query_hash(study, query),
                answer=combined.to_contract(query, list(got)),
                receipts=[receipt for _, (_, receipt) in sorted(got.items())],
                refused=unanswered[query.query_id],
            )
        )
        recorded.append(query.query_id)
    if entries:  # one change, one checkpoint for the run's answers
        coordinator.record_analysis(SERVER_APP, entries)
    missing = {q: "; ".join(v) for q, v in unanswered.items() if q not in recorded}
    return AnalysisOutcome(answered=tuple(recorded), unanswered=missing)
