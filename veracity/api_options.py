"""How a command reaches the admin API: ``--server``, ``--token``, ``--ca-cert``.

One place for the three options (each also read from ``VERACITY_SERVER``,
``VERACITY_TOKEN``, ``VERACITY_CA_CERT``), the API base a server URL means, and the checks
made before the first request, shared by ``veracity admin``, ``veracity analysis`` and
``veracity predict`` (:class:`veracity.api_client.ApiSession` opens the admin client).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer

from veracity.errors import ConfigError

__all__ = ["ServerOption", "TokenOption", "CaCertOption", "api_base", "check_credentials"]

ServerOption = Annotated[
    str,
    typer.Option(
        "--server",
        envvar="VERACITY_SERVER",
        help="The coordinator's admin API, https://HOST:PORT (or its /api/v1).",
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token", envvar="VERACITY_TOKEN", help="Your API token (its role must allow this)."
    ),
]
CaCertOption = Annotated[
    Path | None,
    typer.Option(
        "--ca-cert",
        envvar="VERACITY_CA_CERT",
        help="The coordinator's CA certificate (its DIR/tls/ca.crt); the system store without.",
    ),
]


def api_base(server_url: str) -> str:
    """The API base for ``server_url``: a bare ``scheme://host:port`` gets ``/api/v1``."""
    url = server_url.rstrip("/")
    return url if urlsplit(url).path else f"{url}/api/v1"


def check_credentials(token: str | None, ca_cert: Path | None) -> str:
    """The token, once it is given and the CA certificate (if any) exists.

    Raises
    ------
    ConfigError
        If there is no token or the CA certificate file is missing.
    """
    if not token:
        raise ConfigError("no API token: pass --token or set VERACITY_TOKEN")
    if ca_cert is not None and not ca_cert.is_file():
        raise ConfigError(f"CA certificate {ca_cert} not found")
    return token
