"""The coordinator read model's tables (SQLAlchemy 2 typed ORM).

What each table folds from the log is in :mod:`.read_model`; their schema is created by the
Alembic history in ``veracity/server/coordinator/migrations`` (version table
``coord_alembic_version``), which a test keeps equal to these models.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Index, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from veracity.ledger import store

__all__ = [
    "VERSION_TABLE",
    "CoordBase",
    "ProjectionRow",
    "SiteRow",
    "DatasetRow",
    "StudyRow",
    "DecisionRow",
    "RunRow",
    "RoundRow",
    "ModelRow",
    "TABLES",
]

VERSION_TABLE = "coord_alembic_version"

_SEQ = BigInteger
_TS = String(40)


class CoordBase(DeclarativeBase):
    """Declarative base of the read model (the ledger's naming convention)."""

    metadata = MetaData(naming_convention=store.NAMING_CONVENTION)


class ProjectionRow(CoordBase):
    """The watermark: entries ``[0, upto)`` are folded into the read model."""

    __tablename__ = "coord_projection"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    upto: Mapped[int] = mapped_column(_SEQ)


class SiteRow(CoordBase):
    """An enrolled site."""

    __tablename__ = "coord_site"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    public_key: Mapped[str] = mapped_column(Text)
    supernode_public_key: Mapped[str | None] = mapped_column(Text)
    valid_from: Mapped[str] = mapped_column(_TS)
    enrolled_seq: Mapped[int] = mapped_column(_SEQ)
    key_id: Mapped[str | None] = mapped_column(String(64))
    revoked_seq: Mapped[int | None] = mapped_column(_SEQ)


class DatasetRow(CoordBase):
    """A site's latest registration of a dataset (the payload as signed)."""

    __tablename__ = "coord_dataset"

    site: Mapped[str] = mapped_column(String(128), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    seq: Mapped[int] = mapped_column(_SEQ)
    payload: Mapped[str] = mapped_column(Text)


class StudyRow(CoordBase):
    """A proposed study (its document as recorded)."""

    __tablename__ = "coord_study"

    study_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_id: Mapped[str] = mapped_column(String(128))
    seq: Mapped[int] = mapped_column(_SEQ, unique=True)
    ts: Mapped[str] = mapped_column(_TS)
    document: Mapped[str] = mapped_column(Text)


class DecisionRow(CoordBase):
    """A site's latest decision on a study (the payload as signed)."""

    __tablename__ = "coord_decision"

    study_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    site: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    seq: Mapped[int] = mapped_column(_SEQ)
    payload: Mapped[str] = mapped_column(Text)


class RunRow(CoordBase):
    """A run: its ``run.started`` (if any) and its first ``run.finished`` (if any)."""

    __tablename__ = "coord_run"

    run_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    study_hash: Mapped[str] = mapped_column(String(64))
    started_seq: Mapped[int | None] = mapped_column(_SEQ, unique=True)
    started_at: Mapped[str | None] = mapped_column(_TS)
    finished_seq: Mapped[int | None] = mapped_column(_SEQ)
    finished_at: Mapped[str | None] = mapped_column(_TS)
    status: Mapped[str | None] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    rounds_completed: Mapped[int | None] = mapped_column(_SEQ)
    model_hash: Mapped[str | None] = mapped_column(String(64))


class RoundRow(CoordBase):
    """A ``round.completed`` entry (the payload as recorded)."""

    __tablename__ = "coord_round"

    seq: Mapped[int] = mapped_column(_SEQ, primary_key=True, autoincrement=False)
    run_id: Mapped[str] = mapped_column(String(128))
    round: Mapped[int] = mapped_column(Integer)
    payload: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index(None, "run_id", "seq"),)


class ModelRow(CoordBase):
    """A released model."""

    __tablename__ = "coord_model"

    model_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(_SEQ, unique=True)
    released_at: Mapped[str] = mapped_column(_TS)
    run_id: Mapped[str] = mapped_column(String(128))
    study_hash: Mapped[str] = mapped_column(String(64))
    card_hash: Mapped[str] = mapped_column(String(64))


#: The tables a rebuild empties, children first.
TABLES = (RoundRow, DecisionRow, DatasetRow, ModelRow, RunRow, StudyRow, SiteRow)
