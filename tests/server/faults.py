"""Real database failures for tests: a statement or a commit that fails like a lost disk.

An engine hook raises SQLAlchemy's ``OperationalError`` (what a full disk or a dropped
connection raises), so the code under test meets the failure exactly where it would.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

__all__ = ["failing_at", "failing_commit"]


@contextmanager
def failing_at(engine: Engine, statement: str) -> Iterator[list[str]]:
    """Make every statement starting with ``statement`` fail; yields the statements hit."""
    hits: list[str] = []

    def before(_c: Any, _cursor: Any, sql: str, params: Any, _ctx: Any, _many: bool) -> None:
        if sql.lstrip().upper().startswith(statement.upper()):
            hits.append(sql)
            raise sa.exc.OperationalError(sql, params, OSError(28, "No space left on device"))

    sa.event.listen(engine, "before_cursor_execute", before)
    try:
        yield hits
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)


@contextmanager
def failing_commit(engine: Engine) -> Iterator[None]:
    """Make every commit fail (after everything in the transaction was written)."""

    def refuse(_connection: Any) -> None:
        raise sa.exc.OperationalError("COMMIT", {}, OSError(5, "Input/output error"))

    sa.event.listen(engine, "commit", refuse)
    try:
        yield
    finally:
        sa.event.remove(engine, "commit", refuse)
