"""Valid contract documents for tests, built from the contract models themselves.

Every test that needs a receipt, a refusal or a site reply builds it here, so test data has
exactly the shape the producers send and the checkers accept (``changes`` override fields,
including with values the contract refuses, for tests of the refusal).
"""

from __future__ import annotations

from typing import Any

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from veracity.contracts.messages import ReceiptRecord, RefusalRecord
from veracity.contracts.receipts import RECEIPT_DOMAIN, Receipt
from veracity.contracts.refusals import BudgetRefused
from veracity.core.canonical import canonical_json
from veracity.crypto.keys import SigningKey
from veracity.flower_serde import weights_to_record
from veracity.ledger.statement import sign_bound, sign_statement
from veracity.tasks.weights import Weights

STUDY_HASH = "ab" * 32
RUN_ID = "42"
SIGNED_AT = "2026-11-27T15:47:52.123456Z"
#: The log id site signatures bind in tests that run without a ledger.
LOG_ID = bytes(range(1, 33))


def receipt_document(**changes: Any) -> dict[str, Any]:
    """A valid receipt's JSON object (checked against :class:`Receipt`), then ``changes``."""
    document = Receipt(
        site="hospital-a",
        study=STUDY_HASH,
        round=1,
        run_id=RUN_ID,
        dataset_id="bc",
        dataset_commitment="cd" * 32,
        update_hash="ef" * 32,
        accountant="pld",
        neighbouring="replace-one",
        delta=1e-5,
        epsilon=1.0,
        epsilon_add_remove=0.5,
        history=[[1.5, 0.2, 5]],
        max_grad_norm=1.0,
        num_examples=100,
        noise_generator="test",
    ).to_json()
    document.update(changes)
    return document


def budget_refused_document(**changes: Any) -> dict[str, Any]:
    """A valid ``budget.refused`` payload's JSON object, then ``changes``."""
    document = BudgetRefused(
        site="hospital-a",
        study_hash=STUDY_HASH,
        dataset_id="bc",
        run_id=RUN_ID,
        round=1,
        epsilon_requested=3.5,
        epsilon_left=0.25,
        signed_at=SIGNED_AT,
    ).to_json()
    document.update(changes)
    return document


def trained_reply(
    request: Message,
    key: SigningKey,
    weights: Weights,
    receipt: dict[str, Any],
    *,
    examples: int = 100,
    log_id: bytes | str = LOG_ID,
    metrics: dict[str, float] | None = None,
) -> Message:
    """A site's trained reply to ``request``: the update, its metrics and signed receipt."""
    record = ReceiptRecord(
        receipt_json=canonical_json(receipt).decode(),
        signature=sign_bound(key, RECEIPT_DOMAIN, log_id, receipt),
    )
    content = RecordDict(
        {
            "arrays": weights_to_record(weights),
            "metrics": MetricRecord(
                {"num-examples": examples, "train-seconds": 0.5, **(metrics or {})}
            ),
            "receipt": ConfigRecord(record.to_record()),
        }
    )
    return Message(content, reply_to=request)


def refused_reply(
    request: Message, key: SigningKey, payload: dict[str, Any], *, log_id: bytes | str = LOG_ID
) -> Message:
    """A site's signed ``budget.refused`` reply to ``request``."""
    record = RefusalRecord(
        kind="budget.refused",
        payload_json=canonical_json(payload).decode(),
        signature=sign_statement(key, "budget.refused", payload["site"], payload, log_id=log_id),
        reason="cap",
    )
    return Message(RecordDict({"refusal": ConfigRecord(record.to_record())}), reply_to=request)
