"""A site worker that signs receipts the ledger's contract refuses: a buggy or rogue site.

Run as a script in place of ``python -m veracity.client.worker`` (same arguments). It
trains like an honest site, then rewrites its receipt's ``accountant`` to ``"rdp"`` and
signs the rewritten receipt with the site's own key, so the signature is genuine and only
the contract is broken. The coordinator must drop this site's update, not fail the run.
"""

from __future__ import annotations

import dataclasses
import sys

from veracity.client import service
from veracity.client.worker import main
from veracity.ledger.statement import RECEIPT_DOMAIN, sign_document

_honest = service.SiteAgent.handle_train


def _rogue(self: service.SiteAgent, request: service.TrainRequest) -> service.TrainOutcome:
    outcome = _honest(self, request)
    if isinstance(outcome, service.TrainReply):
        receipt = {**outcome.receipt, "accountant": "rdp"}
        signature = sign_document(self.site.key, RECEIPT_DOMAIN, receipt)
        outcome = dataclasses.replace(outcome, receipt=receipt, receipt_signature=signature)
    return outcome


if __name__ == "__main__":
    service.SiteAgent.handle_train = _rogue  # type: ignore[method-assign]
    sys.exit(main())
