"""A site's training receipt: its signed account of one round (docs/architecture.md).

The site builds its receipt as a :class:`Receipt` and signs the canonical JSON of
:meth:`Receipt.to_json` under :data:`RECEIPT_DOMAIN` for its log (the log id is in the
signed bytes); the coordinator validates what arrives with :meth:`Receipt.parse` before it
checks who signed it, and the ledger validates
the receipts inside ``round.completed`` with the same model. A receipt the coordinator
accepts is therefore one the ledger records.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, StringConstraints

from veracity.contracts.base import Contract
from veracity.core.fields import Count, Hash, Ident, Name, Number, Round

__all__ = [
    "RECEIPT_DOMAIN",
    "RECEIPT_FIELDS",
    "Base64Signature",
    "HistoryItem",
    "check_history",
    "Accountant",
    "Neighbouring",
    "Delta",
    "EpsilonSpent",
    "History",
    "NoiseGenerator",
    "Receipt",
    "SignedReceipt",
]

#: The signing domain of receipts (``sign_bound(key, RECEIPT_DOMAIN, log_id, receipt)``);
#: v2 binds the log id.
RECEIPT_DOMAIN = "veracity.receipt.v2"

#: An Ed25519 signature in standard base64 (64 bytes: 86 characters and ``==``).
Base64Signature = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]{86}==$")]

#: One segment of an accountant's history: ``[noise_multiplier, sample_rate, steps]``.
HistoryItem = list[int | float]


def check_history(value: list[HistoryItem]) -> list[HistoryItem]:
    """Check an accountant history as receipts carry it (a pydantic after-validator).

    Raises
    ------
    ValueError
        If an item is not ``[noise_multiplier, sample_rate, steps]`` with valid terms.
    """
    for step in value:
        if len(step) != 3:
            raise ValueError("each history item is [noise_multiplier, sample_rate, steps]")
        noise, rate, steps = step
        if not (math.isfinite(noise) and 0 <= noise < 2**53 and math.isfinite(rate)):
            raise ValueError("noise_multiplier must be finite and >= 0")
        if not 0 < rate <= 1:
            raise ValueError("sample_rate must be in (0, 1]")
        if not isinstance(steps, int) or isinstance(steps, bool) or not 0 <= steps < 2**53:
            raise ValueError("steps must be a non-negative integer")
    return value


# The privacy terms every site receipt states (training rounds, analysis queries and
# explanations alike), defined once.
#: The accountant that recomputes ``epsilon`` from ``history``: Google dp-accounting's PLD.
Accountant = Literal["pld"]
#: The neighbouring relation ``epsilon`` is stated for (the row count is public).
Neighbouring = Literal["replace-one"]
#: The delta ``epsilon`` is stated at.
Delta = Annotated[Number, Field(gt=0, lt=1)]
#: An epsilon spent (cumulative, or of one release).
EpsilonSpent = Annotated[Number, Field(ge=0)]
#: The dataset's accountant history (:func:`check_history`).
History = Annotated[list[HistoryItem], AfterValidator(check_history)]
#: Where the site drew its DP noise (and Poisson samples) from.
NoiseGenerator = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class Receipt(Contract):
    """A site's signed account of one round of training.

    ``epsilon`` is the dataset's (its budget pool's) cumulative epsilon after the round,
    every study and run on it, for replace-one neighbours (``neighbouring``: the row count
    is public), recomputable from ``history`` and ``delta`` with Google dp-accounting's PLD
    accountant (``accountant: "pld"``; docs/architecture.md gives the call);
    ``epsilon_add_remove`` is the add/remove-one figure of the same history (Opacus PRV),
    for comparison with the literature only; ``noise_generator`` names where the site drew
    its DP noise and Poisson samples from; ``seed_commitment`` commits to the site's secret
    seed of the round, from which that randomness was derived, so that the site can later
    replay the round and show it produced exactly ``update_hash`` (``veracity site replay``).
    """

    site: Name
    study: Hash
    round: Round
    run_id: Ident
    dataset_id: Ident
    dataset_commitment: Hash
    update_hash: Hash
    accountant: Accountant
    neighbouring: Neighbouring
    delta: Delta
    epsilon: EpsilonSpent
    epsilon_add_remove: EpsilonSpent
    history: History
    max_grad_norm: Annotated[Number, Field(gt=0)]
    num_examples: Count
    noise_generator: NoiseGenerator
    #: :func:`veracity.contracts.replay.seed_commitment` of the secret per-round seed the
    #: round's sampling and noise came from (absent on receipts signed before it existed).
    seed_commitment: Hash | None = None


#: Exactly the fields of a receipt, in declaration order.
RECEIPT_FIELDS: tuple[str, ...] = tuple(Receipt.model_fields)


class SignedReceipt(Contract):
    """A receipt with the site's base64 signature, as ``round.completed`` lists it."""

    receipt: Receipt
    signature: Base64Signature
