"""The site store: datasets, study decisions, privacy spends and the outbox.

Revision ID: 0001_site_store
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_site_store"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create the four tables."""
    op.create_table(
        "site_datasets",
        sa.Column("dataset_id", sa.String(128), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("file_format", sa.String(16), nullable=False),
        sa.Column("file_sha256", sa.String(64), nullable=False),
        sa.Column("content_digest", sa.String(64), nullable=False),
        sa.Column("salt_hex", sa.String(64), nullable=False),
        sa.Column("commitment", sa.String(64), nullable=False),
        sa.Column("schema_hash", sa.String(64), nullable=False),
        sa.Column("label", sa.String(256), nullable=False),
        sa.Column("features_json", sa.Text(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("positives", sa.Integer(), nullable=False),
        sa.Column("epsilon_budget", sa.Double(), nullable=False),
        sa.Column("delta", sa.Double(), nullable=False),
        sa.Column("registered_at", sa.String(40), nullable=False),
        sa.PrimaryKeyConstraint("dataset_id", name=op.f("pk_site_datasets")),
        sa.UniqueConstraint("content_digest", name=op.f("uq_site_datasets_content_digest")),
    )
    op.create_table(
        "site_decisions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("study_hash", sa.String(64), nullable=False),
        sa.Column("study_id", sa.String(128), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("study_json", sa.Text(), nullable=False),
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("dataset_id", sa.String(128), nullable=True),
        sa.Column("epsilon_cap", sa.Double(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("decided_at", sa.String(40), nullable=False),
        sa.Column("statement_id", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["site_datasets.dataset_id"],
            name=op.f("fk_site_decisions_dataset_id_site_datasets"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_site_decisions")),
    )
    op.create_index(
        op.f("ix_site_decisions_study_hash"), "site_decisions", ["study_hash"], unique=False
    )
    op.create_table(
        "site_privacy_spends",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dataset_id", sa.String(128), nullable=False),
        sa.Column("study_hash", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(128), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("noise_multiplier", sa.Double(), nullable=False),
        sa.Column("sample_rate", sa.Double(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("delta", sa.Double(), nullable=False),
        sa.Column("epsilon_dataset", sa.Double(), nullable=False),
        sa.Column("epsilon_study", sa.Double(), nullable=False),
        sa.Column("epsilon_rdp", sa.Double(), nullable=False),
        sa.Column("reserved_at", sa.String(40), nullable=False),
        sa.Column("finished_at", sa.String(40), nullable=True),
        sa.Column("update_hash", sa.String(64), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["site_datasets.dataset_id"],
            name=op.f("fk_site_privacy_spends_dataset_id_site_datasets"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_site_privacy_spends")),
    )
    op.create_index(
        op.f("ix_site_privacy_spends_dataset_id"),
        "site_privacy_spends",
        ["dataset_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_site_privacy_spends_study_hash"),
        "site_privacy_spends",
        ["study_hash"],
        unique=False,
    )
    op.create_table(
        "site_outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("statement_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("payload_json", sa.Text(), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.Column("delivered_at", sa.String(40), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_site_outbox")),
        sa.UniqueConstraint("statement_id", name=op.f("uq_site_outbox_statement_id")),
    )


def downgrade() -> None:
    """Drop the four tables."""
    op.drop_table("site_outbox")
    op.drop_index(op.f("ix_site_privacy_spends_study_hash"), table_name="site_privacy_spends")
    op.drop_index(op.f("ix_site_privacy_spends_dataset_id"), table_name="site_privacy_spends")
    op.drop_table("site_privacy_spends")
    op.drop_index(op.f("ix_site_decisions_study_hash"), table_name="site_decisions")
    op.drop_table("site_decisions")
    op.drop_table("site_datasets")
