"""Settings of the admin API: ``VERACITY_<NAME>`` environment variables, then defaults.

The coordinator's own configuration (database URL, SuperLink address) lives in its data
directory (``coordinator.json``, written by ``veracity server init``); these settings say
how the API serves it: where it listens, with which limits, and whether it is a
development or a production deployment. Outside development the API refuses a known or
short bootstrap token and plain HTTP.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from veracity.errors import ConfigError

__all__ = ["ApiSettings", "load_api_settings", "DEFAULT_SECRETS", "MIN_SECRET_LENGTH"]

log = logging.getLogger(__name__)

#: Values that appear in templates and tutorials; never acceptable as a production secret.
DEFAULT_SECRETS = frozenset(
    {"", "changethis", "changeme", "change-me", "secret", "password", "admin", "veracity", "test"}
)
#: The shortest secret accepted outside development (a token from ``token create`` has 47).
MIN_SECRET_LENGTH = 32


class ApiSettings(BaseSettings):
    """How the admin API serves a coordinator; every field is ``VERACITY_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="VERACITY_", extra="ignore", frozen=True)

    data_dir: Path = Field(
        default=Path("veracity-coordinator"), description="The coordinator's data directory."
    )
    environment: Literal["development", "production"] = "development"
    host: str = Field(default="127.0.0.1", description="Address the API binds to.")
    api_port: int = Field(default=8443, ge=1, le=65535)
    superlink_port: int | None = Field(
        default=None, ge=1, le=65535, description="SuperLink port (default: coordinator.json)."
    )
    api_workers: int = Field(default=1, ge=1, le=64, description="uvicorn worker processes.")
    api_tls: bool = Field(default=True, description="Serve HTTPS with the coordinator's cert.")
    api_threads: int = Field(
        default=8,
        ge=1,
        le=64,
        description="Requests served at once per worker (each may hold two DB connections).",
    )
    max_body_bytes: int = Field(
        default=1 << 20,
        ge=1024,
        le=1 << 30,
        description="Largest JSON request body; inference has its own wire limits.",
    )
    page_size_max: int = Field(default=500, ge=1, le=10_000, description="Pagination cap.")
    ledger_job_slots: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Ledger verifications and exports run at once per worker (the rest wait "
        "without holding a request thread).",
    )
    inference_rate_per_minute: float = Field(
        default=60.0, gt=0, le=1_000_000, description="Sustained inference requests per token."
    )
    inference_burst: int = Field(
        default=10, ge=1, le=10_000, description="Inference requests a token may send at once."
    )
    inference_default_budget: int = Field(
        default=100_000,
        ge=0,
        le=2**53 - 1,
        description="Predictions a requester may get from a model unless an admin set a budget.",
    )
    inference_patients_per_minute: float = Field(
        default=250_000.0,
        gt=0,
        le=1e9,
        description="Sustained predictions per requester and model (what requests carry).",
    )
    inference_patient_burst: int = Field(
        default=16_384,
        ge=4096,
        le=2**31,
        description="Predictions a requester may get from a model at once (>= one full batch).",
    )
    control_timeout: float = Field(
        default=10.0, gt=0, le=300, description="Seconds allowed for each SuperLink call."
    )
    log_wait_max: float = Field(
        default=10.0, gt=0, le=60, description="Longest a logs request waits for new lines."
    )
    bootstrap_admin_token: SecretStr | None = Field(
        default=None,
        description="An admin token to accept from start-up (automated deployments).",
    )

    @model_validator(mode="after")
    def _refuse_defaults_outside_development(self) -> ApiSettings:
        token = self.bootstrap_admin_token
        weak = token is not None and (
            token.get_secret_value().strip().lower() in DEFAULT_SECRETS
            or len(token.get_secret_value()) < MIN_SECRET_LENGTH
        )
        if self.environment == "development":
            if weak:
                log.warning(
                    "VERACITY_BOOTSTRAP_ADMIN_TOKEN is a default or short value; "
                    "acceptable only in development"
                )
            return self
        if weak:
            raise ValueError(
                "bootstrap_admin_token is a default or shorter than "
                f"{MIN_SECRET_LENGTH} characters; set a random one (veracity server token "
                "create prints one) or unset it"
            )
        if not self.api_tls:
            raise ValueError("api_tls may be turned off only in development")
        return self

    @property
    def url_scheme(self) -> str:
        """``https`` or, in development without TLS, ``http``."""
        return "https" if self.api_tls else "http"


def load_api_settings(**overrides: object) -> ApiSettings:
    """Build API settings from the environment plus explicit ``overrides`` (None: unset).

    Raises
    ------
    ConfigError
        If a value is invalid or a default secret is used outside development.
    """
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return ApiSettings(**clean)  # type: ignore[arg-type]
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(part) for part in first.get("loc", ())) or "settings"
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        raise ConfigError(f"invalid setting {field}: {message}") from err
