"""What the coordinator checks in every site reply before it may be aggregated.

A trained reply carries the site's signed receipt; a refusal carries the site's signed
statement. Both are verified against the key the ledger says the site has; a reply whose
receipt does not verify, names another site, study, run or round, or whose ``update_hash``
does not match the weights that arrived, is dropped (and recorded as dropped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from veracity.crypto.keys import VerifyKey
from veracity.errors import InputError, VerificationError
from veracity.ledger.canonical import parse_json_object
from veracity.ledger.events import RECEIPT_FIELDS as RECEIPT_SCHEMA_FIELDS
from veracity.ledger.statement import RECEIPT_DOMAIN, verify_document, verify_statement

__all__ = [
    "RECEIPT_FIELDS",
    "REFUSAL_KINDS",
    "AcceptedUpdate",
    "check_receipt",
    "check_refusal",
]

#: Exactly the fields a receipt carries (the ledger's receipt schema).
RECEIPT_FIELDS = frozenset(RECEIPT_SCHEMA_FIELDS)

#: Statements a site may answer a training request with instead of an update.
REFUSAL_KINDS = frozenset({"budget.refused", "study.refused", "approval.missing"})


@dataclass(frozen=True)
class AcceptedUpdate:
    """A site's update whose receipt verified."""

    site: str
    receipt: dict[str, Any]
    signature: str

    @property
    def epsilon(self) -> float:
        """The dataset's cumulative epsilon after this round, as the site reported it."""
        return float(self.receipt["epsilon"])


def check_receipt(
    receipt_json: str,
    signature: str,
    *,
    site: str,
    site_key: VerifyKey,
    study_hash: str,
    run_id: str,
    server_round: int,
    update_hash: str,
) -> AcceptedUpdate:
    """Verify a site's receipt for the update that arrived with it.

    Raises
    ------
    InputError
        If the receipt is not a JSON object with exactly the receipt fields.
    VerificationError
        If it names another site, study, run or round, its ``update_hash`` is not the hash
        of the weights that arrived, its numbers are not finite, or (``SignatureError``)
        its signature is not the site's.
    """
    receipt = parse_json_object(receipt_json, what="receipt")
    fields = set(receipt)
    if fields != RECEIPT_FIELDS:
        missing, extra = sorted(RECEIPT_FIELDS - fields), sorted(fields - RECEIPT_FIELDS)
        raise InputError(f"receipt fields differ: missing {missing}, unexpected {extra}")
    expected = {"site": site, "study": study_hash, "run_id": run_id, "round": server_round}
    for name, value in expected.items():
        if receipt[name] != value:
            raise VerificationError(f"receipt {name} is {receipt[name]!r}, expected {value!r}")
    if receipt["update_hash"] != update_hash:
        raise VerificationError("receipt update_hash does not match the weights received")
    for name in ("epsilon", "epsilon_add_remove", "delta", "max_grad_norm"):
        number = receipt[name]
        if not isinstance(number, int | float) or not math.isfinite(number) or number < 0:
            raise VerificationError(f"receipt {name} is not a finite non-negative number")
    verify_document(site_key, RECEIPT_DOMAIN, receipt, signature)
    return AcceptedUpdate(site=site, receipt=receipt, signature=signature)


def check_refusal(
    kind: str, payload_json: str, signature: str, *, site: str, site_key: VerifyKey
) -> dict[str, Any]:
    """Verify a site's signed refusal statement; returns its payload.

    Raises
    ------
    InputError
        If the kind is not a refusal or the payload is not a JSON object.
    VerificationError
        If the payload names another site, or (``SignatureError``) the signature is not
        the site's.
    """
    if kind not in REFUSAL_KINDS:
        raise InputError(f"{kind!r} is not a refusal")
    payload = parse_json_object(payload_json, what="refusal")
    if payload.get("site") != site:
        raise VerificationError(f"refusal names site {payload.get('site')!r}, sent by {site!r}")
    verify_statement(site_key, kind, site, payload, signature)
    return payload
