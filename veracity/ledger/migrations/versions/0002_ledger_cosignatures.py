"""Witness cosignatures of checkpoints, outside the Merkle tree.

Revision ID: 0002_ledger_cosignatures
Revises: 0001_ledger_tables
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_ledger_cosignatures"
down_revision: str | None = "0001_ledger_tables"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``ledger_cosignature``."""
    op.create_table(
        "ledger_cosignature",
        sa.Column("tree_size", sa.BigInteger(), nullable=False),
        sa.Column("witness", sa.String(length=255), nullable=False),
        sa.Column("key_id", sa.LargeBinary(length=4), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("signature", sa.LargeBinary(length=72), nullable=False),
        sa.ForeignKeyConstraint(
            ["tree_size"],
            ["ledger_checkpoint.tree_size"],
            name="fk_ledger_cosignature_tree_size_ledger_checkpoint",
        ),
        sa.PrimaryKeyConstraint("tree_size", "witness", "key_id", name="pk_ledger_cosignature"),
    )


def downgrade() -> None:
    """Drop ``ledger_cosignature``."""
    op.drop_table("ledger_cosignature")
