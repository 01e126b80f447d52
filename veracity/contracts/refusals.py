"""What a site signs when it will not train a round: ``budget.refused``, ``approval.missing``.

The site builds the payload as one of these models and signs it
(:meth:`veracity.client.site.Site.sign`); the coordinator validates the signed payload it
receives with the same model before it records or lists it.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from veracity.contracts.base import SiteStatement
from veracity.core.fields import Hash, Ident, Number, Round, Text

__all__ = ["REFUSAL_KINDS", "BudgetRefused", "ApprovalMissingStatement"]


class BudgetRefused(SiteStatement):
    """A round refused because it would take the dataset or the study past its cap.

    ``epsilon_requested`` is what the round would bring it to; ``null`` when the accountant
    cannot bound the round at all (the round would spend an unbounded epsilon).
    """

    KIND: ClassVar[str] = "budget.refused"

    study_hash: Hash
    dataset_id: Ident
    run_id: Ident
    round: Round
    epsilon_requested: Annotated[Number, Field(ge=0)] | None
    epsilon_left: Number


class ApprovalMissingStatement(SiteStatement):
    """A round refused because the site's operator's approval does not cover what was asked.

    ``study_hash`` is the hash as requested; ``round`` the round as requested (0 included:
    a round outside the study's is itself a reason); ``reason`` says which check failed (no
    or withdrawn approval, altered terms, another code hash, the dataset file changed,
    weights beyond the study's bound, a round or run the study does not allow).
    """

    KIND: ClassVar[str] = "approval.missing"

    study_hash: Hash
    run_id: Ident
    round: Annotated[int, Field(ge=0, le=1_000_000)]
    reason: Text


#: Statements a site may answer a training request with instead of an update.
REFUSAL_KINDS: dict[str, type[SiteStatement]] = {
    BudgetRefused.KIND: BudgetRefused,
    ApprovalMissingStatement.KIND: ApprovalMissingStatement,
}
