"""API tables: tokens, actions, inference rate state.

Revision ID: 0001_api_tables
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_api_tables"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = ("api",)
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Create the API tables."""
    op.create_table(
        "api_token",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("site", sa.String(length=64), nullable=True),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("expires_at", sa.String(length=32), nullable=False),
        sa.Column("revoked_at", sa.String(length=32), nullable=True),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_api_token"),
        sa.UniqueConstraint("token_hash", name="uq_api_token_token_hash"),
        sa.CheckConstraint(
            "role IN ('admin', 'site', 'researcher', 'auditor')", name="ck_api_token_role"
        ),
        sa.CheckConstraint(
            "(role = 'site' AND site IS NOT NULL) OR (role <> 'site' AND site IS NULL)",
            name="ck_api_token_site_binding",
        ),
    )
    op.create_table(
        "api_action",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("at", sa.String(length=32), nullable=False),
        sa.Column("token_id", sa.String(length=16), nullable=True),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=False),
        sa.Column("ledger_seq", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_action"),
        sa.UniqueConstraint("ledger_seq", name="uq_api_action_ledger_seq"),
        sa.ForeignKeyConstraint(
            ["token_id"], ["api_token.id"], name="fk_api_action_token_id_api_token"
        ),
        sa.ForeignKeyConstraint(
            ["ledger_seq"], ["ledger_entry.seq"], name="fk_api_action_ledger_seq_ledger_entry"
        ),
    )
    op.create_index("ix_api_action_token_id_id", "api_action", ["token_id", "id"])
    op.create_table(
        "api_rate",
        sa.Column("token_id", sa.String(length=16), nullable=False),
        sa.Column("tat", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("token_id", name="pk_api_rate"),
        sa.ForeignKeyConstraint(
            ["token_id"], ["api_token.id"], name="fk_api_rate_token_id_api_token"
        ),
    )


def downgrade() -> None:
    """Drop the API tables."""
    op.drop_table("api_rate")
    op.drop_index("ix_api_action_token_id_id", table_name="api_action")
    op.drop_table("api_action")
    op.drop_table("api_token")
