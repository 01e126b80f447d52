"""The replay statements' contract and the round seed's commitment (#19)."""

from __future__ import annotations

import hashlib

import pytest

from veracity.contracts.replay import (
    SEED_COMMITMENT_DOMAIN,
    ReplayConfirmed,
    ReplayFailed,
    seed_commitment,
)
from veracity.errors import InputError

H = "ab" * 32
TS = "2026-03-01T09:00:00Z"
COMMON = {
    "site": "hospital-a",
    "run_id": "1",
    "study_hash": H,
    "dataset_id": "d1",
    "dataset_commitment": H,
    "signed_at": TS,
}


def _round(number: int) -> dict[str, object]:
    return {"round": number, "update_hash": H, "seed_commitment": H}


def test_the_seed_commitment_is_sha256_over_the_domain_run_round_and_seed() -> None:
    seed = bytes(range(32))
    expected = hashlib.sha256(
        SEED_COMMITMENT_DOMAIN + (3).to_bytes(4, "big") + b"run" + (7).to_bytes(8, "big") + seed
    ).hexdigest()

    assert seed_commitment(run_id="run", round=7, seed=seed) == expected
    assert seed_commitment(run_id="run", round=8, seed=seed) != expected
    assert seed_commitment(run_id="ru", round=7, seed=seed) != expected


def test_a_seed_of_another_length_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        seed_commitment(run_id="1", round=1, seed=b"\x00" * 16)


def test_confirmed_rounds_are_distinct_and_in_order() -> None:
    ReplayConfirmed.parse({**COMMON, "rounds": [_round(1), _round(2)]})
    with pytest.raises(InputError, match="increasing order"):
        ReplayConfirmed.parse({**COMMON, "rounds": [_round(2), _round(1)]})
    with pytest.raises(InputError, match="rounds"):
        ReplayConfirmed.parse({**COMMON, "rounds": []})


def test_a_failed_replay_names_a_round_after_those_it_confirmed() -> None:
    failed = {
        **COMMON,
        "round": 2,
        "expected_update_hash": H,
        "reason": "the round's seed is missing from the store",
        "confirmed": [_round(1)],
    }
    assert ReplayFailed.parse(failed).replayed_update_hash is None
    with pytest.raises(InputError, match="come before"):
        ReplayFailed.parse({**failed, "confirmed": [_round(2)]})
