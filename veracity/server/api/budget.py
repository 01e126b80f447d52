"""Query budgets: how many predictions a requester may get from a model, shared by workers.

A linear model is determined by d + 1 exact predictions (d features), and a quadratic
network by a few hundred, so what limits extraction is the number of predictions a
requester gets, not the number of requests. Every encrypted-inference request is charged
what its ciphertexts can carry (``Layout.carried``) against the requester's budget for
that model, before it is evaluated, in one conditional ``UPDATE`` of
``api_query_budget`` (atomic on SQLite and PostgreSQL, so two workers cannot both spend
the last predictions). The same row holds a GCRA on predictions: at most
``patients_per_minute`` sustained, ``patient_burst`` at once.

An administrator sets a requester's budget for a model (``PUT
/api/v1/models/{hash}/budgets/{requester}``, ``veracity server budget set``); without one
the deployment's default applies (``VERACITY_INFERENCE_DEFAULT_BUDGET``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import case, func, insert, literal, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from veracity.contracts.events import InferenceBudgetSet
from veracity.core.fields import format_timestamp
from veracity.errors import ConfigError, InputError, QueryBudgetExceeded
from veracity.server.api.db import ActionRow, QueryBudgetRow
from veracity.server.api.tokens import Principal, utc_now

if TYPE_CHECKING:
    from veracity.server.coordinator import CoordinatorService

__all__ = ["Budget", "BudgetStore", "StoreMeter", "set_budget_recorded"]

_MAX_BUDGET = 2**53 - 1


@dataclass(frozen=True)
class Budget:
    """A requester's budget for a model: allowed (``None``: the default) and used."""

    requester: str
    model_hash: str
    budget: int | None
    effective: int
    used: int

    def to_json(self) -> dict[str, Any]:
        """The API's JSON form."""
        return {
            "requester": self.requester,
            "model_hash": self.model_hash,
            "budget": self.budget,
            "effective_budget": self.effective,
            "used": self.used,
            "remaining": max(0, self.effective - self.used),
        }


class BudgetStore:
    """Budgets, charges and prediction rates in ``api_query_budget``.

    Parameters
    ----------
    engine
        The coordinator's database.
    default_budget
        Predictions a requester may get from a model when no budget was set.
    patients_per_minute, patient_burst
        The prediction rate per requester and model: sustained, and at once.
    clock
        Seconds since the epoch (the rate; injectable for tests).
    now
        The current time (``updated_at``, actions).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        default_budget: int,
        patients_per_minute: float,
        patient_burst: int,
        clock: Callable[[], float] = time.time,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        if default_budget < 0 or patients_per_minute <= 0 or patient_burst < 1:
            raise ConfigError("a query budget needs default >= 0, a rate > 0 and a burst >= 1")
        self.engine = engine
        self.default_budget = default_budget
        self.interval = 60.0 / patients_per_minute
        self.tolerance = self.interval * patient_burst
        self.clock = clock
        self.now = now

    def _budget(self, row: Any) -> Budget:
        effective = self.default_budget if row.budget is None else int(row.budget)
        return Budget(row.requester, row.model_hash, row.budget, effective, int(row.used))

    def charge(self, requester: str, model_hash: str, patients: int) -> int:
        """Charge ``patients`` predictions; return the requester's total for the model.

        Raises
        ------
        QueryBudgetExceeded
            If the budget would be passed (``retry_after`` is ``None``) or the requester is
            over its prediction rate (``retry_after`` says when to come back).
        """
        now = self.clock()
        cost = patients * self.interval
        start = case((QueryBudgetRow.tat > literal(now), QueryBudgetRow.tat), else_=literal(now))
        allowed = func.coalesce(QueryBudgetRow.budget, literal(self.default_budget))
        mine = (QueryBudgetRow.requester == requester, QueryBudgetRow.model_hash == model_hash)
        for _ in range(3):
            with self.engine.begin() as connection:
                total = connection.execute(
                    update(QueryBudgetRow)
                    .where(
                        *mine,
                        QueryBudgetRow.used + patients <= allowed,
                        start + cost - now <= self.tolerance,
                    )
                    .values(
                        used=QueryBudgetRow.used + patients,
                        tat=start + cost,
                        updated_at=format_timestamp(self.now()),
                    )
                    .returning(QueryBudgetRow.used)
                ).scalar_one_or_none()
                if total is not None:
                    return int(total)
                row = connection.execute(select(QueryBudgetRow).where(*mine)).one_or_none()
                if row is None:
                    try:
                        with connection.begin_nested():
                            connection.execute(
                                insert(QueryBudgetRow).values(
                                    requester=requester,
                                    model_hash=model_hash,
                                    budget=None,
                                    used=0,
                                    tat=0.0,
                                    updated_at=format_timestamp(self.now()),
                                )
                            )
                    except sa.exc.IntegrityError:
                        pass  # another worker created it first
                    continue
            budget = self._budget(row)
            if budget.used + patients > budget.effective:
                raise QueryBudgetExceeded(
                    f"{requester} has had {budget.used} of the {budget.effective} predictions "
                    f"allowed from model {model_hash[:16]}...; this request carries {patients} "
                    "(ask an administrator for a larger budget)"
                )
            wait = max(float(row.tat), now) + cost - now - self.tolerance
            if cost > self.tolerance:
                raise QueryBudgetExceeded(
                    f"a request carrying {patients} predictions exceeds the prediction burst "
                    "of this deployment"
                )
            raise QueryBudgetExceeded(
                f"{requester} is over its prediction rate for model {model_hash[:16]}...",
                retry_after=max(wait, 0.001),
            )
        raise QueryBudgetExceeded(  # pragma: no cover - three lost races in a row
            "the query budget is busy; retry", retry_after=self.interval
        )

    def set(
        self,
        principal: Principal,
        requester: str,
        model_hash: str,
        budget: int,
        *,
        session: Session | None = None,
        record_action: bool = True,
    ) -> Budget:
        """Allow ``requester`` ``budget`` predictions from ``model_hash`` in all.

        Written in ``session`` when given (the caller's transaction: the coordinator's
        ``inference.budget_set`` entry commits with it), else in a transaction of its own.
        ``record_action`` adds the ``api_action`` row (``inference.budget``); leave it out
        when the coordinator's audit hook records the change. Predictions already charged
        stay charged.

        Raises
        ------
        InputError
            If the budget is negative or too large, or the requester name is empty.
        """
        if not 0 <= budget <= _MAX_BUDGET:
            raise InputError(f"a budget must be between 0 and {_MAX_BUDGET} predictions")
        if not requester or len(requester) > 128:
            raise InputError("a requester name has 1 to 128 characters")
        if session is None:
            with Session(self.engine) as own, own.begin():
                return self._set(own, principal, requester, model_hash, budget, record_action)
        return self._set(session, principal, requester, model_hash, budget, record_action)

    def _set(
        self,
        session: Session,
        principal: Principal,
        requester: str,
        model_hash: str,
        budget: int,
        record_action: bool,
    ) -> Budget:
        stamp = format_timestamp(self.now())
        mine = (QueryBudgetRow.requester == requester, QueryBudgetRow.model_hash == model_hash)
        row = session.scalars(select(QueryBudgetRow).where(*mine)).one_or_none()
        if row is None:
            row = QueryBudgetRow(
                requester=requester,
                model_hash=model_hash,
                budget=budget,
                used=0,
                tat=0.0,
                updated_at=stamp,
            )
            session.add(row)
        else:
            row.budget = budget
            row.updated_at = stamp
        if record_action:
            session.add(
                ActionRow(
                    at=stamp,
                    token_id=principal.token_id,
                    actor=principal.name,
                    role=principal.role.value,
                    action="inference.budget",
                    target=f"{model_hash}/{requester}"[:200],
                    ledger_seq=None,
                )
            )
        session.flush()
        return self._budget(row)

    def list(self, model_hash: str) -> list[Budget]:
        """Every requester's budget for ``model_hash`` (those set or charged)."""
        with Session(self.engine) as session:
            rows = session.scalars(
                select(QueryBudgetRow)
                .where(QueryBudgetRow.model_hash == model_hash)
                .order_by(QueryBudgetRow.requester)
            ).all()
            return [self._budget(row) for row in rows]


class StoreMeter:
    """The inference service's meter over a :class:`BudgetStore` made later (at start-up)."""

    def __init__(self, store: Callable[[], BudgetStore]) -> None:
        self._store = store

    def charge(self, requester: str, model_hash: str, patients: int) -> int:
        """See :meth:`BudgetStore.charge`."""
        return self._store().charge(requester, model_hash, patients)


def set_budget_recorded(
    service: CoordinatorService,
    store: BudgetStore,
    by: Principal,
    requester: str,
    model_hash: str,
    budget: int,
) -> Budget:
    """Set a budget and record ``inference.budget_set`` (naming who asked) in one transaction.

    The ledger entry and the new budget commit together or not at all.

    Raises
    ------
    InputError
        If the budget or the requester's name is not acceptable (nothing is recorded).
    """
    payload = InferenceBudgetSet.parse(
        {"model_hash": model_hash, "requester": requester, "budget": budget},
        what="budget",
    )
    audited = service.audit_hook is not None

    def write(session: Session) -> tuple[Budget, InferenceBudgetSet]:
        value = store.set(
            by, requester, model_hash, budget, session=session, record_action=not audited
        )
        return value, payload

    target = f"{model_hash}/{requester}"[:200]
    return service.record_change(by, "inference.budget", target, write).value
