"""Running a site's Flower SuperNode and its long-lived ClientApp executor.

The SuperNode connects to the coordinator's SuperLink over TLS (pinning the network's CA)
and authenticates with the site's ECDSA P-384 SuperNode key. It runs with
``--isolation process``: instead of a fresh ``flwr-clientapp`` process per message, the
site's own :mod:`veracity.client.worker` executes the ClientApp, warm, from the installed
Veracity. Its Runtime API listens on loopback only.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from veracity.errors import ConfigError
from veracity.supervise import (
    ManagedProcess,
    ProcessGroup,
    flower_environment,
    free_port,
    python_module_argv,
    wait_for,
)

__all__ = ["SuperNodeOptions", "SiteNode", "start_site_node", "supernode_key_path"]


@dataclass(frozen=True)
class SuperNodeOptions:
    """How a site's SuperNode reaches the SuperLink and how often it polls.

    The SuperNode pulls every ``active_poll`` seconds for a few seconds after a message,
    backing off to ``idle_poll`` while none comes; the worker asks its SuperNode for a
    task every ``worker_poll`` seconds likewise, backing off to ``idle_poll``.
    """

    superlink: str
    ca_cert: Path
    idle_poll: float = 1.0
    active_poll: float = 0.1
    worker_poll: float = 0.05
    runtime_port: int | None = None


def supernode_key_path(site_dir: Path) -> Path:
    """The site's SuperNode private key (OpenSSH ECDSA P-384)."""
    return site_dir / "keys" / "supernode"


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@dataclass(frozen=True)
class SiteNode:
    """A site's running SuperNode and worker."""

    site_dir: Path
    supernode: ManagedProcess
    worker: ManagedProcess
    ready_file: Path

    def wait_ready(self, *, timeout: float = 180.0) -> None:
        """Return once the worker has loaded torch and Opacus and polls its SuperNode.

        Raises
        ------
        TransportError
            If either process exits or the worker is not ready within ``timeout`` seconds.
        """
        wait_for(
            self.ready_file.exists,
            timeout=timeout,
            what=f"the ClientApp worker of {self.site_dir.name}",
            watch=[self.supernode, self.worker],
        )


def start_site_node(
    site_dir: Path,
    options: SuperNodeOptions,
    group: ProcessGroup,
    *,
    timeout: float = 120.0,
    wait: bool = True,
) -> SiteNode:
    """Start the SuperNode and the worker of the site in ``site_dir``.

    With ``wait`` (the default), returns once the worker is ready (see
    :meth:`SiteNode.wait_ready`); otherwise right after starting it, so that several sites
    can warm up together.

    Raises
    ------
    ConfigError
        If the site is not initialised or the CA certificate is missing.
    TransportError
        If either process exits or is not ready within ``timeout`` seconds.
    """
    site_dir = site_dir.resolve()
    key = supernode_key_path(site_dir)
    if not (site_dir / "site.json").is_file() or not key.is_file():
        raise ConfigError(f"{site_dir} is not an initialised site; run: veracity site init")
    if not options.ca_cert.is_file():
        raise ConfigError(f"CA certificate {options.ca_cert} not found")
    port = options.runtime_port or free_port()
    flwr_home = site_dir / "flwr"
    flwr_home.mkdir(parents=True, exist_ok=True)
    env = flower_environment(flwr_home)
    supernode = group.start(
        ManagedProcess(
            name=f"supernode[{site_dir.name}]",
            argv=python_module_argv(
                "veracity.client.supernode_runner",
                "--idle-poll", str(options.idle_poll),
                "--active-poll", str(options.active_poll),
                "--reply-poll", "0.05",
                "--object-backoff", "0.05",
                "--",
                "--root-certificates", str(options.ca_cert.resolve()),
                "--superlink", options.superlink,
                "--auth-supernode-private-key", str(key),
                "--isolation", "process",
                "--host", "127.0.0.1",
                "--port", str(port),
                "--node-config", f'site-dir="{site_dir}"',
            ),
            log_path=site_dir / "logs" / "supernode.log",
            env=env,
            cwd=site_dir,
        )
    )  # fmt: skip
    wait_for(lambda: _listening(port), timeout=timeout, what="the SuperNode", watch=[supernode])
    ready = site_dir / "logs" / "worker.ready"
    ready.unlink(missing_ok=True)
    worker = group.start(
        ManagedProcess(
            name=f"worker[{site_dir.name}]",
            argv=python_module_argv(
                "veracity.client.worker",
                "--runtime-api-address", f"127.0.0.1:{port}",
                "--poll-interval", str(options.worker_poll),
                "--idle-poll", str(options.idle_poll),
                "--site-dir", str(site_dir),
                "--ready-file", str(ready),
                "--parent-pid", str(os.getpid()),
            ),
            log_path=site_dir / "logs" / "worker.log",
            env=env,
            cwd=site_dir,
        )
    )  # fmt: skip
    node = SiteNode(site_dir=site_dir, supernode=supernode, worker=worker, ready_file=ready)
    if wait:
        node.wait_ready(timeout=timeout)
    return node
