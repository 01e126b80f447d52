"""Query budgets: predictions allowed and charged per requester and model.

Revision ID: 0002_query_budget
Revises: 0001_api_tables
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_query_budget"
down_revision: str | None = "0001_api_tables"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``api_query_budget``."""
    op.create_table(
        "api_query_budget",
        sa.Column("requester", sa.String(length=128), nullable=False),
        sa.Column("model_hash", sa.String(length=64), nullable=False),
        sa.Column("budget", sa.BigInteger(), nullable=True),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.Column("tat", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("requester", "model_hash", name="pk_api_query_budget"),
        sa.CheckConstraint("budget IS NULL OR budget >= 0", name="ck_api_query_budget_budget"),
        sa.CheckConstraint("used >= 0", name="ck_api_query_budget_used"),
    )


def downgrade() -> None:
    """Drop ``api_query_budget``."""
    op.drop_table("api_query_budget")
