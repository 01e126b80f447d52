"""Fixtures for the admin API: sites with real keys, a real SuperLink, an app per database.

``superlink`` starts one real SuperLink (TLS, SuperNode authentication) per test module on
an ephemeral port; each coordinator a test makes shares its TLS material, so the same
SuperLink serves coordinators on SQLite and on PostgreSQL. ``api`` is a running app
(FastAPI's TestClient, lifespan included) over a fresh coordinator on ``db_url`` with one
token per role, its SuperLink kept in memory (``InMemoryFederation``);
``api_with_superlink`` is the same over the real SuperLink.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.ledger.conftest import seeded_key
from tests.server.sites import Site, study_document, unique_site
from veracity.client.witness import SiteWitness, WitnessApi
from veracity.crypto.tls import create_tls_material
from veracity.ledger.witness import Witness
from veracity.ledger.witnessed import WitnessedLog, witness_name
from veracity.server.api.app import create_app
from veracity.server.api.serve import initialise
from veracity.server.api.settings import ApiSettings
from veracity.server.api.tokens import Role, TokenStore
from veracity.server.coordinator import (
    CoordinatorHome,
    CoordinatorService,
    Federation,
    InMemoryFederation,
    operator,
)
from veracity.server.superlink import SuperLinkOptions, start_superlink
from veracity.supervise import ProcessGroup, free_port

with warnings.catch_warnings():
    # Starlette's TestClient asks for httpx2 and touches a renamed anyio alias on import;
    # neither is installable or fixable here, and neither affects what is tested.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

__all__ = ["TestClient", "SETUP", "Site", "unique_site", "study_document"]

#: Who makes the changes a test sets up (through the service, not the API under test).
SETUP = operator("test-setup")


@dataclass(frozen=True)
class SuperLinkHandle:
    """A running SuperLink and the TLS material it serves with."""

    port: int
    tls_dir: Path


@pytest.fixture(scope="module")
def superlink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SuperLinkHandle]:
    """One real SuperLink (TLS, SuperNode auth) on an ephemeral port for the module."""
    base = tmp_path_factory.mktemp("superlink")
    create_tls_material(base / "tls")
    port = free_port()
    with ProcessGroup() as group:
        home = CoordinatorHome.at(base, superlink_port=port)
        start_superlink(home, SuperLinkOptions(port=port), group)
        yield SuperLinkHandle(port=port, tls_dir=base / "tls")


def make_coordinator(
    data_dir: Path, db_url: str, superlink: SuperLinkHandle | None = None
) -> CoordinatorService:
    """An initialised coordinator (ledger and API tables) on ``db_url``.

    With ``superlink``, it shares that SuperLink's TLS material and port; without, its
    SuperLink address points at a port where nothing listens.
    """
    if superlink is not None:
        shutil.copytree(superlink.tls_dir, data_dir / "tls")
        port = superlink.port
    else:
        port = free_port()
    return initialise(data_dir, db_url=db_url, superlink_port=port)


@dataclass
class Api:
    """A running admin API over a fresh coordinator, with a token per role."""

    client: TestClient
    data_dir: Path
    tokens: dict[str, str]
    site: Site
    other_site: Site

    @property
    def app(self) -> Any:
        """The FastAPI application."""
        return self.client.app

    @property
    def service(self) -> CoordinatorService:
        """The app's coordinator service (lifespan-created)."""
        service: CoordinatorService = self.client.app.state.service  # type: ignore[attr-defined]
        return service

    @property
    def token_store(self) -> TokenStore:
        """The app's token store."""
        tokens: TokenStore = self.client.app.state.tokens  # type: ignore[attr-defined]
        return tokens

    def headers(self, role: str | None) -> dict[str, str]:
        """Authorization headers of ``role``'s token (none for ``None``)."""
        if role is None:
            return {}
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def call(self, method: str, path: str, role: str | None, **kwargs: Any) -> Any:
        """One request as ``role``."""
        headers = {**self.headers(role), **kwargs.pop("headers", {})}
        return self.client.request(method, path, headers=headers, **kwargs)

    def enrol(self, site: Site) -> None:
        """Enrol ``site`` through the coordinator service (set-up, not the API under test)."""
        self.service.enrol_site(
            SETUP,
            site.name,
            public_key_pem=site.key.public.pem(),
            proof=site.enrolment_proof(self.service.ledger.log_id),
            supernode_public_key=site.supernode_key,
        )

    def register(self, site: Site, dataset_id: str = "cohort-1") -> None:
        """Record a dataset of ``site`` through the coordinator service (set-up)."""
        signed = site.signed("dataset.registered", site.dataset(dataset_id))
        self.service.record_statement(
            SETUP, "dataset.registered", site.name, signed["payload"], signed["signature"]
        )

    def approve(self, site: Site, study_hash: str) -> None:
        """Record ``site``'s approval of a study through the service (set-up)."""
        signed = site.signed("study.approved", site.approval(study_hash))
        self.service.record_statement(
            SETUP, "study.approved", site.name, signed["payload"], signed["signature"]
        )

    def propose(self, document: dict[str, Any]) -> str:
        """Propose a study through the service (set-up); its hash."""
        return self.service.propose_study(SETUP, document).value.study_hash


def _issue_tokens(coordinator: CoordinatorService) -> tuple[Site, Site, dict[str, str]]:
    """Two sites and a token per role (``other_site``: the second site's) on ``coordinator``."""
    site, other = unique_site("north"), unique_site("south")
    store = TokenStore(coordinator.ledger.engine)
    tokens: dict[str, str] = {}
    for role in Role:
        issued = store.create(
            role=role,
            name=f"{role.value}-user",
            site=site.name if role is Role.SITE else None,
            expires_in=timedelta(days=1),
        )
        tokens[role.value] = issued.token
    tokens["other_site"] = store.create(
        role=Role.SITE, name="other-site-user", site=other.name
    ).token
    return site, other, tokens


@dataclass(frozen=True)
class _Template:
    """A coordinator initialised once per test process (SQLite, no SuperLink) and its tokens."""

    data_dir: Path
    database: Path
    site: Site
    other: Site
    tokens: dict[str, str]


_TEMPLATE: list[_Template] = []


def _sqlite_path(db_url: str) -> Path:
    return Path(db_url.removeprefix("sqlite:///"))


def _copy_template(data_dir: Path, db_url: str) -> tuple[Site, Site, dict[str, str]]:
    """A copy of this process's template coordinator at ``data_dir`` on the SQLite ``db_url``.

    Keys, TLS material, migrations, the genesis entry and the tokens cost ~80 ms of CPU per
    coordinator; a copy of the files costs a few. Each copy is its own coordinator (its own
    files and database, a new SuperLink port where nothing listens); copies share the keys.
    """
    if not _TEMPLATE:
        base = Path(tempfile.mkdtemp(prefix="veracity-api-template-"))
        atexit.register(shutil.rmtree, base, ignore_errors=True)
        database = base / "veracity.db"
        with make_coordinator(base / "coordinator", f"sqlite:///{database}") as coordinator:
            site, other, tokens = _issue_tokens(coordinator)
        _TEMPLATE.append(_Template(base / "coordinator", database, site, other, tokens))
    template = _TEMPLATE[0]
    shutil.copytree(template.data_dir, data_dir)
    shutil.copy2(template.database, _sqlite_path(db_url))
    home = CoordinatorHome.load(data_dir)
    replace(home, db_url=db_url).with_superlink_port(free_port()).save()
    return replace(template.site), replace(template.other), dict(template.tokens)


def open_api(
    data_dir: Path,
    db_url: str,
    superlink: SuperLinkHandle | None = None,
    *,
    app_options: dict[str, Any] | None = None,
    in_memory: bool = True,
    **settings: Any,
) -> Iterator[Api]:
    """Initialise a coordinator, issue one token per role, serve the app.

    On SQLite without ``superlink`` the coordinator is a copy of the process's template
    (:func:`_copy_template`: the same keys and tokens, its own files and database).

    ``app_options`` go to ``create_app`` (``clock=``, ``rate_clock=``); the rest are
    :class:`ApiSettings` fields. Without ``superlink``, the app's SuperLink is an
    :class:`InMemoryFederation` unless ``in_memory`` is false (then the app talks to
    whatever listens at its configured SuperLink address).
    """
    options: dict[str, Any] = dict(app_options or {})
    if superlink is None and in_memory:
        federation: Federation = InMemoryFederation()
        options.setdefault("federation", federation)
    if superlink is None and db_url.startswith("sqlite:///"):
        site, other, store_tokens = _copy_template(data_dir, db_url)
    else:
        with make_coordinator(data_dir, db_url, superlink) as coordinator:
            site, other, store_tokens = _issue_tokens(coordinator)
    app = create_app(ApiSettings(data_dir=data_dir, **settings), **options)
    with TestClient(app) as client:
        yield Api(client, data_dir, store_tokens, site, other)


@pytest.fixture
def api(tmp_path: Path, db_url: str) -> Iterator[Api]:
    """The API over a fresh coordinator on each database (no SuperLink running)."""
    yield from open_api(tmp_path / "coordinator", db_url)


@pytest.fixture
def api_with_superlink(tmp_path: Path, db_url: str, superlink: SuperLinkHandle) -> Iterator[Api]:
    """The API over a fresh coordinator on each database, with the module's SuperLink."""
    yield from open_api(tmp_path / "coordinator", db_url, superlink)


# ---- Released models and encrypted queries ------------------------------------------


def release_model(
    api: Api,
    spec: Any,
    weights: Any,
    features: list[str],
    label: str,
    *,
    study_hash: str = "0" * 64,
) -> str:
    """Put a model in the registry and record ``model.released`` (as a run's release would)."""
    return release_through(api.service, spec, weights, features, label, study_hash=study_hash)


def release_through(
    service: CoordinatorService,
    spec: Any,
    weights: Any,
    features: list[str],
    label: str,
    *,
    study_hash: str = "0" * 64,
) -> str:
    """:func:`release_model` through any coordinator service (a live server's data too)."""
    from veracity.contracts.events import ModelReleased

    model_hash: str = service.registry.put(
        spec,
        weights,
        features=features,
        label=label,
        scaling=[(0.0, 1.0)] * len(features),
        card={"name": "bc-logistic", "intended_use": "tests"},
    )
    card_hash = service.registry.get(model_hash).card_hash
    service.release(
        SETUP,
        ModelReleased(
            model_hash=model_hash,
            run_id="1",
            study_hash=study_hash,
            model=spec.to_dict(),
            datasets=[],
            epsilon={},
            metrics={"accuracy": 0.95},
            card_hash=card_hash,
        ),
    )
    return model_hash


@dataclass(frozen=True)
class EncryptedQuery:
    """What a clinic sends: a public context and a request envelope for some patients."""

    context: bytes
    request: bytes
    secret: Any
    layout: Any
    batch_size: int


def encrypted_query(description: dict[str, Any], features: Any) -> EncryptedQuery:
    """Encrypt standardised ``features`` for the model ``description`` describes."""
    import numpy as np

    from veracity.client.predict import ModelDescription, plan_batches
    from veracity.he.contexts import SecretContext
    from veracity.he.wire import RequestHeader, body_hash, encode_request

    parsed = ModelDescription.from_json(description, expected_hash=description["model_hash"])
    x = np.asarray(features, dtype=np.float64)
    choice, start, stop = plan_batches(x.shape[0], parsed)[0]
    secret = SecretContext.generate(parsed.parameter_set)
    context = secret.public_context(rotation_steps=choice.rotation_steps)
    ciphertexts = secret.encrypt(choice.layout, x[start:stop], hidden=parsed.hidden)
    header = RequestHeader(
        model_hash=parsed.model_hash,
        parameter_set=parsed.parameter_set.name,
        context_hash=body_hash(context),
        layout=choice.layout,
        batch_size=stop - start,
    )
    return EncryptedQuery(
        context=context,
        request=encode_request(header, ciphertexts),
        secret=secret,
        layout=choice.layout,
        batch_size=stop - start,
    )


def site_witness(api: Api, directory: Path, *, role: str = "site") -> SiteWitness:
    """``api.site``'s witness (a real one, clock fixed at 1.8e9 s) talking to the app in process."""
    site = api.site
    log = WitnessedLog(api.service.ledger)
    witness = Witness(
        directory,
        site=site.name,
        key=seeded_key(f"witness-{site.name}"),
        name=witness_name(site.name),
        log=log.verifier,
        site_keys=[site.key.public],
        clock=lambda: 1_800_000_000,
    )
    client = WitnessApi(
        "http://testserver/api/v1",
        api.tokens[role],
        transport=api.client._transport,  # the app, in process
    )
    return SiteWitness(witness, client)
