"""Running the coordinator's SuperLink.

TLS on every API, SuperNode authentication on, state in a SQLite file so registrations and
run history survive a restart, bound to loopback by default (its Control API has no
authentication in open-source Flower).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from veracity.crypto.tls import TlsFiles, tls_files
from veracity.errors import ConfigError, TransportError
from veracity.server.control import ControlClient
from veracity.supervise import ManagedProcess, ProcessGroup, flower_environment, wait_for

__all__ = ["CoordinatorPaths", "SuperLinkOptions", "start_superlink", "superlink_argv"]


@dataclass(frozen=True)
class CoordinatorPaths:
    """Where a coordinator keeps its files under its data directory."""

    data_dir: Path

    @property
    def key_dir(self) -> Path:
        """Root signing key (root.pem / root.pub)."""
        return self.data_dir / "keys"

    @property
    def tls(self) -> TlsFiles:
        """CA and server certificate."""
        return tls_files(self.data_dir / "tls")

    @property
    def flwr_home(self) -> Path:
        """Flower's home for the SuperLink and its app processes."""
        return self.data_dir / "flwr"

    @property
    def superlink_db(self) -> Path:
        """The SuperLink's state (runs, SuperNode registrations)."""
        return self.data_dir / "flwr" / "superlink.db"

    @property
    def models(self) -> Path:
        """The model registry."""
        return self.data_dir / "models"

    @property
    def logs(self) -> Path:
        """Logs of the processes the coordinator runs."""
        return self.data_dir / "logs"

    @property
    def db_url(self) -> str:
        """The embedded database (ledger and API state)."""
        return f"sqlite:///{self.data_dir.resolve() / 'veracity.db'}"


@dataclass(frozen=True)
class SuperLinkOptions:
    """Where the SuperLink listens."""

    host: str = "127.0.0.1"
    port: int = 9093


def superlink_argv(paths: CoordinatorPaths, options: SuperLinkOptions) -> list[str]:
    """The ``flower-superlink`` command line."""
    tls = paths.tls
    return [
        "flower-superlink",
        "--ssl-ca-certfile", str(tls.ca_cert),
        "--ssl-certfile", str(tls.server_cert),
        "--ssl-keyfile", str(tls.server_key),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--host", options.host,
        "--port", str(options.port),
        "--database", str(paths.superlink_db),
    ]  # fmt: skip


def start_superlink(
    paths: CoordinatorPaths,
    options: SuperLinkOptions,
    group: ProcessGroup,
    *,
    timeout: float = 60.0,
) -> ManagedProcess:
    """Start the SuperLink in ``group`` and wait until its Control API answers.

    Raises
    ------
    ConfigError
        If the TLS material is missing (run ``veracity server init``).
    TransportError
        If it exits or does not answer within ``timeout`` seconds.
    """
    if not paths.tls.exist():
        raise ConfigError(f"no TLS material in {paths.data_dir / 'tls'}; run: veracity server init")
    paths.flwr_home.mkdir(parents=True, exist_ok=True)
    process = group.start(
        ManagedProcess(
            name="superlink",
            argv=superlink_argv(paths, options),
            log_path=paths.logs / "superlink.log",
            env=flower_environment(paths.flwr_home),
            cwd=paths.data_dir,
        )
    )
    client = ControlClient(f"{options.host}:{options.port}", ca_cert=paths.tls.ca_cert, timeout=2.0)

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
    return process
