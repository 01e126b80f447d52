"""What the coordinator checks in every site reply before it may be aggregated.

A trained reply carries the site's signed receipt; a refusal carries the site's signed
statement. Both are validated with the contract models the ledger records them with
(:class:`~veracity.contracts.receipts.Receipt`, the refusal models of
:mod:`veracity.contracts.refusals`), so a reply accepted here is one the ledger accepts,
and then verified against the key the ledger says the site has. A reply whose receipt
does not verify, names another site, study, run or round, or whose ``update_hash`` does not
match the weights that arrived, is dropped (and recorded as dropped).
"""

from __future__ import annotations

from dataclasses import dataclass

from veracity.contracts.base import SiteStatement
from veracity.contracts.messages import ReceiptRecord, RefusalRecord
from veracity.contracts.receipts import RECEIPT_DOMAIN, Receipt, SignedReceipt
from veracity.contracts.refusals import REFUSAL_KINDS
from veracity.core.canonical import parse_json_object
from veracity.crypto.keys import VerifyKey
from veracity.errors import VerificationError
from veracity.ledger.statement import verify_bound, verify_statement

__all__ = ["AcceptedUpdate", "check_receipt", "check_refusal"]


@dataclass(frozen=True)
class AcceptedUpdate:
    """A site's update whose receipt verified."""

    site: str
    receipt: Receipt
    signature: str

    @property
    def epsilon(self) -> float:
        """The dataset's cumulative epsilon after this round, as the site reported it."""
        return self.receipt.epsilon

    def signed(self) -> SignedReceipt:
        """The receipt with its signature, as ``round.completed`` lists it."""
        return SignedReceipt(receipt=self.receipt, signature=self.signature)


def check_receipt(
    record: ReceiptRecord,
    *,
    site: str,
    site_key: VerifyKey,
    log_id: bytes,
    study_hash: str,
    run_id: str,
    server_round: int,
    update_hash: str,
) -> AcceptedUpdate:
    """Verify a site's receipt for the update that arrived with it, signed for ``log_id``.

    Raises
    ------
    InputError
        If the receipt is not a JSON object that is a valid :class:`Receipt`.
    VerificationError
        If it names another site, study, run or round, its ``update_hash`` is not the hash
        of the weights that arrived, or (``SignatureError``) its signature is not the site's
        for this log (forged, or signed for another log or for none).
    """
    receipt = Receipt.parse(parse_json_object(record.receipt_json, what="receipt"), what="receipt")
    expected = {"site": site, "study": study_hash, "run_id": run_id, "round": server_round}
    for name, value in expected.items():
        if getattr(receipt, name) != value:
            raise VerificationError(
                f"receipt {name} is {getattr(receipt, name)!r}, expected {value!r}"
            )
    if receipt.update_hash != update_hash:
        raise VerificationError("receipt update_hash does not match the weights received")
    verify_bound(
        site_key,
        RECEIPT_DOMAIN,
        log_id,
        receipt.to_json(),
        record.signature,
        what=f"{site}'s receipt",
    )
    return AcceptedUpdate(site=site, receipt=receipt, signature=record.signature)


def check_refusal(
    record: RefusalRecord, *, site: str, site_key: VerifyKey, log_id: bytes
) -> SiteStatement:
    """Verify a site's signed refusal statement for ``log_id``; returns its payload.

    Raises
    ------
    InputError
        If the payload is not a valid statement of the refusal's kind.
    VerificationError
        If the payload names another site, or (``SignatureError``) the signature is not
        the site's for this log.
    """
    model = REFUSAL_KINDS[record.kind]
    payload = model.parse(parse_json_object(record.payload_json, what="refusal"), what=record.kind)
    if payload.site != site:
        raise VerificationError(f"refusal names site {payload.site!r}, sent by {site!r}")
    verify_statement(
        site_key, record.kind, site, payload.to_json(), record.signature, log_id=log_id
    )
    return payload
