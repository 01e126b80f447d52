"""The coordinator's service layer: sites, studies, runs and released models.

Everything the admin API, the CLI, the demo and the ServerApp do to the federation goes
through :class:`Coordinator`, and every state change it makes is a ledger event. Methods
that change state take an optional ``session`` (from :meth:`Coordinator.transaction`) so
that a caller's own rows and the ledger entry commit or roll back together.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from veracity import __version__
from veracity.crypto.keys import (
    SigningKey,
    VerifyKey,
    generate_signing_key,
    load_signing_key,
    private_key_path,
    write_key_pair,
)
from veracity.crypto.tls import create_tls_material
from veracity.errors import (
    ApprovalMissing,
    ConfigError,
    Conflict,
    InputError,
    NotFound,
    TransportError,
)
from veracity.ledger.canonical import canonical_hash
from veracity.ledger.entry import Entry
from veracity.ledger.events import ROOT_ACTOR
from veracity.ledger.ledger import Ledger
from veracity.server.control import ControlClient, RunSummary
from veracity.server.fab import build_fab
from veracity.server.superlink import CoordinatorPaths
from veracity.tasks.study import Study, parse_study

__all__ = ["Coordinator", "CoordinatorConfig", "EnrolledSite", "SITE_STATEMENT_KINDS"]

log = logging.getLogger(__name__)

ROOT_KEY_NAME = "root"
SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")

#: Statements a site signs on its own machine and the coordinator records for it.
SITE_STATEMENT_KINDS = frozenset(
    {
        "dataset.registered",
        "study.approved",
        "study.refused",
        "budget.refused",
        "approval.missing",
        "checkpoint.cosigned",
        "note.recorded",
    }
)


@dataclass(frozen=True)
class CoordinatorConfig:
    """``coordinator.json``: what a coordinator's processes need to find each other."""

    db_url: str
    superlink_address: str
    checkpoint_every: int = 100

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "db_url": self.db_url,
            "superlink_address": self.superlink_address,
            "checkpoint_every": self.checkpoint_every,
        }

    @classmethod
    def load(cls, path: Path) -> CoordinatorConfig:
        """Read ``coordinator.json``.

        Raises
        ------
        ConfigError
            If the file is missing or malformed.
        """
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                db_url=str(data["db_url"]),
                superlink_address=str(data["superlink_address"]),
                checkpoint_every=int(data.get("checkpoint_every", 100)),
            )
        except FileNotFoundError as err:
            raise ConfigError(f"{path} not found; run: veracity server init") from err
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{path} is malformed: {err}") from err


@dataclass(frozen=True)
class EnrolledSite:
    """A site the coordinator has enrolled."""

    name: str
    key_id: str
    node_id: int | None
    seq: int


def _now_text(now: datetime | None) -> str:
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour a run's results depend on."""
    versions = {"veracity": __version__}
    for name in ("flwr", "torch", "opacus", "dp-accounting", "tenseal", "numpy"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


class Coordinator:
    """Sites, studies, runs and models, each change recorded in the ledger."""

    def __init__(
        self,
        paths: CoordinatorPaths,
        config: CoordinatorConfig,
        ledger: Ledger,
        root_key: SigningKey,
    ) -> None:
        self.paths = paths
        self.config = config
        self.ledger = ledger
        self.root_key = root_key
        #: Seconds allowed for each SuperLink Control API call.
        self.control_timeout = 10.0

    # ------------------------------------------------------------------ set-up
    @classmethod
    def init(
        cls,
        data_dir: Path,
        *,
        db_url: str | None = None,
        superlink_port: int = 9093,
        now: datetime | None = None,
    ) -> Coordinator:
        """Create a coordinator: root key, CA and SuperLink certificate, ledger genesis.

        Existing keys and certificates are kept (never overwritten), so running it twice
        is safe.

        Raises
        ------
        ConfigError
            If the database cannot be created or holds another root's ledger.
        """
        paths = CoordinatorPaths(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        root_path = private_key_path(paths.key_dir, ROOT_KEY_NAME)
        if root_path.exists():
            root_key = load_signing_key(root_path)
        else:
            root_key = generate_signing_key()
            write_key_pair(paths.key_dir, ROOT_KEY_NAME, root_key)
        if not paths.tls.exist():
            create_tls_material(paths.data_dir / "tls", now=now)
        config = CoordinatorConfig(
            db_url=db_url or paths.db_url, superlink_address=f"127.0.0.1:{superlink_port}"
        )
        ledger = Ledger.init(
            config.db_url, root_key=root_key, now=now, checkpoint_every=config.checkpoint_every
        )
        (data_dir / "coordinator.json").write_text(
            json.dumps(config.to_json(), indent=2), encoding="utf-8"
        )
        return cls(paths, config, ledger, root_key)

    @classmethod
    def open(cls, data_dir: Path) -> Coordinator:
        """Open an initialised coordinator.

        Raises
        ------
        ConfigError
            If ``data_dir`` was not initialised or its ledger does not open.
        """
        paths = CoordinatorPaths(data_dir)
        config = CoordinatorConfig.load(data_dir / "coordinator.json")
        root_key = load_signing_key(private_key_path(paths.key_dir, ROOT_KEY_NAME))
        ledger = Ledger.open(
            config.db_url, root_key=root_key, checkpoint_every=config.checkpoint_every
        )
        return cls(paths, config, ledger, root_key)

    def close(self) -> None:
        """Release the database connections."""
        self.ledger.close()

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transaction(self) -> AbstractContextManager[Session]:
        """A session holding the ledger's write lock; pass it as ``session=``."""
        return self.ledger.transaction()

    @contextmanager
    def control(self, *, timeout: float | None = None) -> Iterator[ControlClient]:
        """A Control API client for this coordinator's SuperLink.

        Each call it makes times out after ``timeout`` seconds (default
        :attr:`control_timeout`).
        """
        client = ControlClient(
            self.config.superlink_address,
            ca_cert=self.paths.tls.ca_cert,
            timeout=self.control_timeout if timeout is None else timeout,
        )
        try:
            yield client
        finally:
            client.close()

    def _append_root(
        self, kind: str, payload: dict[str, Any], *, session: Session | None = None
    ) -> Entry:
        return self.ledger.append(kind, ROOT_ACTOR, payload, signer=self.root_key, session=session)

    # ------------------------------------------------------------------- sites
    def site_key(self, site: str) -> VerifyKey:
        """The Ed25519 key ``site`` holds now.

        Raises
        ------
        InputError
            If the site is not enrolled (or its key was revoked).
        """
        record = self.ledger.key_at(site)
        if record is None:
            raise NotFound(f"site {site!r} is not enrolled")
        return record.key

    def enrolment(self, site: str) -> dict[str, Any]:
        """The payload of the site's latest ``key.enrolled`` entry.

        Raises
        ------
        InputError
            If the site was never enrolled.
        """
        found = None
        for entry in self.ledger.iter_entries(kind="key.enrolled"):
            if entry.payload.get("name") == site:
                found = entry.payload
        if found is None:
            raise NotFound(f"site {site!r} is not enrolled")
        return found

    def sites(self) -> list[dict[str, Any]]:
        """Every enrolled site with its current key id (None once revoked)."""
        names: dict[str, dict[str, Any]] = {}
        for entry in self.ledger.iter_entries(kind="key.enrolled"):
            payload = entry.payload
            if payload.get("role") != "site":
                continue
            names[payload["name"]] = {
                "name": payload["name"],
                "enrolled_seq": entry.seq,
                "valid_from": payload["valid_from"],
            }
        for item in names.values():
            record = self.ledger.key_at(item["name"])
            item["key_id"] = record.key_id if record is not None else None
        return [names[name] for name in sorted(names)]

    def enrol_site(
        self,
        name: str,
        *,
        public_key_pem: str,
        supernode_public_key: str,
        register_node: bool = True,
        session: Session | None = None,
        now: datetime | None = None,
    ) -> EnrolledSite:
        """Enrol a site: record its signing key and register its SuperNode key.

        The SuperNode key is registered with the SuperLink (Flower's SuperNode
        authentication) before the ledger entry is written; if the entry cannot be
        written, the registration is withdrawn.

        Raises
        ------
        InputError
            If the name or a key is malformed, or the site is already enrolled.
        TransportError
            If the SuperLink refuses or does not answer.
        """
        if not SITE_NAME.fullmatch(name) or name == ROOT_ACTOR:
            raise InputError("site names are 1-63 lowercase letters, digits and '-'")
        public_key = VerifyKey.from_pem(public_key_pem)
        if self.ledger.key_at(name) is not None:
            raise Conflict(f"site {name!r} is already enrolled")
        payload = {
            "name": name,
            "role": "site",
            "public_key": public_key.pem(),
            "valid_from": _now_text(now),
            "supernode_public_key": supernode_public_key.strip(),
        }
        node_id: int | None = None
        if register_node:
            with self.control() as control:
                node_id = control.register_node(supernode_public_key.encode(), name=name)
        try:
            entry = self._append_root("key.enrolled", payload, session=session)
        except BaseException:  # undo the registration whatever stopped the append
            if node_id is not None:
                self._unregister_quietly(node_id)
            raise
        return EnrolledSite(name=name, key_id=public_key.key_id, node_id=node_id, seq=entry.seq)

    def register_supernode(self, name: str, supernode_public_key: str) -> int:
        """Register a site's SuperNode key with the SuperLink; returns its node id.

        For callers that record ``key.enrolled`` in their own transaction
        (``enrol_site(..., register_node=False, session=...)``) and tell the SuperLink
        last, just before committing: Flower keeps a withdrawn key as "unregistered" and
        refuses to register it again, so the SuperLink should only hear of an enrolment
        that is about to commit.

        Raises
        ------
        InputError
            If the key is not an OpenSSH ECDSA key on a NIST curve.
        TransportError
            If the SuperLink refuses or does not answer.
        """
        with self.control() as control:
            return control.register_node(supernode_public_key.strip().encode(), name=name)

    def withdraw_node(self, node_id: int) -> None:
        """Withdraw a SuperNode registration, best effort (a failed enrolment's undo)."""
        self._unregister_quietly(node_id)

    def revoke_site_key(self, name: str, *, reason: str, session: Session | None = None) -> Entry:
        """Revoke the key ``name`` holds now; its later signatures are refused.

        Raises
        ------
        InputError
            If the site holds no key.
        """
        record = self.ledger.key_at(name)
        if record is None or name == ROOT_ACTOR:
            raise InputError(f"{name!r} holds no site key to revoke")
        return self._append_root(
            "key.revoked",
            {"name": name, "key_id": record.key_id, "reason": reason},
            session=session,
        )

    def _unregister_quietly(self, node_id: int) -> None:
        try:
            with self.control() as control:
                control.unregister_node(node_id)
        except TransportError as err:  # best effort; the original error matters more
            log.warning("could not withdraw SuperNode %s: %s", node_id, err)

    # -------------------------------------------------------------- statements
    def record_statement(
        self,
        kind: str,
        site: str,
        payload: dict[str, Any],
        signature: str,
        *,
        session: Session | None = None,
    ) -> Entry:
        """Record a statement a site signed on its own machine.

        Raises
        ------
        InputError
            If the kind is not a site statement, the payload names another site, or an
            approval does not fit the study (unknown study, site not in it, cap above the
            study's, dataset not registered by the site).
        SignatureError
            If the site did not sign it.
        """
        if kind not in SITE_STATEMENT_KINDS:
            raise InputError(f"{kind!r} is not a statement a site can make")
        if "site" in payload and payload["site"] != site:
            raise InputError(f"the statement names site {payload['site']!r}, not {site!r}")
        if kind in {"study.approved", "study.refused"}:
            study = self.study(str(payload.get("study_hash", "")))
            if site not in study.epsilon_caps:
                raise InputError(f"study {study.study_id} does not include site {site!r}")
            if kind == "study.approved":
                cap = float(payload.get("epsilon_cap", 0.0))
                if cap > study.epsilon_caps[site]:
                    raise InputError(
                        f"approved epsilon {cap} exceeds the study's cap "
                        f"{study.epsilon_caps[site]} for {site}"
                    )
                dataset_id = str(payload.get("dataset_id", ""))
                if self.dataset(site, dataset_id) is None:
                    raise InputError(f"{site} has not registered dataset {dataset_id!r}")
        return self.ledger.append(kind, site, payload, signature=signature, session=session)

    def dataset(self, site: str, dataset_id: str) -> dict[str, Any] | None:
        """The latest ``dataset.registered`` payload of ``site`` for ``dataset_id``."""
        found = None
        for entry in self.ledger.iter_entries(kind="dataset.registered", actor=site):
            if entry.payload.get("dataset_id") == dataset_id:
                found = entry.payload
        return found

    def datasets(self) -> list[dict[str, Any]]:
        """Every registered dataset (latest registration per site and id)."""
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        for entry in self.ledger.iter_entries(kind="dataset.registered"):
            latest[(entry.actor, entry.payload["dataset_id"])] = {**entry.payload, "seq": entry.seq}
        return [latest[key] for key in sorted(latest)]

    # ----------------------------------------------------------------- studies
    def propose_study(self, document: dict[str, Any], *, session: Session | None = None) -> Study:
        """Record a new study; its code hash is the FAB this coordinator will submit.

        Raises
        ------
        InputError
            If the document is invalid, names a code hash other than this coordinator's
            FAB, names sites that are not enrolled, or was proposed before.
        """
        fab_hash = build_fab().fab_hash
        document = dict(document)
        given = document.setdefault("code_hash", fab_hash)
        if given != fab_hash:
            raise InputError(f"code_hash must be this coordinator's app bundle hash {fab_hash}")
        study = parse_study(document)
        for site in study.epsilon_caps:
            if self.ledger.key_at(site) is None:
                raise InputError(f"site {site!r} in epsilon_caps is not enrolled")
        if self.find_study(study.study_hash) is not None:
            raise Conflict(f"study {study.study_hash} was already proposed")
        self._append_root(
            "study.proposed",
            {
                "study_id": study.study_id,
                "study_hash": study.study_hash,
                "study": study.to_document(),
                "code_hash": study.code_hash,
            },
            session=session,
        )
        return study

    def find_study(self, study_hash: str) -> Study | None:
        """The proposed study with this hash, if any."""
        for entry in self.ledger.iter_entries(kind="study.proposed"):
            if entry.payload.get("study_hash") == study_hash:
                return parse_study(entry.payload["study"])
        return None

    def study(self, study_hash: str) -> Study:
        """The proposed study with this hash.

        Raises
        ------
        InputError
            If no such study was proposed.
        """
        study = self.find_study(study_hash)
        if study is None:
            raise NotFound(f"no study {study_hash!r} was proposed")
        return study

    def studies(self) -> list[Study]:
        """Every proposed study, oldest first."""
        return [
            parse_study(e.payload["study"]) for e in self.ledger.iter_entries(kind="study.proposed")
        ]

    def decisions(self, study_hash: str) -> dict[str, dict[str, Any]]:
        """Each site's latest decision on a study: the payload plus ``kind`` and ``seq``."""
        latest: dict[str, dict[str, Any]] = {}
        for kind in ("study.approved", "study.refused"):
            for entry in self.ledger.iter_entries(kind=kind):
                if entry.payload.get("study_hash") != study_hash:
                    continue
                known = latest.get(entry.actor)
                if known is None or known["seq"] < entry.seq:
                    latest[entry.actor] = {**entry.payload, "kind": kind, "seq": entry.seq}
        return latest

    def approvals(self, study_hash: str) -> dict[str, dict[str, Any]]:
        """Sites whose latest decision approves the study and whose key is not revoked."""
        return {
            site: decision
            for site, decision in self.decisions(study_hash).items()
            if decision["kind"] == "study.approved" and self.ledger.key_at(site) is not None
        }

    # -------------------------------------------------------------------- runs
    def start_run(
        self,
        study_hash: str,
        *,
        poll_interval: float = 0.2,
        round_timeout: float = 600.0,
        node_wait: float = 120.0,
        session: Session | None = None,
    ) -> str:
        """Submit a run of an approved study to the SuperLink and record ``run.started``.

        With ``session``, ``run.started`` is appended in the caller's transaction; a
        caller whose transaction then fails should :meth:`withdraw_run` the run.

        Raises
        ------
        InputError
            If the study is unknown.
        ApprovalMissing
            If fewer sites approved it than the study's ``min_sites``.
        ConfigError
            If the installed Veracity's app bundle is not the code the sites approved.
        TransportError
            If the SuperLink refuses or does not answer.
        """
        study = self.study(study_hash)
        approved = self.approvals(study_hash)
        if len(approved) < study.min_sites:
            raise ApprovalMissing(
                f"{len(approved)} site(s) approved study {study.study_id}; "
                f"it needs {study.min_sites}"
            )
        fab = build_fab()
        if fab.fab_hash != study.code_hash:
            raise ConfigError(
                "this coordinator's Veracity differs from the code the sites approved "
                f"({fab.fab_hash[:12]} != {study.code_hash[:12]}); propose the study again"
            )
        config: dict[str, bool | int | float | str] = {
            "study-hash": study_hash,
            "coordinator-dir": str(self.paths.data_dir.resolve()),
            "poll-interval": poll_interval,
            "round-timeout": round_timeout,
            "node-wait": node_wait,
        }
        nonce = secrets.token_hex(32)
        seeds = {"model_seed": study.model_seed, "nonce": nonce}
        with self.control() as control:
            run_id = str(control.start_run(fab.content, config=config))
        runs_dir = self.paths.data_dir / "runs"
        runs_dir.mkdir(exist_ok=True)
        (runs_dir / f"{run_id}.seeds.json").write_text(json.dumps(seeds), encoding="utf-8")
        try:
            self._append_root(
                "run.started",
                {
                    "run_id": run_id,
                    "study_hash": study_hash,
                    "fab_hash": fab.fab_hash,
                    "config_hash": canonical_hash(config),
                    "package_versions": package_versions(),
                    "seed_commitment": canonical_hash(seeds),
                },
                session=session,
            )
        except BaseException:  # stop the submitted run whatever stopped the append
            self.withdraw_run(run_id)
            raise
        return run_id

    def withdraw_run(self, run_id: str) -> None:
        """Stop a run on the SuperLink, best effort (a failed start's undo)."""
        try:
            with self.control() as control:
                control.stop_run(int(run_id))
        except TransportError as err:  # best effort; the original error matters more
            log.warning("could not stop run %s: %s", run_id, err)

    def run_started(self, run_id: str) -> dict[str, Any] | None:
        """The ``run.started`` payload of ``run_id``, if recorded."""
        for entry in self.ledger.iter_entries(kind="run.started"):
            if entry.payload.get("run_id") == run_id:
                return {**entry.payload, "seq": entry.seq, "ts": entry.ts}
        return None

    def run_finished(self, run_id: str) -> dict[str, Any] | None:
        """The ``run.finished`` payload of ``run_id``, if recorded."""
        for entry in self.ledger.iter_entries(kind="run.finished"):
            if entry.payload.get("run_id") == run_id:
                return {**entry.payload, "seq": entry.seq, "ts": entry.ts}
        return None

    def wait_run_started(self, run_id: str, *, timeout: float) -> dict[str, Any] | None:
        """Poll the ledger until ``run.started`` of ``run_id`` appears or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.run_started(run_id)
            if found is not None or time.monotonic() >= deadline:
                return found
            time.sleep(0.2)

    def rounds(self, run_id: str) -> list[dict[str, Any]]:
        """The ``round.completed`` payloads of ``run_id``, in order."""
        return [
            {**e.payload, "seq": e.seq}
            for e in self.ledger.iter_entries(kind="round.completed")
            if e.payload.get("run_id") == run_id
        ]

    def runs(self) -> list[dict[str, Any]]:
        """Every run started through this coordinator, with its recorded outcome."""
        out = []
        for entry in self.ledger.iter_entries(kind="run.started"):
            run_id = entry.payload["run_id"]
            finished = self.run_finished(run_id)
            out.append(
                {
                    "run_id": run_id,
                    "study_hash": entry.payload["study_hash"],
                    "started_seq": entry.seq,
                    "started_at": entry.ts,
                    "finished": finished,
                }
            )
        return out

    def run_status(self, run_id: str) -> RunSummary:
        """What the SuperLink says about ``run_id``.

        Raises
        ------
        NotFound
            If the SuperLink has no such run.
        TransportError
            If the SuperLink does not answer in time.
        """
        with self.control() as control:
            return control.run(int(run_id))

    def run_logs(self, run_id: str, *, after: float = 0.0, wait: float = 2.0) -> tuple[str, float]:
        """Log text of a run started here, since ``after``; returns ``(text, latest)``.

        The SuperLink streams logs while a run lives; this reads for at most ``wait``
        seconds. Pass the returned ``latest`` as ``after`` to continue.

        Raises
        ------
        NotFound
            If the run was not started through this coordinator.
        TransportError
            If the SuperLink does not answer.
        """
        if self.run_started(run_id) is None:
            raise NotFound(f"run {run_id} was not started through this coordinator")
        with self.control() as control:
            return control.logs(int(run_id), after=after, wait=wait)

    def stop_run(self, run_id: str, *, session: Session | None = None) -> bool:
        """Stop a run on the SuperLink and record ``run.finished`` (stopped) if it had none.

        Raises
        ------
        InputError
            If the run was not started through this coordinator.
        """
        started = self.run_started(run_id)
        if started is None:
            raise NotFound(f"run {run_id} was not started through this coordinator")
        with self.control() as control:
            accepted = control.stop_run(int(run_id))
        if accepted and self.run_finished(run_id) is None:
            self.finish_run(
                run_id,
                started["study_hash"],
                status="stopped",
                reason="stopped by the coordinator's admin",
                rounds_completed=len(self.rounds(run_id)),
                model_hash=None,
                session=session,
            )
        return accepted

    def finish_run(
        self,
        run_id: str,
        study_hash: str,
        *,
        status: str,
        reason: str,
        rounds_completed: int,
        model_hash: str | None,
        session: Session | None = None,
    ) -> Entry:
        """Record ``run.finished`` and sign a checkpoint."""
        entry = self._append_root(
            "run.finished",
            {
                "run_id": run_id,
                "study_hash": study_hash,
                "status": status,
                "reason": reason[:2000],
                "rounds_completed": rounds_completed,
                "model_hash": model_hash,
            },
            session=session,
        )
        if session is None:
            self.ledger.checkpoint()
        return entry

    # -------------------------------------------------------------- for the app
    def seeds_of(self, run_id: str) -> dict[str, Any] | None:
        """The seeds committed to in ``run.started`` (kept by the coordinator)."""
        path = self.paths.data_dir / "runs" / f"{run_id}.seeds.json"
        if not path.exists():
            return None
        seeds: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return seeds

    def fingerprint(self) -> str:
        """A short identifier of this coordinator's root key."""
        return hashlib.sha256(self.root_key.public.raw).hexdigest()[:16]
