"""Analysis studies: federated statistics under the sites' own privacy budgets.

An analysis study is a document of kind ``analysis`` beside the training studies: the
columns it may read (each with the bounds every value is clipped to), the queries over
them (each with its epsilon share, its bins and its cohort filter), the delta, and the
sites with their epsilon caps. Sites review and approve it exactly like a training study
(``study.approved`` with a cap, bound to its hash and code hash), then answer each query
with their own Gaussian noise (:mod:`veracity.analytics`), charged to the dataset's budget
as its own entry in the same accountant history as DP-SGD.

A site's answer to one query carries an :class:`AnalysisReceipt`, signed under
:data:`ANALYSIS_RECEIPT_DOMAIN`: the query's hash, the noise it added, and the dataset's
epsilon after the query with the history it is recomputed from (Google dp-accounting's
PLD accountant, replace-one, as for training receipts). ``analysis.answered`` records each
query's combined answer with every site's signed receipt.
"""

from __future__ import annotations

import itertools
import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, StringConstraints, model_validator

from veracity.contracts.base import Contract, Payload
from veracity.contracts.receipts import (
    Accountant,
    Base64Signature,
    Delta,
    EpsilonSpent,
    History,
    Neighbouring,
    NoiseGenerator,
)
from veracity.core.canonical import canonical_hash
from veracity.core.fields import Count, Hash, Ident, Name, Number, Text

__all__ = [
    "ANALYSIS_RECEIPT_DOMAIN",
    "QUERY_KINDS",
    "QueryKind",
    "check_one_outcome",
    "ColumnBounds",
    "Condition",
    "Query",
    "AnalysisStudy",
    "query_terms",
    "query_hash",
    "SiteAnswer",
    "AnalysisReceipt",
    "SignedAnalysisReceipt",
    "CombinedAnswer",
    "AnalysisAnswered",
    "QueryRefusalItem",
    "QueryReplyItem",
    "QueryReplies",
]

#: The signing domain of analysis receipts (bound to the log id, like every site signature).
ANALYSIS_RECEIPT_DOMAIN = "veracity.analysis-receipt.v2"

#: What a query computes.
QueryKind = Literal[
    "count", "sum", "mean", "variance", "histogram", "quantiles", "crosstab", "kaplan_meier"
]
QUERY_KINDS: tuple[str, ...] = (
    "count",
    "sum",
    "mean",
    "variance",
    "histogram",
    "quantiles",
    "crosstab",
    "kaplan_meier",
)

#: Bin edges: at least two, strictly increasing, finite.
Edges = Annotated[list[Number], Field(min_length=2, max_length=1001)]
#: An epsilon share or cap: positive and finite.
Epsilon = Annotated[Number, Field(gt=0, le=1000)]


def _check_edges(edges: list[float] | None, what: str) -> None:
    if edges is None:
        return
    if any(b <= a for a, b in itertools.pairwise(edges)):
        raise ValueError(f"{what} must be strictly increasing")


class ColumnBounds(Contract):
    """A declared column and the bounds every value of it is clipped to before anything."""

    lower: Number
    upper: Number

    @model_validator(mode="after")
    def _ordered(self) -> ColumnBounds:
        if not self.upper > self.lower:
            raise ValueError("upper must be greater than lower")
        return self


class Condition(Contract):
    """One term of a cohort filter: ``column op value`` on a declared column's raw value."""

    column: Ident
    op: Literal["==", "!=", "<", "<=", ">", ">="]
    value: Number


class Query(Contract):
    """One question of an analysis study.

    ``column`` is the value column (``count`` needs none; ``kaplan_meier`` reads its time
    from it); ``bins`` are its edges (``histogram``, ``quantiles``, ``crosstab``, and the
    time intervals of ``kaplan_meier``); ``by`` with ``by_bins`` is the crosstab's second
    column or the Kaplan-Meier stratification; ``event`` is the Kaplan-Meier event column
    (1 event, 0 censored); ``probabilities`` are the quantiles to read. Only rows that meet
    every ``cohort`` condition are counted. ``epsilon`` is the share of the cap this query
    spends (replace-one, at the study's delta).
    """

    query_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    kind: QueryKind
    epsilon: Epsilon
    column: Ident | None = None
    bins: Edges | None = None
    by: Ident | None = None
    by_bins: Edges | None = None
    event: Ident | None = None
    probabilities: Annotated[list[Number], Field(min_length=1, max_length=99)] | None = None
    cohort: Annotated[list[Condition], Field(max_length=32)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _shape(self) -> Query:
        kind = self.kind
        _check_edges(self.bins, "bins")
        _check_edges(self.by_bins, "by_bins")
        needs_column = kind != "count"
        if needs_column and self.column is None:
            raise ValueError(f"a {kind} query needs a column")
        if kind == "count" and self.column is not None:
            raise ValueError("a count query reads no column (use a cohort filter)")
        if kind in ("histogram", "quantiles", "crosstab", "kaplan_meier"):
            if self.bins is None:
                raise ValueError(f"a {kind} query needs bins")
        elif self.bins is not None:
            raise ValueError(f"a {kind} query takes no bins")
        if kind == "crosstab" and (self.by is None or self.by_bins is None):
            raise ValueError("a crosstab query needs by and by_bins")
        if kind == "kaplan_meier":
            if self.event is None:
                raise ValueError("a kaplan_meier query needs an event column")
            if (self.by is None) != (self.by_bins is None):
                raise ValueError("stratify a kaplan_meier query with both by and by_bins")
        elif self.event is not None:
            raise ValueError(f"a {kind} query takes no event column")
        if kind not in ("crosstab", "kaplan_meier") and (self.by or self.by_bins):
            raise ValueError(f"a {kind} query takes no by column")
        if kind == "quantiles":
            if not self.probabilities:
                raise ValueError("a quantiles query needs probabilities")
            if any(not 0 < p < 1 for p in self.probabilities):
                raise ValueError("probabilities lie strictly between 0 and 1")
        elif self.probabilities is not None:
            raise ValueError(f"a {kind} query takes no probabilities")
        return self

    def columns(self) -> tuple[str, ...]:
        """Every column the query reads, its cohort filter's included, each once."""
        named = [self.column, self.by, self.event, *(c.column for c in self.cohort)]
        seen: dict[str, None] = {}
        for name in named:
            if name is not None:
                seen.setdefault(name, None)
        return tuple(seen)


class AnalysisStudy(Contract):
    """An analysis study: declared columns, queries, delta, and each site's epsilon cap."""

    kind: Literal["analysis"]
    study_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    title: Annotated[str, StringConstraints(max_length=500)] = ""
    columns: Annotated[dict[Ident, ColumnBounds], Field(min_length=1, max_length=1000)]
    queries: Annotated[list[Query], Field(min_length=1, max_length=1000)]
    delta: Annotated[Number, Field(gt=0, lt=1)]
    epsilon_caps: Annotated[dict[Name, Epsilon], Field(min_length=1)]
    min_sites: Annotated[int, Field(ge=1, le=1000)] = 1
    #: SHA-256 of the Flower app bundle that asks the queries (what sites approve as code).
    code_hash: Hash

    @model_validator(mode="after")
    def _consistent(self) -> AnalysisStudy:
        ids = [query.query_id for query in self.queries]
        if len(set(ids)) != len(ids):
            raise ValueError("query ids must be distinct")
        for query in self.queries:
            for column in query.columns():
                if column not in self.columns:
                    raise ValueError(
                        f"query {query.query_id!r} reads column {column!r}, which the study "
                        "does not declare"
                    )
        if self.min_sites > len(self.epsilon_caps):
            raise ValueError("min_sites exceeds the number of sites with an epsilon cap")
        return self

    def to_document(self) -> dict[str, Any]:
        """The JSON document that is hashed, signed and recorded."""
        return self.to_json()

    @property
    def study_hash(self) -> str:
        """SHA-256 (hex) of the study's canonical JSON."""
        return canonical_hash(self.to_document())

    @property
    def epsilon_total(self) -> float:
        """The sum of the queries' epsilon shares (what basic composition would charge)."""
        return math.fsum(query.epsilon for query in self.queries)

    def query(self, query_id: str) -> Query:
        """The query named ``query_id``.

        Raises
        ------
        KeyError
            If the study has no such query.
        """
        for query in self.queries:
            if query.query_id == query_id:
                return query
        raise KeyError(query_id)


def query_terms(study: AnalysisStudy, query: Query) -> dict[str, Any]:
    """What a query's answer depends on: its terms, its columns' bounds, the study's delta.

    Two queries with the same terms get the same noisy answer from a site (at no new
    cost), whatever study or query id asks them.
    """
    terms = query.to_json()
    terms.pop("query_id", None)
    terms["bounds"] = {
        column: study.columns[column].to_json() for column in sorted(query.columns())
    }
    terms["delta"] = study.delta
    return terms


def query_hash(study: AnalysisStudy, query: Query) -> str:
    """SHA-256 of :func:`query_terms` (canonical JSON)."""
    return canonical_hash(query_terms(study, query))


class SiteAnswer(Contract):
    """A site's noisy release for one query, before the coordinator combines it.

    ``values`` is the flat vector of released figures (its layout is fixed by the query:
    :mod:`veracity.analytics.mechanism`), ``stds`` the standard deviation of the Gaussian
    noise in each, ``suppressed`` the indices of cells set to 0 because their noisy count
    fell below the site's threshold (post-processing).
    """

    query_hash: Hash
    values: Annotated[list[Number], Field(max_length=1_000_000)]
    stds: Annotated[list[Annotated[Number, Field(ge=0)]], Field(max_length=1_000_000)]
    suppressed: Annotated[list[Count], Field(max_length=1_000_000)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _lengths(self) -> SiteAnswer:
        if len(self.values) != len(self.stds):
            raise ValueError("values and stds must have the same length")
        if any(index >= len(self.values) for index in self.suppressed):
            raise ValueError("a suppressed index is out of range")
        return self


class AnalysisReceipt(Contract):
    """A site's signed account of one answered query.

    ``noise_multiplier`` is the query's Gaussian mechanism as an accountant entry
    (``[noise_multiplier, 1.0, 1]`` in ``history``: the noise standard deviation over half
    the replace-one L2 sensitivity); ``noise_std`` is the standard deviation it added to a
    figure of unit scale; ``epsilon`` is the dataset's (its budget pool's) epsilon after the
    query, every training round and query on it, recomputable from ``history`` and
    ``delta`` with Google dp-accounting's PLD accountant for replace-one neighbours.
    ``repeated`` says the answer was the stored one (no new cost).
    """

    site: Name
    study: Hash
    query_id: Ident
    query_hash: Hash
    answer_hash: Hash
    dataset_id: Ident
    dataset_commitment: Hash
    sensitivity: Annotated[Number, Field(gt=0)]
    noise_multiplier: Annotated[Number, Field(gt=0)]
    noise_std: Annotated[Number, Field(gt=0)]
    accountant: Accountant
    neighbouring: Neighbouring
    delta: Delta
    epsilon_query: EpsilonSpent
    epsilon: EpsilonSpent
    history: History
    suppression_threshold: Annotated[Number, Field(ge=0)]
    repeated: bool
    noise_generator: NoiseGenerator


class SignedAnalysisReceipt(Contract):
    """An analysis receipt with the site's base64 signature."""

    receipt: AnalysisReceipt
    signature: Base64Signature


class CombinedAnswer(Contract):
    """The coordinator's combination of the sites' noisy answers to one query.

    ``value`` and ``se`` are flat lists (one figure, or one per bin, cell or time point);
    ``lower`` and ``upper`` the 95% interval ``value +- 1.96 se`` (for quantiles and
    survival, the interval of a parametric bootstrap over the known noise).
    """

    kind: QueryKind
    labels: Annotated[list[Ident], Field(max_length=1_000_000)]
    value: Annotated[list[Number], Field(max_length=1_000_000)]
    se: Annotated[list[Annotated[Number, Field(ge=0)]], Field(max_length=1_000_000)]
    lower: Annotated[list[Number], Field(max_length=1_000_000)]
    upper: Annotated[list[Number], Field(max_length=1_000_000)]
    sites: Annotated[list[Name], Field(min_length=1)]

    @model_validator(mode="after")
    def _lengths(self) -> CombinedAnswer:
        n = len(self.value)
        if not len(self.labels) == len(self.se) == len(self.lower) == len(self.upper) == n:
            raise ValueError("labels, value, se, lower and upper must have the same length")
        return self


class AnalysisAnswered(Payload):
    """One query of an analysis study, answered: the combined figure and each site's receipt."""

    KIND: ClassVar[str] = "analysis.answered"

    run_id: Ident
    study_hash: Hash
    query_id: Ident
    query_hash: Hash
    answer: CombinedAnswer
    receipts: Annotated[list[SignedAnalysisReceipt], Field(min_length=1)]
    #: Why sites did not contribute (refusals, dropped replies), in words.
    refused: Annotated[list[Text], Field(max_length=1000)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> AnalysisAnswered:
        sites = [signed.receipt.site for signed in self.receipts]
        if len(set(sites)) != len(sites):
            raise ValueError("one receipt per site")
        if sorted(sites) != sorted(self.answer.sites):
            raise ValueError("the answer's sites must be exactly the receipts' sites")
        for signed in self.receipts:
            receipt = signed.receipt
            if (receipt.study, receipt.query_id, receipt.query_hash) != (
                self.study_hash,
                self.query_id,
                self.query_hash,
            ):
                raise ValueError(f"receipt of {receipt.site} is for another study or query")
        return self


def check_one_outcome(result: object, receipt: object, refusal: object, *, what: str) -> None:
    """A site's reply holds ``result`` with its ``receipt``, or else a ``refusal``.

    Raises
    ------
    ValueError
        If it holds both, neither, or a result without its receipt (or the reverse).
    """
    answered = result is not None and receipt is not None
    if answered == (refusal is not None) or (result is None) != (receipt is None):
        raise ValueError(f"a reply holds either {what} with its receipt or a refusal")


class QueryRefusalItem(Contract):
    """A site's signed refusal of one query (``budget.refused`` or ``approval.missing``)."""

    kind: Literal["budget.refused", "approval.missing"]
    payload: dict[str, Any]
    signature: Base64Signature
    reason: Text


class QueryReplyItem(Contract):
    """A site's reply to one query: its noisy answer with the signed receipt, or a refusal."""

    query_id: Ident
    answer: SiteAnswer | None = None
    receipt: SignedAnalysisReceipt | None = None
    refusal: QueryRefusalItem | None = None

    @model_validator(mode="after")
    def _one_outcome(self) -> QueryReplyItem:
        check_one_outcome(self.answer, self.receipt, self.refusal, what="an answer")
        return self


class QueryReplies(Contract):
    """Everything a site replied to one ``query.analysis`` message."""

    replies: Annotated[list[QueryReplyItem], Field(max_length=1000)]
