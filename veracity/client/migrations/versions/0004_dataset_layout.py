"""Datasets of k classes, signals and images: ``site_datasets.layout_json``.

Revision ID: 0004_dataset_layout
Revises: 0003_outbox_dedupe_key
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_dataset_layout"
down_revision: str | None = "0003_outbox_dedupe_key"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add the nullable ``layout_json`` column (absent: a table of classes 0 and 1)."""
    with op.batch_alter_table("site_datasets") as batch:
        batch.add_column(sa.Column("layout_json", sa.Text(), nullable=True))


def downgrade() -> None:
    """Drop it."""
    with op.batch_alter_table("site_datasets") as batch:
        batch.drop_column("layout_json")
