"""Alembic migrations of the site store, shipped in the package.

:func:`upgrade_to_head` brings a store to the newest revision (creating it when empty);
a store whose revision this Veracity does not know (written by a newer one) is refused.
New revisions go in ``versions/``; generate one from a developer checkout with
``alembic -c <ini with script_location=veracity/client/migrations> revision --autogenerate``.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Engine

from veracity.errors import ConfigError

__all__ = [
    "MIGRATIONS_DIR",
    "alembic_config",
    "current_revision",
    "head_revision",
    "upgrade_to_head",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent


def alembic_config() -> Config:
    """An Alembic configuration pointing at these migrations (no ini file needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    """The newest revision this Veracity knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise ConfigError("the site store migrations are missing from this installation")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision a store is at (``None`` for an empty database)."""
    from veracity.client.store import VERSION_TABLE

    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def upgrade_to_head(engine: Engine) -> None:
    """Create or upgrade the site store behind ``engine`` to :func:`head_revision`.

    Raises
    ------
    ConfigError
        If the store is at a revision this Veracity does not know.
    """
    script = ScriptDirectory.from_config(alembic_config())
    current = current_revision(engine)
    if current is not None:
        try:
            script.get_revision(current)
        except CommandError as err:
            raise ConfigError(
                f"the site store is at schema revision {current!r}, which this Veracity does "
                "not know; it was written by a newer version: upgrade Veracity"
            ) from err
    if current == script.get_current_head():
        return
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
