"""``api_action``: who did what through the API (or the coordinator's command line).

:class:`ApiActions` is the coordinator service's audit hook: each change writes its row in
the change's own transaction, after the change's ledger entries, linked to the first of them
(``ledger_seq``), so a change and its row commit together or not at all. The ledger names
the coordinator as the actor of root-signed events; this table names the person and token
behind it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from veracity.core.fields import format_timestamp
from veracity.server.api.db import ActionRow
from veracity.server.api.tokens import Clock, utc_now
from veracity.server.coordinator.unit_of_work import Actor

__all__ = ["ApiActions", "list_actions"]


class ApiActions:
    """The audit hook that writes ``api_action`` rows."""

    def __init__(self, *, clock: Clock = utc_now) -> None:
        self.clock = clock

    def record(
        self, session: Session, *, actor: Actor, action: str, target: str, seq: int | None
    ) -> int:
        """Insert the row of one change in its transaction; returns the row's id."""
        row = ActionRow(
            at=format_timestamp(self.clock()),
            token_id=actor.token_id,
            actor=actor.name,
            role=str(actor.role),
            action=action,
            target=target[:200],
            ledger_seq=seq,
        )
        session.add(row)
        session.flush()
        return int(row.id)


def list_actions(engine: Engine, *, since: int = 0, limit: int = 100) -> list[dict[str, Any]]:
    """``api_action`` rows with ``id >= since``, oldest first."""
    with Session(engine) as session:
        rows = session.execute(
            select(ActionRow).where(ActionRow.id >= since).order_by(ActionRow.id).limit(limit)
        ).scalars()
        return [
            {
                "id": row.id,
                "at": row.at,
                "token_id": row.token_id,
                "actor": row.actor,
                "role": row.role,
                "action": row.action,
                "target": row.target,
                "ledger_seq": row.ledger_seq,
            }
            for row in rows
        ]
