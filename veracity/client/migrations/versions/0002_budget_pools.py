"""Budget pools: salted per-record fingerprints, and the pool each dataset draws from.

Revision ID: 0002_budget_pools
Revises: 0001_site_store
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_budget_pools"
down_revision: str | None = "0001_site_store"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add ``site_datasets.pool_id`` (each existing dataset its own pool) and two tables."""
    with op.batch_alter_table("site_datasets") as batch:
        batch.add_column(sa.Column("pool_id", sa.String(128), nullable=True))
    op.execute("UPDATE site_datasets SET pool_id = dataset_id")
    with op.batch_alter_table("site_datasets") as batch:
        batch.alter_column("pool_id", existing_type=sa.String(128), nullable=False)
        batch.create_index(op.f("ix_site_datasets_pool_id"), ["pool_id"], unique=False)
    op.create_table(
        "site_record_fingerprints",
        sa.Column("dataset_id", sa.String(128), nullable=False),
        sa.Column("fingerprint", sa.String(32), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["site_datasets.dataset_id"],
            name=op.f("fk_site_record_fingerprints_dataset_id_site_datasets"),
        ),
        sa.PrimaryKeyConstraint(
            "dataset_id", "fingerprint", name=op.f("pk_site_record_fingerprints")
        ),
    )
    op.create_index(
        op.f("ix_site_record_fingerprints_fingerprint"),
        "site_record_fingerprints",
        ["fingerprint"],
        unique=False,
    )
    op.create_table(
        "site_secrets",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value_hex", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_site_secrets")),
    )


def downgrade() -> None:
    """Drop the tables and the column."""
    op.drop_table("site_secrets")
    op.drop_index(
        op.f("ix_site_record_fingerprints_fingerprint"), table_name="site_record_fingerprints"
    )
    op.drop_table("site_record_fingerprints")
    with op.batch_alter_table("site_datasets") as batch:
        batch.drop_index(op.f("ix_site_datasets_pool_id"))
        batch.drop_column("pool_id")
