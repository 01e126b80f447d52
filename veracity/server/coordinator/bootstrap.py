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

from veracity.crypto.keys import (
    SigningKey,
    generate_signing_key,
    load_signing_key,
    public_key_path,
    write_key_pair,
)
from veracity.crypto.tls import (
    DEFAULT_HOSTS,
    certificate_hosts,
    create_tls_material,
    install_tls_material,
    issue_server_certificate,
)
from veracity.errors import ConfigError
from veracity.ledger.ledger import Ledger
from veracity.server.coordinator.federation import Federation, SuperLinkFederation
from veracity.server.coordinator.home import (
    DEFAULT_SUPERLINK_PORT,
    LOG_KEY_NAME,
    PREVIOUS_LOG_KEY_NAME,
    ROOT_KEY_NAME,
    CoordinatorHome,
)
from veracity.server.coordinator.read_model import ReadModel
from veracity.server.coordinator.service import CoordinatorService
from veracity.server.coordinator.unit_of_work import AuditHook

__all__ = [
    "init_coordinator",
    "open_coordinator",
    "upgrade_read_model",
    "superlink_federation",
    "rotate_coordinator_log_key",
    "retire_coordinator_log_key",
]

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

    Makes the identity and log keys (:func:`_init_keys`), the CA and server certificate,
    the ledger (genesis) and the read model where missing, and writes ``coordinator.json``.
    The server certificate covers loopback plus ``tls_hosts``; when an existing one does
    not cover them all it is issued again from the same CA. ``own_tls`` (certificate, key,
    CA) installs the operator's own certificate instead.

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
    root_key, identity = _init_keys(home)
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
        home.db_url,
        root_key=root_key,
        identity_key=identity,
        now=now,
        checkpoint_every=home.checkpoint_every,
    )
    ledger.overlap_keys = _overlap_keys(home)
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


def _init_keys(home: CoordinatorHome) -> tuple[SigningKey, SigningKey | None]:
    """The log key to run with and, for a new log, the identity key that enrols it.

    A new home gets two keys: the identity (``identity/root.pem``, its public half also
    as ``keys/root.pub``, what auditors trust) and the log key (``keys/log.pem``). A home
    that has a log key keeps it (the identity is not needed again: it may be offline by
    now); one made before the split (``keys/root.pem`` only) keeps that key as both.
    """
    if home.log_key_path.exists():
        identity_path = home.identity_key_path
        identity = load_signing_key(identity_path) if identity_path.exists() else None
        return load_signing_key(home.log_key_path), identity
    if home.root_key_path.exists():
        root_key = load_signing_key(home.root_key_path)
        return root_key, root_key
    identity = generate_signing_key()
    log_key = generate_signing_key()
    if public_key_path(home.key_dir, ROOT_KEY_NAME).exists():
        raise ConfigError(
            f"{home.key_dir} holds root.pub but neither log.pem nor root.pem: "
            "restore the log key (or start from an empty data directory)"
        )
    write_key_pair(home.identity_dir, ROOT_KEY_NAME, identity)
    home.key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    public_key_path(home.key_dir, ROOT_KEY_NAME).write_text(identity.public.pem(), encoding="ascii")
    write_key_pair(home.key_dir, LOG_KEY_NAME, log_key)
    return log_key, identity


def _log_key(home: CoordinatorHome) -> SigningKey:
    """The online log key: ``keys/log.pem``, or ``keys/root.pem`` of a home made before."""
    if home.log_key_path.exists():
        return load_signing_key(home.log_key_path)
    return load_signing_key(home.root_key_path)


def _overlap_keys(home: CoordinatorHome) -> list[SigningKey]:
    """The outgoing log key during a rotation's overlap, if the home keeps one."""
    path = home.previous_log_key_path
    return [load_signing_key(path)] if path.exists() else []


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
    root_key = _log_key(home)
    ledger = Ledger.open(home.db_url, root_key=root_key, checkpoint_every=home.checkpoint_every)
    ledger.overlap_keys = _overlap_keys(home)
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


# ---------------------------------------------------------------- log key rotation
def rotate_coordinator_log_key(
    where: Path | CoordinatorHome, *, identity: SigningKey
) -> dict[str, str | int]:
    """Enrol a new log key for the coordinator in ``where`` (stop its processes first).

    The new key is written first (``keys/log.next.pem``), then recorded (the identity
    signs it, the current log key hands over), then put in place: ``keys/log.pem`` becomes
    ``keys/log.previous.pem``, which co-signs checkpoint notes until
    :func:`retire_coordinator_log_key`. A home made before the split (``keys/root.pem``,
    identity and log key in one) gets its first separate log key; its ``root.pem`` is
    the identity from then on, to be moved offline, and there is no overlap.

    Raises
    ------
    ConfigError
        If a rotation's overlap is still open, or the home has no log key.
    SignatureError, InputError
        If ``identity`` is not the log's identity key.
    """
    from veracity.crypto.keys import private_key_path
    from veracity.ledger.log_key import rotate_log_key

    home = where if isinstance(where, CoordinatorHome) else CoordinatorHome.load(where)
    if home.previous_log_key_path.exists():
        raise ConfigError(
            f"{home.previous_log_key_path} exists: the last rotation's overlap is still open; "
            "run `veracity server retire-log-key` first"
        )
    outgoing = _log_key(home)
    split = home.log_key_path.exists()
    staged = private_key_path(home.key_dir, "log.next")
    if staged.exists():
        new_key = load_signing_key(staged)
    else:
        new_key = generate_signing_key()
        write_key_pair(home.key_dir, "log.next", new_key)
    with Ledger.open(home.db_url, root_key=outgoing, checkpoint_every=0) as ledger:
        entry = rotate_log_key(ledger, identity=identity, new_key=new_key, requested_by="operator")
    if split:
        home.log_key_path.rename(home.previous_log_key_path)
        public_key_path(home.key_dir, LOG_KEY_NAME).rename(
            public_key_path(home.key_dir, PREVIOUS_LOG_KEY_NAME)
        )
    staged.rename(home.log_key_path)
    public_key_path(home.key_dir, "log.next").rename(public_key_path(home.key_dir, LOG_KEY_NAME))
    return {
        "seq": entry.seq,
        "log_key_id": new_key.public.key_id,
        "previous_log_key_id": outgoing.public.key_id,
        "identity_key_id": identity.public.key_id,
    }


def retire_coordinator_log_key(
    where: Path | CoordinatorHome, *, identity: SigningKey
) -> dict[str, str | int]:
    """End the overlap of the coordinator's previous log key: the identity retires it.

    Raises
    ------
    ConfigError
        If no old log key is in its overlap.
    SignatureError, InputError
        If ``identity`` is not the log's identity key.
    """
    from veracity.ledger.log_key import retire_log_key

    home = where if isinstance(where, CoordinatorHome) else CoordinatorHome.load(where)
    current = _log_key(home)
    with Ledger.open(home.db_url, root_key=current, checkpoint_every=0) as ledger:
        overlap = [k for k in ledger.log_keys_at(ledger.size()) if k != current.public]
        if not overlap:
            raise ConfigError("no old log key is in its overlap: nothing to retire")
        retired = [
            retire_log_key(ledger, identity=identity, key_id=k.key_id, requested_by="operator")
            for k in overlap
        ]
    home.previous_log_key_path.unlink(missing_ok=True)
    public_key_path(home.key_dir, PREVIOUS_LOG_KEY_NAME).unlink(missing_ok=True)
    return {
        "seq": retired[-1].seq,
        "retired_log_key_id": " ".join(k.key_id for k in overlap),
    }
