"""Fixtures for the admin API: sites with real keys, a real SuperLink, an app per database.

``superlink`` starts one real SuperLink (TLS, SuperNode authentication) per test module on
an ephemeral port; each coordinator a test makes shares its TLS material, so the same
SuperLink serves coordinators on SQLite and on PostgreSQL. ``api`` is a running app
(FastAPI's TestClient, lifespan included) over a fresh coordinator on ``db_url`` with one
token per role.
"""

from __future__ import annotations

import secrets
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from veracity.core.canonical import canonical_hash
from veracity.crypto.keys import SigningKey, generate_signing_key
from veracity.crypto.tls import create_tls_material
from veracity.ledger.statement import sign_statement
from veracity.server.api.app import create_app
from veracity.server.api.serve import initialise
from veracity.server.api.settings import ApiSettings
from veracity.server.api.tokens import Role
from veracity.server.coordinator import Coordinator
from veracity.server.superlink import CoordinatorPaths, SuperLinkOptions, start_superlink
from veracity.supervise import ProcessGroup, free_port

with warnings.catch_warnings():
    # Starlette's TestClient asks for httpx2 and touches a renamed anyio alias on import;
    # neither is installable or fixable here, and neither affects what is tested.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

__all__ = ["TestClient"]


def supernode_public_key() -> str:
    """A fresh SuperNode key: ECDSA P-384, OpenSSH text (what a site agent generates)."""
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def timestamp(now: datetime | None = None) -> str:
    """RFC 3339 UTC with microseconds."""
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Site:
    """A site as a test plays it: a name, its Ed25519 key and its SuperNode key."""

    name: str
    key: SigningKey = field(default_factory=generate_signing_key)
    supernode_key: str = field(default_factory=supernode_public_key)

    def enrolment(self) -> dict[str, str]:
        """The body of ``POST /sites``."""
        return {
            "name": self.name,
            "public_key": self.key.public.pem(),
            "supernode_public_key": self.supernode_key,
        }

    def signed(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        """``{"payload", "signature"}`` signed with this site's key."""
        return {"payload": payload, "signature": sign_statement(self.key, kind, self.name, payload)}

    def dataset(self, dataset_id: str = "cohort-1") -> dict[str, Any]:
        """A ``dataset.registered`` payload of this site."""
        return {
            "site": self.name,
            "dataset_id": dataset_id,
            "commitment": canonical_hash({"site": self.name, "dataset": dataset_id}),
            "schema_hash": canonical_hash({"features": ["a", "b"], "label": "y"}),
            "rows": 120,
            "label": "y",
            "features": ["a", "b"],
            "signed_at": timestamp(),
        }

    def approval(
        self, study_hash: str, dataset_id: str = "cohort-1", cap: float = 2.0
    ) -> dict[str, Any]:
        """A ``study.approved`` payload."""
        return {
            "study_hash": study_hash,
            "site": self.name,
            "dataset_id": dataset_id,
            "epsilon_cap": cap,
            "signed_at": timestamp(),
        }

    def refusal(self, study_hash: str, reason: str = "not for us") -> dict[str, Any]:
        """A ``study.refused`` payload."""
        return {
            "study_hash": study_hash,
            "site": self.name,
            "reason": reason,
            "signed_at": timestamp(),
        }


def unique_site(prefix: str) -> Site:
    """A site with a name no other test uses (the SuperLink is shared)."""
    return Site(f"{prefix}-{secrets.token_hex(3)}")


def study_document(sites: list[str], study_id: str = "bc-1", min_sites: int = 1) -> dict[str, Any]:
    """A valid study over ``sites`` (code hash left to the coordinator)."""
    return {
        "study_id": study_id,
        "title": "Breast cancer, logistic",
        "model": {"family": "logistic", "n_features": 2},
        "features": ["a", "b"],
        "label": "y",
        "scaling": [[0.0, 1.0], [10.0, 2.0]],
        "dp": {"noise_multiplier": 1.1, "max_grad_norm": 1.0, "delta": 1e-5},
        "training": {"batch_size": 32, "local_epochs": 1, "learning_rate": 0.1},
        "rounds": 2,
        "min_sites": min_sites,
        "epsilon_caps": dict.fromkeys(sites, 3.0),
    }


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
        start_superlink(CoordinatorPaths(base), SuperLinkOptions(port=port), group)
        yield SuperLinkHandle(port=port, tls_dir=base / "tls")


def make_coordinator(
    data_dir: Path, db_url: str, superlink: SuperLinkHandle | None = None
) -> Coordinator:
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
    def service(self) -> Any:
        """The app's ApiService (lifespan-created)."""
        return self.client.app.state.service  # type: ignore[attr-defined]

    @property
    def coordinator(self) -> Coordinator:
        """The app's coordinator."""
        coordinator: Coordinator = self.service.coordinator
        return coordinator

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
        """Enrol ``site`` through the coordinator (set-up, not the API under test)."""
        self.coordinator.enrol_site(
            site.name,
            public_key_pem=site.key.public.pem(),
            supernode_public_key=site.supernode_key,
            register_node=False,
        )

    def register(self, site: Site, dataset_id: str = "cohort-1") -> None:
        """Record a dataset of ``site`` through the coordinator (set-up)."""
        signed = site.signed("dataset.registered", site.dataset(dataset_id))
        self.coordinator.record_statement(
            "dataset.registered", site.name, signed["payload"], signed["signature"]
        )


def open_api(
    data_dir: Path,
    db_url: str,
    superlink: SuperLinkHandle | None = None,
    *,
    app_options: dict[str, Any] | None = None,
    **settings: Any,
) -> Iterator[Api]:
    """Initialise a coordinator, issue one token per role, serve the app.

    ``app_options`` go to ``create_app`` (``clock=``, ``rate_clock=``); the rest are
    :class:`ApiSettings` fields.
    """
    coordinator = make_coordinator(data_dir, db_url, superlink)
    site, other = unique_site("north"), unique_site("south")
    store_tokens: dict[str, str] = {}
    from veracity.server.api.tokens import TokenStore

    with coordinator:
        store = TokenStore(coordinator.ledger.engine)
        for role in Role:
            issued = store.create(
                role=role,
                name=f"{role.value}-user",
                site=site.name if role is Role.SITE else None,
                expires_in=timedelta(days=1),
            )
            store_tokens[role.value] = issued.token
        store_tokens["other_site"] = store.create(
            role=Role.SITE, name="other-site-user", site=other.name
        ).token
    app = create_app(ApiSettings(data_dir=data_dir, **settings), **(app_options or {}))
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


def release_model(api: Api, spec: Any, weights: Any, features: list[str], label: str) -> str:
    """Put a model in the registry and record ``model.released`` (as a run's release would)."""
    from veracity.contracts.events import ROOT_ACTOR

    coordinator = api.coordinator
    model_hash: str = api.service.registry.put(
        spec,
        weights,
        features=features,
        label=label,
        scaling=[(0.0, 1.0)] * len(features),
        card={"name": "bc-logistic", "intended_use": "tests"},
    )
    card_hash = api.service.registry.get(model_hash).card_hash
    coordinator.ledger.append(
        "model.released",
        ROOT_ACTOR,
        {
            "model_hash": model_hash,
            "run_id": "1",
            "study_hash": "0" * 64,
            "model": spec.to_dict(),
            "datasets": [],
            "epsilon": {},
            "metrics": {"accuracy": 0.95},
            "card_hash": card_hash,
        },
        signer=coordinator.root_key,
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
