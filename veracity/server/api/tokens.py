"""Bearer tokens for the admin API: issued once, stored as SHA-256, with expiry and revocation.

A token is ``vrc_`` followed by 32 random bytes in base64url (47 characters). It is shown
once, when issued; the database keeps only its SHA-256 (hex), so a copy of the database
does not let anyone act. A token of 256 random bits needs no salt or slow hash: there is
nothing to guess. Each token has a public id (16 hex digits) for listing and revoking,
the holder's name (recorded as the requester of what it does), one role, for site tokens
the one site it acts for, and an expiry. Plain Python over SQLAlchemy; no web framework.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from veracity.contracts.events import TokenIssued, TokenRevoked
from veracity.core.fields import format_timestamp
from veracity.errors import InputError, NotFound
from veracity.ledger import store
from veracity.server.api.db import ActionRow, TokenRow

if TYPE_CHECKING:
    from veracity.server.coordinator.service import CoordinatorService

__all__ = [
    "Role",
    "Principal",
    "TokenInfo",
    "IssuedToken",
    "TokenStore",
    "TOKEN_PREFIX",
    "hash_token",
    "utc_now",
    "COMMAND_LINE",
    "issue_token",
    "revoke_token_recorded",
    "operator_principal",
]

TOKEN_PREFIX = "vrc_"  # noqa: S105 - a public prefix that secret scanners can match
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@:-]{0,127}$")
_SITE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")

Clock = Callable[[], datetime]
RandomBytes = Callable[[int], bytes]


def utc_now() -> datetime:
    """The current time in UTC."""
    return datetime.now(UTC)


class Role(enum.StrEnum):
    """What a token may do (the route table in ``docs/api.md`` says where)."""

    ADMIN = "admin"
    SITE = "site"
    RESEARCHER = "researcher"
    AUDITOR = "auditor"


def hash_token(token: str) -> str:
    """SHA-256 (hex) of a token's text: what the database stores."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: an authenticated token's holder."""

    token_id: str | None
    name: str
    role: Role
    site: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "token_id": self.token_id,
            "name": self.name,
            "role": self.role.value,
            "site": self.site,
        }


#: Who acts when the command line changes API state (token create / revoke).
COMMAND_LINE = Principal(token_id=None, name="command-line", role=Role.ADMIN)


@dataclass(frozen=True)
class TokenInfo:
    """A token's public record (everything but the token)."""

    id: str
    name: str
    role: Role
    site: str | None
    created_at: str
    expires_at: str
    revoked_at: str | None
    created_by: str

    @classmethod
    def from_row(cls, row: TokenRow) -> TokenInfo:
        """Read a table row."""
        return cls(
            id=row.id,
            name=row.name,
            role=Role(row.role),
            site=row.site,
            created_at=row.created_at,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
            created_by=row.created_by,
        )

    def refusal(self, now: datetime) -> str | None:
        """Why this token cannot be used at ``now`` (``None``: it can)."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= format_timestamp(now):
            return "expired"
        return None

    @property
    def principal(self) -> Principal:
        """The principal this token authenticates."""
        return Principal(token_id=self.id, name=self.name, role=self.role, site=self.site)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role.value,
            "site": self.site,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "created_by": self.created_by,
        }


@dataclass(frozen=True)
class IssuedToken:
    """A new token: the secret (shown once) and its record."""

    token: str
    info: TokenInfo


def _validated(role: Role | str, name: str, site: str | None) -> tuple[Role, str, str | None]:
    try:
        chosen = Role(role)
    except ValueError as err:
        roles = ", ".join(r.value for r in Role)
        raise InputError(f"role {role!r} is not one of {roles}") from err
    if not _NAME_RE.fullmatch(name):
        raise InputError(
            "a token name is 1-128 letters, digits, spaces or . _ @ : -, starting with a "
            "letter or digit"
        )
    if chosen is Role.SITE:
        if site is None or not _SITE_RE.fullmatch(site):
            raise InputError("a site token names its site: 1-63 lowercase letters, digits, '-'")
    elif site is not None:
        raise InputError("only site tokens are bound to a site")
    return chosen, name, site


class TokenStore:
    """Issue, look up, list and revoke tokens in the ``api_token`` table.

    Parameters
    ----------
    engine
        The coordinator's database (the API tables must exist).
    clock
        The current time (injectable for tests).
    random_bytes
        Randomness for tokens and ids (``os.urandom``; injectable for tests).
    """

    def __init__(
        self, engine: Engine, *, clock: Clock = utc_now, random_bytes: RandomBytes = os.urandom
    ) -> None:
        self.engine = engine
        self.clock = clock
        self._random_bytes = random_bytes

    def _new_token(self) -> str:
        raw = self._random_bytes(32)
        if len(raw) != 32:
            raise InputError("token randomness must give 32 bytes")
        return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    def create(
        self,
        *,
        role: Role | str,
        name: str,
        site: str | None = None,
        expires_in: timedelta = timedelta(days=90),
        created_by: Principal = COMMAND_LINE,
        token: str | None = None,
        session: Session | None = None,
        record_action: bool = True,
    ) -> IssuedToken:
        """Issue a token; the returned :attr:`IssuedToken.token` is never stored.

        Parameters
        ----------
        role, name, site
            What the token may do, who holds it and, for a site token, its site.
        expires_in
            Lifetime from now (positive).
        created_by
            Who issues it (recorded in ``api_action``).
        token
            Adopt this token text instead of a random one (a configured bootstrap token;
            it must be at least 32 characters).
        session
            Insert inside this transaction instead of a new one.
        record_action
            Write its ``api_action`` row (off when the caller's change writes its own).

        Raises
        ------
        InputError
            If the role, name, site, lifetime or adopted token is not acceptable.
        """
        chosen, name, site = _validated(role, name, site)
        if expires_in <= timedelta(0):
            raise InputError("a token's lifetime must be positive")
        if token is not None and len(token) < 32:
            raise InputError("an adopted token must be at least 32 characters")
        secret = token if token is not None else self._new_token()
        now = self.clock()
        try:
            expires = now + expires_in
        except OverflowError as err:
            raise InputError("a token's lifetime is too long") from err
        row = TokenRow(
            id=self._random_bytes(8).hex(),
            name=name,
            role=chosen.value,
            site=site,
            token_hash=hash_token(secret),
            created_at=format_timestamp(now),
            expires_at=format_timestamp(expires),
            revoked_at=None,
            created_by=created_by.name,
        )
        action = ActionRow(
            at=format_timestamp(now),
            token_id=created_by.token_id,
            actor=created_by.name,
            role=created_by.role.value,
            action="token.create",
            target=f"{row.id} {chosen.value} {name}"[:200],
            ledger_seq=None,
        )
        rows: list[Any] = [row, action] if record_action else [row]
        if session is not None:
            session.add_all(rows)
            session.flush()
        else:
            with Session(self.engine, expire_on_commit=False) as own, own.begin():
                own.add_all(rows)
        return IssuedToken(token=secret, info=TokenInfo.from_row(row))

    def ensure(self, token: str, *, name: str = "bootstrap", expires_in: timedelta) -> TokenInfo:
        """Adopt ``token`` as an admin token unless it is already known (idempotent).

        Raises
        ------
        InputError
            If the token is shorter than 32 characters.
        """
        with store.write_session(self.engine) as session:
            found = session.execute(
                select(TokenRow).where(TokenRow.token_hash == hash_token(token))
            ).scalar_one_or_none()
            if found is not None:
                return TokenInfo.from_row(found)
            return self.create(
                role=Role.ADMIN, name=name, expires_in=expires_in, token=token, session=session
            ).info

    def lookup(self, token: str) -> TokenInfo | None:
        """The record of ``token`` (revoked and expired ones included), if it was issued."""
        if len(token) > 256:
            return None
        with Session(self.engine) as session:
            row = session.execute(
                select(TokenRow).where(TokenRow.token_hash == hash_token(token))
            ).scalar_one_or_none()
            return None if row is None else TokenInfo.from_row(row)

    def get(self, token_id: str) -> TokenInfo:
        """The record with public id ``token_id``.

        Raises
        ------
        NotFound
            If there is no such token.
        """
        with Session(self.engine) as session:
            row = session.get(TokenRow, token_id)
            if row is None:
                raise NotFound(f"no token {token_id!r}")
            return TokenInfo.from_row(row)

    def list(self, *, include_revoked: bool = True) -> list[TokenInfo]:
        """Every token's record, oldest first."""
        query = select(TokenRow).order_by(TokenRow.created_at, TokenRow.id)
        if not include_revoked:
            query = query.where(TokenRow.revoked_at.is_(None))
        with Session(self.engine) as session:
            return [TokenInfo.from_row(row) for row in session.execute(query).scalars()]

    def revoke(
        self,
        token_id: str,
        *,
        by: Principal = COMMAND_LINE,
        session: Session | None = None,
        record_action: bool = True,
    ) -> TokenInfo:
        """Revoke a token now (revoking it again changes nothing).

        With ``session`` it is revoked inside that transaction; ``record_action`` off
        leaves the ``api_action`` row to the caller's change.

        Raises
        ------
        NotFound
            If there is no such token.
        """
        if session is not None:
            return self._revoke(session, token_id, by=by, record_action=record_action)
        with Session(self.engine, expire_on_commit=False) as own, own.begin():
            return self._revoke(own, token_id, by=by, record_action=record_action)

    def _revoke(
        self, session: Session, token_id: str, *, by: Principal, record_action: bool
    ) -> TokenInfo:
        now = format_timestamp(self.clock())
        changed = session.execute(
            update(TokenRow)
            .where(TokenRow.id == token_id, TokenRow.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        row = session.get(TokenRow, token_id)
        if row is None:
            raise NotFound(f"no token {token_id!r}")
        if getattr(changed, "rowcount", 0) and record_action:
            session.add(
                ActionRow(
                    at=now,
                    token_id=by.token_id,
                    actor=by.name,
                    role=by.role.value,
                    action="token.revoke",
                    target=token_id,
                    ledger_seq=None,
                )
            )
        return TokenInfo.from_row(row)


def operator_principal() -> Principal:
    """The person at the coordinator's command line, as an admin (their OS user name)."""
    from veracity.server.coordinator import operator

    return Principal(token_id=None, name=operator().name, role=Role.ADMIN)


def issue_token(
    service: CoordinatorService,
    store: TokenStore,
    by: Principal,
    *,
    role: Role | str,
    name: str,
    site: str | None,
    expires_in: timedelta,
) -> IssuedToken:
    """Issue a token and record ``token.issued`` (with who asked) in one transaction.

    Raises
    ------
    InputError
        If the role, name, site or lifetime is not acceptable (nothing is recorded).
    """
    audited = service.audit_hook is not None

    def write(session: Session) -> tuple[IssuedToken, TokenIssued]:
        issued = store.create(
            role=role,
            name=name,
            site=site,
            expires_in=expires_in,
            created_by=by,
            session=session,
            record_action=not audited,
        )
        info = issued.info
        document: dict[str, Any] = {
            "token_id": info.id,
            "name": info.name,
            "role": info.role.value,
            "expires_at": info.expires_at,
        }
        if info.site is not None:
            document["site"] = info.site
        return issued, TokenIssued.parse(document)

    return service.record_change(by, "token.create", f"{role} {name}", write).value


def revoke_token_recorded(
    service: CoordinatorService, store: TokenStore, by: Principal, token_id: str
) -> TokenInfo:
    """Revoke a token and record ``token.revoked``; one already revoked is left as it is.

    Raises
    ------
    NotFound
        If there is no such token.
    """
    current = store.get(token_id)
    if current.revoked_at is not None:
        return current
    audited = service.audit_hook is not None

    def write(session: Session) -> tuple[TokenInfo, TokenRevoked]:
        info = store.revoke(token_id, by=by, session=session, record_action=not audited)
        return info, TokenRevoked(token_id=info.id, name=info.name)

    return service.record_change(by, "token.revoke", token_id, write).value
