"""Alembic histories shipped inside the package.

Veracity keeps three schemas, each with its own Alembic history and version table so that
they can share one database: the ledger (``ledger_alembic_version``), the admin API's
tables (``api_alembic_version``) and a site's store (``site_alembic_version``). This module
is what they share: configuration without an ini file, the head and current revisions, and
running a command on a connection the caller holds (inside its lock). Each history's
revisions are read once per process (they ship with the package and do not change while it
runs): Alembic's own commands read and compile every revision file on each call.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine

from veracity.errors import ConfigError

__all__ = ["MigrationHistory"]

_SCRIPTS: dict[tuple[Path, str], Any] = {}
_SCRIPTS_LOCK = threading.Lock()


@dataclass(frozen=True)
class MigrationHistory:
    """One packaged Alembic history: where its revisions live and its version table."""

    #: What the schema is called in messages ("ledger", "API tables", "site store").
    name: str
    script_location: Path
    version_table: str

    def config(self, connection: Connection | None = None, url: str | None = None) -> Any:
        """An Alembic ``Config`` for this history (on ``connection`` when given)."""
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(self.script_location))
        config.set_main_option("version_table", self.version_table)
        if url is not None:
            config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
        if connection is not None:
            config.attributes["connection"] = connection
        return config

    def script(self) -> Any:
        """The Alembic ``ScriptDirectory`` of this history, its revisions read once per process."""
        from alembic.script import ScriptDirectory

        key = (self.script_location, self.version_table)
        with _SCRIPTS_LOCK:
            script = _SCRIPTS.get(key)
            if script is None:
                script = ScriptDirectory.from_config(self.config())
                script.revision_map.heads  # noqa: B018 - reads the revisions, under the lock
                _SCRIPTS[key] = script
            return script

    def head(self) -> str:
        """The newest revision shipped with this package.

        Raises
        ------
        ConfigError
            If the installation lacks the revisions.
        """
        head = self.script().get_current_head()
        if head is None:  # pragma: no cover - the package always ships revisions
            raise ConfigError(f"the {self.name} migrations are missing from this installation")
        return str(head)

    def current(self, engine: Engine) -> str | None:
        """The revision the database is at (``None``: these tables do not exist)."""
        from alembic.runtime.migration import MigrationContext

        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"version_table": self.version_table}
            )
            revision = context.get_current_revision()
            connection.rollback()
            return revision

    def knows(self, revision: str) -> bool:
        """Whether ``revision`` belongs to this history (a newer Veracity's does not)."""
        from alembic.util import CommandError

        try:
            return self.script().get_revision(revision) is not None
        except CommandError:
            return False

    def run(self, connection: Connection, action: str, revision: str) -> None:
        """Run ``alembic upgrade|downgrade REVISION`` on ``connection``.

        As Alembic's ``command.upgrade`` and ``command.downgrade`` do, with the revisions
        :meth:`script` read once.
        """
        from alembic.runtime.environment import EnvironmentContext

        script = self.script()
        steps = {"upgrade": script._upgrade_revs, "downgrade": script._downgrade_revs}[action]

        def migrate(current: Any, _context: Any) -> Any:
            return steps(revision, current)

        with EnvironmentContext(
            self.config(connection), script, fn=migrate, destination_rev=revision
        ):
            script.run_env()
