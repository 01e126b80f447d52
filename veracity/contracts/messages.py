"""The records of the Flower messages between the ServerApp and a site's ClientApp.

Flower carries a message's content as named records; a ``ConfigRecord`` is a flat mapping
of names to strings and numbers. These models are the contract of each record the two
sides exchange (docs/architecture.md, "Flower protocol"). The Flower adapters only move
fields between a ``ConfigRecord`` and these models (``Model.from_record(dict(record))``,
``ConfigRecord(model.to_record())``); everything is validated here, on both sides.

``train`` message (coordinator -> site)
    ``arrays`` (the global weights) and ``config``: :class:`TrainInstruction`.
Reply, trained
    ``arrays`` (the update), ``metrics`` (:data:`TRAIN_METRICS`) and ``receipt``:
    :class:`ReceiptRecord`.
Reply, refused
    ``refusal``: :class:`RefusalRecord`, no arrays.
``hello`` query reply
    ``site``: :class:`HelloRecord`.
``analysis`` query (coordinator -> site)
    ``analysis``: :class:`AnalysisInstruction` (the study and the queries to answer).
Reply
    ``answers``: :class:`AnswersRecord`, the JSON text of
    :class:`~veracity.contracts.analysis.QueryReplies`.
``explain`` query (coordinator -> site, #19)
    ``arrays`` (the model to explain) and ``explain``: :class:`ExplainInstruction`.
Reply
    ``explanation``: :class:`ExplanationRecord`, the JSON text of
    :class:`~veracity.contracts.explanation.ExplanationReply`.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import Field, StringConstraints

from veracity.contracts.base import Contract
from veracity.contracts.receipts import Base64Signature
from veracity.core.fields import Hash, Ident, Name, Round, Text

__all__ = [
    "ARRAYS_RECORD",
    "METRICS_RECORD",
    "TRAIN_METRICS",
    "RecordContract",
    "TrainInstruction",
    "ReceiptRecord",
    "RefusalRecord",
    "HelloRecord",
    "AnalysisInstruction",
    "AnswersRecord",
    "ExplainInstruction",
    "ExplanationRecord",
    "train_config",
]

#: The record holding weights (the global model, or a site's update).
ARRAYS_RECORD = "arrays"
#: The metric record of a trained reply.
METRICS_RECORD = "metrics"
#: The metrics a trained reply may carry (``train-loss`` only where the site shares it).
TRAIN_METRICS: frozenset[str] = frozenset(
    {
        "num-examples",
        "epsilon",
        "epsilon-rdp",
        "study-epsilon",
        "secure-mode",
        "train-seconds",
        "train-loss",
    }
)

#: A JSON document carried as text inside a record (at most 16 MiB).
JsonText = Annotated[str, StringConstraints(min_length=2, max_length=16 * 2**20)]


class RecordContract(Contract):
    """A record of a Flower message: ``RECORD`` is its name in the message's content."""

    RECORD: ClassVar[str]

    @classmethod
    def from_record(cls, fields: dict[str, Any]) -> Self:
        """Validate the fields of a received ``ConfigRecord`` (names as on the wire).

        Raises
        ------
        InputError
            Naming the first missing, extra or malformed field.
        """
        return cls.parse(fields, what=f"{cls.RECORD!r} record")

    def to_record(self) -> dict[str, Any]:
        """The fields of the ``ConfigRecord`` to send."""
        return self.to_json()


class TrainInstruction(RecordContract):
    """The ``config`` record of a ``train`` message.

    ``study`` is the study document as JSON text; ``code_hash`` is what the coordinator
    believes runs (a site checks the hash of the code it really received instead);
    ``server-round`` is set by Flower's strategy loop.
    """

    RECORD: ClassVar[str] = "config"

    study: JsonText
    study_hash: Hash
    run_id: Ident
    code_hash: Hash
    server_round: Round = Field(alias="server-round")


class ReceiptRecord(RecordContract):
    """The ``receipt`` record of a trained reply: the receipt's JSON text and its signature."""

    RECORD: ClassVar[str] = "receipt"

    receipt_json: JsonText = Field(alias="json")
    signature: Base64Signature


class RefusalRecord(RecordContract):
    """The ``refusal`` record of a refused reply: the signed statement and why, in words."""

    RECORD: ClassVar[str] = "refusal"

    kind: Literal["budget.refused", "approval.missing"]
    payload_json: JsonText = Field(alias="json")
    signature: Base64Signature
    reason: Text


class HelloRecord(RecordContract):
    """The ``site`` record of a ``hello`` query reply: who this node is, nothing about data."""

    RECORD: ClassVar[str] = "site"

    site: Name
    version: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    code_hash: Hash | Literal[""] = Field(alias="code-hash")


class AnalysisInstruction(RecordContract):
    """The ``analysis`` record of a ``query.analysis`` message.

    ``study`` is the analysis study document as JSON text; ``query_ids`` the JSON list of
    the queries to answer, in order.
    """

    RECORD: ClassVar[str] = "analysis"

    study: JsonText
    study_hash: Hash
    run_id: Ident
    query_ids: JsonText


class AnswersRecord(RecordContract):
    """The ``answers`` record of a reply to ``query.analysis``: the replies as JSON text."""

    RECORD: ClassVar[str] = "answers"

    replies_json: JsonText = Field(alias="json")


# --- explanations (#19) -------------------------------------------------------------------
class ExplainInstruction(RecordContract):
    """The ``explain`` record of a ``query.explain`` message: the terms and the model's study.

    ``terms`` is :class:`~veracity.contracts.explanation.ExplanationTerms` as JSON text,
    ``study`` the training study document as JSON text; the weights travel in ``arrays``.
    """

    RECORD: ClassVar[str] = "explain"

    terms: JsonText
    study: JsonText
    run_id: Ident


class ExplanationRecord(RecordContract):
    """The ``explanation`` record of a reply to ``query.explain``: the reply as JSON text."""

    RECORD: ClassVar[str] = "explanation"

    reply_json: JsonText = Field(alias="json")


def train_config(*, study: str, study_hash: str, run_id: str, code_hash: str) -> dict[str, Any]:
    """The ``config`` record fields of a run's ``train`` messages, without ``server-round``.

    Flower's strategy loop adds ``server-round`` to every round's copy; the rest is the
    same each round and is validated here as a :class:`TrainInstruction`.

    Raises
    ------
    InputError
        If a field is malformed.
    """
    fields = TrainInstruction.parse(
        {
            "study": study,
            "study_hash": study_hash,
            "run_id": run_id,
            "code_hash": code_hash,
            "server-round": 1,
        },
        what="train config",
    ).to_record()
    del fields["server-round"]
    return fields
