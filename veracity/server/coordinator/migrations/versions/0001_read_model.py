"""Coordinator read model: sites, datasets, studies, decisions, runs, rounds, models.

Revision ID: 0001_read_model
Revises:
Create Date: 2026-12-06

The tables start empty with the watermark at 0; the coordinator folds the existing log in
on its first change or read (or at ``veracity server reindex``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_read_model"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = ("coordinator",)
depends_on: str | Sequence[str] | None = None

_TS = sa.String(length=40)


def upgrade() -> None:
    """Create the read model's tables."""
    op.create_table(
        "coord_projection",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("upto", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_coord_projection"),
    )
    op.create_table(
        "coord_site",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("supernode_public_key", sa.Text(), nullable=True),
        sa.Column("valid_from", _TS, nullable=False),
        sa.Column("enrolled_seq", sa.BigInteger(), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=True),
        sa.Column("revoked_seq", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_coord_site"),
    )
    op.create_table(
        "coord_dataset",
        sa.Column("site", sa.String(length=128), nullable=False),
        sa.Column("dataset_id", sa.String(length=128), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("site", "dataset_id", name="pk_coord_dataset"),
    )
    op.create_table(
        "coord_study",
        sa.Column("study_hash", sa.String(length=64), nullable=False),
        sa.Column("study_id", sa.String(length=128), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("ts", _TS, nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("study_hash", name="pk_coord_study"),
        sa.UniqueConstraint("seq", name="uq_coord_study_seq"),
    )
    op.create_table(
        "coord_decision",
        sa.Column("study_hash", sa.String(length=64), nullable=False),
        sa.Column("site", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("study_hash", "site", name="pk_coord_decision"),
    )
    op.create_table(
        "coord_run",
        sa.Column("run_id", sa.String(length=128), nullable=False),
        sa.Column("study_hash", sa.String(length=64), nullable=False),
        sa.Column("started_seq", sa.BigInteger(), nullable=True),
        sa.Column("started_at", _TS, nullable=True),
        sa.Column("finished_seq", sa.BigInteger(), nullable=True),
        sa.Column("finished_at", _TS, nullable=True),
        sa.Column("status", sa.String(length=32), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("rounds_completed", sa.BigInteger(), nullable=True),
        sa.Column("model_hash", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("run_id", name="pk_coord_run"),
        sa.UniqueConstraint("started_seq", name="uq_coord_run_started_seq"),
    )
    op.create_table(
        "coord_round",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("run_id", sa.String(length=128), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_coord_round"),
    )
    op.create_index("ix_coord_round_run_id_seq", "coord_round", ["run_id", "seq"])
    op.create_table(
        "coord_model",
        sa.Column("model_hash", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("released_at", _TS, nullable=False),
        sa.Column("run_id", sa.String(length=128), nullable=False),
        sa.Column("study_hash", sa.String(length=64), nullable=False),
        sa.Column("card_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("model_hash", name="pk_coord_model"),
        sa.UniqueConstraint("seq", name="uq_coord_model_seq"),
    )


def downgrade() -> None:
    """Drop the read model's tables."""
    op.drop_table("coord_model")
    op.drop_index("ix_coord_round_run_id_seq", table_name="coord_round")
    op.drop_table("coord_round")
    op.drop_table("coord_run")
    op.drop_table("coord_decision")
    op.drop_table("coord_study")
    op.drop_table("coord_dataset")
    op.drop_table("coord_site")
    op.drop_table("coord_projection")
