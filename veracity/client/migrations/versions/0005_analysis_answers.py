"""Released analysis answers, one per dataset and query terms: ``site_analysis_answers``.

Revision ID: 0005_analysis_answers
Revises: 0004_dataset_layout
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_analysis_answers"
down_revision: str | None = "0004_dataset_layout"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create the table."""
    op.create_table(
        "site_analysis_answers",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dataset_id", sa.String(128), nullable=False),
        sa.Column("query_hash", sa.String(64), nullable=False),
        sa.Column("study_hash", sa.String(64), nullable=False),
        sa.Column("query_id", sa.String(128), nullable=False),
        sa.Column("answer_json", sa.Text(), nullable=False),
        sa.Column("spend_id", sa.Integer(), nullable=False),
        sa.Column("answered_at", sa.String(40), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["site_datasets.dataset_id"],
            name=op.f("fk_site_analysis_answers_dataset_id_site_datasets"),
        ),
        sa.ForeignKeyConstraint(
            ["spend_id"],
            ["site_privacy_spends.id"],
            name=op.f("fk_site_analysis_answers_spend_id_site_privacy_spends"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_site_analysis_answers")),
        sa.UniqueConstraint(
            "dataset_id", "query_hash", name=op.f("uq_site_analysis_answers_dataset_id")
        ),
    )
    op.create_index(
        op.f("ix_site_analysis_answers_dataset_id"),
        "site_analysis_answers",
        ["dataset_id"],
        unique=False,
    )


def downgrade() -> None:
    """Drop it."""
    op.drop_index(op.f("ix_site_analysis_answers_dataset_id"), table_name="site_analysis_answers")
    op.drop_table("site_analysis_answers")
