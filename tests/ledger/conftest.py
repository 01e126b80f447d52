"""Ledger fixtures: deterministic keys, a clock, known-answer vectors and a ledger builder."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veracity.contracts.events import ROOT_ACTOR
from veracity.core.canonical import canonical_hash
from veracity.core.fields import format_timestamp
from veracity.crypto.keys import SigningKey
from veracity.ledger.entry import Entry
from veracity.ledger.ledger import Ledger
from veracity.ledger.possession import sign_enrolment, sign_rotation
from veracity.ledger.statement import RECEIPT_DOMAIN, sign_bound, sign_statement

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
T0 = datetime(2026, 11, 27, 15, 47, 52, 123456, tzinfo=UTC)


def seeded_key(label: str) -> SigningKey:
    """A deterministic Ed25519 key (tests only)."""
    return SigningKey(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest()))


@pytest.fixture
def load_vector() -> Callable[[str], Any]:
    """Load a JSON known-answer file from tests/vectors/ by relative path."""

    def load(relative: str) -> Any:
        return json.loads((VECTORS / relative).read_text(encoding="utf-8"))

    return load


@pytest.fixture
def vectors_dir() -> Path:
    return VECTORS


@dataclass
class World:
    """A ledger with a root and enrolled sites, plus builders for realistic events."""

    ledger: Ledger
    root: SigningKey
    keys: dict[str, SigningKey] = field(default_factory=dict)
    clock: int = 0

    def now(self) -> datetime:
        self.clock += 1
        return T0 + timedelta(seconds=self.clock)

    def enrol(self, name: str, role: str = "site") -> Entry:
        key = seeded_key(f"{name}-{len(self.keys)}")
        self.keys[name] = key
        payload = enrolment_payload(self.ledger.log_id, name, key, role=role)
        return self.ledger.append(
            "key.enrolled", ROOT_ACTOR, payload, signer=self.root, now=self.now()
        )

    def rotate(self, name: str) -> Entry:
        """``name`` hands over to a new key, signed by its current one."""
        outgoing = self.keys[name]
        key = seeded_key(f"{name}-{len(self.keys)}-rotated-{self.clock}")
        self.keys[name] = key
        payload = rotation_payload(self.ledger.log_id, name, outgoing, key)
        return self.ledger.append(
            "key.rotated", ROOT_ACTOR, payload, signer=self.root, now=self.now()
        )

    def revoke(self, name: str) -> Entry:
        payload = {"name": name, "key_id": self.keys[name].public.key_id, "reason": "retired"}
        return self.ledger.append(
            "key.revoked", ROOT_ACTOR, payload, signer=self.root, now=self.now()
        )

    def note(self, actor: str, text: str) -> Entry:
        signer = self.root if actor == ROOT_ACTOR else self.keys[actor]
        return self.ledger.append(
            "note.recorded", actor, {"text": text}, signer=signer, now=self.now()
        )

    def dataset(self, site: str, dataset_id: str = "d1") -> Entry:
        payload = dataset_payload(site, dataset_id, signed_at=format_timestamp(self.now()))
        signature = sign_statement(
            self.keys[site], "dataset.registered", site, payload, log_id=self.ledger.log_id
        )
        return self.ledger.append(
            "dataset.registered", site, payload, signature=signature, now=self.now()
        )

    def round(
        self, run_id: str, study_hash: str, number: int, sites: list[str], model: str
    ) -> Entry:
        payload = round_payload(
            self.keys, run_id, study_hash, number, sites, model, log_id=self.ledger.log_id
        )
        return self.ledger.append(
            "round.completed", ROOT_ACTOR, payload, signer=self.root, now=self.now()
        )


def enrolment_payload(
    log_id: str, name: str, key: SigningKey, *, role: str = "site"
) -> dict[str, Any]:
    """A ``key.enrolled`` payload with the key's proof of possession for ``log_id``."""
    return {
        "name": name,
        "role": role,
        "public_key": key.public.pem(),
        "valid_from": format_timestamp(T0),
        "proof": sign_enrolment(key, log_id=log_id, name=name, role=role),
    }


def rotation_payload(
    log_id: str, name: str, outgoing: SigningKey, key: SigningKey, *, role: str = "site"
) -> dict[str, Any]:
    """A ``key.rotated`` payload: the new key's proof and the outgoing key's hand-over."""
    return {
        "name": name,
        "public_key": key.public.pem(),
        "valid_from": format_timestamp(T0),
        "proof": sign_enrolment(key, log_id=log_id, name=name, role=role),
        "outgoing_signature": sign_rotation(
            outgoing, log_id=log_id, name=name, incoming=key.public
        ),
    }


def recovery_payload(
    log_id: str, name: str, key: SigningKey, *, role: str = "site", reason: str = "key lost"
) -> dict[str, Any]:
    """A ``key.recovered`` payload with the new key's proof of possession."""
    return {
        "name": name,
        "public_key": key.public.pem(),
        "valid_from": format_timestamp(T0),
        "proof": sign_enrolment(key, log_id=log_id, name=name, role=role),
        "reason": reason,
    }


def dataset_payload(site: str, dataset_id: str, *, signed_at: str) -> dict[str, Any]:
    return {
        "site": site,
        "dataset_id": dataset_id,
        "commitment": hashlib.sha256(f"{site}/{dataset_id}".encode()).hexdigest(),
        "schema_hash": hashlib.sha256(b"schema").hexdigest(),
        "rows": 152,
        "label": "diagnosis",
        "features": ["radius", "texture"],
        "signed_at": signed_at,
    }


def receipt_for(
    site: str, run_id: str, study_hash: str, number: int, dataset_id: str = "d1"
) -> dict[str, Any]:
    return {
        "site": site,
        "study": study_hash,
        "round": number,
        "run_id": run_id,
        "dataset_id": dataset_id,
        "dataset_commitment": hashlib.sha256(f"{site}/{dataset_id}".encode()).hexdigest(),
        "update_hash": hashlib.sha256(f"update/{site}/{number}".encode()).hexdigest(),
        "accountant": "pld",
        "neighbouring": "replace-one",
        "delta": 1e-05,
        "epsilon": 0.5 * number,
        "epsilon_add_remove": 0.3 * number,
        "history": [[1.1, 0.05, 40 * number]],
        "max_grad_norm": 1.0,
        "num_examples": 152,
        "noise_generator": "chacha20",
    }


def round_payload(
    keys: dict[str, SigningKey],
    run_id: str,
    study_hash: str,
    number: int,
    sites: list[str],
    model: str,
    *,
    log_id: str,
) -> dict[str, Any]:
    receipts = []
    for site in sites:
        receipt = receipt_for(site, run_id, study_hash, number)
        receipts.append(
            {
                "receipt": receipt,
                "signature": sign_bound(keys[site], RECEIPT_DOMAIN, log_id, receipt),
            }
        )
    return {
        "run_id": run_id,
        "study_hash": study_hash,
        "round": number,
        "participants": sites,
        "receipts": receipts,
        "dropped": [],
        "refused": [],
        "aggregated_model_hash": model,
        "metrics": {"loss": 0.25, "accuracy": 0.9},
    }


STUDY = {"study_id": "bc-1", "title": "breast cancer", "code_hash": "c" * 64, "rounds": 2}
STUDY_HASH = canonical_hash(STUDY)


@pytest.fixture
def root_key() -> SigningKey:
    return seeded_key("root")


@pytest.fixture
def make_world(root_key: SigningKey) -> Iterator[Callable[..., World]]:
    """Build a ledger at a URL with hospital-a and hospital-b enrolled."""
    opened: list[Ledger] = []

    def make(
        url: str,
        *,
        checkpoint_every: int = 1000,
        sites: tuple[str, ...] = ("hospital-a", "hospital-b"),
    ) -> World:
        ledger = Ledger.init(url, root_key=root_key, now=T0, checkpoint_every=checkpoint_every)
        opened.append(ledger)
        world = World(ledger=ledger, root=root_key)
        for site in sites:
            world.enrol(site)
        return world

    yield make
    for ledger in opened:
        ledger.close()
