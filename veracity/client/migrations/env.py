"""Alembic environment of the site store: runs on the connection the caller passes."""

from __future__ import annotations

from alembic import context

from veracity.client.store import VERSION_TABLE, Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only the package's own helpers run migrations
    raise RuntimeError("run site store migrations through veracity.client.migrations")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
