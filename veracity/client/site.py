"""A site directory: its settings (``site.json``), keys and store, and how it signs statements.

Layout of ``DIR`` after ``veracity site init --name NAME --data-dir DIR``::

    DIR/site.json                 settings (this module's SiteConfig), written last
    DIR/keys/NAME.pem  NAME.pub   the site's Ed25519 signing key (0600) and public key
    DIR/keys/NAME.next.pem (.pub) a new key waiting for its rotation (``site rotate-key``)
    DIR/keys/retired/             keys replaced by a completed rotation (kept, never used)
    DIR/keys/supernode(.pub)      the Flower SuperNode key, ECDSA P-384, OpenSSH format
    DIR/site.db                   the SQLite store (datasets, decisions, spends, outbox)
    DIR/log_id                    the coordinator's log id (64 hex), kept from enrolment on

Every signature the site makes for the coordinator's ledger (statements, training and
analysis receipts) is bound to the log id (:mod:`veracity.ledger.statement`). The site
learns it when it enrols (``veracity site enrolment-proof --log-id``) and keeps it: it never
signs for another log afterwards. Before that it signs for no log (32 zero bytes, which no
ledger accepts) and re-signs its queued statements once it learns the log.

A directory is a site once ``site.json`` exists; ``init`` writes it last, and removes what
it created if any earlier step fails.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from veracity.client.store import SignedStatement, SiteStore
from veracity.contracts.base import Payload, SitePayload
from veracity.contracts.handover import KeyHandover
from veracity.core.fields import SiteName, check_site_name, format_timestamp
from veracity.crypto.keys import (
    SigningKey,
    generate_signing_key,
    load_signing_key,
    private_key_path,
    public_key_path,
    write_key_pair,
)
from veracity.crypto.supernode import SUPERNODE_KEY_NAME, write_supernode_key_pair
from veracity.errors import ConfigError, InputError, SignatureError
from veracity.ledger.possession import sign_enrolment, sign_rotation
from veracity.ledger.statement import (
    NO_LOG_ID,
    log_id_bytes,
    sign_bound,
    sign_statement,
    verify_statement,
)
from veracity.ledger.witness import write_atomic

__all__ = [
    "SITE_FORMAT",
    "Clock",
    "utc_now",
    "SiteConfig",
    "SitePaths",
    "Site",
    "init_site",
]

log = logging.getLogger(__name__)

SITE_FORMAT = "veracity.site.v1"

#: Returns the current time (timezone-aware); injected so that tests are deterministic.
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The current UTC time."""
    return datetime.now(UTC)


class SiteConfig(BaseModel):
    """The settings in ``site.json``.

    ``torch_threads``: intra-op threads for training (1 by default: on a busy small machine
    two threads ran 10-40 times slower than one). ``secure_mode``: refuse injected seeds
    (noise and samples always come from ChaCha20 keyed from the OS; see
    :mod:`veracity.client.noise`). ``clipping``: how per-sample gradients
    are clipped (see :mod:`veracity.client.training`). ``share_train_loss``: include the
    mean training loss in replies; it is an aggregate of the private data that the DP
    guarantee does not cover, so it is off unless the operator turns it on.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["veracity.site.v1"] = "veracity.site.v1"
    name: SiteName
    created_at: str
    torch_threads: int = Field(default=1, ge=1, le=256)
    secure_mode: bool = False
    clipping: Literal["linear-ghost", "opacus-hooks"] = "linear-ghost"
    share_train_loss: bool = False
    default_epsilon_budget: float = Field(default=10.0, gt=0, le=1000)
    default_delta: float = Field(default=1e-5, gt=0, lt=1)
    min_rows: int = Field(default=50, ge=2, le=10_000_000)
    #: Analysis answers: count cells whose noisy value falls below this are released as 0
    #: (post-processing, after the noise; 0 turns suppression off).
    min_cell_count: float = Field(default=0.0, ge=0, le=1_000_000)


@dataclass(frozen=True)
class SitePaths:
    """Where a site's files live."""

    root: Path
    name: str

    @property
    def config(self) -> Path:
        """``site.json``."""
        return self.root / "site.json"

    @property
    def keys(self) -> Path:
        """The key directory."""
        return self.root / "keys"

    @property
    def signing_key(self) -> Path:
        """The Ed25519 private key."""
        return private_key_path(self.keys, self.name)

    @property
    def public_key(self) -> Path:
        """The Ed25519 public key."""
        return public_key_path(self.keys, self.name)

    @property
    def next_signing_key(self) -> Path:
        """The new Ed25519 private key of a rotation not completed yet."""
        return private_key_path(self.keys, f"{self.name}.next")

    @property
    def next_public_key(self) -> Path:
        """The new Ed25519 public key of a rotation not completed yet."""
        return public_key_path(self.keys, f"{self.name}.next")

    @property
    def retired_keys(self) -> Path:
        """Keys replaced by completed rotations."""
        return self.keys / "retired"

    @property
    def supernode_key(self) -> Path:
        """The SuperNode private key (OpenSSH)."""
        return self.keys / SUPERNODE_KEY_NAME

    @property
    def supernode_public_key(self) -> Path:
        """The SuperNode public key (OpenSSH line)."""
        return self.keys / f"{SUPERNODE_KEY_NAME}.pub"

    @property
    def log_id(self) -> Path:
        """The log id of the coordinator's ledger this site signs for (absent before)."""
        return self.root / "log_id"

    @property
    def database(self) -> Path:
        """The SQLite store."""
        return self.root / "site.db"

    @property
    def database_url(self) -> str:
        """SQLAlchemy URL of the store."""
        return f"sqlite:///{self.database.resolve()}"


def _read_config(root: Path) -> SiteConfig:
    path = root / "site.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ConfigError(
            f"{root} is not a site directory (no site.json); run: veracity site init"
        ) from err
    try:
        return SiteConfig.model_validate(json.loads(text))
    except (json.JSONDecodeError, ValidationError) as err:
        raise ConfigError(f"{path} is not a valid site configuration: {err}") from err


class Site:
    """An opened site directory: settings, signing key and store."""

    def __init__(
        self,
        paths: SitePaths,
        config: SiteConfig,
        key: SigningKey,
        store: SiteStore,
        *,
        clock: Clock = utc_now,
    ) -> None:
        self.paths = paths
        self.config = config
        self.key = key
        self.store = store
        self._clock = clock
        self._log_id: bytes | None = None

    @classmethod
    def open(cls, root: Path, *, clock: Clock = utc_now, database_url: str | None = None) -> Site:
        """Open the site in ``root``.

        Parameters
        ----------
        root
            The site directory.
        clock
            Source of timestamps (injected by tests).
        database_url
            Use this store instead of ``root/site.db`` (the store contract tests run the
            site on PostgreSQL this way).

        Raises
        ------
        ConfigError
            If ``root`` is not a site, its key is missing or readable by others, or the
            store cannot be opened.
        """
        config = _read_config(root)
        paths = SitePaths(root, config.name)
        key = load_signing_key(paths.signing_key)
        store = SiteStore.open(database_url or paths.database_url)
        return cls(paths, config, key, store, clock=clock)

    @property
    def name(self) -> str:
        """The site's enrolled name (the ``actor`` of its statements)."""
        return self.config.name

    def now(self) -> str:
        """The current time as an RFC 3339 UTC string."""
        return format_timestamp(self._clock())

    @property
    def log_id(self) -> bytes:
        """The log id this site signs for (``DIR/log_id``; 32 zero bytes before enrolment).

        Raises
        ------
        ConfigError
            If ``DIR/log_id`` does not hold a log id.
        """
        if self._log_id is None:
            try:
                text = self.paths.log_id.read_text(encoding="ascii").strip()
            except FileNotFoundError:
                return NO_LOG_ID  # read again next time: enrolment may write it meanwhile
            try:
                self._log_id = log_id_bytes(text)
            except InputError as err:
                raise ConfigError(f"{self.paths.log_id} does not hold a log id: {err}") from err
        return self._log_id

    def bind_log(self, log_id: str) -> int:
        """Sign for the log ``log_id`` from now on; returns how many statements were re-signed.

        The first call keeps the log id in ``DIR/log_id``; every call re-signs for it the
        statements still waiting in the outbox that were signed for no log (queued before
        the site knew its log). Later calls for another log are refused.

        Raises
        ------
        InputError
            If ``log_id`` is not 64 lowercase hex characters.
        ConfigError
            If this site already signs for another log (a site belongs to one log; a
            coordinator asking it to sign for another is refused).
        """
        wanted = log_id_bytes(log_id)
        current = self.log_id
        if current not in (NO_LOG_ID, wanted):
            raise ConfigError(
                f"site {self.name} signs for the log {current.hex()}, not {wanted.hex()}: "
                "a site belongs to one log (initialise a new site for another network)"
            )
        if current == NO_LOG_ID:
            write_atomic(self.paths.log_id, (wanted.hex() + "\n").encode("ascii"))
            self._log_id = wanted
            log.info("site %s signs for the log %s from now on", self.name, wanted.hex())

        def resign(statement: SignedStatement) -> str | None:
            try:
                verify_statement(
                    self.key.public,
                    statement.kind,
                    statement.actor,
                    statement.payload,
                    statement.signature,
                    log_id=NO_LOG_ID,
                )
            except SignatureError:
                return None  # signed for the log already (or not by this key): left as it is
            return sign_statement(
                self.key, statement.kind, statement.actor, statement.payload, log_id=wanted
            )

        resigned = self.store.resign_pending(resign)
        if resigned:
            log.info("site %s re-signed %d queued statements for its log", self.name, resigned)
        return resigned

    def sign(self, statement: Payload) -> SignedStatement:
        """Sign ``statement`` (a contract payload) for the coordinator's ledger (its log).

        Raises
        ------
        InputError
            If it is a site statement about another site.
        """
        if isinstance(statement, SitePayload) and statement.site != self.name:
            raise InputError(f"site {self.name!r} cannot sign a statement about {statement.site!r}")
        body = statement.to_json()
        signature = sign_statement(self.key, statement.KIND, self.name, body, log_id=self.log_id)
        return SignedStatement(
            kind=statement.KIND, actor=self.name, payload=body, signature=signature
        )

    def sign_receipt(self, domain: str, document: dict[str, Any]) -> str:
        """Sign a receipt ``document`` under ``domain`` for the coordinator's log; base64."""
        return sign_bound(self.key, domain, self.log_id, document)

    def enrolment_proof(self, log_id: str) -> str:
        """The site key's proof of possession for enrolling in the log ``log_id``.

        The coordinator's ``key.enrolled`` (or ``key.recovered``) carries it, so the ledger
        shows that the site itself holds the enrolled key. From here on the site signs for
        this log (:meth:`bind_log`).

        Raises
        ------
        InputError, ConfigError
            As :meth:`bind_log` documents.
        """
        self.bind_log(log_id)
        return sign_enrolment(self.key, log_id=log_id, name=self.name, role="site")

    def next_key(self) -> SigningKey | None:
        """The new key of a rotation not completed yet (``None`` when there is none).

        Raises
        ------
        ConfigError, CryptoError
            If the key file is unreadable or readable by others.
        """
        if not self.paths.next_signing_key.exists():
            return None
        return load_signing_key(self.paths.next_signing_key)

    def rotation_handover(self, log_id: str) -> KeyHandover:
        """Hand this site's name over to a new key in the log ``log_id``.

        The new key is made on first use and kept beside the current one
        (``keys/NAME.next.pem``); asked again, the same new key is handed over, so the
        command can be repeated until the admin records the rotation. The site keeps signing
        with its current key until :meth:`complete_rotation`.
        """
        self.bind_log(log_id)
        incoming = self.next_key()
        if incoming is None:
            incoming = generate_signing_key()
            write_key_pair(self.paths.keys, f"{self.name}.next", incoming)
        return KeyHandover(
            log_id=log_id,
            name=self.name,
            key_id=self.key.public.key_id,
            new_key_id=incoming.public.key_id,
            public_key=incoming.public.pem(),
            proof=sign_enrolment(incoming, log_id=log_id, name=self.name, role="site"),
            outgoing_signature=sign_rotation(
                self.key, log_id=log_id, name=self.name, incoming=incoming.public
            ),
        )

    def complete_rotation(self) -> str:
        """Sign with the new key from now on, once the coordinator recorded ``key.rotated``.

        The outgoing key moves to ``keys/retired/`` (kept, never used again: the ledger
        refuses its signatures after the rotation). Returns the new key id.

        Raises
        ------
        ConfigError
            If no rotation is waiting (run ``veracity site rotate-key`` first).
        """
        incoming = self.next_key()
        if incoming is None:
            raise ConfigError(
                f"site {self.name} has no new key waiting; run: veracity site rotate-key"
            )
        retired = self.paths.retired_keys
        retired.mkdir(mode=0o700, exist_ok=True)
        stem = f"{self.name}.{self.key.public.key_id[:16]}"
        for current, kept in (
            (self.paths.signing_key, private_key_path(retired, stem)),
            (self.paths.public_key, public_key_path(retired, stem)),
        ):
            if not kept.exists():
                os.link(current, kept)
        os.replace(self.paths.next_signing_key, self.paths.signing_key)
        os.replace(self.paths.next_public_key, self.paths.public_key)
        self.key = incoming
        log.info("site %s signs with its new key %s", self.name, incoming.public.key_id[:16])
        return incoming.public.key_id

    def close(self) -> None:
        """Close the store."""
        self.store.close()

    def __enter__(self) -> Site:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def init_site(
    root: Path,
    name: str,
    *,
    torch_threads: int = 1,
    secure_mode: bool = False,
    default_epsilon_budget: float = 10.0,
    default_delta: float = 1e-5,
    min_rows: int = 50,
    clock: Clock = utc_now,
    prompt_passphrase: bool = False,
) -> SiteConfig:
    """Create a site in ``root``: keys, store and ``site.json``.

    With ``prompt_passphrase`` (``veracity site init``) a person at a terminal is asked
    for the site key's passphrase when ``VERACITY_KEY_PASSPHRASE`` is not set.

    Raises
    ------
    ConfigError
        If ``root`` already holds a site or any of its files, or a setting is invalid.
    """
    try:
        check_site_name(name)  # the coordinator enrols only such names
    except InputError as err:
        raise ConfigError(str(err)) from err
    try:
        config = SiteConfig(
            name=name,
            created_at=format_timestamp(clock()),
            torch_threads=torch_threads,
            secure_mode=secure_mode,
            default_epsilon_budget=default_epsilon_budget,
            default_delta=default_delta,
            min_rows=min_rows,
        )
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or "setting"
        raise ConfigError(f"invalid site setting {field}: {first.get('msg', 'invalid')}") from err
    paths = SitePaths(root, name)
    existing = [
        path
        for path in (
            paths.config,
            paths.signing_key,
            paths.public_key,
            paths.supernode_key,
            paths.supernode_public_key,
            paths.database,
        )
        if path.exists()
    ]
    if existing:
        raise ConfigError(
            f"{root} already holds {existing[0].name}; a site is initialised only once"
        )
    created: list[Path] = []
    root_existed = root.exists()
    keys_existed = paths.keys.exists()
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        created += list(
            write_key_pair(paths.keys, name, generate_signing_key(), prompt=prompt_passphrase)
        )
        created += list(write_supernode_key_pair(paths.keys, comment=name))
        # The store holds the commitment salts: readable by the site's user only.
        fd = os.open(paths.database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        created.append(paths.database)
        SiteStore.open(paths.database_url).close()
        for suffix in ("-wal", "-shm"):
            created.append(paths.database.with_name(paths.database.name + suffix))
        fd = os.open(paths.config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(config.model_dump(mode="json"), indent=2, sort_keys=True))
            handle.write("\n")
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        if not keys_existed and paths.keys.exists() and not any(paths.keys.iterdir()):
            paths.keys.rmdir()
        if not root_existed and root.exists() and not any(root.iterdir()):
            root.rmdir()
        raise
    log.info("initialised site %s in %s", name, root)
    return config
