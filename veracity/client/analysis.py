"""The site's side of analysis studies: review, approval, and answering one query.

An operator reviews and approves an analysis study exactly like a training study: one
exact document (its hash covers every column bound, query and epsilon share) for one
registered dataset with a cap, signed as ``study.approved`` and queued for the ledger.

:class:`AnalysisAgent` answers one query of an approved study (``handle_query``):

1. the request's study document must hash to the approved study's hash, name this site,
   carry the approved code hash, and the query must be one of its queries; the dataset
   must still be the registered file and hold every declared column. Otherwise the site
   refuses with a signed ``approval.missing`` (so a query over an undeclared column, or
   any change to a study's terms, is refused);
2. under the budget pool's lock: if this dataset already answered the same query terms,
   the stored noisy answer comes back, charged nothing;
3. otherwise the query's Gaussian mechanism (``[z, 1.0, 1]``,
   :mod:`veracity.analytics.calibration`) is added to the dataset's history, the same
   accountant history as DP-SGD, and the query is refused with a signed
   ``budget.refused`` if that would take the dataset past its budget or the study past
   its cap;
4. else the site computes the exact release, adds noise from its ChaCha20 source,
   suppresses small cells (its own threshold, ``min_cell_count`` in ``site.json``), stores
   the answer with the spend, and signs an :class:`AnalysisReceipt`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from veracity.analytics.calibration import calibrate_noise_multiplier, noise_std
from veracity.analytics.mechanism import Columns, add_noise, exact_release
from veracity.client.approvals import (
    approved_terms,
    record_approval,
    refuse_approval,
    refuse_budget,
)
from veracity.client.budget import (
    ACCOUNTANT,
    NEIGHBOURING,
    RoundBudget,
    Segment,
    epsilon_report,
    evaluate_round,
    history_to_json,
    replace_one_epsilon,
)
from veracity.client.datasets import Table, check_registered, load_registered
from veracity.client.site import Site
from veracity.client.store import Dataset, Decision, Pool, QueryCharge, SignedStatement
from veracity.contracts.analysis import (
    ANALYSIS_RECEIPT_DOMAIN,
    AnalysisReceipt,
    AnalysisStudy,
    SiteAnswer,
    query_hash,
)
from veracity.core.canonical import canonical_hash
from veracity.core.fields import is_hex64
from veracity.errors import ApprovalMissing, InputError

__all__ = [
    "dataset_columns",
    "review_analysis",
    "approve_analysis",
    "approved_analysis",
    "QueryRequest",
    "QueryReply",
    "QueryRefusal",
    "ReleaseTerms",
    "Released",
    "AnalysisAgent",
]

log = logging.getLogger(__name__)

#: How a query's spend and refusals name their "run" (BudgetRefused needs one).
QUERY_ROUND = 1


def dataset_columns(dataset: Dataset) -> tuple[str, ...]:
    """The columns a registered dataset holds: its features and its label."""
    return (*dataset.features, dataset.label)


def _problems(site: Site, study: AnalysisStudy, dataset: Dataset | None) -> list[str]:
    problems: list[str] = []
    if site.name not in study.epsilon_caps:
        problems.append(f"the study gives no epsilon cap for site {site.name!r}")
    if dataset is None:
        return problems
    held = set(dataset_columns(dataset))
    missing = [column for column in study.columns if column not in held]
    if missing:
        problems.append(
            f"dataset {dataset.dataset_id!r} has no column {missing[0]!r} "
            f"({len(missing)} of the study's declared columns are missing)"
        )
    pool = site.store.pool(dataset.dataset_id)
    if study.delta > pool.delta:
        problems.append(
            f"the study's delta {study.delta:g} is weaker than dataset "
            f"{dataset.dataset_id!r}'s budget delta {pool.delta:g}"
        )
    return problems


def review_analysis(
    site: Site, study: AnalysisStudy, *, dataset_id: str | None, epsilon_cap: float | None
) -> dict[str, Any]:
    """What an operator sees before approving: terms, projected spend, problems.

    The terms are the declared columns with their bounds and every query with its kind,
    columns, bins, epsilon share and cohort filter. The projection charges every query
    once (its Gaussian mechanism composed into the dataset's history by the PLD
    accountant), which is what the whole study would cost; without ``dataset_id`` only
    the study's own spend is projected.
    """
    dataset = site.store.get_dataset(dataset_id) if dataset_id is not None else None
    problems = _problems(site, study, dataset)
    if dataset_id is not None and dataset is None:
        problems.append(f"no dataset {dataset_id!r} is registered at this site")
    if epsilon_cap is not None and not (math.isfinite(epsilon_cap) and epsilon_cap > 0):
        problems.append(f"epsilon cap {epsilon_cap!r} must be positive and finite")
    segments = [
        Segment(calibrate_noise_multiplier(q.epsilon, study.delta), 1.0, 1) for q in study.queries
    ]
    projected_study = epsilon_report(segments, study.delta).epsilon
    review: dict[str, Any] = {
        "kind": "analysis",
        "study_id": study.study_id,
        "study_hash": study.study_hash,
        "site": site.name,
        "columns": {name: bounds.to_json() for name, bounds in study.columns.items()},
        "queries": [query.to_json() for query in study.queries],
        "delta": study.delta,
        "code_hash": study.code_hash,
        "study_epsilon_cap": study.epsilon_caps.get(site.name),
        "approved_epsilon_cap": epsilon_cap,
        "epsilon_cap_in_force": (
            None
            if epsilon_cap is None or site.name not in study.epsilon_caps
            else min(study.epsilon_caps[site.name], epsilon_cap)
        ),
        "dataset_id": dataset_id,
        "projected_study_epsilon": projected_study,
        "min_cell_count": site.config.min_cell_count,
        "problems": problems,
        "warnings": [],
    }
    if dataset is not None:
        history = site.store.dataset_history(dataset.dataset_id)
        now = epsilon_report(history, study.delta).epsilon
        after = epsilon_report([*history, *segments], study.delta).epsilon
        review["dataset_epsilon_now"] = now
        review["projected_dataset_epsilon"] = after
        budget = site.store.pool(dataset.dataset_id).epsilon_budget
        review["dataset_epsilon_budget"] = budget
        if after > budget:
            review["warnings"].append(
                f"the whole study would bring dataset {dataset_id!r} to epsilon {after:.3f}, "
                f"over its budget {budget:g}: queries past it will be refused"
            )
    cap = study.epsilon_caps.get(site.name)
    if cap is not None and epsilon_cap is not None and projected_study > min(cap, epsilon_cap):
        review["warnings"].append(
            f"the whole study needs epsilon {projected_study:.3f} but the cap in force is "
            f"{min(cap, epsilon_cap):g}: queries past it will be refused"
        )
    return review


def approve_analysis(
    site: Site, study: AnalysisStudy, *, dataset_id: str, epsilon_cap: float
) -> tuple[Decision, SignedStatement]:
    """Approve an analysis study on ``dataset_id`` with ``epsilon_cap``; sign ``study.approved``.

    Raises
    ------
    InputError
        If the review finds a problem (the first one is named); nothing is written then.
    """
    review = review_analysis(site, study, dataset_id=dataset_id, epsilon_cap=epsilon_cap)
    if review["problems"]:
        raise InputError(f"cannot approve study {study.study_id!r}: {review['problems'][0]}")
    return record_approval(site, study, dataset_id=dataset_id, epsilon_cap=epsilon_cap)


def approved_analysis(
    site: Site, *, study: AnalysisStudy, study_hash: str, code_hash: str
) -> tuple[Dataset, float]:
    """The dataset an approved analysis study reads and the cap in force.

    Raises
    ------
    ApprovalMissing
        If the document does not hash to ``study_hash``, the code hash differs, the study
        does not name this site, it is not approved (or was refused), or its dataset is no
        longer registered or lacks a declared column.
    """
    _decision, dataset, cap = approved_terms(
        site, study=study, study_hash=study_hash, code_hash=code_hash
    )
    held = set(dataset_columns(dataset))
    for column in study.columns:
        if column not in held:
            raise ApprovalMissing(f"dataset {dataset.dataset_id!r} has no column {column!r}")
    return dataset, cap


@dataclass(frozen=True)
class QueryRequest:
    """A coordinator's request for one query of an analysis study."""

    study: Mapping[str, Any]
    study_hash: str
    code_hash: str
    query_id: str


@dataclass(frozen=True)
class QueryReply:
    """A site's noisy answer and its signed receipt."""

    answer: SiteAnswer
    receipt: AnalysisReceipt
    signature: str


@dataclass(frozen=True)
class QueryRefusal:
    """A signed refusal (``budget.refused`` or ``approval.missing``) and why."""

    kind: Literal["budget.refused", "approval.missing"]
    statement: SignedStatement
    reason: str


QueryOutcome = QueryReply | QueryRefusal


@dataclass(frozen=True)
class ReleaseTerms:
    """One noisy release a site charges: a query's answer or an explanation.

    What :meth:`AnalysisAgent.release` charges and what its receipt states.
    """

    study_hash: str
    study_id: str
    query_id: str
    query_hash: str
    delta: float
    noise_multiplier: float
    sensitivity: float
    suppression_threshold: float
    #: Whose delta a refusal names ("the study's", "the explanation's").
    whose: str


@dataclass(frozen=True)
class Released:
    """A charged release: the stored noisy answer's JSON and its signed receipt."""

    answer: dict[str, Any]
    receipt: AnalysisReceipt
    signature: str


#: A source of ``n`` independent standard normals.
UnitNoise = Callable[[int], npt.NDArray[np.float64]]


def _chacha_noise(seed: int | None) -> tuple[UnitNoise, str]:
    from veracity.client.noise import ChaCha20Source

    source = ChaCha20Source() if seed is None else ChaCha20Source.from_seed(seed, "analysis-noise")

    def draw(count: int) -> npt.NDArray[np.float64]:
        drawn: npt.NDArray[np.float64] = source.gaussian((count,), 1.0).numpy()
        return drawn

    return draw, source.name


def _columns(dataset: Dataset) -> Columns:
    table = load_registered(dataset, check_registered(dataset))
    if not isinstance(table, Table):
        raise ApprovalMissing(
            f"dataset {dataset.dataset_id!r} holds signals or images; analysis queries read "
            "tabular columns"
        )
    columns: dict[str, npt.NDArray[np.float64]] = {
        name: np.asarray(table.x[:, index], dtype=np.float64)
        for index, name in enumerate(table.features)
    }
    columns[dataset.label] = np.asarray(table.y, dtype=np.float64)
    return columns


class AnalysisAgent:
    """Answers analysis queries for one site (see the module docstring).

    Parameters
    ----------
    site
        The opened site.
    seed
        Derives the noise key from a seed (tests only); ``None`` keys ChaCha20 from the OS.
    """

    def __init__(self, site: Site, *, seed: int | None = None) -> None:
        self.site = site
        self._noise, self._noise_name = _chacha_noise(seed)
        self._read: dict[str, Columns] | None = None

    def handle_queries(self, requests: Sequence[QueryRequest]) -> list[QueryOutcome]:
        """Answer the queries of one message in order (see :meth:`handle_query`).

        The dataset file is checked against its registration and read once for them all,
        not once per query.
        """
        self._read = {}
        try:
            return [self.handle_query(request) for request in requests]
        finally:
            self._read = None

    def _columns(self, dataset: Dataset) -> Columns:
        if self._read is None:
            return _columns(dataset)
        if dataset.dataset_id not in self._read:
            self._read[dataset.dataset_id] = _columns(dataset)
        return self._read[dataset.dataset_id]

    def handle_query(self, request: QueryRequest) -> QueryOutcome:
        """Answer ``request``'s query, or refuse it with a signed statement.

        Raises
        ------
        InputError
            If the request's hashes are malformed.
        VerificationError
            If the accountants disagree.
        """
        for name, value in (("study_hash", request.study_hash), ("code_hash", request.code_hash)):
            text: object = value
            if not is_hex64(text):
                raise InputError(f"{name} must be 64 lowercase hex characters")
        try:
            study = AnalysisStudy.parse(dict(request.study), what="analysis study")
        except InputError as err:
            return self.refuse_approval(request.study_hash, request.query_id, str(err))
        try:
            dataset, cap = approved_analysis(
                self.site, study=study, study_hash=request.study_hash, code_hash=request.code_hash
            )
            try:
                query = study.query(request.query_id)
            except KeyError:
                raise ApprovalMissing(
                    f"study {study.study_id!r} has no query {request.query_id!r}"
                ) from None
            columns = self._columns(dataset)
        except ApprovalMissing as err:
            return self.refuse_approval(request.study_hash, request.query_id, str(err))
        release = exact_release(study, query, columns)
        threshold = self.site.config.min_cell_count
        terms = ReleaseTerms(
            study_hash=study.study_hash,
            study_id=study.study_id,
            query_id=query.query_id,
            query_hash=query_hash(study, query),
            delta=study.delta,
            noise_multiplier=calibrate_noise_multiplier(query.epsilon, study.delta),
            sensitivity=release.sensitivity,
            suppression_threshold=float(threshold),
            whose="the study's",
        )

        def compute() -> dict[str, Any]:
            noisy = add_noise(
                release,
                noise_multiplier=terms.noise_multiplier,
                unit_noise=self._noise,
                threshold=threshold,
            )
            return SiteAnswer(
                query_hash=terms.query_hash,
                values=list(noisy.values),
                stds=list(noisy.stds),
                suppressed=list(noisy.suppressed),
            ).to_json()

        released = self.release(terms, dataset, cap, compute)
        if isinstance(released, QueryRefusal):
            return released
        log.info(
            "site %s answered query %s of %s (epsilon now %.4f%s)",
            self.site.name,
            query.query_id,
            study.study_id,
            released.receipt.epsilon,
            ", stored answer" if released.receipt.repeated else "",
        )
        return QueryReply(SiteAnswer.parse(released.answer), released.receipt, released.signature)

    def release(
        self,
        terms: ReleaseTerms,
        dataset: Dataset,
        cap: float,
        compute: Callable[[], dict[str, Any]],
    ) -> Released | QueryRefusal:
        """Charge one noisy release to ``dataset`` and its study, then sign its receipt.

        Under the budget pool's lock (:meth:`SiteStore.answer_query`): the stored answer
        of the same terms comes back charged nothing; otherwise the Gaussian mechanism
        ``[z, 1.0, 1]`` is added to the dataset's and the study's histories and
        ``compute()`` (the noisy answer's JSON) is stored with the spend, or the release is
        refused with a signed ``budget.refused`` (past the budget or the cap) or
        ``approval.missing`` (a delta weaker than the pool's).

        Raises
        ------
        VerificationError
            If the accountants disagree.
        """
        planned = Segment(terms.noise_multiplier, 1.0, 1)

        def evaluate(
            dataset_history: tuple[Segment, ...], study_history: tuple[Segment, ...], pool: Pool
        ) -> RoundBudget:
            if terms.delta > pool.delta:
                raise ApprovalMissing(
                    f"{terms.whose} delta {terms.delta:g} is weaker than the delta "
                    f"{pool.delta:g} of dataset {dataset.dataset_id!r}'s budget pool"
                )
            return evaluate_round(
                dataset_history=dataset_history,
                study_history=study_history,
                planned=planned,
                delta=terms.delta,
                dataset_budget=pool.epsilon_budget,
                study_cap=cap,
            )

        try:
            charge = self.site.store.answer_query(
                dataset_id=dataset.dataset_id,
                study_hash=terms.study_hash,
                query_id=terms.query_id,
                query_hash=terms.query_hash,
                planned=planned,
                evaluate=evaluate,
                compute=compute,
                now=self.site.now(),
            )
        except ApprovalMissing as err:
            return self.refuse_approval(terms.study_hash, terms.query_id, str(err))
        if charge.answer is None:
            assert charge.budget is not None  # noqa: S101 - answer_query's contract
            return self._refuse_budget(terms, dataset, charge.budget, cap, charge)
        if charge.budget is not None:
            report = charge.budget.dataset
        else:
            report = epsilon_report(charge.dataset_before, terms.delta)
        if not math.isfinite(report.epsilon):  # pragma: no cover - evaluate refuses first
            raise InputError(f"the spend of query {terms.query_id} is not finite")
        receipt = AnalysisReceipt(
            site=self.site.name,
            study=terms.study_hash,
            query_id=terms.query_id,
            query_hash=terms.query_hash,
            answer_hash=canonical_hash(charge.answer.answer),
            dataset_id=dataset.dataset_id,
            dataset_commitment=dataset.commitment,
            sensitivity=terms.sensitivity,
            noise_multiplier=terms.noise_multiplier,
            noise_std=noise_std(terms.noise_multiplier, terms.sensitivity),
            accountant=ACCOUNTANT,
            neighbouring=NEIGHBOURING,
            delta=terms.delta,
            epsilon_query=replace_one_epsilon((planned,), terms.delta),
            epsilon=report.epsilon,
            history=history_to_json(report.history),
            suppression_threshold=terms.suppression_threshold,
            repeated=charge.answer.repeated,
            noise_generator=self._noise_name,
        )
        signature = self.site.sign_receipt(ANALYSIS_RECEIPT_DOMAIN, receipt.to_json())
        return Released(charge.answer.answer, receipt, signature)

    def refuse_approval(self, study_hash: str, query_id: str, reason: str) -> QueryRefusal:
        """Sign ``approval.missing`` for query ``query_id`` of ``study_hash`` (stored once)."""
        statement = refuse_approval(
            self.site,
            study_hash=study_hash,
            run_id=f"query:{query_id}",
            round_number=QUERY_ROUND,
            reason=reason,
        )
        log.warning("site %s refused query %s: %s", self.site.name, query_id, reason)
        return QueryRefusal("approval.missing", statement, reason)

    def _refuse_budget(
        self,
        terms: ReleaseTerms,
        dataset: Dataset,
        budget: RoundBudget,
        cap: float,
        charge: QueryCharge,
    ) -> QueryRefusal:
        """Sign ``budget.refused`` for the release of ``terms``."""
        statement, reason = refuse_budget(
            self.site,
            what=f"query {terms.query_id}",
            study_hash=terms.study_hash,
            study_id=terms.study_id,
            dataset=dataset,
            run_id=f"query:{terms.query_id}",
            round_number=QUERY_ROUND,
            budget=budget,
            cap=cap,
            study_before=charge.study_before,
            dataset_before=charge.dataset_before,
            delta=terms.delta,
        )
        log.warning("site %s refused query %s: %s", self.site.name, terms.query_id, reason)
        return QueryRefusal("budget.refused", statement, reason)
