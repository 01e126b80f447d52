"""The site store: datasets, study decisions, the privacy ledger of each dataset, and the outbox.

SQLAlchemy 2 typed ORM over the site's SQLite file (``DIR/site.db``); PostgreSQL works
too (the contract tests run on both). The schema is created and upgraded by the Alembic
revisions in ``veracity/client/migrations`` (version table ``site_alembic_version``);
:meth:`SiteStore.open` refuses a store written by a newer Veracity.

Invariants the store keeps:

* A dataset, a study decision or a budget refusal is written in the same transaction as
  its signed statement in the outbox: there is never one without the other. Requests the
  approval does not cover are refused with an ``approval.missing`` statement, queued in
  the outbox once per refused request (``dedupe_key``).
* Privacy spends are append-only and *every* row counts towards the dataset's history,
  whatever its status (``reserved``, ``completed``, ``failed``). A round's steps are
  reserved, under a lock on the dataset, in the same transaction that checked the budget
  and before any training starts, so a crash can over-count a round but never
  under-count one, and two processes can never both spend the last of a budget.
* Decisions are append-only; the latest decision about a study is the one in force.
* Budgets follow records, not files: each dataset draws from a budget *pool*, and a
  dataset that shares a record (by salted fingerprint, kept here and never published)
  with registered ones joins their pool. A pool's history is every spend on any of its
  datasets, so every record's privacy loss is bounded by its pool's spend.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    aliased,
    mapped_column,
    sessionmaker,
)

from veracity.client.budget import History, RoundBudget, Segment, merge_history
from veracity.core.canonical import canonical_hash, canonical_json
from veracity.errors import ApprovalMissing, ConfigError, InputError
from veracity.ledger.statement import statement_of
from veracity.ledger.store import configure_sqlite

__all__ = [
    "VERSION_TABLE",
    "Base",
    "SignedStatement",
    "Dataset",
    "Pool",
    "Decision",
    "Spend",
    "OutboxEntry",
    "StoredAnswer",
    "QueryCharge",
    "SiteStore",
]

log = logging.getLogger(__name__)

#: Alembic's version table for the site store (kept apart from any other schema's).
VERSION_TABLE = "site_alembic_version"
_RECORD_KEY = "record-fingerprint-key"

_NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of the site store's tables."""

    metadata = sa.MetaData(naming_convention=_NAMING)


class DatasetRow(Base):
    """A registered dataset and its budget."""

    __tablename__ = "site_datasets"

    dataset_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    path: Mapped[str] = mapped_column(sa.Text)
    file_format: Mapped[str] = mapped_column(sa.String(16))
    file_sha256: Mapped[str] = mapped_column(sa.String(64))
    content_digest: Mapped[str] = mapped_column(sa.String(64), unique=True)
    salt_hex: Mapped[str] = mapped_column(sa.String(64))
    commitment: Mapped[str] = mapped_column(sa.String(64))
    schema_hash: Mapped[str] = mapped_column(sa.String(64))
    label: Mapped[str] = mapped_column(sa.String(256))
    features_json: Mapped[str] = mapped_column(sa.Text)
    rows: Mapped[int] = mapped_column(sa.Integer)
    positives: Mapped[int] = mapped_column(sa.Integer)
    epsilon_budget: Mapped[float] = mapped_column(sa.Double)
    delta: Mapped[float] = mapped_column(sa.Double)
    registered_at: Mapped[str] = mapped_column(sa.String(40))
    #: The budget pool the dataset draws from (the id of a dataset in it).
    pool_id: Mapped[str] = mapped_column(sa.String(128), index=True)
    #: Kind, classes and geometry (JSON); ``NULL``: a table of classes 0 and 1.
    layout_json: Mapped[str | None] = mapped_column(sa.Text, nullable=True)


class RecordFingerprintRow(Base):
    """A salted fingerprint of one record of a dataset (site only, never published)."""

    __tablename__ = "site_record_fingerprints"

    dataset_id: Mapped[str] = mapped_column(
        sa.String(128), sa.ForeignKey("site_datasets.dataset_id"), primary_key=True
    )
    fingerprint: Mapped[str] = mapped_column(sa.String(32), primary_key=True, index=True)


class SecretRow(Base):
    """A secret the site keeps in its store (the record-fingerprint key)."""

    __tablename__ = "site_secrets"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value_hex: Mapped[str] = mapped_column(sa.String(128))


class DecisionRow(Base):
    """An operator's decision about a study (append-only; the latest one counts)."""

    __tablename__ = "site_decisions"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    study_hash: Mapped[str] = mapped_column(sa.String(64), index=True)
    study_id: Mapped[str] = mapped_column(sa.String(128))
    decision: Mapped[str] = mapped_column(sa.String(16))
    study_json: Mapped[str] = mapped_column(sa.Text)
    code_hash: Mapped[str] = mapped_column(sa.String(64))
    dataset_id: Mapped[str | None] = mapped_column(
        sa.String(128), sa.ForeignKey("site_datasets.dataset_id"), nullable=True
    )
    epsilon_cap: Mapped[float | None] = mapped_column(sa.Double, nullable=True)
    reason: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    decided_at: Mapped[str] = mapped_column(sa.String(40))
    statement_id: Mapped[str] = mapped_column(sa.String(64))


class SpendRow(Base):
    """DP-SGD steps reserved or run on a dataset for one round (append-only)."""

    __tablename__ = "site_privacy_spends"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(
        sa.String(128), sa.ForeignKey("site_datasets.dataset_id"), index=True
    )
    study_hash: Mapped[str] = mapped_column(sa.String(64), index=True)
    run_id: Mapped[str] = mapped_column(sa.String(128))
    round: Mapped[int] = mapped_column(sa.Integer)
    noise_multiplier: Mapped[float] = mapped_column(sa.Double)
    sample_rate: Mapped[float] = mapped_column(sa.Double)
    steps: Mapped[int] = mapped_column(sa.Integer)
    status: Mapped[str] = mapped_column(sa.String(16))
    delta: Mapped[float] = mapped_column(sa.Double)
    epsilon_dataset: Mapped[float] = mapped_column(sa.Double)
    epsilon_study: Mapped[float] = mapped_column(sa.Double)
    epsilon_rdp: Mapped[float] = mapped_column(sa.Double)
    reserved_at: Mapped[str] = mapped_column(sa.String(40))
    finished_at: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)
    update_hash: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    note: Mapped[str | None] = mapped_column(sa.Text, nullable=True)


class AnalysisAnswerRow(Base):
    """A noisy answer a site released for one query on one dataset (append-only).

    A query asked again with the same terms (:func:`veracity.contracts.analysis.query_hash`)
    on the same dataset gets this answer back at no new cost: fresh noise would let an
    averaging attack strip it.
    """

    __tablename__ = "site_analysis_answers"
    __table_args__ = (sa.UniqueConstraint("dataset_id", "query_hash"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(
        sa.String(128), sa.ForeignKey("site_datasets.dataset_id"), index=True
    )
    query_hash: Mapped[str] = mapped_column(sa.String(64))
    study_hash: Mapped[str] = mapped_column(sa.String(64))
    query_id: Mapped[str] = mapped_column(sa.String(128))
    answer_json: Mapped[str] = mapped_column(sa.Text)
    spend_id: Mapped[int] = mapped_column(sa.Integer, sa.ForeignKey("site_privacy_spends.id"))
    answered_at: Mapped[str] = mapped_column(sa.String(40))


class OutboxRow(Base):
    """A signed statement waiting for (or delivered to) the coordinator's ledger."""

    __tablename__ = "site_outbox"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    statement_id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    kind: Mapped[str] = mapped_column(sa.String(64))
    actor: Mapped[str] = mapped_column(sa.String(128))
    payload_json: Mapped[str] = mapped_column(sa.Text)
    signature: Mapped[str] = mapped_column(sa.String(128))
    created_at: Mapped[str] = mapped_column(sa.String(40))
    delivered_at: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)
    #: Set for refusals: one statement per refused request (see ``SiteStore.refusal``).
    dedupe_key: Mapped[str | None] = mapped_column(sa.String(64), unique=True, nullable=True)


@dataclass(frozen=True)
class SignedStatement:
    """A ledger event's statement (kind, actor, payload) and the actor's signature over it."""

    kind: str
    actor: str
    payload: dict[str, Any]
    signature: str

    @property
    def statement_id(self) -> str:
        """SHA-256 of the canonical statement: the same for every copy of it."""
        return canonical_hash(statement_of(self.kind, self.actor, self.payload))

    def to_dict(self) -> dict[str, Any]:
        """``{statement_id, kind, actor, payload, signature}``."""
        return {
            "statement_id": self.statement_id,
            "kind": self.kind,
            "actor": self.actor,
            "payload": self.payload,
            "signature": self.signature,
        }


@dataclass(frozen=True)
class Dataset:
    """A registered dataset (its file stays where it is; only its fingerprints are stored)."""

    dataset_id: str
    path: Path
    file_format: str
    file_sha256: str
    content_digest: str
    salt: bytes
    commitment: str
    schema_hash: str
    label: str
    features: tuple[str, ...]
    rows: int
    positives: int
    epsilon_budget: float
    delta: float
    registered_at: str
    #: The budget pool it draws from; ``None`` before it is stored (then its own id).
    pool_id: str | None = None
    #: ``table``, ``signals`` or ``images``, the label's classes in index order, and the
    #: kind's geometry (:mod:`veracity.client.layouts`); empty: a table of classes 0 and 1.
    layout: Mapping[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``table``, ``signals`` or ``images``."""
        return str(self.layout.get("kind", "table"))

    @property
    def classes(self) -> tuple[str, ...]:
        """The label's values, in class-index order."""
        return tuple(str(c) for c in self.layout.get("classes", ("0", "1")))


@dataclass(frozen=True)
class Pool:
    """Datasets that share records, and so one privacy budget (see :meth:`SiteStore.pool`).

    Every record's privacy loss is bounded by the pool's spend, whichever of its datasets
    a round trained on. The pool's budget and delta are the smallest of its datasets'.
    ``shared`` says, for a pool just joined, how many records the new dataset shares
    with each dataset already in it.
    """

    pool_id: str
    datasets: tuple[str, ...]
    epsilon_budget: float
    delta: float
    shared: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """An operator's decision about a study."""

    id: int
    study_hash: str
    study_id: str
    decision: Literal["approved", "refused"]
    study_document: dict[str, Any]
    code_hash: str
    dataset_id: str | None
    epsilon_cap: float | None
    reason: str | None
    decided_at: str
    statement_id: str


@dataclass(frozen=True)
class Spend:
    """One round's reserved or spent DP-SGD steps on a dataset."""

    id: int
    dataset_id: str
    study_hash: str
    run_id: str
    round: int
    segment: Segment
    status: Literal["reserved", "completed", "failed"]
    delta: float
    epsilon_dataset: float
    epsilon_study: float
    epsilon_rdp: float
    reserved_at: str
    finished_at: str | None
    update_hash: str | None
    note: str | None


@dataclass(frozen=True)
class StoredAnswer:
    """A released query answer (the JSON the site sent) and whether it was stored before."""

    answer: dict[str, Any]
    study_hash: str
    query_id: str
    answered_at: str
    repeated: bool


@dataclass(frozen=True)
class QueryCharge:
    """What :meth:`SiteStore.answer_query` did.

    ``answer`` is ``None`` when the budget refused the query (``budget`` says why); for a
    stored answer ``budget`` is ``None`` (nothing was charged). The histories are the
    dataset's pool's and the study's before this query.
    """

    answer: StoredAnswer | None
    budget: RoundBudget | None
    dataset_before: History
    study_before: History


@dataclass(frozen=True)
class OutboxEntry:
    """A statement in the outbox, and when it was delivered (``None``: pending)."""

    statement: SignedStatement
    created_at: str
    delivered_at: str | None


def _dataset(row: DatasetRow) -> Dataset:
    return Dataset(
        dataset_id=row.dataset_id,
        path=Path(row.path),
        file_format=row.file_format,
        file_sha256=row.file_sha256,
        content_digest=row.content_digest,
        salt=bytes.fromhex(row.salt_hex),
        commitment=row.commitment,
        schema_hash=row.schema_hash,
        label=row.label,
        features=tuple(json.loads(row.features_json)),
        rows=row.rows,
        positives=row.positives,
        epsilon_budget=row.epsilon_budget,
        delta=row.delta,
        registered_at=row.registered_at,
        pool_id=row.pool_id,
        layout=json.loads(row.layout_json) if row.layout_json else {},
    )


def _decision(row: DecisionRow) -> Decision:
    decision: Literal["approved", "refused"] = (
        "approved" if row.decision == "approved" else "refused"
    )
    return Decision(
        id=row.id,
        study_hash=row.study_hash,
        study_id=row.study_id,
        decision=decision,
        study_document=json.loads(row.study_json),
        code_hash=row.code_hash,
        dataset_id=row.dataset_id,
        epsilon_cap=row.epsilon_cap,
        reason=row.reason,
        decided_at=row.decided_at,
        statement_id=row.statement_id,
    )


def _spend(row: SpendRow) -> Spend:
    status: Literal["reserved", "completed", "failed"]
    if row.status == "completed":
        status = "completed"
    elif row.status == "failed":
        status = "failed"
    else:
        status = "reserved"
    return Spend(
        id=row.id,
        dataset_id=row.dataset_id,
        study_hash=row.study_hash,
        run_id=row.run_id,
        round=row.round,
        segment=Segment(row.noise_multiplier, row.sample_rate, row.steps),
        status=status,
        delta=row.delta,
        epsilon_dataset=row.epsilon_dataset,
        epsilon_study=row.epsilon_study,
        epsilon_rdp=row.epsilon_rdp,
        reserved_at=row.reserved_at,
        finished_at=row.finished_at,
        update_hash=row.update_hash,
        note=row.note,
    )


def _statement(row: OutboxRow) -> SignedStatement:
    return SignedStatement(
        kind=row.kind,
        actor=row.actor,
        payload=json.loads(row.payload_json),
        signature=row.signature,
    )


def _outbox_row(statement: SignedStatement, created_at: str) -> OutboxRow:
    return OutboxRow(
        statement_id=statement.statement_id,
        kind=statement.kind,
        actor=statement.actor,
        payload_json=canonical_json(statement.payload).decode("utf-8"),
        signature=statement.signature,
        created_at=created_at,
    )


def create_store_engine(url: str) -> Engine:
    """An engine for a site store URL (``sqlite:///PATH`` or ``postgresql+psycopg://``).

    Raises
    ------
    ConfigError
        If the URL cannot be used.
    """
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as err:
        raise ConfigError(f"site store URL {url!r} is not a database URL") from err
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ConfigError("the site store must be a SQLite file, not an in-memory database")
        engine = sa.create_engine(parsed)
        # Every transaction takes SQLite's write lock when it begins: serialised writers.
        configure_sqlite(engine, default_begin="IMMEDIATE")
        return engine
    if parsed.get_backend_name() == "postgresql":
        return sa.create_engine(parsed, pool_pre_ping=True)
    raise ConfigError(f"site store URL scheme {parsed.drivername!r} is not supported")


class SiteStore:
    """The site's database. Open it with :meth:`open`; close it with :meth:`close`."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str) -> SiteStore:
        """Open (creating or upgrading) the store at ``url``.

        Raises
        ------
        ConfigError
            If the URL is unusable, the database unreachable, or its schema was written by
            a newer Veracity.
        """
        from veracity.client.migrations import upgrade_to_head

        engine = create_store_engine(url)
        try:
            upgrade_to_head(engine)
        except sa.exc.OperationalError as err:
            engine.dispose()
            raise ConfigError(f"cannot open the site store: {err.orig}") from err
        except ConfigError:
            engine.dispose()
            raise
        return cls(engine)

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    def __enter__(self) -> SiteStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    # ------------------------------------------------------------------ datasets

    def add_dataset(
        self,
        dataset: Dataset,
        statement: SignedStatement,
        *,
        record_fingerprints: Collection[str] = (),
    ) -> Pool:
        """Register ``dataset`` and queue its ``dataset.registered`` statement, atomically.

        ``record_fingerprints`` (:func:`veracity.client.fingerprint.record_fingerprints`)
        are stored with it, and a dataset that shares any record with registered ones
        joins their budget pool (:meth:`attach_fingerprints`). Returns the pool.

        Raises
        ------
        InputError
            If the dataset id is taken, or the same content is already registered.
        """
        with self._transaction() as session:
            if session.get(DatasetRow, dataset.dataset_id) is not None:
                raise InputError(
                    f"dataset {dataset.dataset_id!r} is already registered; choose another id"
                )
            twin = session.scalar(
                sa.select(DatasetRow.dataset_id).where(
                    DatasetRow.content_digest == dataset.content_digest
                )
            )
            if twin is not None:
                raise InputError(
                    f"this data is already registered as dataset {twin!r}; its privacy "
                    "budget stays with it (train on that id)"
                )
            session.add(
                DatasetRow(
                    dataset_id=dataset.dataset_id,
                    path=str(dataset.path),
                    file_format=dataset.file_format,
                    file_sha256=dataset.file_sha256,
                    content_digest=dataset.content_digest,
                    salt_hex=dataset.salt.hex(),
                    commitment=dataset.commitment,
                    schema_hash=dataset.schema_hash,
                    label=dataset.label,
                    features_json=json.dumps(list(dataset.features)),
                    rows=dataset.rows,
                    positives=dataset.positives,
                    epsilon_budget=dataset.epsilon_budget,
                    delta=dataset.delta,
                    registered_at=dataset.registered_at,
                    pool_id=dataset.dataset_id,
                    layout_json=json.dumps(dict(dataset.layout)) if dataset.layout else None,
                )
            )
            session.add(_outbox_row(statement, dataset.registered_at))
            session.flush()
            return self._attach(session, dataset.dataset_id, record_fingerprints)

    def attach_fingerprints(self, dataset_id: str, record_fingerprints: Collection[str]) -> Pool:
        """Store a dataset's record fingerprints and merge the budget pools they connect.

        Every pool holding a dataset that shares a fingerprint with ``dataset_id`` is
        merged with its pool (into the oldest pool id), so that each record draws from one
        budget. Used at registration, and for datasets registered before fingerprints.

        Raises
        ------
        InputError
            If the dataset is not registered.
        """
        with self._transaction() as session:
            return self._attach(session, dataset_id, record_fingerprints)

    @staticmethod
    def _attach(session: Session, dataset_id: str, record_fingerprints: Collection[str]) -> Pool:
        own = session.get(DatasetRow, dataset_id, with_for_update=True)
        if own is None:
            raise InputError(f"no dataset {dataset_id!r} is registered at this site")
        known = set(
            session.scalars(
                sa.select(RecordFingerprintRow.fingerprint).where(
                    RecordFingerprintRow.dataset_id == dataset_id
                )
            )
        )
        session.add_all(
            RecordFingerprintRow(dataset_id=dataset_id, fingerprint=fingerprint)
            for fingerprint in sorted(set(record_fingerprints) - known)
        )
        session.flush()
        shared = SiteStore._shared(session, dataset_id)
        pools = {own.pool_id}
        if shared:
            pools |= set(
                session.scalars(
                    sa.select(DatasetRow.pool_id).where(DatasetRow.dataset_id.in_(list(shared)))
                )
            )
        members = list(
            session.scalars(
                sa.select(DatasetRow)
                .where(DatasetRow.pool_id.in_(sorted(pools)))
                .order_by(DatasetRow.registered_at, DatasetRow.dataset_id)
                .with_for_update()
            )
        )
        # The pool keeps the id of its oldest dataset's pool.
        target = members[0].pool_id
        for row in members:
            row.pool_id = target
        return Pool(
            pool_id=target,
            datasets=tuple(sorted(row.dataset_id for row in members)),
            epsilon_budget=min(row.epsilon_budget for row in members),
            delta=min(row.delta for row in members),
            shared=shared,
        )

    @staticmethod
    def _shared(session: Session, dataset_id: str) -> dict[str, int]:
        mine = aliased(RecordFingerprintRow)
        theirs = aliased(RecordFingerprintRow)
        rows = session.execute(
            sa.select(theirs.dataset_id, sa.func.count())
            .join(mine, mine.fingerprint == theirs.fingerprint)
            .where(mine.dataset_id == dataset_id, theirs.dataset_id != dataset_id)
            .group_by(theirs.dataset_id)
        ).all()
        return {str(name): int(count) for name, count in sorted(rows)}

    def shared_records(self, dataset_id: str) -> dict[str, int]:
        """How many distinct records ``dataset_id`` shares with each other dataset (by id)."""
        with self._sessions() as session:
            return self._shared(session, dataset_id)

    def has_fingerprints(self, dataset_id: str) -> bool:
        """Whether ``dataset_id``'s records have been fingerprinted."""
        with self._sessions() as session:
            return (
                session.scalar(
                    sa.select(RecordFingerprintRow.fingerprint)
                    .where(RecordFingerprintRow.dataset_id == dataset_id)
                    .limit(1)
                )
                is not None
            )

    def record_key(self) -> bytes:
        """The site's secret key for record fingerprints (32 bytes, created on first use)."""
        with self._transaction() as session:
            row = session.get(SecretRow, _RECORD_KEY, with_for_update=True)
            if row is None:
                row = SecretRow(name=_RECORD_KEY, value_hex=secrets.token_hex(32))
                session.add(row)
            return bytes.fromhex(row.value_hex)

    # Site-side replay (#19): per-round secret seeds, kept beside the record key.
    @staticmethod
    def _round_seed_name(run_id: str, round: int) -> str:
        digest = hashlib.sha256(f"{run_id}\x00{round}".encode()).hexdigest()
        return f"round-seed.{digest[:53]}"

    def round_seed(self, *, run_id: str, round: int, fresh: bytes) -> bytes:
        """The secret seed of ``round`` of ``run_id``: ``fresh`` stored on first use.

        Kept in the store's secrets (never sent anywhere); a round asked again gets the
        seed it was first given, so the receipt's commitment always names the stored seed.
        """
        name = self._round_seed_name(run_id, round)
        with self._transaction() as session:
            row = session.get(SecretRow, name, with_for_update=True)
            if row is None:
                row = SecretRow(name=name, value_hex=fresh.hex())
                session.add(row)
            return bytes.fromhex(row.value_hex)

    def stored_round_seed(self, *, run_id: str, round: int) -> bytes | None:
        """The seed :meth:`round_seed` stored for ``round`` of ``run_id``, if any."""
        with self._sessions() as session:
            row = session.get(SecretRow, self._round_seed_name(run_id, round))
            return None if row is None else bytes.fromhex(row.value_hex)

    def pool(self, dataset_id: str) -> Pool:
        """The budget pool ``dataset_id`` draws from.

        Raises
        ------
        InputError
            If the dataset is not registered.
        """
        with self._sessions() as session:
            return self._pool(session, dataset_id)

    @staticmethod
    def _pool(session: Session, dataset_id: str) -> Pool:
        pool_id = session.scalar(
            sa.select(DatasetRow.pool_id).where(DatasetRow.dataset_id == dataset_id)
        )
        if pool_id is None:
            raise InputError(f"no dataset {dataset_id!r} is registered at this site")
        members = list(session.scalars(sa.select(DatasetRow).where(DatasetRow.pool_id == pool_id)))
        return Pool(
            pool_id=pool_id,
            datasets=tuple(sorted(row.dataset_id for row in members)),
            epsilon_budget=min(row.epsilon_budget for row in members),
            delta=min(row.delta for row in members),
        )

    def get_dataset(self, dataset_id: str) -> Dataset | None:
        """The dataset registered as ``dataset_id``, if any."""
        with self._sessions() as session:
            row = session.get(DatasetRow, dataset_id)
            return _dataset(row) if row is not None else None

    def list_datasets(self) -> list[Dataset]:
        """Every registered dataset, by id."""
        with self._sessions() as session:
            rows = session.scalars(sa.select(DatasetRow).order_by(DatasetRow.dataset_id))
            return [_dataset(row) for row in rows]

    # ------------------------------------------------------------------ decisions

    def add_decision(
        self,
        *,
        study_hash: str,
        study_id: str,
        decision: Literal["approved", "refused"],
        study_document: dict[str, Any],
        code_hash: str,
        dataset_id: str | None,
        epsilon_cap: float | None,
        reason: str | None,
        decided_at: str,
        statement: SignedStatement,
    ) -> Decision:
        """Record a decision and queue its signed statement, atomically.

        Raises
        ------
        InputError
            If an approval names a dataset that is not registered.
        """
        with self._transaction() as session:
            if dataset_id is not None and session.get(DatasetRow, dataset_id) is None:
                raise InputError(f"no dataset {dataset_id!r} is registered at this site")
            row = DecisionRow(
                study_hash=study_hash,
                study_id=study_id,
                decision=decision,
                study_json=canonical_json(study_document).decode("utf-8"),
                code_hash=code_hash,
                dataset_id=dataset_id,
                epsilon_cap=epsilon_cap,
                reason=reason,
                decided_at=decided_at,
                statement_id=statement.statement_id,
            )
            session.add(row)
            session.add(_outbox_row(statement, decided_at))
            session.flush()
            return _decision(row)

    def latest_decision(self, study_hash: str) -> Decision | None:
        """The decision in force for ``study_hash``, if any."""
        with self._sessions() as session:
            row = session.scalar(
                sa.select(DecisionRow)
                .where(DecisionRow.study_hash == study_hash)
                .order_by(DecisionRow.id.desc())
                .limit(1)
            )
            return _decision(row) if row is not None else None

    def decisions_after(self, decision_id: int) -> list[Decision]:
        """The decisions recorded after the one numbered ``decision_id``, oldest first."""
        with self._sessions() as session:
            rows = session.scalars(
                sa.select(DecisionRow).where(DecisionRow.id > decision_id).order_by(DecisionRow.id)
            )
            return [_decision(row) for row in rows]

    def list_decisions(self) -> list[Decision]:
        """Every decision, oldest first."""
        return self.decisions_after(0)

    # ------------------------------------------------------------------ privacy ledger

    @staticmethod
    def _histories(session: Session, dataset_id: str, study_hash: str) -> tuple[History, History]:
        """The merged histories of ``dataset_id``'s pool: every study's, and ``study_hash``'s."""
        pool_id = sa.select(DatasetRow.pool_id).where(DatasetRow.dataset_id == dataset_id)
        members = sa.select(DatasetRow.dataset_id).where(
            DatasetRow.pool_id == pool_id.scalar_subquery()
        )
        rows = session.execute(
            sa.select(
                SpendRow.noise_multiplier,
                SpendRow.sample_rate,
                SpendRow.steps,
                SpendRow.study_hash,
            )
            .where(SpendRow.dataset_id.in_(members))
            .order_by(SpendRow.id)
        ).all()
        every = [Segment(sigma, rate, steps) for sigma, rate, steps, _ in rows]
        ours = [
            Segment(sigma, rate, steps) for sigma, rate, steps, study in rows if study == study_hash
        ]
        return merge_history(every), merge_history(ours)

    def dataset_history(self, dataset_id: str) -> History:
        """The merged history of every step reserved or run on ``dataset_id``'s budget pool."""
        with self._sessions() as session:
            return self._histories(session, dataset_id, "")[0]

    def study_history(self, dataset_id: str, study_hash: str) -> History:
        """The merged history of the steps ``study_hash`` reserved or ran on that pool."""
        with self._sessions() as session:
            return self._histories(session, dataset_id, study_hash)[1]

    def reserve_round(
        self,
        *,
        dataset_id: str,
        study_hash: str,
        run_id: str,
        round: int,
        planned: Segment,
        evaluate: Callable[[History, History, Pool], RoundBudget],
        now: str,
        runs: int | None = None,
    ) -> tuple[RoundBudget, History, History, int | None]:
        """Check a planned round against the budget and, if allowed, reserve its steps.

        Under a lock on every dataset of the dataset's budget pool (row locks on
        PostgreSQL, SQLite's write lock), reads the pool's and the study's histories, calls
        ``evaluate(pool_history, study_history, pool)``, and if the result is allowed
        inserts a ``reserved`` spend, all in one transaction.

        With ``runs``, the study's scope is checked in the same transaction first: a round
        of a run that already has a spend for this study (trained, reserved or failed) is
        refused, and so is a new run once the study has spends in ``runs`` runs.

        Returns
        -------
        tuple
            ``(budget, dataset_history_before, study_history_before, spend_id)``;
            ``spend_id`` is ``None`` when the round was not allowed (nothing written).

        Raises
        ------
        InputError
            If the dataset is not registered.
        ApprovalMissing
            If the round is outside the study's runs (nothing written).
        """
        with self._transaction() as session:
            pool_id = session.scalar(
                sa.select(DatasetRow.pool_id).where(DatasetRow.dataset_id == dataset_id)
            )
            if pool_id is None:
                raise InputError(f"no dataset {dataset_id!r} is registered at this site")
            # Lock every dataset of the pool, in one order, before reading its history.
            session.scalars(
                sa.select(DatasetRow.dataset_id)
                .where(DatasetRow.pool_id == pool_id)
                .order_by(DatasetRow.dataset_id)
                .with_for_update()
            ).all()
            if runs is not None:
                self._check_scope(session, study_hash, run_id, round, runs)
            dataset_before, study_before = self._histories(session, dataset_id, study_hash)
            budget = evaluate(dataset_before, study_before, self._pool(session, dataset_id))
            if not budget.allowed:
                return budget, dataset_before, study_before, None
            row = SpendRow(
                dataset_id=dataset_id,
                study_hash=study_hash,
                run_id=run_id,
                round=round,
                noise_multiplier=planned.noise_multiplier,
                sample_rate=planned.sample_rate,
                steps=planned.steps,
                status="reserved",
                delta=budget.dataset.delta,
                epsilon_dataset=budget.dataset.epsilon,
                epsilon_study=budget.study.epsilon,
                epsilon_rdp=budget.dataset.rdp,
                reserved_at=now,
            )
            session.add(row)
            session.flush()
            return budget, dataset_before, study_before, row.id

    @staticmethod
    def _check_scope(session: Session, study_hash: str, run_id: str, round: int, runs: int) -> None:
        spent = session.execute(
            sa.select(SpendRow.run_id, SpendRow.round).where(SpendRow.study_hash == study_hash)
        ).all()
        if any((spent_run, spent_round) == (run_id, round) for spent_run, spent_round in spent):
            raise ApprovalMissing(
                f"round {round} of run {run_id} was already trained for this study; "
                "a round is trained once"
            )
        seen = {spent_run for spent_run, _ in spent}
        if run_id not in seen and len(seen) >= runs:
            raise ApprovalMissing(
                f"the study allows {runs} run(s) and this site already trained in "
                f"{len(seen)}; run {run_id} is not part of it"
            )

    def finish_spend(
        self,
        spend_id: int,
        *,
        status: Literal["completed", "failed"],
        now: str,
        update_hash: str | None = None,
        note: str | None = None,
    ) -> None:
        """Mark a reserved spend completed or failed (its steps count either way).

        Raises
        ------
        InputError
            If there is no reserved spend ``spend_id``.
        """
        with self._transaction() as session:
            row = session.get(SpendRow, spend_id, with_for_update=True)
            if row is None or row.status != "reserved":
                raise InputError(f"no reserved privacy spend {spend_id}")
            row.status = status
            row.finished_at = now
            row.update_hash = update_hash
            row.note = note

    def answer_query(
        self,
        *,
        dataset_id: str,
        study_hash: str,
        query_id: str,
        query_hash: str,
        planned: Segment,
        evaluate: Callable[[History, History, Pool], RoundBudget],
        compute: Callable[[], dict[str, Any]],
        now: str,
    ) -> QueryCharge:
        """Answer a query once: the stored answer, or a charged new one, or a refusal.

        Under the same pool lock as :meth:`reserve_round`, in one transaction: if this
        dataset already answered ``query_hash``, its stored answer comes back and nothing
        is charged; otherwise ``evaluate(pool_history, study_history, pool)`` decides, and
        if allowed ``compute()`` draws the noisy answer, which is stored with a completed
        spend of ``planned`` (run id ``query:QUERY_ID``, round 1).

        Raises
        ------
        InputError
            If the dataset is not registered.
        """
        with self._transaction() as session:
            pool_id = session.scalar(
                sa.select(DatasetRow.pool_id).where(DatasetRow.dataset_id == dataset_id)
            )
            if pool_id is None:
                raise InputError(f"no dataset {dataset_id!r} is registered at this site")
            session.scalars(
                sa.select(DatasetRow.dataset_id)
                .where(DatasetRow.pool_id == pool_id)
                .order_by(DatasetRow.dataset_id)
                .with_for_update()
            ).all()
            dataset_before, study_before = self._histories(session, dataset_id, study_hash)
            stored = session.scalar(
                sa.select(AnalysisAnswerRow).where(
                    AnalysisAnswerRow.dataset_id == dataset_id,
                    AnalysisAnswerRow.query_hash == query_hash,
                )
            )
            if stored is not None:
                answer = StoredAnswer(
                    answer=json.loads(stored.answer_json),
                    study_hash=stored.study_hash,
                    query_id=stored.query_id,
                    answered_at=stored.answered_at,
                    repeated=True,
                )
                return QueryCharge(answer, None, dataset_before, study_before)
            budget = evaluate(dataset_before, study_before, self._pool(session, dataset_id))
            if not budget.allowed:
                return QueryCharge(None, budget, dataset_before, study_before)
            document = compute()
            spend = SpendRow(
                dataset_id=dataset_id,
                study_hash=study_hash,
                run_id=f"query:{query_id}",
                round=1,
                noise_multiplier=planned.noise_multiplier,
                sample_rate=planned.sample_rate,
                steps=planned.steps,
                status="completed",
                delta=budget.dataset.delta,
                epsilon_dataset=budget.dataset.epsilon,
                epsilon_study=budget.study.epsilon,
                epsilon_rdp=budget.dataset.rdp,
                reserved_at=now,
                finished_at=now,
                note=f"analysis query {query_hash}",
            )
            session.add(spend)
            session.flush()
            session.add(
                AnalysisAnswerRow(
                    dataset_id=dataset_id,
                    query_hash=query_hash,
                    study_hash=study_hash,
                    query_id=query_id,
                    answer_json=canonical_json(document).decode(),
                    spend_id=spend.id,
                    answered_at=now,
                )
            )
            answer = StoredAnswer(document, study_hash, query_id, now, repeated=False)
            return QueryCharge(answer, budget, dataset_before, study_before)

    def list_spends(self, dataset_id: str | None = None) -> list[Spend]:
        """Every spend (of one dataset, or all), oldest first."""
        with self._sessions() as session:
            query = sa.select(SpendRow).order_by(SpendRow.id)
            if dataset_id is not None:
                query = query.where(SpendRow.dataset_id == dataset_id)
            return [_spend(row) for row in session.scalars(query)]

    # ------------------------------------------------------------------ outbox

    def add_statement(self, statement: SignedStatement, *, now: str) -> None:
        """Queue one signed statement (a no-op if it is already queued)."""
        with self._transaction() as session:
            exists = session.scalar(
                sa.select(OutboxRow.id).where(OutboxRow.statement_id == statement.statement_id)
            )
            if exists is None:
                session.add(_outbox_row(statement, now))

    def refusal(
        self, key: str, sign: Callable[[], SignedStatement], *, now: str
    ) -> SignedStatement:
        """The refusal statement kept for ``key``, signed and queued on first use.

        A request refused again (the same study, run, round and reason) gets the same
        signed statement back, so the outbox holds each refusal once and the ledger
        records it once.
        """
        with self._transaction() as session:
            row = session.scalar(sa.select(OutboxRow).where(OutboxRow.dedupe_key == key))
            if row is not None:
                return _statement(row)
            statement = sign()
            row = _outbox_row(statement, now)
            row.dedupe_key = key
            session.add(row)
            return statement

    def resign_pending(self, sign: Callable[[SignedStatement], str | None]) -> int:
        """Replace the signature of each pending statement by ``sign(statement)`` (if not None).

        A site does this when it learns its log (the statements queued before were signed
        for no log); the statement ids stay (they hash the statement, not the signature).
        Returns how many statements were re-signed.
        """
        with self._transaction() as session:
            rows = session.scalars(sa.select(OutboxRow).where(OutboxRow.delivered_at.is_(None)))
            changed = 0
            for row in rows:
                signature = sign(_statement(row))
                if signature is not None and signature != row.signature:
                    row.signature = signature
                    changed += 1
            return changed

    def outbox(self, *, include_delivered: bool = False) -> list[OutboxEntry]:
        """Queued statements, oldest first (pending ones only, unless asked)."""
        with self._sessions() as session:
            query = sa.select(OutboxRow).order_by(OutboxRow.id)
            if not include_delivered:
                query = query.where(OutboxRow.delivered_at.is_(None))
            return [
                OutboxEntry(_statement(row), row.created_at, row.delivered_at)
                for row in session.scalars(query)
            ]

    def mark_delivered(self, statement_ids: Sequence[str], *, now: str) -> int:
        """Mark statements as delivered to the coordinator; returns how many changed.

        Raises
        ------
        InputError
            If an id is not in the outbox (nothing is changed then).
        """
        with self._transaction() as session:
            rows = list(
                session.scalars(
                    sa.select(OutboxRow).where(OutboxRow.statement_id.in_(list(statement_ids)))
                )
            )
            missing = set(statement_ids) - {row.statement_id for row in rows}
            if missing:
                raise InputError(f"not in the outbox: {', '.join(sorted(missing))}")
            changed = 0
            for row in rows:
                if row.delivered_at is None:
                    row.delivered_at = now
                    changed += 1
            return changed
