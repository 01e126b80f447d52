"""The admin API's tables, beside the ledger's in the coordinator's database.

``api_token``
    Bearer tokens: a public id, the holder's name, role and (for site tokens) site, the
    SHA-256 of the token (never the token itself), expiry and revocation times.
``api_action``
    Who did what through the API: one row per state-changing call, written in the same
    transaction as the ledger entry it caused (``ledger_seq``, unique, references the
    entry), so an action and its entry exist together or not at all. The ledger names the
    coordinator as the actor of root-signed events; this table names the token behind it.
``api_rate``
    Per-token inference rate state (the GCRA's theoretical arrival time), shared by every
    worker process through the database.
``api_query_budget``
    Per requester and model: the predictions an administrator allows (``NULL``: the
    deployment's default), the predictions charged so far (what the ciphertexts of served
    requests could carry) and the GCRA state of the requester's prediction rate.

Timestamps are RFC 3339 UTC text with microseconds, as in the ledger, so they sort and
compare as strings on SQLite and PostgreSQL alike. Migrations are Alembic revisions in
``veracity/server/api/migrations`` with their own version table, ``api_alembic_version``;
they run after the ledger's (``api_action`` references ``ledger_entry``).
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import BigInteger, CheckConstraint, Float, Index, Integer, MetaData, String
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from veracity.errors import ConfigError
from veracity.ledger import store
from veracity.migrations import MigrationHistory

__all__ = [
    "VERSION_TABLE",
    "MIGRATIONS_DIR",
    "ROLES",
    "ApiBase",
    "TokenRow",
    "ActionRow",
    "RateRow",
    "QueryBudgetRow",
    "upgrade",
    "downgrade",
    "current_revision",
    "head_revision",
    "check_schema",
]

VERSION_TABLE = "api_alembic_version"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: Token roles, least to most privileged in no particular order.
ROLES = ("admin", "site", "researcher", "auditor")

_ID = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER keys only


class ApiBase(DeclarativeBase):
    """Declarative base of the API tables (the ledger's naming convention)."""

    metadata = MetaData(naming_convention=store.NAMING_CONVENTION)


class TokenRow(ApiBase):
    """A bearer token, stored as its SHA-256."""

    __tablename__ = "api_token"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    site: Mapped[str | None] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[str] = mapped_column(String(32))
    expires_at: Mapped[str] = mapped_column(String(32))
    revoked_at: Mapped[str | None] = mapped_column(String(32))
    created_by: Mapped[str] = mapped_column(String(128))

    __table_args__ = (
        CheckConstraint("role IN ('admin', 'site', 'researcher', 'auditor')", name="role"),
        CheckConstraint(
            "(role = 'site' AND site IS NOT NULL) OR (role <> 'site' AND site IS NULL)",
            name="site_binding",
        ),
    )


class ActionRow(ApiBase):
    """One state-changing API call and the ledger entry it wrote."""

    __tablename__ = "api_action"

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    at: Mapped[str] = mapped_column(String(32))
    token_id: Mapped[str | None] = mapped_column(String(16), sa.ForeignKey("api_token.id"))
    actor: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(200))
    ledger_seq: Mapped[int | None] = mapped_column(
        BigInteger, sa.ForeignKey(store.EntryRow.__table__.c.seq), unique=True
    )

    __table_args__ = (Index(None, "token_id", "id"),)


class RateRow(ApiBase):
    """GCRA state of one token's inference rate limit."""

    __tablename__ = "api_rate"

    token_id: Mapped[str] = mapped_column(
        String(16), sa.ForeignKey("api_token.id"), primary_key=True
    )
    #: Theoretical arrival time, seconds since the epoch.
    tat: Mapped[float] = mapped_column(Float)


class QueryBudgetRow(ApiBase):
    """How many predictions a requester may get from a model, and how many it has had."""

    __tablename__ = "api_query_budget"

    requester: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: Predictions allowed in all; ``None``: the deployment's default.
    budget: Mapped[int | None] = mapped_column(BigInteger)
    #: Predictions charged so far.
    used: Mapped[int] = mapped_column(BigInteger)
    #: Theoretical arrival time of the prediction-rate GCRA, seconds since the epoch.
    tat: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[str] = mapped_column(String(32))

    __table_args__ = (
        CheckConstraint("budget IS NULL OR budget >= 0", name="budget"),
        CheckConstraint("used >= 0", name="used"),
    )


HISTORY = MigrationHistory("API tables", MIGRATIONS_DIR, VERSION_TABLE)


def _run(engine: Engine, action: str, revision: str) -> None:
    # Under the ledger's write lock, so concurrent starters migrate one after the other.
    with store.write_session(engine) as session:
        HISTORY.run(session.connection(), action, revision)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the API tables up to ``revision`` (the ledger's must exist already).

    Raises
    ------
    ConfigError
        If the database cannot be migrated.
    """
    try:
        _run(engine, "upgrade", revision)
    except sa.exc.DatabaseError as err:
        raise ConfigError(f"cannot migrate the API tables: {str(err).splitlines()[0]}") from err


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate the API tables down to ``revision`` (``"base"`` drops them)."""
    _run(engine, "downgrade", revision)


def current_revision(engine: Engine) -> str | None:
    """The revision of the API tables (``None``: not created)."""
    return HISTORY.current(engine)


def head_revision() -> str:
    """The newest API revision shipped with this package."""
    return HISTORY.head()


def check_schema(engine: Engine) -> None:
    """Refuse to serve a database whose API tables are missing or at another revision.

    Raises
    ------
    ConfigError
        Saying to run ``veracity server init``.
    """
    revision = current_revision(engine)
    if revision != head_revision():
        found = "no API tables" if revision is None else f"API schema {revision}"
        raise ConfigError(
            f"the database has {found}; this version needs {head_revision()}: "
            "run `veracity server init`"
        )
