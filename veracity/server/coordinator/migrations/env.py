"""Alembic environment for the coordinator's read model.

Run through :meth:`veracity.server.coordinator.read_model.ReadModel.upgrade` / ``downgrade``,
which pass an open connection (holding the ledger's write lock) in
``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from veracity.server.coordinator.tables import VERSION_TABLE, CoordBase

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable by running alembic by hand
    raise RuntimeError("run the read model's migrations through ReadModel.upgrade")
context.configure(
    connection=connection,
    target_metadata=CoordBase.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
