"""``veracity site start``: run this site's SuperNode and ClientApp worker until interrupted."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from veracity.errors import ConfigError

__all__ = ["start"]


def start(
    superlink: Annotated[
        str,
        typer.Option(
            "--superlink",
            envvar="VERACITY_SUPERLINK",
            help="The coordinator's SuperLink HOST:PORT.",
        ),
    ],
    ca_cert: Annotated[
        Path,
        typer.Option(
            "--ca-cert",
            envvar="VERACITY_CA_CERT",
            help="The research network's CA certificate (pins the SuperLink's TLS).",
        ),
    ],
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", envvar="VERACITY_DATA_DIR", help="The site's directory."),
    ] = None,
    idle_poll: Annotated[
        float,
        typer.Option(
            "--idle-poll",
            envvar="VERACITY_IDLE_POLL",
            help="Seconds an idle SuperNode waits between pulls (Flower's fixed default: 3).",
        ),
    ] = 0.5,
    api: Annotated[
        str | None,
        typer.Option(
            "--api",
            envvar="VERACITY_API",
            help="The coordinator's admin API (…/api/v1): this site witnesses its ledger.",
        ),
    ] = None,
    api_token: Annotated[
        str | None,
        typer.Option(
            "--api-token", envvar="VERACITY_API_TOKEN", help="This site's API token (witness)."
        ),
    ] = None,
    log_vkey: Annotated[
        str | None,
        typer.Option(
            "--log-vkey",
            envvar="VERACITY_LOG_VKEY",
            help="The log's note verifier key to pin (else learnt on first contact).",
        ),
    ] = None,
) -> None:
    """Run the SuperNode, the warm ClientApp worker and (with --api) the ledger witness.

    The SuperNode speaks TLS with SuperNode authentication; the witness cosigns the
    coordinator's checkpoints with the site's witness key when they extend what it saw.
    """
    from veracity.client.supernode import SuperNodeOptions, start_site_node
    from veracity.supervise import ProcessGroup, stopping_on_signals

    if idle_poll <= 0:
        raise ConfigError("--idle-poll must be positive")
    from veracity.config import load_settings  # pydantic-settings: only when used

    site_dir = load_settings(data_dir=data_dir).data_dir
    options = SuperNodeOptions(superlink=superlink, ca_cert=ca_cert, idle_poll=idle_poll)
    group = ProcessGroup()
    with stopping_on_signals(group):
        node = start_site_node(site_dir, options, group)
        if api:
            from veracity.client.witness import start_site_witness

            if not api_token:
                raise ConfigError("witnessing needs this site's token: --api-token")
            witness = start_site_witness(
                site_dir, group, api_url=api, token=api_token, ca_cert=ca_cert, log_vkey=log_vkey
            )
            sys.stderr.write(f"witness pid {witness.pid} watches the ledger at {api}\n")
        sys.stderr.write(
            f"site {site_dir} connected to {superlink}; SuperNode pid {node.supernode.pid}, "
            f"worker pid {node.worker.pid}. Ctrl-C stops both.\n"
        )
        signal.signal(signal.SIGHUP, signal.default_int_handler)
        while True:
            group.check_alive()
            time.sleep(1.0)
