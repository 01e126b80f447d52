"""Creating and opening a coordinator: root key, TLS material, ledger, read model, service.

:func:`init_coordinator` (what ``veracity server init`` runs) makes whatever the data
directory lacks and keeps whatever it has: an existing root key or certificate is never
overwritten, a ledger is migrated rather than recreated, so running it twice is safe.
:func:`open_coordinator` opens an initialised one. Both return the
:class:`~.service.CoordinatorService`, with the real SuperLink behind its federation port
unless another :class:`~.federation.Federation` is given.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from veracity.crypto.keys import generate_signing_key, load_signing_key, write_key_pair
from veracity.crypto.tls import (
    DEFAULT_HOSTS,
    certificate_hosts,
    create_tls_material,
    install_tls_material,
    issue_server_certificate,
)
from veracity.ledger.ledger import Ledger
from veracity.server.coordinator.federation import Federation, SuperLinkFederation
from veracity.server.coordinator.home import (
    DEFAULT_SUPERLINK_PORT,
    ROOT_KEY_NAME,
    CoordinatorHome,
)
from veracity.server.coordinator.read_model import ReadModel
from veracity.server.coordinator.service import CoordinatorService
from veracity.server.coordinator.unit_of_work import AuditHook

__all__ = ["init_coordinator", "open_coordinator", "upgrade_read_model", "superlink_federation"]

#: Seconds allowed for each SuperLink Control API call unless configured otherwise.
DEFAULT_CONTROL_TIMEOUT = 10.0


def superlink_federation(
    home: CoordinatorHome, *, timeout: float = DEFAULT_CONTROL_TIMEOUT
) -> SuperLinkFederation:
    """The real SuperLink of ``home`` (its address and CA certificate)."""
    return SuperLinkFederation(home.superlink_address, ca_cert=home.tls.ca_cert, timeout=timeout)


def init_coordinator(
    data_dir: Path,
    *,
    db_url: str | None = None,
    superlink_port: int = DEFAULT_SUPERLINK_PORT,
    now: datetime | None = None,
    federation: Federation | None = None,
    audit: AuditHook | None = None,
    tls_hosts: tuple[str, ...] = (),
    own_tls: tuple[Path, Path, Path] | None = None,
) -> CoordinatorService:
    """Create (or bring up to date) a coordinator in ``data_dir`` and open it.

    Makes the root key, the CA and server certificate, the ledger (genesis) and the read
    model where missing, and writes ``coordinator.json``. The server certificate covers
    loopback plus ``tls_hosts``; when an existing one does not cover them all it is issued
    again from the same CA. ``own_tls`` (certificate, key, CA) installs the operator's
    own certificate instead.

    Raises
    ------
    ConfigError
        If the database cannot be created or holds another root's ledger, or the TLS
        names or files are not usable.
    """
    home = CoordinatorHome.at(data_dir, db_url=db_url, superlink_port=superlink_port)
    data_dir = home.data_dir
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    data_dir.chmod(0o700)
    if home.root_key_path.exists():
        root_key = load_signing_key(home.root_key_path)
    else:
        root_key = generate_signing_key()
        write_key_pair(home.key_dir, ROOT_KEY_NAME, root_key)
    hosts = DEFAULT_HOSTS + tuple(tls_hosts)
    if own_tls is not None:
        cert, key, ca = own_tls
        install_tls_material(data_dir / "tls", cert=cert, key=key, ca=ca)
    elif not home.tls.exist():
        create_tls_material(data_dir / "tls", hosts=hosts, now=now)
    elif tls_hosts and not set(certificate_hosts(home.tls.server_cert)) >= {
        h.lower() for h in tls_hosts
    }:
        issue_server_certificate(home.tls, hosts, now=now)
    ledger = Ledger.init(
        home.db_url, root_key=root_key, now=now, checkpoint_every=home.checkpoint_every
    )
    _make_private(home)
    try:
        ReadModel(ledger).upgrade()
        home.save()
        service = CoordinatorService(
            home,
            ledger,
            root_key,
            federation=federation if federation is not None else superlink_federation(home),
            audit=audit,
        )
        service.read_model.catch_up_now()
    except BaseException:
        ledger.close()
        raise
    return service


def _make_private(home: CoordinatorHome) -> None:
    """The embedded database holds the API's token hashes: readable by this user only.

    SQLite creates its ``-wal`` and ``-shm`` files with the database file's mode.
    """
    database = home.data_dir / "veracity.db"
    for path in (
        database,
        database.with_name("veracity.db-wal"),
        database.with_name("veracity.db-shm"),
    ):
        if path.exists():
            path.chmod(0o600)


def upgrade_read_model(where: Path | CoordinatorHome) -> None:
    """Migrate the read model of an initialised coordinator to this version's revision.

    Raises
    ------
    ConfigError
        If the directory was not initialised or the database cannot be migrated.
    """
    home = where if isinstance(where, CoordinatorHome) else CoordinatorHome.load(where)
    with Ledger.open(home.db_url, checkpoint_every=0) as ledger:
        ReadModel(ledger).upgrade()


def open_coordinator(
    where: Path | CoordinatorHome,
    *,
    federation: Federation | None = None,
    audit: AuditHook | None = None,
    max_concurrent_writes: int = 4,
) -> CoordinatorService:
    """Open the coordinator initialised in a data directory (or at a loaded home).

    Give a :class:`CoordinatorHome` to override what ``coordinator.json`` says (a SuperLink
    port chosen at start-up).

    Raises
    ------
    ConfigError
        If ``data_dir`` was not initialised, its ledger does not open, or its read model
        is missing or at another revision (run ``veracity server init``).
    """
    home = where if isinstance(where, CoordinatorHome) else CoordinatorHome.load(where)
    root_key = load_signing_key(home.root_key_path)
    ledger = Ledger.open(home.db_url, root_key=root_key, checkpoint_every=home.checkpoint_every)
    try:
        ReadModel(ledger).check_schema()
        return CoordinatorService(
            home,
            ledger,
            root_key,
            federation=federation if federation is not None else superlink_federation(home),
            audit=audit,
            max_concurrent_writes=max_concurrent_writes,
        )
    except BaseException:
        ledger.close()
        raise
