"""Study approvals: what the operator reviews, approves or refuses, and what the agent enforces.

The operator approves one exact study document (identified by its hash, which covers every
term: model, features, DP parameters, rounds, caps and code hash) for one registered
dataset, with the epsilon the site allows it (``--epsilon-cap``). The cap in force is the
smaller of that and the study's own cap for this site. Decisions are signed by the site key
and queued for the coordinator's ledger (``study.approved`` / ``study.refused``); the
latest decision about a study is the one in force, so an approval can be withdrawn by
refusing the study later.

:func:`approved_terms` is what the agent asks before every round: it raises
:class:`~veracity.errors.ApprovalMissing` unless the request's study is approved, its
document matches its hash, its code hash is the approved one, and the approved dataset is
still the registered file.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veracity.client.budget import (
    RoundBudget,
    Segment,
    epsilon_left,
    epsilon_report,
    merge_history,
    poisson_sampling,
)
from veracity.client.site import Site
from veracity.client.store import Dataset, Decision, Pool, SignedStatement
from veracity.client.study_inputs import dataset_mismatch
from veracity.contracts.events import StudyApproved, StudyRefused
from veracity.contracts.refusals import ApprovalMissingStatement, BudgetRefused
from veracity.core.canonical import canonical_hash
from veracity.errors import ApprovalMissing, InputError
from veracity.tasks.study import AnyStudy, Study, parse_any_study

__all__ = [
    "load_any_study_file",
    "load_study_file",
    "StudyReview",
    "review_study",
    "approve_study",
    "record_approval",
    "refuse_study",
    "effective_cap",
    "approved_terms",
]

_MAX_REASON = 2000


def load_any_study_file(path: Path) -> AnyStudy:
    """Read a training or analysis study as the coordinator publishes it.

    Accepts the study document itself, or a ``study.proposed`` payload
    (``{"study": {...}, "study_hash": ...}``) whose hash must match the document. A
    document of ``"kind": "analysis"`` is an analysis study.

    Raises
    ------
    InputError
        If the file is unreadable, not JSON, not a valid study, or its hash does not match.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise InputError(f"cannot read study file {path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise InputError(f"study file {path} is not UTF-8 text") from err
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(
            f"study file {path} is not JSON (line {err.lineno}, column {err.colno}: {err.msg})"
        ) from err
    if not isinstance(document, dict):
        raise InputError(f"study file {path} must hold a JSON object")
    if isinstance(document.get("study"), dict):
        study = parse_any_study(document["study"])
        claimed = document.get("study_hash")
        if claimed is not None and claimed != study.study_hash:
            raise InputError(
                f"study file {path}: study_hash {claimed!r} does not match the document "
                f"(its hash is {study.study_hash})"
            )
        return study
    return parse_any_study(document)


def load_study_file(path: Path) -> Study:
    """Read a training study as the coordinator publishes it (see :func:`load_any_study_file`).

    Raises
    ------
    InputError
        If the file cannot be read as a study, or holds an analysis study.
    """
    study = load_any_study_file(path)
    if not isinstance(study, Study):
        raise InputError(f"study file {path} holds an analysis study, not a training study")
    return study


def effective_cap(study: AnyStudy, site_name: str, approved_cap: float) -> float:
    """The cap in force: the smaller of the study's cap for this site and the approved one."""
    return min(study.epsilon_caps.get(site_name, 0.0), approved_cap)


@dataclass(frozen=True)
class StudyReview:
    """What an operator sees before deciding: the terms, the projected spend, any problems."""

    study: Study
    site: str
    dataset: Dataset | None
    epsilon_cap: float | None
    sample_rate: float | None = None
    steps_per_round: int | None = None
    total_steps: int | None = None
    projected_study_epsilon: float | None = None
    projected_dataset_epsilon: float | None = None
    dataset_epsilon_now: float | None = None
    pool: Pool | None = None
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def study_cap(self) -> float | None:
        """The study's own cap for this site (``None`` if it does not name the site)."""
        return self.study.epsilon_caps.get(self.site)

    @property
    def cap_in_force(self) -> float | None:
        """The cap that will be enforced if approved."""
        if self.epsilon_cap is None or self.study_cap is None:
            return None
        return min(self.study_cap, self.epsilon_cap)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        study = self.study
        return {
            "study_id": study.study_id,
            "study_hash": study.study_hash,
            "title": study.title,
            "site": self.site,
            "model": study.model,
            "features": list(study.features),
            "label": study.label,
            "classes": list(study.classes),
            "input": None if study.input is None else study.input.model_dump(mode="json"),
            "scaling": [[mean, std] for mean, std in study.scaling],
            "max_weight_norm": study.max_weight_norm,
            "dp": study.dp.model_dump(mode="json"),
            "training": study.training.model_dump(mode="json"),
            "rounds": study.rounds,
            "runs": study.runs,
            "code_hash": study.code_hash,
            "study_epsilon_cap": self.study_cap,
            "approved_epsilon_cap": self.epsilon_cap,
            "epsilon_cap_in_force": self.cap_in_force,
            "dataset_id": self.dataset.dataset_id if self.dataset else None,
            "dataset_rows": self.dataset.rows if self.dataset else None,
            "dataset_epsilon_budget": self.pool.epsilon_budget if self.pool else None,
            "budget_pool": (
                {"pool_id": self.pool.pool_id, "datasets": list(self.pool.datasets)}
                if self.pool
                else None
            ),
            "dataset_epsilon_now": self.dataset_epsilon_now,
            "sample_rate": self.sample_rate,
            "steps_per_round": self.steps_per_round,
            "total_steps": self.total_steps,
            "projected_study_epsilon": self.projected_study_epsilon,
            "projected_dataset_epsilon": self.projected_dataset_epsilon,
            "problems": list(self.problems),
            "warnings": list(self.warnings),
        }


def review_study(
    site: Site, study: Study, *, dataset_id: str | None, epsilon_cap: float | None
) -> StudyReview:
    """Check a study against this site and a dataset, and project what it would spend.

    Problems (which block an approval): the study does not name this site; the dataset is
    not registered, lacks a study column, or has another label; the study's delta is
    weaker than its budget pool's; the cap is not a positive number. Warnings: the full
    study would pass the cap in force or the dataset's budget, so its last rounds would be
    refused; the dataset shares its budget pool with other datasets.
    """
    problems: list[str] = []
    warnings: list[str] = []
    if site.name not in study.epsilon_caps:
        problems.append(
            f"the study gives no epsilon cap for site {site.name!r} "
            f"(it names {', '.join(sorted(study.epsilon_caps))})"
        )
    if epsilon_cap is not None and not (math.isfinite(epsilon_cap) and epsilon_cap > 0):
        problems.append(f"epsilon cap {epsilon_cap!r} must be positive and finite")
    dataset = site.store.get_dataset(dataset_id) if dataset_id is not None else None
    if dataset_id is not None and dataset is None:
        problems.append(f"no dataset {dataset_id!r} is registered at this site")
    review = StudyReview(study=study, site=site.name, dataset=dataset, epsilon_cap=epsilon_cap)
    if dataset is None:
        return _with(review, problems, warnings)
    if dataset.label != study.label:
        problems.append(
            f"the study's label is {study.label!r}; dataset {dataset.dataset_id!r} has "
            f"label {dataset.label!r}"
        )
    if dataset.classes != study.classes:
        problems.append(
            f"the study's classes are {', '.join(study.classes)}; dataset "
            f"{dataset.dataset_id!r} has {', '.join(dataset.classes)}"
        )
    mismatch = dataset_mismatch(
        study, kind=dataset.kind, features=dataset.features, layout=dict(dataset.layout)
    )
    if mismatch is not None:
        problems.append(f"dataset {dataset.dataset_id!r} does not suit the study: {mismatch}")
    missing = [column for column in study.features if column not in dataset.features]
    if missing:
        problems.append(
            f"dataset {dataset.dataset_id!r} has no column {missing[0]!r} "
            f"({len(missing)} of the study's features are missing)"
        )
    pool = site.store.pool(dataset.dataset_id)
    if study.dp.delta > pool.delta:
        problems.append(
            f"the study's delta {study.dp.delta:g} is weaker than dataset "
            f"{dataset.dataset_id!r}'s budget delta {pool.delta:g}"
        )
    sampling = poisson_sampling(dataset.rows, study.training.batch_size)
    per_round = sampling.segment(study.dp.noise_multiplier, study.training.local_epochs)
    whole = sampling.segment(
        study.dp.noise_multiplier, study.training.local_epochs * study.rounds * study.runs
    )
    dataset_history = site.store.dataset_history(dataset.dataset_id)
    study_history = site.store.study_history(dataset.dataset_id, study.study_hash)
    projected_dataset = epsilon_report(merge_history([*dataset_history, whole]), study.dp.delta)
    projected_study = epsilon_report(merge_history([*study_history, whole]), study.dp.delta)
    now = epsilon_report(dataset_history, study.dp.delta)
    cap = review.cap_in_force
    if cap is not None and projected_study.epsilon > cap:
        warnings.append(
            f"the whole study needs epsilon {projected_study.epsilon:.3f} here but the cap in "
            f"force is {cap:g}: rounds past the cap will be refused"
        )
    if projected_dataset.epsilon > pool.epsilon_budget:
        warnings.append(
            f"the whole study would bring dataset {dataset.dataset_id!r} to epsilon "
            f"{projected_dataset.epsilon:.3f}, over its budget {pool.epsilon_budget:g}: "
            "rounds past the budget will be refused"
        )
    others = [name for name in pool.datasets if name != dataset.dataset_id]
    if others:
        warnings.append(
            f"dataset {dataset.dataset_id!r} shares records with {', '.join(others)}: "
            f"they draw from one budget (pool {pool.pool_id!r}), and its epsilon counts "
            "every study on any of them"
        )
    reviewed = StudyReview(
        study=study,
        site=site.name,
        dataset=dataset,
        epsilon_cap=epsilon_cap,
        sample_rate=sampling.sample_rate,
        steps_per_round=per_round.steps,
        total_steps=whole.steps,
        projected_study_epsilon=projected_study.epsilon,
        projected_dataset_epsilon=projected_dataset.epsilon,
        dataset_epsilon_now=now.epsilon,
        pool=pool,
    )
    return _with(reviewed, problems, warnings)


def _with(review: StudyReview, problems: list[str], warnings: list[str]) -> StudyReview:
    return dataclasses.replace(review, problems=tuple(problems), warnings=tuple(warnings))


def approve_study(
    site: Site, study: Study, *, dataset_id: str, epsilon_cap: float
) -> tuple[Decision, SignedStatement, StudyReview]:
    """Approve ``study`` on ``dataset_id`` with ``epsilon_cap``; sign and queue ``study.approved``.

    Raises
    ------
    InputError
        If the review finds a problem (the first one is named); nothing is written then.
    """
    review = review_study(site, study, dataset_id=dataset_id, epsilon_cap=epsilon_cap)
    if review.problems:
        raise InputError(f"cannot approve study {study.study_id!r}: {review.problems[0]}")
    decision, statement = record_approval(
        site, study, dataset_id=dataset_id, epsilon_cap=epsilon_cap
    )
    return decision, statement, review


def record_approval(
    site: Site, study: AnyStudy, *, dataset_id: str, epsilon_cap: float
) -> tuple[Decision, SignedStatement]:
    """Sign ``study.approved`` (the study's hash, the dataset, the cap) and store the decision.

    The one way a reviewed training or analysis study is approved: the decision keeps the
    exact document and its code hash, so a later request with other terms or other code
    finds no approval. Callers review first (:func:`review_study`,
    :func:`veracity.client.analysis.review_analysis`) and approve only without problems.
    """
    now = site.now()
    statement = site.sign(
        StudyApproved(
            site=site.name,
            study_hash=study.study_hash,
            dataset_id=dataset_id,
            epsilon_cap=float(epsilon_cap),
            signed_at=now,
        )
    )
    decision = site.store.add_decision(
        study_hash=study.study_hash,
        study_id=study.study_id,
        decision="approved",
        study_document=study.to_document(),
        code_hash=study.code_hash,
        dataset_id=dataset_id,
        epsilon_cap=float(epsilon_cap),
        reason=None,
        decided_at=now,
        statement=statement,
    )
    return decision, statement


def refuse_study(site: Site, study: AnyStudy, *, reason: str) -> tuple[Decision, SignedStatement]:
    """Refuse a training or analysis study (or withdraw an approval); sign ``study.refused``.

    Raises
    ------
    InputError
        If the reason is empty or longer than 2000 characters.
    """
    text = " ".join(reason.split())
    if not text:
        raise InputError("a refusal needs a reason")
    if len(text) > _MAX_REASON:
        raise InputError(f"a refusal reason is at most {_MAX_REASON} characters")
    now = site.now()
    statement = site.sign(
        StudyRefused(site=site.name, study_hash=study.study_hash, reason=text, signed_at=now)
    )
    decision = site.store.add_decision(
        study_hash=study.study_hash,
        study_id=study.study_id,
        decision="refused",
        study_document=study.to_document(),
        code_hash=study.code_hash,
        dataset_id=None,
        epsilon_cap=None,
        reason=text,
        decided_at=now,
        statement=statement,
    )
    return decision, statement


def approved_terms(
    site: Site, *, study: AnyStudy, study_hash: str, code_hash: str
) -> tuple[Decision, Dataset, float]:
    """The approval a request of ``study`` relies on, its dataset and the cap in force.

    The one check for training rounds, analysis queries and explanations.

    Raises
    ------
    ApprovalMissing
        If the document does not hash to ``study_hash``, the code hash differs from the
        study's or the approval's, the study does not name this site, it is not approved
        (or was refused), or its dataset is no longer registered.
    """
    if study.study_hash != study_hash:
        raise ApprovalMissing(
            f"the study document does not match study_hash {study_hash[:16]}...: its terms "
            "differ from the study that was proposed"
        )
    if code_hash != study.code_hash:
        raise ApprovalMissing(
            f"code hash {code_hash[:16]}... differs from the approved study's "
            f"{study.code_hash[:16]}..."
        )
    if site.name not in study.epsilon_caps:
        raise ApprovalMissing(f"study {study.study_id!r} does not include site {site.name!r}")
    decision = site.store.latest_decision(study_hash)
    if decision is None:
        raise ApprovalMissing(
            f"study {study.study_id!r} ({study_hash[:16]}...) is not approved at site {site.name!r}"
        )
    if decision.decision != "approved":
        raise ApprovalMissing(
            f"study {study.study_id!r} was refused at site {site.name!r}: {decision.reason}"
        )
    if (
        decision.code_hash != code_hash
        or decision.dataset_id is None
        or decision.epsilon_cap is None
    ):
        raise ApprovalMissing(f"study {study.study_id!r} was approved with other terms")
    dataset = site.store.get_dataset(decision.dataset_id)
    if dataset is None:
        raise ApprovalMissing(f"the approved dataset {decision.dataset_id!r} is not registered")
    return decision, dataset, effective_cap(study, site.name, decision.epsilon_cap)


def refuse_budget(
    site: Site,
    *,
    what: str,
    study_hash: str,
    study_id: str,
    dataset: Dataset,
    run_id: str,
    round_number: int,
    budget: RoundBudget,
    cap: float,
    study_before: tuple[Segment, ...],
    dataset_before: tuple[Segment, ...],
    delta: float,
) -> tuple[SignedStatement, str]:
    """Sign and keep ``budget.refused`` for a charge ``budget`` does not allow.

    ``what`` names the charge (``"round 3"``, ``"query q1"``); ``study_before`` and
    ``dataset_before`` are the histories before it. The reason names the scope with the
    least epsilon left: the study (its cap) or the dataset (its budget, and the datasets
    sharing its pool). An epsilon the accountant cannot bound is sent as ``null``.
    Returns the statement and the reason.
    """
    crossed: list[tuple[float, float, str]] = []
    if not budget.study_allowed:
        left = epsilon_left(cap, study_before, delta)
        crossed.append((left, budget.study.epsilon, f"study {study_id!r} (cap {cap:g})"))
    if not budget.dataset_allowed:
        left = epsilon_left(budget.dataset_budget, dataset_before, delta)
        pool = site.store.pool(dataset.dataset_id)
        shared = (
            f" (budget pool {pool.pool_id!r}, shared with {', '.join(others)})"
            if (others := [name for name in pool.datasets if name != dataset.dataset_id])
            else ""
        )
        crossed.append(
            (
                left,
                budget.dataset.epsilon,
                f"dataset {dataset.dataset_id!r}{shared} (budget {budget.dataset_budget:g})",
            )
        )
    left, requested, scope = min(crossed)
    reason = f"{what} would bring {scope} to epsilon {requested:.4f}; epsilon left {left:.4f}"
    statement = site.sign(
        BudgetRefused(
            site=site.name,
            study_hash=study_hash,
            dataset_id=dataset.dataset_id,
            run_id=run_id,
            round=round_number,
            epsilon_requested=requested if math.isfinite(requested) else None,
            epsilon_left=left,
            signed_at=site.now(),
        )
    )
    site.store.add_statement(statement, now=statement.payload["signed_at"])
    return statement, reason


def refuse_approval(
    site: Site, *, study_hash: str, run_id: str, round_number: int, reason: str
) -> SignedStatement:
    """Sign ``approval.missing`` for a request and keep it for the ledger, once.

    A repeated request is the same refusal: the statement is stored under its content
    without ``signed_at`` and the stored one comes back. ``run_id`` and ``reason`` are cut
    to what the statement holds (128 and 10,000 characters).
    """
    refused = ApprovalMissingStatement(
        site=site.name,
        study_hash=study_hash,
        run_id=run_id[:128],
        round=round_number,
        reason=reason[:10_000],
        signed_at=site.now(),
    )
    key = refused.to_json()
    del key["signed_at"]
    return site.store.refusal(
        canonical_hash({"kind": refused.KIND, **key}),
        lambda: site.sign(refused),
        now=site.now(),
    )
