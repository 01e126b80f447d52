"""``veracity site start``: run this site's SuperNode and ClientApp worker until interrupted."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from veracity.errors import ConfigError

__all__ = ["site_api_options", "start"]


def site_api_options(
    *,
    server: str | None,
    token: str | None,
    witness: bool | None,
    api: str | None = None,
    api_token: str | None = None,
) -> tuple[str | None, str | None, bool]:
    """``site start``'s API options resolved: (server, token, whether to witness).

    Every site agent given the coordinator's API witnesses its ledger: ``witness`` left
    unset means on whenever there is a server; ``False`` (``--no-witness``) opts out.

    Raises
    ------
    ConfigError
        If the options contradict each other, or ``witness`` is asked for without an API.
    """
    from veracity.api_options import api_base

    if api is not None:  # the older spelling of --server
        if server is not None and api_base(server) != api_base(api):
            raise ConfigError("--api is the older spelling of --server; give one of them")
        server = server or api
    if api_token is not None:
        if token is not None and token != api_token:
            raise ConfigError("--api-token is the older spelling of --token; give one of them")
        token = token or api_token
    if (server is None) != (token is None):
        raise ConfigError(
            "--server and --token go together (they deliver the outbox and witness the ledger)"
        )
    if witness and server is None:
        raise ConfigError("--witness needs the coordinator's API: --server and --token")
    return server, token, server is not None if witness is None else witness


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
            help="Longest wait between an idle SuperNode's pulls (Flower's fixed 3 s); for "
            "5 s after a message it pulls every 0.1 s, then backs off to this.",
        ),
    ] = 1.0,
    log_vkey: Annotated[
        str | None,
        typer.Option(
            "--log-vkey",
            envvar="VERACITY_LOG_VKEY",
            help="The log's note verifier key to pin (else learnt on first contact).",
        ),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            envvar="VERACITY_SERVER",
            help="The coordinator's admin API (https://HOST:PORT): with --token, the outbox "
            "is delivered there while the site runs, and the site witnesses its ledger there "
            "(unless --no-witness).",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="VERACITY_TOKEN", help="This site's API token."),
    ] = None,
    witness: Annotated[
        bool | None,
        typer.Option(
            "--witness/--no-witness",
            envvar="VERACITY_WITNESS",
            help="Witness the coordinator's ledger at --server with the site's witness key "
            "(the default whenever --server and --token are given; --no-witness opts out).",
        ),
    ] = None,
    api: Annotated[
        str | None,
        typer.Option(
            "--api",
            envvar="VERACITY_API",
            hidden=True,
            help="Older spelling of --server.",
        ),
    ] = None,
    api_token: Annotated[
        str | None,
        typer.Option(
            "--api-token",
            envvar="VERACITY_API_TOKEN",
            hidden=True,
            help="Older spelling of --token.",
        ),
    ] = None,
    sync_every: Annotated[
        float,
        typer.Option(
            "--sync-every",
            envvar="VERACITY_SYNC_EVERY",
            min=0.1,
            help="Seconds between outbox deliveries.",
        ),
    ] = 5.0,
) -> None:
    """Run the SuperNode, the warm ClientApp worker and (with an API) the ledger witness.

    The SuperNode speaks TLS with SuperNode authentication. With ``--server`` and
    ``--token`` (one pair for everything the site says to the coordinator's API) it
    delivers the site's outbox (approvals, refusals, registrations) every ``--sync-every``
    seconds, and the witness cosigns the coordinator's checkpoints with the site's witness
    key when they extend what it saw (every site agent witnesses; ``--no-witness`` opts
    out). The older spellings still work: ``--api URL`` is ``--server URL`` and
    ``--api-token`` is ``--token``.
    """
    from veracity.api_options import api_base
    from veracity.client.supernode import SuperNodeOptions, start_site_node
    from veracity.supervise import ProcessGroup, stopping_on_signals

    if idle_poll <= 0:
        raise ConfigError("--idle-poll must be positive")
    server, token, witnessing = site_api_options(
        server=server, token=token, witness=witness, api=api, api_token=api_token
    )
    site_dir = Path("veracity-site") if data_dir is None else data_dir
    options = SuperNodeOptions(superlink=superlink, ca_cert=ca_cert, idle_poll=idle_poll)
    group = ProcessGroup()
    with stopping_on_signals(group):
        node = start_site_node(site_dir, options, group)
        if witnessing and server is not None and token is not None:
            from veracity.client.witness import start_site_witness

            api = api_base(server)
            watcher = start_site_witness(
                site_dir, group, api_url=api, token=token, ca_cert=ca_cert, log_vkey=log_vkey
            )
            sys.stderr.write(f"witness pid {watcher.pid} watches the ledger at {api}\n")
        sys.stderr.write(
            f"site {site_dir} connected to {superlink}; SuperNode pid {node.supernode.pid}, "
            f"worker pid {node.worker.pid}. Ctrl-C stops both.\n"
        )
        signal.signal(signal.SIGHUP, signal.default_int_handler)
        next_sync = time.monotonic()
        try:
            while True:
                group.check_alive()
                if server is not None and token is not None and time.monotonic() >= next_sync:
                    _sync(site_dir, server, token, ca_cert)
                    next_sync = time.monotonic() + sync_every
                time.sleep(min(1.0, sync_every))
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: a clean stop, like server start
            sys.stderr.write("stopped\n")


def _sync(site_dir: Path, server: str, token: str, ca_cert: Path) -> None:
    """One outbox delivery; a failure is reported and retried at the next one."""
    from veracity.client.outbox_sync import deliver_outbox
    from veracity.client.site import Site
    from veracity.errors import VeracityError

    try:
        with Site.open(site_dir) as site:
            report = deliver_outbox(site.store, server=server, token=token, ca_cert=ca_cert)
    except VeracityError as err:
        sys.stderr.write(f"outbox not delivered (retrying): {err}\n")
        return
    for sid in report.delivered:
        sys.stderr.write(f"outbox: delivered {sid}\n")
    for sid, why in report.refused.items():
        sys.stderr.write(f"outbox: the coordinator refused {sid}: {why}\n")
