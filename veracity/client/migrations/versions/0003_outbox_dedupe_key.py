"""Refusals are kept once per request: ``site_outbox.dedupe_key``.

Revision ID: 0003_outbox_dedupe_key
Revises: 0002_budget_pools
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_outbox_dedupe_key"
down_revision: str | None = "0002_budget_pools"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add the nullable, unique ``dedupe_key`` column."""
    with op.batch_alter_table("site_outbox") as batch:
        batch.add_column(sa.Column("dedupe_key", sa.String(64), nullable=True))
        batch.create_unique_constraint(op.f("uq_site_outbox_dedupe_key"), ["dedupe_key"])


def downgrade() -> None:
    """Drop it."""
    with op.batch_alter_table("site_outbox") as batch:
        batch.drop_constraint(op.f("uq_site_outbox_dedupe_key"), type_="unique")
        batch.drop_column("dedupe_key")
