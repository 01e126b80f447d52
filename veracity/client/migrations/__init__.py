"""Alembic migrations of the site store, shipped in the package.

:func:`upgrade_to_head` brings a store to the newest revision (creating it when empty);
a store whose revision this Veracity does not know (written by a newer one) is refused.
New revisions go in ``versions/``; generate one from a developer checkout with
``alembic -c <ini with script_location=veracity/client/migrations> revision --autogenerate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from veracity.errors import ConfigError
from veracity.migrations import MigrationHistory

__all__ = [
    "MIGRATIONS_DIR",
    "HISTORY",
    "alembic_config",
    "current_revision",
    "head_revision",
    "upgrade_to_head",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent
#: The version table is ``veracity.client.store.VERSION_TABLE`` (its env.py uses that too).
HISTORY = MigrationHistory("site store", MIGRATIONS_DIR, "site_alembic_version")


def alembic_config() -> Any:
    """An Alembic configuration pointing at these migrations (no ini file needed)."""
    return HISTORY.config()


def head_revision() -> str:
    """The newest revision this Veracity knows."""
    return HISTORY.head()


def current_revision(engine: Engine) -> str | None:
    """The revision a store is at (``None`` for an empty database)."""
    return HISTORY.current(engine)


def upgrade_to_head(engine: Engine) -> None:
    """Create or upgrade the site store behind ``engine`` to :func:`head_revision`.

    Raises
    ------
    ConfigError
        If the store is at a revision this Veracity does not know.
    """
    current = current_revision(engine)
    if current is not None and not HISTORY.knows(current):
        raise ConfigError(
            f"the site store is at schema revision {current!r}, which this Veracity does "
            "not know; it was written by a newer version: upgrade Veracity"
        )
    if current == head_revision():
        return
    with engine.begin() as connection:
        HISTORY.run(connection, "upgrade", "head")
