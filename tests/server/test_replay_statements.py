"""The ledger's rule for a site's replay statements (#19): ``replay.confirmed`` and
``replay.failed`` are recorded only for rounds whose receipts of that site the ledger holds,
with the same hashes; a real coordinator runs a two-round run of the signed-reply Grid."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.server.test_central_dp_run as central
from tests.factories import receipt_document
from tests.server.test_central_dp_run import (  # noqa: F401 - a fixture, registered by name
    SETUP,
    SIGNED_AT,
    _execute,
    _Network,
    _task_identity,
    enrolled_network,
)
from tests.server.test_replay import _propose_plain
from veracity.contracts.replay import seed_commitment
from veracity.errors import InputError
from veracity.ledger.statement import sign_statement

RUN = "7"
SITE = "hospital-a"


def _seed(site: str, server_round: int) -> bytes:
    return hashlib.sha256(f"{site}/{server_round}".encode()).digest()


def _committing_receipt(**changes: Any) -> dict[str, Any]:
    """The test Grid's receipt, with the commitment to a per-round seed of its site."""
    document = receipt_document(**changes)
    document["seed_commitment"] = seed_commitment(
        run_id=document["run_id"],
        round=document["round"],
        seed=_seed(document["site"], document["round"]),
    )
    return document


@pytest.fixture
def network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Network]:
    monkeypatch.setattr(central, "receipt_document", _committing_receipt)
    yield from enrolled_network(tmp_path)


@pytest.fixture
def receipts(network: _Network) -> dict[int, dict[str, Any]]:
    study = _propose_plain(network, rounds=2)
    _execute(network, study, RUN)
    found: dict[int, dict[str, Any]] = {}
    for entry in network.coordinator.ledger.iter_entries(kind="round.completed"):
        for signed in entry.payload["receipts"]:
            if signed["receipt"]["site"] == SITE:
                found[entry.payload["round"]] = signed["receipt"]
    return found


def _common(receipt: dict[str, Any]) -> dict[str, Any]:
    return {
        "site": SITE,
        "run_id": RUN,
        "study_hash": receipt["study"],
        "dataset_id": receipt["dataset_id"],
        "dataset_commitment": receipt["dataset_commitment"],
        "signed_at": SIGNED_AT,
    }


def _item(receipt: dict[str, Any]) -> dict[str, Any]:
    return {
        "round": receipt["round"],
        "update_hash": receipt["update_hash"],
        "seed_commitment": receipt["seed_commitment"],
    }


def _record(network: _Network, kind: str, payload: dict[str, Any]) -> None:
    site = network.sites[SITE]
    signature = sign_statement(
        site.key, kind, SITE, payload, log_id=network.coordinator.ledger.log_id
    )
    network.coordinator.record_statement(SETUP, kind, SITE, payload, signature)


def test_a_replay_confirming_the_sites_receipts_is_recorded_and_verifies(
    network: _Network, receipts: dict[int, dict[str, Any]]
) -> None:
    payload = {**_common(receipts[1]), "rounds": [_item(receipts[1]), _item(receipts[2])]}

    _record(network, "replay.confirmed", payload)

    (entry,) = network.coordinator.ledger.iter_entries(kind="replay.confirmed")
    assert entry.actor == SITE
    assert entry.payload == payload
    network.coordinator.ledger.verify(network.coordinator.ledger.identity_public_key)


def test_a_replay_naming_another_update_hash_is_refused(
    network: _Network, receipts: dict[int, dict[str, Any]]
) -> None:
    item = {**_item(receipts[2]), "update_hash": "ab" * 32}
    payload = {**_common(receipts[1]), "rounds": [_item(receipts[1]), item]}

    with pytest.raises(InputError, match="round 2"):
        _record(network, "replay.confirmed", payload)


def test_a_replay_naming_a_round_without_a_receipt_is_refused(
    network: _Network, receipts: dict[int, dict[str, Any]]
) -> None:
    item = {**_item(receipts[2]), "round": 3}

    with pytest.raises(InputError, match="no receipt of hospital-a for round 3"):
        _record(network, "replay.confirmed", {**_common(receipts[1]), "rounds": [item]})


def test_a_failed_replay_names_the_first_round_that_differs(
    network: _Network, receipts: dict[int, dict[str, Any]]
) -> None:
    payload = {
        **_common(receipts[1]),
        "round": 2,
        "expected_update_hash": receipts[2]["update_hash"],
        "replayed_update_hash": "cd" * 32,
        "reason": "re-training from the kept global model and seed gave another update",
        "confirmed": [_item(receipts[1])],
    }

    _record(network, "replay.failed", payload)

    (entry,) = network.coordinator.ledger.iter_entries(kind="replay.failed")
    assert entry.payload["round"] == 2
