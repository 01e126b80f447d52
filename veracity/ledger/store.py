"""Ledger storage through SQLAlchemy 2: engines, tables, the write lock, migrations.

Tables (append-only; the store offers append and read, no update or delete):

``ledger_entry``
    One row per entry: ``seq`` (primary key, assigned from the head under the write
    lock, never from a sequence), ``prev_seq`` and ``prev`` (the previous leaf hash),
    ``hash`` (this entry's leaf hash), ``body`` (the exact hashed bytes) and, for queries,
    ``ts``, ``kind`` and ``actor``. The schema makes a fork impossible to commit:
    ``UNIQUE(prev)`` (one child per parent), ``FOREIGN KEY (prev_seq, prev) REFERENCES
    ledger_entry (seq, hash)`` and ``CHECK (prev_seq = seq - 1)`` (``prev_seq`` is NULL only
    for genesis).
``ledger_checkpoint``
    The signed checkpoints, kept apart from the entries so that cutting the chain below
    one is detected.
``ledger_key_event``
    An index of the ``key.*`` entries for fast key lookups when appending. Verification
    never trusts it: it replays the key history from the entries.
``ledger_site_statement``
    The SHA-256 of every site-signed statement, unique: a site's signed statement is
    recorded once, never replayed at another position.
``ledger_cosignature``
    Witnesses' ``cosignature/v1`` signatures of checkpoints, kept outside the Merkle tree
    (a cosignature is about the tree, so it cannot be in it) and served with the
    checkpoint note (:mod:`veracity.ledger.witnessed`).

Appenders serialise on a write lock: ``BEGIN IMMEDIATE`` on SQLite (pysqlite would
otherwise run the head read outside any transaction) and ``pg_advisory_xact_lock`` on
PostgreSQL. Migrations are Alembic revisions shipped in ``veracity/ledger/migrations``
with their own version table, ``ledger_alembic_version``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKeyConstraint,
    Index,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    event,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from veracity.config import normalise_database_url
from veracity.errors import ConfigError
from veracity.migrations import MigrationHistory

__all__ = [
    "configure_sqlite",
    "NAMING_CONVENTION",
    "VERSION_TABLE",
    "MIGRATIONS_DIR",
    "WRITE_LOCK_ID",
    "Base",
    "EntryRow",
    "CheckpointRow",
    "KeyEventRow",
    "SiteStatementRow",
    "CosignatureRow",
    "create_engine",
    "is_sqlite",
    "sqlite_path",
    "write_session",
    "read_session",
    "acquire_write_lock",
    "alembic_config",
    "upgrade",
    "downgrade",
    "current_revision",
    "head_revision",
]

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
VERSION_TABLE = "ledger_alembic_version"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: Key of the PostgreSQL advisory lock appenders take ("veracity" in ASCII).
WRITE_LOCK_ID = 0x7665726163697479
_WRITE_FLAG = "veracity.ledger.write_lock"
_SQLITE_BEGIN = "veracity_sqlite_begin"


class Base(DeclarativeBase):
    """Declarative base of the ledger tables."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class EntryRow(Base):
    """One ledger entry."""

    __tablename__ = "ledger_entry"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    ts: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(128))
    prev_seq: Mapped[int | None] = mapped_column(BigInteger)
    prev: Mapped[bytes] = mapped_column(LargeBinary(32))
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    body: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (
        UniqueConstraint("prev"),
        UniqueConstraint("hash"),
        UniqueConstraint("seq", "hash"),
        ForeignKeyConstraint(["prev_seq", "prev"], ["ledger_entry.seq", "ledger_entry.hash"]),
        CheckConstraint(
            "(seq = 0 AND prev_seq IS NULL) OR (seq > 0 AND prev_seq = seq - 1)", name="linear"
        ),
        Index(None, "kind", "seq"),
        Index(None, "actor", "seq"),
    )


class CheckpointRow(Base):
    """A root-signed checkpoint."""

    __tablename__ = "ledger_checkpoint"

    tree_size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    timestamp: Mapped[str] = mapped_column(String(32))
    log_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(100))


class KeyEventRow(Base):
    """Index of a ``key.enrolled`` / ``key.revoked`` entry."""

    __tablename__ = "ledger_key_event"

    seq: Mapped[int] = mapped_column(
        BigInteger, sa.ForeignKey("ledger_entry.seq"), primary_key=True, autoincrement=False
    )
    name: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(16))
    role: Mapped[str | None] = mapped_column(String(32))
    key_id: Mapped[str] = mapped_column(String(64))
    public_key: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index(None, "name", "seq"),)


class SiteStatementRow(Base):
    """The digest of a site-signed statement, so that none is recorded twice."""

    __tablename__ = "ledger_site_statement"

    digest: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, sa.ForeignKey("ledger_entry.seq"))


class CosignatureRow(Base):
    """A witness's cosignature of the checkpoint of ``tree_size`` entries."""

    __tablename__ = "ledger_cosignature"

    tree_size: Mapped[int] = mapped_column(
        BigInteger, sa.ForeignKey("ledger_checkpoint.tree_size"), primary_key=True
    )
    witness: Mapped[str] = mapped_column(String(255), primary_key=True)
    key_id: Mapped[bytes] = mapped_column(LargeBinary(4), primary_key=True)
    timestamp: Mapped[int] = mapped_column(BigInteger)
    signature: Mapped[bytes] = mapped_column(LargeBinary(72))


def is_sqlite(bind: Engine | Connection | Session) -> bool:
    """Whether ``bind`` talks to SQLite."""
    engine = bind.get_bind() if isinstance(bind, Session) else bind
    return engine.dialect.name == "sqlite"


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (``None`` for other databases or in-memory SQLite)."""
    parsed = sa.engine.make_url(url)
    if (
        parsed.get_backend_name() != "sqlite"
        or not parsed.database
        or parsed.database == ":memory:"
    ):
        return None
    return Path(parsed.database)


def configure_sqlite(engine: Engine, *, default_begin: str = "DEFERRED") -> None:
    """Set up every SQLite connection of ``engine`` for Veracity's stores.

    WAL journal, ``synchronous=FULL``, foreign keys on, a 60 s busy timeout, and real
    transactions: SQLAlchemy issues ``BEGIN <mode>`` itself, where the mode is the
    connection's ``veracity_sqlite_begin`` execution option or ``default_begin``
    (``"IMMEDIATE"`` makes every transaction take the write lock when it begins).
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite, which would otherwise start the
        # transaction only at the first INSERT (after the head was read).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout = 60000")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(_SQLITE_BEGIN, default_begin)
        connection.exec_driver_sql(f"BEGIN {mode}")


def create_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``: SQLite in WAL mode with durable commits, or PostgreSQL.

    SQLite gets ``journal_mode=WAL``, ``synchronous=FULL``, ``foreign_keys=ON`` and a
    60 s busy timeout on every connection, and real transactions (``BEGIN`` issued by
    SQLAlchemy, ``BEGIN IMMEDIATE`` for writers). PostgreSQL uses psycopg 3.

    Raises
    ------
    ConfigError
        If the URL is not SQLite or PostgreSQL.
    """
    normal = normalise_database_url(url)
    if normal.startswith("sqlite"):
        engine = sa.create_engine(normal, connect_args={"timeout": 60}, **kwargs)
        configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return sa.create_engine(normal, **kwargs)


def acquire_write_lock(session: Session) -> None:
    """Make sure ``session``'s transaction holds the ledger write lock.

    On PostgreSQL this takes ``pg_advisory_xact_lock`` (held until commit or rollback;
    taking it twice is harmless). On SQLite the lock is the ``BEGIN IMMEDIATE`` that
    :func:`write_session` issues, and it cannot be taken later in a transaction.

    Raises
    ------
    ConfigError
        On SQLite, if the session was not opened by :func:`write_session`.
    """
    if is_sqlite(session):
        if not session.info.get(_WRITE_FLAG):
            raise ConfigError(
                "on SQLite, append inside a session opened by Ledger.transaction() "
                "(store.write_session), which begins with BEGIN IMMEDIATE"
            )
        return
    session.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITE_LOCK_ID})


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A session whose transaction holds the ledger write lock from its first statement.

    Commits when the block ends, rolls back (and re-raises) when it raises. Use it for
    state changes that must commit together with their ledger entries.
    """
    with Session(engine, expire_on_commit=False) as session:
        try:
            if is_sqlite(engine):
                session.connection(execution_options={_SQLITE_BEGIN: "IMMEDIATE"})
                session.info[_WRITE_FLAG] = True
            else:
                session.info[_WRITE_FLAG] = True
                acquire_write_lock(session)
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """A session for reading (one snapshot per transaction, no write lock)."""
    with Session(engine, expire_on_commit=False) as session:
        yield session


HISTORY = MigrationHistory("ledger", MIGRATIONS_DIR, VERSION_TABLE)


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Any:
    """An Alembic ``Config`` for the ledger's migrations (on ``connection`` when given)."""
    return HISTORY.config(connection, url)


def _run(engine: Engine, action: str, revision: str) -> None:
    options = {_SQLITE_BEGIN: "IMMEDIATE"} if is_sqlite(engine) else {}
    with engine.connect().execution_options(**options) as connection, connection.begin():
        if not is_sqlite(engine):
            connection.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITE_LOCK_ID}
            )
        HISTORY.run(connection, action, revision)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the ledger tables up to ``revision`` (default: the newest)."""
    _run(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate the ledger tables down to ``revision`` (``"base"`` drops them)."""
    _run(engine, "downgrade", revision)


def current_revision(engine: Engine) -> str | None:
    """The ledger schema revision the database is at (``None``: no ledger tables)."""
    return HISTORY.current(engine)


def head_revision() -> str:
    """The newest revision shipped with this package."""
    return HISTORY.head()
