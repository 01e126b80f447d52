"""Ledger tables: entries, checkpoints, key-event and site-statement indexes.

Revision ID: 0001_ledger_tables
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_ledger_tables"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = ("ledger",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the ledger tables."""
    op.create_table(
        "ledger_entry",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("ts", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("prev_seq", sa.BigInteger(), nullable=True),
        sa.Column("prev", sa.LargeBinary(length=32), nullable=False),
        sa.Column("hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_ledger_entry"),
        sa.UniqueConstraint("prev", name="uq_ledger_entry_prev"),
        sa.UniqueConstraint("hash", name="uq_ledger_entry_hash"),
        sa.UniqueConstraint("seq", "hash", name="uq_ledger_entry_seq_hash"),
        sa.ForeignKeyConstraint(
            ["prev_seq", "prev"],
            ["ledger_entry.seq", "ledger_entry.hash"],
            name="fk_ledger_entry_prev_seq_prev_ledger_entry",
        ),
        sa.CheckConstraint(
            "(seq = 0 AND prev_seq IS NULL) OR (seq > 0 AND prev_seq = seq - 1)",
            name="ck_ledger_entry_linear",
        ),
    )
    op.create_index("ix_ledger_entry_kind_seq", "ledger_entry", ["kind", "seq"])
    op.create_index("ix_ledger_entry_actor_seq", "ledger_entry", ["actor", "seq"])
    op.create_table(
        "ledger_checkpoint",
        sa.Column("tree_size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("root_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("timestamp", sa.String(length=32), nullable=False),
        sa.Column("log_id", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("tree_size", name="pk_ledger_checkpoint"),
    )
    op.create_table(
        "ledger_key_event",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=True),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("seq", name="pk_ledger_key_event"),
        sa.ForeignKeyConstraint(
            ["seq"], ["ledger_entry.seq"], name="fk_ledger_key_event_seq_ledger_entry"
        ),
    )
    op.create_index("ix_ledger_key_event_name_seq", "ledger_key_event", ["name", "seq"])
    op.create_table(
        "ledger_site_statement",
        sa.Column("digest", sa.LargeBinary(length=32), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("digest", name="pk_ledger_site_statement"),
        sa.ForeignKeyConstraint(
            ["seq"], ["ledger_entry.seq"], name="fk_ledger_site_statement_seq_ledger_entry"
        ),
    )


def downgrade() -> None:
    """Drop the ledger tables."""
    op.drop_table("ledger_site_statement")
    op.drop_index("ix_ledger_key_event_name_seq", table_name="ledger_key_event")
    op.drop_table("ledger_key_event")
    op.drop_table("ledger_checkpoint")
    op.drop_index("ix_ledger_entry_actor_seq", table_name="ledger_entry")
    op.drop_index("ix_ledger_entry_kind_seq", table_name="ledger_entry")
    op.drop_table("ledger_entry")
