"""Sites as tests play them: real Ed25519 and SuperNode keys, payloads from the contracts.

Shared by the coordinator's and the admin API's tests. Each payload is built from its
contract model (:mod:`veracity.contracts.events`), so it has exactly the shape a site agent
sends and the coordinator accepts.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from veracity.contracts.events import DatasetRegistered, StudyApproved, StudyRefused
from veracity.contracts.handover import KeyHandover
from veracity.core.canonical import canonical_hash
from veracity.core.fields import format_timestamp
from veracity.crypto.keys import SigningKey, generate_signing_key
from veracity.ledger.possession import sign_enrolment, sign_rotation
from veracity.ledger.statement import sign_statement

__all__ = ["Site", "supernode_public_key", "unique_site", "study_document"]


def supernode_public_key() -> str:
    """A fresh SuperNode key: ECDSA P-384, OpenSSH text (what a site agent generates)."""
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


@dataclass
class Site:
    """A site as a test plays it: a name, its Ed25519 key and its SuperNode key."""

    name: str
    key: SigningKey = field(default_factory=generate_signing_key)
    supernode_key: str = field(default_factory=supernode_public_key)
    #: The log this site signs for: learnt when it enrols, as a site agent does (zeros before).
    log_id: str = "00" * 32

    def enrolment_proof(self, log_id: str) -> str:
        """The proof of possession for the log ``log_id`` (the site signs for it from now)."""
        self.log_id = log_id
        return sign_enrolment(self.key, log_id=log_id, name=self.name, role="site")

    def enrolment(self, log_id: str) -> dict[str, str]:
        """The body of ``POST /sites``, for the log ``log_id`` (the site signs for it from now)."""
        return {
            "name": self.name,
            "public_key": self.key.public.pem(),
            "supernode_public_key": self.supernode_key,
            "proof": self.enrolment_proof(log_id),
        }

    def handover(
        self, log_id: str, incoming: SigningKey, *, signer: SigningKey | None = None
    ) -> dict[str, Any]:
        """The body of ``POST /sites/{name}/rotations``: this site handed to ``incoming``.

        ``signer`` signs the hand-over in place of the site's current key (an attack).
        """
        outgoing = signer or self.key
        return KeyHandover(
            log_id=log_id,
            name=self.name,
            key_id=self.key.public.key_id,
            new_key_id=incoming.public.key_id,
            public_key=incoming.public.pem(),
            proof=sign_enrolment(incoming, log_id=log_id, name=self.name, role="site"),
            outgoing_signature=sign_rotation(
                outgoing, log_id=log_id, name=self.name, incoming=incoming.public
            ),
        ).to_json()

    def signed(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        """``{"payload", "signature"}`` signed with this site's key for its log."""
        signature = sign_statement(self.key, kind, self.name, payload, log_id=self.log_id)
        return {"payload": payload, "signature": signature}

    def dataset(self, dataset_id: str = "cohort-1", rows: int = 120) -> dict[str, Any]:
        """A ``dataset.registered`` payload of this site."""
        return DatasetRegistered(
            site=self.name,
            dataset_id=dataset_id,
            commitment=canonical_hash({"site": self.name, "dataset": dataset_id}),
            schema_hash=canonical_hash({"features": ["a", "b"], "label": "y"}),
            rows=rows,
            label="y",
            features=["a", "b"],
            signed_at=format_timestamp(),
        ).to_json()

    def approval(
        self, study_hash: str, dataset_id: str = "cohort-1", cap: float = 2.0
    ) -> dict[str, Any]:
        """A ``study.approved`` payload (built unchecked: tests also send refused ones)."""
        return StudyApproved.model_construct(
            site=self.name,
            signed_at=format_timestamp(),
            study_hash=study_hash,
            dataset_id=dataset_id,
            epsilon_cap=cap,
        ).to_json()

    def refusal(self, study_hash: str, reason: str = "not for us") -> dict[str, Any]:
        """A ``study.refused`` payload."""
        return StudyRefused(
            site=self.name, signed_at=format_timestamp(), study_hash=study_hash, reason=reason
        ).to_json()


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
