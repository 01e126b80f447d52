"""Running the coordinator's services: the SuperLink and the admin API under uvicorn.

:func:`initialise` prepares a data directory (keys, TLS, ledger, API tables);
:func:`start_services` starts the SuperLink (TLS, SuperNode authentication) and the API
(uvicorn, TLS with the coordinator's server certificate) in a
:class:`~veracity.supervise.ProcessGroup` and waits until both answer; the caller stops
the group (``veracity server start`` does on Ctrl-C or SIGTERM). :func:`issue_token`
creates a bearer token without a running server.
"""

from __future__ import annotations

import logging
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from veracity.errors import ConfigError
from veracity.server.api import db, tokens
from veracity.server.api.settings import ApiSettings
from veracity.server.api.tokens import IssuedToken, Role, TokenStore
from veracity.server.coordinator.bootstrap import (
    init_coordinator,
    open_coordinator,
    upgrade_read_model,
)
from veracity.server.coordinator.home import CoordinatorHome
from veracity.server.coordinator.service import CoordinatorService
from veracity.server.superlink import SuperLinkOptions, start_superlink
from veracity.supervise import ManagedProcess, ProcessGroup, wait_for

__all__ = [
    "Services",
    "initialise",
    "start_api",
    "start_services",
    "issue_token",
    "api_environment",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Services:
    """Where the started services answer."""

    api_url: str
    docs_url: str
    superlink_address: str
    ca_cert: Path
    superlink: ManagedProcess
    api: ManagedProcess

    @property
    def console_url(self) -> str:
        """The web console's address: the server's root, where ``api_url`` is ``/api/v1``."""
        return self.api_url.removesuffix("/api/v1") + "/"

    def to_json(self) -> dict[str, str]:
        """JSON-ready form."""
        return {
            "api_url": self.api_url,
            "docs_url": self.docs_url,
            "superlink": self.superlink_address,
            "ca_cert": str(self.ca_cert),
        }


def initialise(
    data_dir: Path,
    *,
    db_url: str | None = None,
    superlink_port: int = 9093,
    tls_hosts: tuple[str, ...] = (),
    own_tls: tuple[Path, Path, Path] | None = None,
) -> CoordinatorService:
    """Create (or bring up to date) a coordinator: keys, TLS, ledger, read model, API tables.

    Safe to run again: keys are kept, migrations are applied once; the server certificate
    is issued again (same CA) only when it does not cover ``tls_hosts``, and ``own_tls``
    (certificate, key, CA) installs the operator's own.

    Raises
    ------
    ConfigError
        If the database cannot be created or belongs to another root key.
    """
    service = init_coordinator(
        data_dir,
        db_url=db_url,
        superlink_port=superlink_port,
        tls_hosts=tls_hosts,
        own_tls=own_tls,
    )
    try:
        db.upgrade(service.ledger.engine)
    except BaseException:
        service.close()
        raise
    return service


def issue_token(
    data_dir: Path,
    *,
    role: Role | str,
    name: str,
    site: str | None = None,
    expires_in: timedelta = timedelta(days=90),
) -> IssuedToken:
    """Issue a bearer token for the coordinator in ``data_dir`` (no server needed).

    Raises
    ------
    ConfigError
        If the data directory was not initialised (``veracity server init``).
    InputError
        If the role, name, site or lifetime is not acceptable.
    """
    with open_coordinator(data_dir) as service:
        db.check_schema(service.ledger.engine)
        return tokens.issue_token(
            service,
            TokenStore(service.ledger.engine),
            tokens.operator_principal(),
            role=role,
            name=name,
            site=site,
            expires_in=expires_in,
        )


def api_environment(settings: ApiSettings) -> dict[str, str]:
    """The ``VERACITY_*`` variables that give uvicorn's workers these settings."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        key = f"VERACITY_{name.upper()}"
        if value is None:
            env.pop(key, None)
            continue
        if name == "bootstrap_admin_token" and settings.bootstrap_admin_token is not None:
            env[key] = settings.bootstrap_admin_token.get_secret_value()
        elif name == "data_dir":
            env[key] = str(Path(value).resolve())
        else:
            env[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def _superlink_port(home: CoordinatorHome, wanted: int | None) -> int:
    configured = home.superlink_port
    if wanted is None or wanted == configured:
        return configured
    home.with_superlink_port(wanted).save()
    log.warning("SuperLink port changed from %s to %s in %s", configured, wanted, home.data_dir)
    return wanted


def _answers(url: str, ca_cert: Path | None) -> bool:
    context = ssl.create_default_context(cafile=str(ca_cert)) if ca_cert is not None else None
    try:
        with urllib.request.urlopen(url, timeout=2.0, context=context) as response:  # noqa: S310 - our own https/http URL
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def start_api(
    settings: ApiSettings,
    group: ProcessGroup,
    *,
    timeout: float = 90.0,
    watch: Sequence[ManagedProcess] = (),
) -> tuple[ManagedProcess, str]:
    """Start the admin API under uvicorn in ``group``; return it and its base URL once up.

    ``settings.api_workers`` worker processes serve ``settings.host:settings.api_port``,
    with TLS from the coordinator's ``tls/`` unless ``settings.api_tls`` is off. The data
    directory must be initialised (the API tables at the current revision).

    Raises
    ------
    ConfigError
        If TLS is on and the certificate is missing.
    TransportError
        If uvicorn exits or does not answer within ``timeout`` seconds.
    """
    paths = CoordinatorHome.at(settings.data_dir)  # the layout; nothing is read
    tls = paths.tls
    argv = [
        sys.executable, "-m", "uvicorn", "veracity.server.api.app:app_from_environment",
        "--factory",
        "--host", settings.host,
        "--port", str(settings.api_port),
        "--workers", str(settings.api_workers),
        "--timeout-graceful-shutdown", "10",
        "--no-server-header",
    ]  # fmt: skip
    if settings.api_tls:
        if not tls.exist():
            raise ConfigError(f"no TLS material in {tls.server_cert.parent}; run server init")
        argv += ["--ssl-certfile", str(tls.server_cert), "--ssl-keyfile", str(tls.server_key)]
    api = group.start(
        ManagedProcess(
            name="api",
            argv=argv,
            log_path=paths.logs / "api.log",
            env=api_environment(settings),
            cwd=paths.data_dir,
        )
    )
    local = "127.0.0.1" if settings.host in ("0.0.0.0", "127.0.0.1") else settings.host  # noqa: S104 - comparing, not binding
    base = f"{settings.url_scheme}://{local}:{settings.api_port}"
    ca_cert = tls.ca_cert if settings.api_tls else None
    wait_for(
        lambda: _answers(f"{base}/health", ca_cert),
        timeout=timeout,
        what="the admin API",
        watch=[*watch, api],
    )
    return api, base


def start_services(
    settings: ApiSettings,
    group: ProcessGroup,
    *,
    superlink_host: str = "127.0.0.1",
    timeout: float = 90.0,
) -> Services:
    """Start the SuperLink and the admin API in ``group``; return once both answer.

    The SuperLink binds ``superlink_host`` (loopback by default: its Control API, on the
    same port as the Fleet API, has no authentication). The API binds ``settings.host``
    with TLS from the coordinator's ``tls/`` unless ``settings.api_tls`` is off.

    Raises
    ------
    ConfigError
        If the data directory was not initialised.
    TransportError
        If a service exits or does not answer within ``timeout`` seconds.
    """
    upgrade_read_model(settings.data_dir)
    with open_coordinator(settings.data_dir) as service:
        db.upgrade(service.ledger.engine)
        port = _superlink_port(service.home, settings.superlink_port)
        home = service.home
    settings = settings.model_copy(update={"superlink_port": port})
    superlink = start_superlink(
        home, SuperLinkOptions(host=superlink_host, port=port), group, timeout=timeout
    )
    api, base = start_api(settings, group, timeout=timeout, watch=[superlink])
    return Services(
        api_url=f"{base}/api/v1",
        docs_url=f"{base}/docs",
        superlink_address=f"{superlink_host}:{port}",
        ca_cert=home.tls.ca_cert,
        superlink=superlink,
        api=api,
    )
