"""The coordinator's home: its data directory, where each file lives, and ``coordinator.json``.

One value, :class:`CoordinatorHome`, says everything a coordinator's processes need to find
each other: the data directory and its layout (keys, TLS material, models, Flower's home,
logs, run files), the database URL and the SuperLink's address. ``veracity server init``
writes it once (:meth:`CoordinatorHome.save`); the admin API, the CLI and the ServerApp read
it back (:meth:`CoordinatorHome.load`).

Layout of ``DIR``::

    coordinator.json   db_url, superlink_address, checkpoint_every
    keys/root.pub      the log's identity key (the auditors' trust anchor, --trust)
    keys/log.pem|pub   the online log key (signs root entries, checkpoints and notes)
    keys/log.previous.pem  the outgoing log key during a rotation's overlap
    identity/root.pem|pub  the identity's private key, written by `server init`: move it
                       offline (the coordinator never reads it; only log key rotations
                       and retirements need it). A home made before the split keeps
                       keys/root.pem as identity and log key in one.
    tls/               CA and the server certificate (SuperLink and admin API)
    veracity.db        ledger, read model and API tables (unless db_url names PostgreSQL)
    models/            the model registry
    updates/           every round's received site updates and aggregate, by hash
    flwr/              Flower's home and the SuperLink's SuperNode registry (superlink-nodes.db)
    runs/              RUN.seeds.json (committed to in run.started), RUN.timing.json
    logs/              logs of the processes the coordinator runs
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from veracity.config import default_database_url
from veracity.crypto.keys import private_key_path
from veracity.crypto.tls import TlsFiles, tls_files
from veracity.errors import ConfigError

__all__ = [
    "CoordinatorHome",
    "ROOT_KEY_NAME",
    "LOG_KEY_NAME",
    "PREVIOUS_LOG_KEY_NAME",
    "DEFAULT_SUPERLINK_PORT",
]

#: File name (``keys/root.pem``) of the coordinator's root signing key.
ROOT_KEY_NAME = "root"
#: File name (``keys/log.pem``) of the online log key the identity key enrols.
LOG_KEY_NAME = "log"
#: ``keys/log.previous.pem``: the outgoing log key while both sign checkpoint notes.
PREVIOUS_LOG_KEY_NAME = "log.previous"
DEFAULT_SUPERLINK_PORT = 9093
CONFIG_FILE = "coordinator.json"


@dataclass(frozen=True)
class CoordinatorHome:
    """A coordinator's data directory and its configuration.

    Build a new one with :meth:`at` (nothing is written until :meth:`save`), or read an
    initialised one with :meth:`load`.
    """

    data_dir: Path
    db_url: str
    superlink_address: str
    checkpoint_every: int = 100

    @classmethod
    def at(
        cls,
        data_dir: Path,
        *,
        db_url: str | None = None,
        superlink_port: int = DEFAULT_SUPERLINK_PORT,
    ) -> CoordinatorHome:
        """The home of a coordinator in ``data_dir`` (SQLite under it unless ``db_url``)."""
        data_dir = Path(data_dir).absolute()  # processes started elsewhere (cwd) find it too
        return cls(
            data_dir=data_dir,
            db_url=db_url or default_database_url(data_dir),
            superlink_address=f"127.0.0.1:{superlink_port}",
        )

    @classmethod
    def load(cls, data_dir: Path) -> CoordinatorHome:
        """Read ``DIR/coordinator.json``.

        Raises
        ------
        ConfigError
            If the file is missing (the directory was never initialised) or malformed.
        """
        data_dir = Path(data_dir).absolute()
        path = data_dir / CONFIG_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                data_dir=data_dir,
                db_url=str(data["db_url"]),
                superlink_address=str(data["superlink_address"]),
                checkpoint_every=int(data.get("checkpoint_every", 100)),
            )
        except FileNotFoundError as err:
            raise ConfigError(f"{path} not found; run: veracity server init") from err
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{path} is malformed: {err}") from err

    def to_json(self) -> dict[str, Any]:
        """What ``coordinator.json`` holds."""
        return {
            "db_url": self.db_url,
            "superlink_address": self.superlink_address,
            "checkpoint_every": self.checkpoint_every,
        }

    def save(self) -> None:
        """Write ``coordinator.json`` (atomically: a reader sees the old or the new file)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / CONFIG_FILE
        staging = path.with_suffix(".json.tmp")
        staging.write_text(json.dumps(self.to_json(), indent=2), encoding="utf-8")
        os.replace(staging, path)

    def with_superlink_port(self, port: int) -> CoordinatorHome:
        """The same home with the SuperLink on ``port`` of the same host."""
        host = self.superlink_address.rsplit(":", 1)[0]
        return replace(self, superlink_address=f"{host}:{port}")

    @property
    def superlink_port(self) -> int:
        """The port of :attr:`superlink_address`."""
        return int(self.superlink_address.rsplit(":", 1)[1])

    # ------------------------------------------------------------------ layout
    @property
    def key_dir(self) -> Path:
        """Root signing key (``root.pem`` / ``root.pub``)."""
        return self.data_dir / "keys"

    @property
    def root_key_path(self) -> Path:
        """The root's private key file of a home made before the split (identity and log key)."""
        return private_key_path(self.key_dir, ROOT_KEY_NAME)

    @property
    def log_key_path(self) -> Path:
        """The online log key (``keys/log.pem``)."""
        return private_key_path(self.key_dir, LOG_KEY_NAME)

    @property
    def previous_log_key_path(self) -> Path:
        """The outgoing log key during a rotation's overlap (``keys/log.previous.pem``)."""
        return private_key_path(self.key_dir, PREVIOUS_LOG_KEY_NAME)

    @property
    def identity_dir(self) -> Path:
        """Where ``server init`` writes the identity's private key, to be moved offline."""
        return self.data_dir / "identity"

    @property
    def identity_key_path(self) -> Path:
        """The identity's private key as ``server init`` writes it (``identity/root.pem``)."""
        return private_key_path(self.identity_dir, ROOT_KEY_NAME)

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
        """The SuperLink's SQLite state of earlier versions (its nodes are imported once)."""
        return self.flwr_home / "superlink.db"

    @property
    def superlink_nodes_db(self) -> Path:
        """The SuperLink's SuperNode registrations and withdrawals."""
        return self.flwr_home / "superlink-nodes.db"

    @property
    def models(self) -> Path:
        """The model registry."""
        return self.data_dir / "models"

    @property
    def updates(self) -> Path:
        """The received site updates and round models, by hash (``round_archive``)."""
        return self.data_dir / "updates"

    @property
    def logs(self) -> Path:
        """Logs of the processes the coordinator runs."""
        return self.data_dir / "logs"

    @property
    def runs(self) -> Path:
        """Per-run files: seeds (``RUN.seeds.json``) and timing marks."""
        return self.data_dir / "runs"

    # --------------------------------------------------------------- run files
    def write_seeds(self, run_id: str, seeds: dict[str, Any]) -> Path:
        """Keep the seeds ``run.started`` commits to; returns the file."""
        self.runs.mkdir(parents=True, exist_ok=True)
        path = self.runs / f"{run_id}.seeds.json"
        path.write_text(json.dumps(seeds), encoding="utf-8")
        return path

    def remove_seeds(self, run_id: str) -> None:
        """Forget a run's seeds (the undo of a start that was not recorded)."""
        (self.runs / f"{run_id}.seeds.json").unlink(missing_ok=True)

    def seeds_of(self, run_id: str) -> dict[str, Any] | None:
        """The seeds committed to in ``run.started`` of ``run_id``, if kept here."""
        path = self.runs / f"{run_id}.seeds.json"
        if not path.exists():
            return None
        seeds: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return seeds
