"""Payload schemas: every documented kind validates; bad payloads are refused naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from veracity.contracts.events import KINDS, validate_payload
from veracity.contracts.explanation import ExplanationTerms, terms_hash
from veracity.core.canonical import canonical_hash
from veracity.errors import InputError

from .conftest import STUDY, STUDY_HASH, dataset_payload, round_payload, seeded_key

H = "a" * 64
TS = "2026-11-27T15:47:52.123456Z"
SIG = "A" * 86 + "=="
EXPLAIN_TERMS: dict[str, Any] = {
    "model_hash": H, "study_hash": H, "method": "integrated_gradients", "baseline": "zeros",
    "steps": 32, "clip_norm": 1.0, "epsilon": 1.0, "delta": 1e-5,
}  # fmt: skip

VALID: dict[str, dict[str, Any]] = {
    "key.enrolled": {
        "name": "hospital-a",
        "role": "site",
        "public_key": seeded_key("x").public.pem(),
        "valid_from": TS,
        "proof": SIG,
    },
    "key.rotated": {
        "name": "hospital-a",
        "public_key": seeded_key("x").public.pem(),
        "valid_from": TS,
        "proof": SIG,
        "outgoing_signature": SIG,
    },
    "key.recovered": {
        "name": "hospital-a",
        "public_key": seeded_key("x").public.pem(),
        "valid_from": TS,
        "proof": SIG,
        "reason": "the site's disk failed",
    },
    "key.revoked": {"name": "hospital-a", "key_id": H, "reason": "lost laptop"},
    "dataset.registered": dataset_payload("hospital-a", "d1", signed_at=TS),
    "study.proposed": {
        "study_id": "bc-1",
        "study_hash": STUDY_HASH,
        "study": STUDY,
        "code_hash": "c" * 64,
    },
    "study.approved": {
        "study_hash": H,
        "site": "hospital-a",
        "dataset_id": "d1",
        "epsilon_cap": 3,
        "signed_at": TS,
    },
    "study.refused": {"study_hash": H, "site": "hospital-a", "reason": "no", "signed_at": TS},
    "run.started": {
        "run_id": "1234567890123456789",
        "study_hash": H,
        "fab_hash": H,
        "config_hash": H,
        "package_versions": {"flwr": "1.42.0"},
        "seed_commitment": H,
    },
    "run.finished": {
        "run_id": "1",
        "study_hash": H,
        "status": "completed",
        "reason": "",
        "rounds_completed": 2,
        "model_hash": None,
    },
    "round.completed": round_payload(
        {"hospital-a": seeded_key("a")}, "1", H, 1, ["hospital-a"], H, log_id="00" * 32
    ),
    "analysis.answered": {
        "run_id": "1",
        "study_hash": H,
        "query_id": "count",
        "query_hash": H,
        "answer": {
            "kind": "count",
            "labels": ["count"],
            "value": [41.2],
            "se": [3.1],
            "lower": [35.1],
            "upper": [47.3],
            "sites": ["hospital-a"],
        },
        "receipts": [
            {
                "receipt": {
                    "site": "hospital-a",
                    "study": H,
                    "query_id": "count",
                    "query_hash": H,
                    "answer_hash": H,
                    "dataset_id": "d1",
                    "dataset_commitment": H,
                    "sensitivity": 1.0,
                    "noise_multiplier": 6.2,
                    "noise_std": 3.1,
                    "accountant": "pld",
                    "neighbouring": "replace-one",
                    "delta": 1e-5,
                    "epsilon_query": 1.0,
                    "epsilon": 1.0,
                    "history": [[6.2, 1.0, 1]],
                    "suppression_threshold": 0.0,
                    "repeated": False,
                    "noise_generator": "chacha20",
                },
                "signature": SIG,
            }
        ],
        "refused": [],
    },
    # --- explanations (#19)
    "model.explained": {
        "run_id": "2",
        "model_hash": H,
        "study_hash": H,
        "terms": EXPLAIN_TERMS,
        "terms_hash": terms_hash(ExplanationTerms.parse(EXPLAIN_TERMS)),
        "report_hash": H,
        "records": 152,
        "top_features": ["mean_radius"],
        "receipts": [
            {
                "receipt": {
                    "site": "hospital-a",
                    "study": H,
                    "query_id": "explanation",
                    "query_hash": terms_hash(ExplanationTerms.parse(EXPLAIN_TERMS)),
                    "answer_hash": H,
                    "dataset_id": "d1",
                    "dataset_commitment": H,
                    "sensitivity": 2.0,
                    "noise_multiplier": 6.2,
                    "noise_std": 6.2,
                    "accountant": "pld",
                    "neighbouring": "replace-one",
                    "delta": 1e-5,
                    "epsilon_query": 1.0,
                    "epsilon": 1.0,
                    "history": [[6.2, 1.0, 1]],
                    "suppression_threshold": 0.0,
                    "repeated": False,
                    "noise_generator": "chacha20",
                },
                "signature": SIG,
            }
        ],
    },
    # --- retention of the round archive (#19)
    "updates.pruned": {
        "older_than_days": 30,
        "before": TS,
        "include_released": False,
        "runs": ["3"],
        "kept_released": ["2"],
        "removed": [H],
        "removed_bytes": 4096,
    },
    "budget.refused": {
        "site": "hospital-a",
        "study_hash": H,
        "dataset_id": "d1",
        "run_id": "1",
        "round": 3,
        "epsilon_requested": 3.5,
        "epsilon_left": 0.2,
        "signed_at": TS,
    },
    "approval.missing": {
        "site": "hospital-a",
        "study_hash": H,
        "run_id": "1",
        "round": 500,
        "reason": "study bc-test has 3 rounds; round 500 is not part of it",
        "signed_at": TS,
    },
    "model.released": {
        "model_hash": H,
        "run_id": "1",
        "study_hash": H,
        "model": {"family": "logistic", "n_features": 2},
        "datasets": [{"site": "hospital-a", "dataset_id": "d1", "commitment": H}],
        "epsilon": {"hospital-a": 1.5},
        "metrics": {"auc": 0.93},
        "card_hash": H,
    },
    "inference.served": {
        "model_hash": H,
        "requester": "clinic-1",
        "he_params_hash": H,
        "batch_size": 16,
        "request_hash": H,
        "served_total": 48,
    },
    "checkpoint": {"tree_size": 10, "root_hash": H, "log_id": H, "signature": SIG},
    "checkpoint.cosigned": {
        "site": "hospital-a",
        "tree_size": 10,
        "root_hash": H,
        "log_id": H,
        "signature": SIG,
    },
    "note.recorded": {"text": "ethics approval REC-2026-114"},
    "token.issued": {
        "token_id": "9f2c4e1a7b3d5e60",
        "name": "hospital-a operator",
        "role": "site",
        "site": "hospital-a",
        "expires_at": "2027-03-01T09:00:00Z",
        "requested_by": "alice",
    },
    "token.revoked": {"token_id": "9f2c4e1a7b3d5e60", "name": "hospital-a operator"},
    "model.downloaded": {"model_hash": H, "requested_by": "alice"},
    "inference.budget_set": {
        "model_hash": H,
        "requester": "clinic-1",
        "budget": 31,
        "requested_by": "alice",
    },
    # Site-side replay (#19).
    "replay.confirmed": {
        "site": "hospital-a",
        "run_id": "1",
        "study_hash": H,
        "dataset_id": "d1",
        "dataset_commitment": H,
        "rounds": [{"round": 1, "update_hash": H, "seed_commitment": H}],
        "signed_at": TS,
    },
    "replay.failed": {
        "site": "hospital-a",
        "run_id": "1",
        "study_hash": H,
        "dataset_id": "d1",
        "dataset_commitment": H,
        "round": 2,
        "expected_update_hash": H,
        "replayed_update_hash": H,
        "reason": "re-training from the kept global model and seed gave another update",
        "confirmed": [{"round": 1, "update_hash": H, "seed_commitment": H}],
        "signed_at": TS,
    },
}


def test_every_documented_kind_has_a_valid_example() -> None:
    assert set(VALID) == KINDS
    for kind, payload in VALID.items():
        validate_payload(kind, payload)


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(InputError, match=r"unknown event kind 'model\.deleted'"):
        validate_payload("model.deleted", {})


@pytest.mark.parametrize(
    ("kind", "change", "field"),
    [
        ("note.recorded", {"text": 1}, "text"),
        ("note.recorded", {"colour": "red"}, "colour"),
        ("key.enrolled", {"public_key": "not a key"}, "public_key"),
        ("key.enrolled", {"role": "admin"}, "role"),
        ("key.enrolled", {"valid_from": "yesterday"}, "valid_from"),
        ("dataset.registered", {"rows": "152"}, "rows"),
        ("dataset.registered", {"commitment": "ABC"}, "commitment"),
        ("study.approved", {"epsilon_cap": -1}, "epsilon_cap"),
        ("run.finished", {"status": "exploded"}, "status"),
        ("inference.served", {"batch_size": 0}, "batch_size"),
        ("checkpoint", {"signature": "short"}, "signature"),
    ],
)
def test_invalid_payload_is_refused_naming_the_field(
    kind: str, change: dict[str, Any], field: str
) -> None:
    with pytest.raises(InputError, match=f"field '{field}'"):
        validate_payload(kind, {**VALID[kind], **change})


def test_missing_field_is_named() -> None:
    payload = dict(VALID["dataset.registered"])
    del payload["label"]
    with pytest.raises(InputError, match="field 'label' field required"):
        validate_payload("dataset.registered", payload)


def test_site_event_must_name_its_actor() -> None:
    with pytest.raises(InputError, match="must be the actor 'hospital-b'"):
        validate_payload("dataset.registered", VALID["dataset.registered"], actor="hospital-b")


def test_study_hash_must_be_the_hash_of_the_study() -> None:
    payload = {**VALID["study.proposed"], "study_hash": canonical_hash({"other": 1})}
    with pytest.raises(InputError, match="study_hash"):
        validate_payload("study.proposed", payload)


def test_round_receipts_must_match_participants_and_round() -> None:
    payload = VALID["round.completed"]
    with pytest.raises(InputError, match="one per participant"):
        validate_payload(
            "round.completed", {**payload, "participants": ["hospital-a", "hospital-b"]}
        )
    with pytest.raises(InputError, match="another run"):
        validate_payload("round.completed", {**payload, "round": 2})


@pytest.mark.parametrize(
    "raw",
    [
        bytes([1]) + bytes(31),  # the identity point: order 1
        bytes(32),  # y = 0: a point of order 4
        bytes([0xEC]) + b"\xff" * 30 + bytes([0x7F]),  # y = p - 1: order 2
    ],
)
def test_a_weak_public_key_is_never_enrolled(raw: bytes) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from veracity.contracts.events import validate_payload
    from veracity.errors import InputError

    pem = (
        Ed25519PublicKey.from_public_bytes(raw)
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    payload = {
        "name": "hospital-x",
        "role": "site",
        "public_key": pem,
        "valid_from": "2026-11-27T10:00:00Z",
    }
    with pytest.raises(InputError, match="weak Ed25519 key"):
        validate_payload("key.enrolled", payload)
