"""The site's Flower ClientApp: unpack the message, call the site agent, pack the reply.

Runs inside :mod:`veracity.client.worker`, which sets the run's code hash (the SHA-256 of
the FAB the SuperNode received) for the duration of each task: that, not anything the
coordinator claims, is the code hash the site agent checks against its operator's approval.
The site agent of each site directory is opened once and kept, so a run's Opacus engine
stays warm across rounds.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from veracity import __version__
from veracity.client.analysis import AnalysisAgent, QueryRefusal, QueryRequest
from veracity.client.explanation import ExplanationAgent, ExplanationRequest
from veracity.client.service import Refusal, SiteAgent, TrainRequest
from veracity.contracts.analysis import (
    QueryRefusalItem,
    QueryReplies,
    QueryReplyItem,
    SignedAnalysisReceipt,
)
from veracity.contracts.explanation import ExplanationRefusal, ExplanationReply
from veracity.contracts.messages import (
    ARRAYS_RECORD,
    METRICS_RECORD,
    AnalysisInstruction,
    AnswersRecord,
    ExplainInstruction,
    ExplanationRecord,
    HelloRecord,
    ReceiptRecord,
    RefusalRecord,
    TrainInstruction,
)
from veracity.core.canonical import canonical_json, parse_json_object
from veracity.errors import ApprovalMissing, InputError
from veracity.flower_serde import weights_from_record, weights_to_record

__all__ = ["app", "run_code_hash", "current_code_hash", "agent_for"]

log = logging.getLogger(__name__)

app = ClientApp()

_CODE_HASH: contextvars.ContextVar[str | None] = contextvars.ContextVar("code_hash", default=None)
_AGENTS: dict[Path, SiteAgent] = {}
_ANALYSTS: dict[Path, AnalysisAgent] = {}
_EXPLAINERS: dict[Path, ExplanationAgent] = {}
_AGENTS_LOCK = threading.Lock()


@contextlib.contextmanager
def run_code_hash(code_hash: str) -> Iterator[None]:
    """Make ``code_hash`` the current run's code hash while the block runs."""
    token = _CODE_HASH.set(code_hash)
    try:
        yield
    finally:
        _CODE_HASH.reset(token)


def current_code_hash() -> str | None:
    """The code hash the worker computed for the running task, if any."""
    return _CODE_HASH.get()


def _site_dir(context: Context) -> Path:
    try:
        return Path(str(context.node_config["site-dir"])).resolve()
    except KeyError as err:
        raise InputError("this SuperNode was started without node config site-dir") from err


def agent_for(site_dir: Path) -> SiteAgent:
    """The site agent of ``site_dir``, opened once per process."""
    with _AGENTS_LOCK:
        agent = _AGENTS.get(site_dir)
        if agent is None:
            agent = _AGENTS[site_dir] = SiteAgent.open(site_dir, account_ahead=True)
        return agent


def analyst_for(site_dir: Path) -> AnalysisAgent:
    """The analysis agent of ``site_dir`` (sharing the site agent's store), opened once."""
    agent = agent_for(site_dir)
    with _AGENTS_LOCK:
        analyst = _ANALYSTS.get(site_dir)
        if analyst is None:
            analyst = _ANALYSTS[site_dir] = AnalysisAgent(agent.site)
        return analyst


def explainer_for(site_dir: Path) -> ExplanationAgent:
    """The explanation agent of ``site_dir`` (sharing the site agent's store), opened once."""
    agent = agent_for(site_dir)
    with _AGENTS_LOCK:
        explainer = _EXPLAINERS.get(site_dir)
        if explainer is None:
            explainer = _EXPLAINERS[site_dir] = ExplanationAgent(agent.site)
        return explainer


@app.query("hello")
def hello(msg: Message, context: Context) -> Message:
    """Tell the coordinator which site this node is (no data, no statistics)."""
    name = agent_for(_site_dir(context)).site.name
    hello_record = HelloRecord(site=name, version=__version__, code_hash=current_code_hash() or "")
    record = ConfigRecord(hello_record.to_record())
    return Message(RecordDict({HelloRecord.RECORD: record}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train one round under the site's approval and budget, or refuse with a signature."""
    started = time.perf_counter()
    code_hash = current_code_hash()
    if code_hash is None:
        raise ApprovalMissing("the run's code hash is unknown; run the site with its worker")
    content = msg.content
    if TrainInstruction.RECORD not in content.config_records:
        raise InputError(f"a train message needs a {TrainInstruction.RECORD!r} record")
    if ARRAYS_RECORD not in content.array_records:
        raise InputError(f"a train message needs an {ARRAYS_RECORD!r} record")
    instruction = TrainInstruction.from_record(
        dict(content.config_records[TrainInstruction.RECORD])
    )
    request = TrainRequest(
        study=parse_json_object(instruction.study, what="study"),
        study_hash=instruction.study_hash,
        run_id=instruction.run_id,
        round=instruction.server_round,
        code_hash=code_hash,
        weights=weights_from_record(content.array_records[ARRAYS_RECORD]),
    )
    outcome = agent_for(_site_dir(context)).handle_train(request)
    if isinstance(outcome, Refusal):
        log.warning("refused round %d of run %s: %s", request.round, request.run_id, outcome.reason)
        refusal = RefusalRecord(
            kind=outcome.kind,
            payload_json=canonical_json(outcome.payload).decode("utf-8"),
            signature=outcome.signature,
            reason=outcome.reason,
        )
        return Message(
            RecordDict({RefusalRecord.RECORD: ConfigRecord(refusal.to_record())}), reply_to=msg
        )
    metrics: dict[str, int | float | list[int] | list[float]] = {
        name: float(value) for name, value in outcome.metrics.items()
    }
    metrics["num-examples"] = int(outcome.metrics["num-examples"])
    metrics["train-seconds"] = time.perf_counter() - started
    receipt = ReceiptRecord(
        receipt_json=canonical_json(outcome.receipt).decode("utf-8"),
        signature=outcome.receipt_signature,
    )
    reply = RecordDict(
        {
            ARRAYS_RECORD: weights_to_record(outcome.weights),
            METRICS_RECORD: MetricRecord(metrics),
            ReceiptRecord.RECORD: ConfigRecord(receipt.to_record()),
        }
    )
    return Message(reply, reply_to=msg)


@app.query("explain")
def explain(msg: Message, context: Context) -> Message:
    """Explain a model over the site's records under its approval and budget, or refuse."""
    code_hash = current_code_hash()
    if code_hash is None:
        raise ApprovalMissing("the run's code hash is unknown; run the site with its worker")
    content = msg.content
    if ExplainInstruction.RECORD not in content.config_records:
        raise InputError(f"an explain message needs a {ExplainInstruction.RECORD!r} record")
    if ARRAYS_RECORD not in content.array_records:
        raise InputError(f"an explain message needs an {ARRAYS_RECORD!r} record")
    instruction = ExplainInstruction.from_record(
        dict(content.config_records[ExplainInstruction.RECORD])
    )
    request = ExplanationRequest(
        terms=parse_json_object(instruction.terms, what="explanation terms"),
        study=parse_json_object(instruction.study, what="study"),
        code_hash=code_hash,
        weights=weights_from_record(content.array_records[ARRAYS_RECORD]),
    )
    outcome = explainer_for(_site_dir(context)).handle(request)
    if isinstance(outcome, QueryRefusal):
        reply = ExplanationReply(
            refusal=ExplanationRefusal(
                kind=outcome.kind,
                payload=outcome.statement.payload,
                signature=outcome.statement.signature,
                reason=outcome.reason,
            )
        )
    else:
        reply = ExplanationReply(
            explanation=outcome.explanation,
            receipt=SignedAnalysisReceipt(receipt=outcome.receipt, signature=outcome.signature),
        )
    record = ExplanationRecord(reply_json=canonical_json(reply.to_json()).decode("utf-8"))
    return Message(
        RecordDict({ExplanationRecord.RECORD: ConfigRecord(record.to_record())}), reply_to=msg
    )


@app.query("analysis")
def analysis(msg: Message, context: Context) -> Message:
    """Answer an analysis study's queries under the site's approval and budget, or refuse."""
    code_hash = current_code_hash()
    if code_hash is None:
        raise ApprovalMissing("the run's code hash is unknown; run the site with its worker")
    content = msg.content
    if AnalysisInstruction.RECORD not in content.config_records:
        raise InputError(f"an analysis message needs a {AnalysisInstruction.RECORD!r} record")
    instruction = AnalysisInstruction.from_record(
        dict(content.config_records[AnalysisInstruction.RECORD])
    )
    study = parse_json_object(instruction.study, what="analysis study")
    query_ids = json.loads(instruction.query_ids)
    if not isinstance(query_ids, list) or not all(isinstance(q, str) for q in query_ids):
        raise InputError("query_ids must be a JSON list of query ids")
    analyst = analyst_for(_site_dir(context))
    replies: list[QueryReplyItem] = []
    outcomes = analyst.handle_queries(
        [
            QueryRequest(
                study=study, study_hash=instruction.study_hash, code_hash=code_hash, query_id=q
            )
            for q in query_ids
        ]
    )
    for query_id, outcome in zip(query_ids, outcomes, strict=True):
        if isinstance(outcome, QueryRefusal):
            refusal = QueryRefusalItem(
                kind=outcome.kind,
                payload=outcome.statement.payload,
                signature=outcome.statement.signature,
                reason=outcome.reason,
            )
            replies.append(QueryReplyItem(query_id=query_id, refusal=refusal))
        else:
            signed = SignedAnalysisReceipt(receipt=outcome.receipt, signature=outcome.signature)
            replies.append(QueryReplyItem(query_id=query_id, answer=outcome.answer, receipt=signed))
    record = AnswersRecord(
        replies_json=canonical_json(QueryReplies(replies=replies).to_json()).decode("utf-8")
    )
    return Message(
        RecordDict({AnswersRecord.RECORD: ConfigRecord(record.to_record())}), reply_to=msg
    )
