"""Alembic environment for the admin API's tables.

Run through :func:`veracity.server.api.db.upgrade` / ``downgrade``, which pass an open
connection (holding the ledger's write lock) in ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from veracity.server.api.db import VERSION_TABLE, ApiBase

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable by running alembic by hand
    raise RuntimeError("run the API migrations through veracity.server.api.db.upgrade")
context.configure(
    connection=connection,
    target_metadata=ApiBase.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
