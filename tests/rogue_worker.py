"""A site worker that misbehaves in two ways an honest site cannot: a buggy or rogue site.

Run as a script in place of ``python -m veracity.client.worker`` (same arguments). It
trains like an honest site, then rewrites its receipt's ``accountant`` to ``"rdp"`` and
signs the rewritten receipt with the site's own key, so the signature is genuine and only
the contract is broken: the coordinator must drop this site's update, not fail the run.
Its accountant also cannot bound any round at a noise multiplier below 1 (as Opacus's PRV
accountant could not bound rounds at 0.05), so it refuses such rounds with a signed
``budget.refused`` whose ``epsilon_requested`` is ``null``: the coordinator must record it.
"""

from __future__ import annotations

import dataclasses
import math
import sys

from veracity.client import budget, service
from veracity.client.worker import main
from veracity.ledger.statement import RECEIPT_DOMAIN

_honest_train = service.SiteAgent.handle_train
_honest_epsilon = budget._replace_one_cached


def _rogue_train(self: service.SiteAgent, request: service.TrainRequest) -> service.TrainOutcome:
    outcome = _honest_train(self, request)
    if isinstance(outcome, service.TrainReply):
        receipt = {**outcome.receipt, "accountant": "rdp"}
        signature = self.site.sign_receipt(RECEIPT_DOMAIN, receipt)
        outcome = dataclasses.replace(outcome, receipt=receipt, receipt_signature=signature)
    return outcome


def _unbounded_below_one(history: budget.History, delta: float) -> float:
    if any(segment.noise_multiplier < 1.0 for segment in history):
        return math.inf
    return _honest_epsilon(history, delta)


if __name__ == "__main__":
    service.SiteAgent.handle_train = _rogue_train  # type: ignore[method-assign]
    budget._replace_one_cached = _unbounded_below_one  # type: ignore[assignment]
    sys.exit(main())
