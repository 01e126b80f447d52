"""Settings: environment variables with the ``VERACITY_`` prefix, then defaults.

Everything a single machine needs lives under one data directory (default
``./veracity-data``): the embedded SQLite database and the key directory. A PostgreSQL
URL may replace the SQLite default for production coordinators.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from veracity.errors import ConfigError

__all__ = ["Settings", "default_database_url", "normalise_database_url", "load_settings"]

_SUPPORTED_SCHEMES = ("sqlite", "postgresql")


def normalise_database_url(url: str) -> str:
    """Return ``url`` in the form SQLAlchemy should use, or raise.

    ``postgres://`` and ``postgresql://`` become ``postgresql+psycopg://`` (psycopg 3 is
    the driver we ship); ``sqlite:///path`` is kept as is.

    Raises
    ------
    ConfigError
        If the URL is empty or names a database other than SQLite or PostgreSQL.
    """
    text = url.strip()
    if not text or "://" not in text:
        raise ConfigError(f"database URL {url!r} is not a URL; use sqlite:///PATH or postgresql://")
    scheme, rest = text.split("://", 1)
    dialect = scheme.split("+", 1)[0]
    if dialect == "postgres":
        dialect = "postgresql"
    if dialect not in _SUPPORTED_SCHEMES:
        raise ConfigError(
            f"database URL scheme {scheme!r} is not supported; use sqlite:/// or postgresql://"
        )
    if dialect == "postgresql":
        return f"postgresql+psycopg://{rest}"
    return text


def default_database_url(data_dir: Path) -> str:
    """The embedded database of a data directory: ``sqlite:///DIR/veracity.db`` (absolute).

    The one place this default is written: the coordinator's home and the ``ledger`` CLI
    both ask here.
    """
    return f"sqlite:///{data_dir.resolve() / 'veracity.db'}"


class Settings(BaseSettings):
    """Process-wide settings; every field can be set as ``VERACITY_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="VERACITY_", extra="ignore", frozen=True)

    data_dir: Path = Field(
        default=Path("veracity-coordinator"),
        description="Directory holding the embedded database, keys and TLS material.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; defaults to SQLite under the data directory.",
    )
    environment: Literal["development", "production"] = "development"

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        try:
            return normalise_database_url(value)
        except ConfigError as err:
            raise ValueError(str(err)) from err

    @property
    def db_url(self) -> str:
        """The database URL in use: the configured one or the embedded SQLite default."""
        if self.database_url:
            return self.database_url
        return default_database_url(self.data_dir)

    @property
    def key_dir(self) -> Path:
        """Directory of this machine's private and public keys."""
        return self.data_dir / "keys"


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment plus explicit ``overrides``.

    Raises
    ------
    ConfigError
        If a value (from the environment or an override) is invalid.
    """
    from pydantic import ValidationError

    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)  # type: ignore[arg-type]
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(part) for part in first.get("loc", ())) or "settings"
        raise ConfigError(f"invalid setting {field}: {first.get('msg', 'invalid value')}") from err
