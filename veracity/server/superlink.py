"""Running the coordinator's SuperLink.

TLS on every API, SuperNode authentication on, Flower's in-memory state with the SuperNode
registrations kept in a SQLite file (:mod:`veracity.server.superlink_process`: they survive
a restart, the runs it forgets are recorded failed by the coordinator), bound to loopback
by default (its Control API has no
authentication in open-source Flower). It runs with ``--isolation process`` beside
Veracity's ServerApp executor (:mod:`veracity.server.serverapp_executor`), which starts
each run's ServerApp process from an interpreter that has already imported it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from veracity.errors import ConfigError, TransportError
from veracity.server.control import ControlClient
from veracity.server.coordinator.home import CoordinatorHome
from veracity.supervise import (
    ManagedProcess,
    ProcessGroup,
    flower_environment,
    python_module_argv,
    wait_for,
)

__all__ = ["SuperLinkOptions", "start_superlink", "superlink_argv"]


@dataclass(frozen=True)
class SuperLinkOptions:
    """Where the SuperLink listens."""

    host: str = "127.0.0.1"
    port: int = 9093


def superlink_argv(home: CoordinatorHome, options: SuperLinkOptions) -> list[str]:
    """The SuperLink's command line (:mod:`veracity.server.superlink_process`)."""
    tls = home.tls
    return [
        *python_module_argv(
            "veracity.server.superlink_process",
            "--node-registry", str(home.superlink_nodes_db),
            "--import-from", str(home.superlink_db),
        ),
        "--ssl-ca-certfile", str(tls.ca_cert),
        "--ssl-certfile", str(tls.server_cert),
        "--ssl-keyfile", str(tls.server_key),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--isolation", "process",
        "--host", options.host,
        "--port", str(options.port),
    ]  # fmt: skip


def start_superlink(
    home: CoordinatorHome,
    options: SuperLinkOptions,
    group: ProcessGroup,
    *,
    timeout: float = 60.0,
) -> ManagedProcess:
    """Start the SuperLink and its ServerApp executor in ``group``; wait until both are ready.

    Raises
    ------
    ConfigError
        If the TLS material is missing (run ``veracity server init``).
    TransportError
        If it exits or does not answer within ``timeout`` seconds.
    """
    if not home.tls.exist():
        raise ConfigError(f"no TLS material in {home.data_dir / 'tls'}; run: veracity server init")
    home.flwr_home.mkdir(parents=True, exist_ok=True, mode=0o700)
    process = group.start(
        ManagedProcess(
            name="superlink",
            argv=superlink_argv(home, options),
            log_path=home.logs / "superlink.log",
            env=flower_environment(home.flwr_home),
            cwd=home.data_dir,
        )
    )
    # Bound to every interface, it is asked on loopback (which its certificate names).
    local = "127.0.0.1" if options.host in ("0.0.0.0", "::", "") else options.host  # noqa: S104 - comparing, not binding
    client = ControlClient(f"{local}:{options.port}", ca_cert=home.tls.ca_cert, timeout=2.0)

    def answers() -> bool:
        try:
            client.list_runs()
        except TransportError:
            return False
        return True

    try:
        wait_for(answers, timeout=timeout, what="the SuperLink's Control API", watch=[process])
    finally:
        client.close()
    ready = home.logs / "serverapp-executor.ready"
    ready.unlink(missing_ok=True)
    executor = group.start(
        ManagedProcess(
            name="serverapp-executor",
            argv=python_module_argv(
                "veracity.server.serverapp_executor",
                "--runtime-api-address", f"{local}:{options.port}",
                "--root-certificates", str(home.tls.ca_cert.resolve()),
                "--ready-file", str(ready),
                "--parent-pid", str(os.getpid()),
            ),
            log_path=home.logs / "serverapp-executor.log",
            env=flower_environment(home.flwr_home),
            cwd=home.data_dir,
        )
    )  # fmt: skip
    wait_for(
        ready.is_file, timeout=timeout, what="the ServerApp executor", watch=[process, executor]
    )
    return process
