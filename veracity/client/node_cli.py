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
) -> None:
    """Run the SuperNode (TLS, SuperNode authentication) and the warm ClientApp worker."""
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
        sys.stderr.write(
            f"site {site_dir} connected to {superlink}; SuperNode pid {node.supernode.pid}, "
            f"worker pid {node.worker.pid}. Ctrl-C stops both.\n"
        )
        signal.signal(signal.SIGHUP, signal.default_int_handler)
        while True:
            group.check_alive()
            time.sleep(1.0)
