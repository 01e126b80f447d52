"""Per-token rate limit for encrypted inference, shared by every worker through the database.

A generic cell rate algorithm (GCRA): each token has a theoretical arrival time ``tat``; a
request at time ``t`` is allowed when ``max(tat, t) - t <= tolerance`` and then moves
``tat`` to ``max(tat, t) + interval``. With ``interval = 60 / per_minute`` and
``tolerance = interval * (burst - 1)`` a token may send ``burst`` requests at once and
``per_minute`` requests per minute sustained. The check and the update are one conditional
``UPDATE``, atomic on SQLite and PostgreSQL, so two worker processes cannot both spend
the same allowance.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy import case, insert, literal, select, update
from sqlalchemy.engine import Engine

from veracity.errors import ConfigError
from veracity.server.api.db import RateRow

__all__ = ["RateLimiter"]


class RateLimiter:
    """Allow ``per_minute`` requests per token, with bursts of ``burst``.

    Parameters
    ----------
    engine
        The coordinator's database (holding ``api_rate``).
    per_minute
        Sustained requests per minute per token.
    burst
        Requests a token may send back to back.
    clock
        Seconds since the epoch (``time.time``; injectable for tests). Wall-clock time,
        because the state is shared between processes.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        per_minute: float,
        burst: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if per_minute <= 0 or burst < 1:
            raise ConfigError("a rate limit needs per_minute > 0 and burst >= 1")
        self.engine = engine
        self.interval = 60.0 / per_minute
        self.tolerance = self.interval * (burst - 1)
        self.clock = clock

    def acquire(self, token_id: str) -> float | None:
        """Spend one request of ``token_id``'s allowance.

        Returns
        -------
        float or None
            ``None`` if the request may proceed, else the seconds to wait before retrying.
        """
        now = self.clock()
        start = case((RateRow.tat > literal(now), RateRow.tat), else_=literal(now))
        for _ in range(3):
            with self.engine.begin() as connection:
                changed = connection.execute(
                    update(RateRow)
                    .where(RateRow.token_id == token_id, start - now <= self.tolerance)
                    .values(tat=start + self.interval)
                )
                if changed.rowcount:
                    return None
                tat = connection.execute(
                    select(RateRow.tat).where(RateRow.token_id == token_id)
                ).scalar_one_or_none()
                if tat is not None:
                    return max(0.0, float(tat) - now - self.tolerance)
                try:
                    with connection.begin_nested():
                        connection.execute(
                            insert(RateRow).values(token_id=token_id, tat=now + self.interval)
                        )
                except sa.exc.IntegrityError:
                    continue  # another worker created the row first: check again
                return None
        return self.interval  # pragma: no cover - three lost races in a row
