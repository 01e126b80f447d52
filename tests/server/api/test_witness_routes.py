"""The ``/ledger/witness`` routes with a real site witness talking to the app over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ledger.conftest import seeded_key
from veracity.ledger.note import SIG_COSIGNATURE_V1, CheckpointText, Note, NoteVerifier, cosign
from veracity.ledger.policy import Policy
from veracity.ledger.witnessed import WitnessedLog, witness_name

from .conftest import Api, site_witness


def test_site_witness_cosigns_over_the_api_and_the_note_carries_it(
    api: Api, tmp_path: Path
) -> None:
    api.enrol(api.site)
    api.register(api.site)
    api.service.ledger.checkpoint()
    witness = site_witness(api, tmp_path / "w")
    done = witness.once()
    assert done["cosigned"] == witness.witness.state().tree_size
    served = api.call("GET", "/api/v1/ledger/witness/checkpoint", "auditor").json()
    policy = Policy.build(
        logs=[WitnessedLog(api.service.ledger).verifier],
        witnesses={api.site.name: witness.witness.verifier},
        threshold=1,
    )
    verdict = policy.check(Note.parse(served["note"]))
    assert set(verdict.cosigned) == {api.site.name}
    assert witness.once()["reason"] == "already cosigned"


def test_witness_follows_new_checkpoints_over_the_api(api: Api, tmp_path: Path) -> None:
    api.enrol(api.site)
    api.service.ledger.checkpoint()
    witness = site_witness(api, tmp_path / "w")
    witness.once()
    api.register(api.site)
    api.register(api.site, "cohort-2")
    api.service.ledger.checkpoint()
    assert witness.once()["cosigned"] == api.service.ledger.latest_checkpoint().tree_size  # type: ignore[union-attr]


def test_a_site_cannot_post_a_cosignature_under_another_sites_name(api: Api) -> None:
    api.enrol(api.site)
    api.service.ledger.checkpoint()
    note = Note.parse(api.call("GET", "/api/v1/ledger/witness/checkpoint", "site").json()["note"])
    key = seeded_key("mallory-witness")
    name = witness_name(api.other_site.name)
    size = int(note.text.split("\n")[1])
    line = cosign(key, name, note.text, timestamp=5).line()
    vkey = NoteVerifier.for_key(name, key.public, sig_type=SIG_COSIGNATURE_V1).vkey()
    answer = api.call(
        "POST",
        "/api/v1/ledger/witness/cosignatures",
        "site",
        json={"tree_size": size, "cosignature": line, "vkey": vkey},
    )
    assert answer.status_code == 422
    assert "cosigns as" in answer.json()["detail"]


def test_a_forged_cosignature_is_refused(api: Api) -> None:
    api.enrol(api.site)
    api.service.ledger.checkpoint()
    note = Note.parse(api.call("GET", "/api/v1/ledger/witness/checkpoint", "site").json()["note"])
    key = seeded_key("north-witness")
    name = witness_name(api.site.name)
    real = CheckpointText.parse(note.text)
    other = CheckpointText(real.origin, real.tree_size, bytes(32)).text()
    line = cosign(key, name, other, timestamp=5).line()
    vkey = NoteVerifier.for_key(name, key.public, sig_type=SIG_COSIGNATURE_V1).vkey()
    answer = api.call(
        "POST",
        "/api/v1/ledger/witness/cosignatures",
        "site",
        json={"tree_size": int(note.text.split("\n")[1]), "cosignature": line, "vkey": vkey},
    )
    assert answer.status_code == 422


@pytest.mark.parametrize("role", ["researcher", None])
def test_witness_routes_are_closed_to_other_roles(api: Api, role: str | None) -> None:
    answer = api.call("GET", "/api/v1/ledger/witness/vkey", role)
    assert answer.status_code == (403 if role else 401)


def test_entries_route_serves_exact_bytes_in_pages(api: Api) -> None:
    api.enrol(api.site)
    page = api.call(
        "GET", "/api/v1/ledger/witness/entries", "site", params={"start": 0, "end": 2}
    ).json()
    bodies = [e.body.decode() for e in api.service.ledger.entries(limit=2)]
    assert page["entries"] == bodies
