"""Explanations of a released model under the sites' own budgets.

An explanation is one more query a site answers with its own noise, charged to the
dataset's budget pool and to the model's study's cap like any analysis query: the mean
integrated-gradients attribution of every input of the model (each feature of a table,
each channel and time step of a signal, each pixel of an image) over the site's records.

Per record, the site computes the attribution vector by integrated gradients (Captum's
``IntegratedGradients``, ``steps`` Gauss-Legendre points, from the documented
:data:`BASELINE`), clips it to L2 norm ``clip_norm``, and sums the clipped vectors; it adds
Gaussian noise of standard deviation ``z * clip_norm`` to every figure, where ``z`` is the
noise multiplier that costs ``epsilon`` at ``delta`` alone
(:mod:`veracity.analytics.calibration`): replacing one record moves the sum by at most
``2 * clip_norm`` in L2, the replace-one sensitivity. Row counts are public (the unit of
privacy is one record under replace-one), so each site states its number of records.

The site signs an :class:`~veracity.contracts.analysis.AnalysisReceipt` for it under the
analysis receipt domain, with ``query_id`` :data:`EXPLANATION_QUERY_ID`, ``query_hash`` the
:func:`terms_hash` of the :class:`ExplanationTerms` and ``answer_hash`` the hash of its
:class:`SiteExplanation`. ``model.explained`` records the combined report's hash with every
site's signed receipt, so each site's spend is recomputable from the ledger alone.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from veracity.contracts.analysis import SignedAnalysisReceipt, check_one_outcome
from veracity.contracts.base import Contract, Payload
from veracity.core.canonical import canonical_hash
from veracity.core.fields import Count, Hash, Ident, Number, Text

__all__ = [
    "EXPLANATION_QUERY_ID",
    "BASELINE",
    "METHOD",
    "ExplanationTerms",
    "ReleaseExplanation",
    "terms_hash",
    "SiteExplanation",
    "ExplanationReply",
    "ExplanationRefusal",
    "ModelExplained",
]

#: The ``query_id`` of every explanation receipt (and of its spend at the site).
EXPLANATION_QUERY_ID = "explanation"
#: The attribution method.
METHOD: Literal["integrated_gradients"] = "integrated_gradients"
#: The integration baseline: the all-zero input of the model, i.e. every standardised
#: feature (or channel) at the centre of the study's public scaling.
BASELINE: Literal["zeros"] = "zeros"

#: At most this many figures (one per model input) in one explanation.
MAX_FIGURES = 1_000_000


class ExplanationTerms(Contract):
    """What the coordinator asks every site to explain, and at what cost.

    ``epsilon`` is the explanation's own cost at ``delta`` at each site (before composing
    with the dataset's history); ``clip_norm`` bounds one record's attribution vector in L2.
    """

    model_hash: Hash
    study_hash: Hash
    method: Literal["integrated_gradients"] = METHOD
    baseline: Literal["zeros"] = BASELINE
    steps: Annotated[int, Field(ge=2, le=1024)] = 32
    clip_norm: Annotated[Number, Field(gt=0, le=1e6)]
    epsilon: Annotated[Number, Field(gt=0, le=100)]
    delta: Annotated[Number, Field(gt=0, lt=1)]


class ReleaseExplanation(Contract):
    """The explanation a training run asks for at release, before its model's hash is known.

    The run's config carries it (so ``run.started``'s ``config_hash`` covers it); once the
    final model exists, :meth:`for_model` gives the terms the sites are asked under.
    """

    steps: Annotated[int, Field(ge=2, le=1024)] = 32
    clip_norm: Annotated[Number, Field(gt=0, le=1e6)]
    epsilon: Annotated[Number, Field(gt=0, le=100)]
    delta: Annotated[Number, Field(gt=0, lt=1)]

    def for_model(self, model_hash: str, study_hash: str) -> ExplanationTerms:
        """The terms of explaining ``model_hash`` of ``study_hash`` under these costs."""
        return ExplanationTerms(
            model_hash=model_hash,
            study_hash=study_hash,
            steps=self.steps,
            clip_norm=self.clip_norm,
            epsilon=self.epsilon,
            delta=self.delta,
        )


def terms_hash(terms: ExplanationTerms) -> str:
    """The hash that names an explanation's terms (the receipts' ``query_hash``)."""
    return canonical_hash({"kind": "explanation", **terms.model_dump(mode="json")})


class SiteExplanation(Contract):
    """What leaves a site: the noisy sum of clipped attributions, each figure's noise std.

    ``records`` is the number of records summed (public, like a dataset's row count).
    """

    query_hash: Hash
    records: Annotated[int, Field(ge=1, le=2**53 - 1)]
    values: Annotated[list[Number], Field(min_length=1, max_length=MAX_FIGURES)]
    stds: Annotated[
        list[Annotated[Number, Field(ge=0)]], Field(min_length=1, max_length=MAX_FIGURES)
    ]

    @model_validator(mode="after")
    def _lengths(self) -> SiteExplanation:
        if len(self.values) != len(self.stds):
            raise ValueError("values and stds must have the same length")
        return self


class ExplanationRefusal(Contract):
    """A site's signed refusal of an explanation (``budget.refused`` or ``approval.missing``)."""

    kind: Literal["budget.refused", "approval.missing"]
    payload: dict[str, Any]
    signature: Annotated[str, Field(min_length=1, max_length=200)]
    reason: Text


class ExplanationReply(Contract):
    """A site's reply to ``query.explain``: its noisy sums with the signed receipt, or a refusal."""

    explanation: SiteExplanation | None = None
    receipt: SignedAnalysisReceipt | None = None
    refusal: ExplanationRefusal | None = None

    @model_validator(mode="after")
    def _one_outcome(self) -> ExplanationReply:
        check_one_outcome(self.explanation, self.receipt, self.refusal, what="an explanation")
        return self


# --- model.explained (issue #19) -------------------------------------------------------
class ModelExplained(Payload):
    """The coordinator combined the sites' noisy attributions into an explanation report.

    ``report_hash`` is the canonical hash of the report (values, standard errors, layout);
    ``top_features`` its inputs by decreasing absolute mean attribution (at most 10);
    ``receipts`` every contributing site's signed receipt, whose ``query_hash`` is
    ``terms_hash``.
    """

    KIND: ClassVar[str] = "model.explained"

    run_id: Ident
    model_hash: Hash
    study_hash: Hash
    terms: ExplanationTerms
    terms_hash: Hash
    report_hash: Hash
    records: Count
    top_features: Annotated[list[Ident], Field(max_length=10)]
    receipts: Annotated[list[SignedAnalysisReceipt], Field(min_length=1)]
    #: Why sites did not contribute (refusals, dropped replies), in words.
    refused: Annotated[list[Text], Field(max_length=1000)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> ModelExplained:
        if self.terms.model_hash != self.model_hash or self.terms.study_hash != self.study_hash:
            raise ValueError("the terms must name the model and study explained")
        if terms_hash(self.terms) != self.terms_hash:
            raise ValueError("terms_hash is not the hash of the terms")
        sites = [signed.receipt.site for signed in self.receipts]
        if len(set(sites)) != len(sites):
            raise ValueError("one receipt per site")
        for signed in self.receipts:
            receipt = signed.receipt
            if (receipt.study, receipt.query_id, receipt.query_hash) != (
                self.study_hash,
                EXPLANATION_QUERY_ID,
                self.terms_hash,
            ):
                raise ValueError(f"receipt of {receipt.site} is for another explanation")
        return self
