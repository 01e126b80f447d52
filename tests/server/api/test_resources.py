"""What each resource does: its ledger entry, its refusals, and what each role sees.

Runs on SQLite and on PostgreSQL (``db_url``). Routes that need the SuperLink are in
``test_runs.py``; here sites are enrolled through the coordinator as set-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from veracity.crypto.keys import VerifyKey
from veracity.he.wire import CONTENT_TYPE, decode_response
from veracity.ledger.checkpoint import Checkpoint
from veracity.ledger.proofs import ConsistencyProof, InclusionProof
from veracity.ledger.verify import verify_bundle_file
from veracity.server.coordinator import sites as coordinator_sites
from veracity.server.fab import Fab, build_fab
from veracity.tasks.study import parse_study
from veracity.tasks.weights import weights_from_bytes, weights_hash

from .conftest import Api, encrypted_query, open_api, release_model, study_document


@pytest.fixture
def enrolled(api: Api) -> Api:
    """Both fixture sites enrolled, each with a registered dataset."""
    for site in (api.site, api.other_site):
        api.enrol(site)
        api.register(site)
    return api


def _propose(api: Api, sites: list[str], study_id: str = "bc-1") -> str:
    response = api.call("POST", "/api/v1/studies", "admin", json=study_document(sites, study_id))
    assert response.status_code == 201, response.text
    return str(response.json()["study_hash"])


def _actions(api: Api) -> list[dict[str, Any]]:
    return list(api.call("GET", "/api/v1/actions", "admin").json()["items"])


# ---------------------------------------------------------------------- datasets
def test_a_site_registers_its_signed_dataset(enrolled: Api) -> None:
    api, site = enrolled, enrolled.site
    body = site.signed("dataset.registered", site.dataset("cohort-2"))
    response = api.call("POST", "/api/v1/datasets", "site", json=body)
    assert response.status_code == 201, response.text
    entry = api.service.ledger.get(response.json()["seq"])
    assert (entry.kind, entry.actor, entry.payload) == (
        "dataset.registered",
        site.name,
        body["payload"],
    )
    action = _actions(api)[-1]
    assert (action["action"], action["actor"], action["ledger_seq"]) == (
        "dataset.registered",
        "site-user",
        entry.seq,
    )


def test_a_site_sees_only_its_own_datasets(enrolled: Api) -> None:
    mine = enrolled.call("GET", "/api/v1/datasets", "site").json()["items"]
    every = enrolled.call("GET", "/api/v1/datasets", "admin").json()["items"]
    assert {d["site"] for d in mine} == {enrolled.site.name}
    assert {d["site"] for d in every} == {enrolled.site.name, enrolled.other_site.name}


def test_a_site_token_cannot_register_for_another_site(enrolled: Api) -> None:
    other = enrolled.other_site
    body = other.signed("dataset.registered", other.dataset("cohort-9"))
    response = enrolled.call("POST", "/api/v1/datasets", "site", json=body)
    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"


def test_a_statement_the_site_did_not_sign_is_refused(enrolled: Api) -> None:
    site, impostor = enrolled.site, enrolled.other_site
    forged = {
        "payload": site.dataset("cohort-3"),
        "signature": impostor.signed("dataset.registered", site.dataset("cohort-3"))["signature"],
    }
    size = enrolled.service.ledger.size()
    response = enrolled.call("POST", "/api/v1/datasets", "site", json=forged)
    assert response.status_code == 422
    assert response.json()["code"] == "signature_invalid"
    assert enrolled.service.ledger.size() == size


def test_a_replayed_statement_is_a_conflict(enrolled: Api) -> None:
    body = enrolled.site.signed("dataset.registered", enrolled.site.dataset("cohort-4"))
    assert enrolled.call("POST", "/api/v1/datasets", "site", json=body).status_code == 201
    again = enrolled.call("POST", "/api/v1/datasets", "site", json=body)
    assert again.status_code == 409
    assert again.json()["code"] == "conflict"


# ----------------------------------------------------------------------- studies
def test_the_admin_proposes_a_study(enrolled: Api) -> None:
    document = study_document([enrolled.site.name], "bc-7")
    response = enrolled.call("POST", "/api/v1/studies", "admin", json=document)
    assert response.status_code == 201, response.text
    made = response.json()
    study = parse_study({**document, "code_hash": made["code_hash"]})
    assert made["study_hash"] == study.study_hash
    entry = enrolled.service.ledger.get(made["seq"])
    assert (entry.kind, entry.payload["study_hash"]) == ("study.proposed", study.study_hash)
    again = enrolled.call("POST", "/api/v1/studies", "admin", json=document)
    assert again.status_code == 409


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"rounds": 0}, 422),
        ({"epsilon_caps": {"nowhere": 1.0}}, 422),
        ({"code_hash": "ab" * 32}, 422),
    ],
)
def test_an_invalid_study_is_refused(enrolled: Api, change: dict[str, Any], status: int) -> None:
    document = {**study_document([enrolled.site.name]), **change}
    response = enrolled.call("POST", "/api/v1/studies", "admin", json=document)
    assert response.status_code == status
    assert response.json()["code"] == "input_refused"


def test_sites_read_the_studies_that_name_them(enrolled: Api) -> None:
    mine = _propose(enrolled, [enrolled.site.name], "north-only")
    theirs = _propose(enrolled, [enrolled.other_site.name], "south-only")
    listed = enrolled.call("GET", "/api/v1/studies", "site").json()["items"]
    assert [s["study_hash"] for s in listed] == [mine]
    assert enrolled.call("GET", f"/api/v1/studies/{mine}", "site").status_code == 200
    assert enrolled.call("GET", f"/api/v1/studies/{theirs}", "site").status_code == 403
    every = enrolled.call("GET", "/api/v1/studies", "admin").json()["items"]
    assert {s["study_hash"] for s in every} == {mine, theirs}


def test_approvals_make_a_study_ready(enrolled: Api) -> None:
    site = enrolled.site
    study_hash = _propose(enrolled, [site.name, enrolled.other_site.name])
    before = enrolled.call("GET", f"/api/v1/studies/{study_hash}", "admin").json()
    assert (before["ready"], before["approved_by"]) == (False, [])
    body = {"kind": "study.approved", **site.signed("study.approved", site.approval(study_hash))}
    response = enrolled.call("POST", f"/api/v1/studies/{study_hash}/decisions", "site", json=body)
    assert response.status_code == 201, response.text
    after = enrolled.call("GET", f"/api/v1/studies/{study_hash}", "site").json()
    assert (after["ready"], after["approved_by"]) == (True, [site.name])
    assert after["decisions"][site.name]["kind"] == "study.approved"


def test_a_run_of_code_other_than_the_approved_is_a_conflict_naming_both_hashes(
    enrolled: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The study was proposed (and approved) while the coordinator ran another Veracity.
    older = Fab(content=b"an older release", fab_hash="0" * 64)
    with monkeypatch.context() as patched:
        patched.setattr(coordinator_sites, "build_fab", lambda: older)
        study_hash = _propose(enrolled, [enrolled.site.name])
    enrolled.approve(enrolled.site, study_hash)
    size = enrolled.service.ledger.size()
    response = enrolled.call("POST", "/api/v1/runs", "admin", json={"study_hash": study_hash})
    assert response.status_code == 409, response.text
    problem = response.json()
    assert problem["code"] == "conflict"
    assert older.fab_hash in problem["detail"]
    assert build_fab().fab_hash in problem["detail"]
    assert enrolled.service.ledger.size() == size


def test_a_refusal_is_recorded_as_the_sites_decision(enrolled: Api) -> None:
    site = enrolled.site
    study_hash = _propose(enrolled, [site.name])
    body = {"kind": "study.refused", **site.signed("study.refused", site.refusal(study_hash))}
    response = enrolled.call("POST", f"/api/v1/studies/{study_hash}/decisions", "site", json=body)
    assert response.status_code == 201
    state = enrolled.call("GET", f"/api/v1/studies/{study_hash}", "admin").json()
    assert state["decisions"][site.name]["kind"] == "study.refused"
    assert state["ready"] is False


def test_decisions_are_checked_against_the_study(enrolled: Api) -> None:
    site = enrolled.site
    study_hash = _propose(enrolled, [site.name])
    other_hash = "f" * 64

    def decide(path_hash: str, payload: dict[str, Any]) -> Any:
        body = {"kind": "study.approved", **site.signed("study.approved", payload)}
        return enrolled.call("POST", f"/api/v1/studies/{path_hash}/decisions", "site", json=body)

    assert decide(other_hash, site.approval(study_hash)).status_code == 422  # path != payload
    assert decide(other_hash, site.approval(other_hash)).status_code == 404  # no such study
    assert decide(study_hash, site.approval(study_hash, cap=99.0)).status_code == 422  # > cap
    assert decide(study_hash, site.approval(study_hash, "nope")).status_code == 422  # dataset
    foreign = {**site.approval(study_hash), "site": enrolled.other_site.name}
    assert decide(study_hash, foreign).status_code == 403


def test_a_site_reads_only_its_own_enrolment(enrolled: Api) -> None:
    mine = enrolled.call("GET", f"/api/v1/sites/{enrolled.site.name}", "site")
    assert mine.status_code == 200
    assert mine.json()["public_key"] == enrolled.site.key.public.pem()
    theirs = enrolled.call("GET", f"/api/v1/sites/{enrolled.other_site.name}", "site")
    assert theirs.status_code == 403
    listed = enrolled.call("GET", "/api/v1/sites", "admin").json()["items"]
    assert {s["name"] for s in listed} == {enrolled.site.name, enrolled.other_site.name}
    assert enrolled.call("GET", "/api/v1/sites/nobody", "admin").status_code == 404


def test_a_site_records_a_note(enrolled: Api) -> None:
    body = {"kind": "note.recorded", **enrolled.site.signed("note.recorded", {"text": "IRB-42"})}
    response = enrolled.call("POST", "/api/v1/statements", "site", json=body)
    assert response.status_code == 201
    assert enrolled.service.ledger.get(response.json()["seq"]).payload == {"text": "IRB-42"}


# ------------------------------------------------------------------------ ledger
def test_entries_page_through_the_ledger_within_the_cap(tmp_path: Path, db_url: str) -> None:
    for api in open_api(tmp_path / "coordinator", db_url, page_size_max=3):
        for i in range(5):
            api.call("POST", "/api/v1/ledger/checkpoints", "admin")
            assert i >= 0
        seen: list[int] = []
        since: int | None = 0
        while since is not None:
            page = api.call(
                "GET", "/api/v1/ledger/entries", "auditor", params={"since": since, "limit": 1000}
            ).json()
            assert len(page["entries"]) <= 3
            seen += [e["seq"] for e in page["entries"]]
            since = page["next_since"]
        assert seen == list(range(api.service.ledger.size()))
        only = api.call(
            "GET", "/api/v1/ledger/entries", "auditor", params={"kind": "checkpoint"}
        ).json()["entries"]
        assert {e["kind"] for e in only} == {"checkpoint"}


def test_an_entry_carries_its_exact_hashed_bytes(enrolled: Api) -> None:
    entry = enrolled.call("GET", "/api/v1/ledger/entries/1", "auditor").json()
    stored = enrolled.service.ledger.get(1)
    assert entry["body"].encode() == stored.body
    assert entry["hash"] == stored.hash
    assert enrolled.call("GET", "/api/v1/ledger/entries/999", "auditor").status_code == 404


def test_proofs_verify_against_signed_checkpoints(enrolled: Api) -> None:
    api = enrolled
    first = Checkpoint.from_json(api.call("POST", "/api/v1/ledger/checkpoints", "admin").json())
    _propose(api, [api.site.name])
    second = Checkpoint.from_json(api.call("POST", "/api/v1/ledger/checkpoints", "admin").json())
    info = api.call("GET", "/api/v1/ledger", "auditor").json()
    # root_public_key is the identity auditors pin; the log key it enrolled signs checkpoints.
    assert VerifyKey.from_pem(info["root_public_key"]) == api.service.ledger.identity_public_key
    root = VerifyKey.from_pem(info["log_public_key"])
    assert root == api.service.root_key.public
    assert info["log_key_id"] == root.key_id

    inclusion = api.call(
        "GET", "/api/v1/ledger/proofs/inclusion", "auditor", params={"seq": 2}
    ).json()
    # By default the proof is for the newest checkpoint, so it checks against a signed root.
    assert Checkpoint.from_json(inclusion["checkpoint"]) == second
    InclusionProof.from_json(inclusion["proof"]).verify(second, root)
    at_first = api.call(
        "GET",
        "/api/v1/ledger/proofs/inclusion",
        "auditor",
        params={"seq": 2, "tree_size": first.tree_size},
    ).json()
    InclusionProof.from_json(at_first["proof"]).verify(first, root)

    consistency = api.call(
        "GET",
        "/api/v1/ledger/proofs/consistency",
        "auditor",
        params={"old_size": first.tree_size, "new_size": second.tree_size},
    ).json()
    proof = consistency["proof"]
    ConsistencyProof(
        log_id=proof["log_id"],
        old_size=proof["old_size"],
        new_size=proof["new_size"],
        proof=tuple(bytes.fromhex(p) for p in proof["proof"]),
    ).verify(first, second, root)
    latest = api.call("GET", "/api/v1/ledger/checkpoints/latest", "auditor").json()
    assert Checkpoint.from_json(latest) == second
    bad = api.call("GET", "/api/v1/ledger/proofs/inclusion", "auditor", params={"seq": 10**6})
    assert bad.status_code == 422


def test_the_exported_bundle_verifies_offline(enrolled: Api, tmp_path: Path) -> None:
    response = enrolled.call("GET", "/api/v1/ledger/export", "auditor")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    bundle = tmp_path / "bundle.jsonl"
    bundle.write_bytes(response.content)
    report = verify_bundle_file(bundle, trusted_root=enrolled.service.ledger.identity_public_key)
    assert report.entries == enrolled.service.ledger.size()


def test_verify_reports_the_first_tampered_entry(enrolled: Api) -> None:
    good = enrolled.call("GET", "/api/v1/ledger/verify", "auditor").json()
    assert good["ok"] is True
    assert good["entries"] == enrolled.service.ledger.size()
    engine = enrolled.service.ledger.engine
    with engine.begin() as connection:
        body = connection.execute(text("SELECT body FROM ledger_entry WHERE seq = 2")).scalar_one()
        forged = bytes(body).replace(b"cohort-1", b"cohort-X")
        assert forged != bytes(body)
        connection.execute(text("UPDATE ledger_entry SET body = :b WHERE seq = 2"), {"b": forged})
    bad = enrolled.call("GET", "/api/v1/ledger/verify", "auditor").json()
    assert bad["ok"] is False
    assert bad["first_bad_seq"] == 2


def test_tail_verify_needs_an_explicit_no_witnesses(enrolled: Api) -> None:
    """The server holds no witness policy: tail would trust its own log key's checkpoint."""
    enrolled.service.ledger.checkpoint()
    refused = enrolled.call("GET", "/api/v1/ledger/verify?root_signatures=tail", "auditor")
    assert refused.status_code == 422
    assert "witness quorum" in refused.json()["detail"]
    job = enrolled.call(
        "POST", "/api/v1/ledger/jobs", "auditor", json={"kind": "verify", "root_signatures": "tail"}
    )
    assert job.status_code == 422
    report = enrolled.call(
        "GET", "/api/v1/ledger/verify?root_signatures=tail&no_witnesses=true", "auditor"
    ).json()
    assert report["ok"] is True
    assert report["root_signatures"] == "tail"
    assert report["tail_trusted"]["witnesses"] is False
    newest = enrolled.service.ledger.latest_checkpoint()
    assert newest is not None
    assert report["tail_trusted"]["checkpoint_size"] == newest.tree_size


# ------------------------------------------------------------- models, inference
@pytest.fixture
def released(enrolled: Api, trained_models: dict[str, Any], breast_cancer: Any) -> str:
    spec, weights = trained_models["logistic"]
    return release_model(enrolled, spec, weights, list(breast_cancer.feature_names), "malignant")


def test_models_list_and_card(enrolled: Api, released: str) -> None:
    listed = enrolled.call("GET", "/api/v1/models", "researcher").json()["items"]
    assert [m["model_hash"] for m in listed] == [released]
    assert listed[0]["released_seq"] is not None
    card = enrolled.call("GET", f"/api/v1/models/{released}", "site").json()
    assert card["card"]["name"] == "bc-logistic"
    assert card["model"]["family"] == "logistic"
    assert enrolled.call("GET", f"/api/v1/models/{'0' * 64}", "admin").status_code == 404


def test_admins_download_weights_and_the_download_is_recorded(enrolled: Api, released: str) -> None:
    response = enrolled.call("GET", f"/api/v1/models/{released}/weights", "admin")
    assert response.status_code == 200
    assert weights_hash(weights_from_bytes(response.content)) == released
    action = _actions(enrolled)[-1]
    assert (action["action"], action["target"]) == ("model.weights", released)
    # The download is a signed ledger event, and the action row points at it.
    entry = enrolled.service.ledger.get(action["ledger_seq"])
    assert (entry.kind, entry.payload["model_hash"]) == ("model.downloaded", released)


def test_provenance_of_a_released_model(enrolled: Api, released: str) -> None:
    document = enrolled.call("GET", f"/api/v1/ledger/provenance/{released}", "auditor").json()
    assert any(released in key for key in document.get("entity", {}))
    missing = enrolled.call("GET", f"/api/v1/ledger/provenance/{'1' * 64}", "auditor")
    assert missing.status_code == 404


def test_encrypted_inference_matches_plaintext_and_is_recorded(
    enrolled: Api, released: str, trained_models: dict[str, Any], breast_cancer: Any
) -> None:
    description = enrolled.call("GET", f"/api/v1/inference/models/{released}", "researcher")
    patients = breast_cancer.test_x[:3]
    query = encrypted_query(description.json(), patients)
    headers = {"Content-Type": CONTENT_TYPE}
    uploaded = enrolled.call(
        "POST", "/api/v1/inference/contexts", "researcher", content=query.context, headers=headers
    )
    assert uploaded.status_code == 201
    response = enrolled.call(
        "POST",
        f"/api/v1/inference/models/{released}/predict",
        "researcher",
        content=query.request,
        headers=headers,
    )
    assert response.status_code == 200, response.text
    _answer, results = decode_response(response.content)
    logits = query.secret.decrypt(
        query.layout, results, batch_size=query.batch_size, n_features=patients.shape[1]
    )
    _, weights = trained_models["logistic"]
    expected = patients @ weights["linear.weight"].reshape(-1) + weights["linear.bias"][0]
    np.testing.assert_allclose(logits, expected, atol=1e-2)
    served = enrolled.service.ledger.entries(kind="inference.served")
    # Three patients declared; one coefficient ciphertext carries 136, which is charged.
    assert [
        (e.payload["requester"], e.payload["batch_size"], e.payload["served_total"]) for e in served
    ] == [("researcher-user", 136, 136)]
    assert served[0].payload["model_hash"] == released


def test_inference_is_rate_limited_per_token(tmp_path: Path, db_url: str) -> None:
    now = [1_000_000.0]
    for api in open_api(
        tmp_path / "coordinator",
        db_url,
        inference_rate_per_minute=6,
        inference_burst=2,
        app_options={"rate_clock": lambda: now[0]},
    ):
        path = f"/api/v1/inference/models/{'0' * 64}"
        first = [api.call("GET", path, "researcher").status_code for _ in range(2)]
        assert first == [404, 404]  # allowed through; the model does not exist
        limited = api.call("GET", path, "researcher")
        assert limited.status_code == 429
        assert limited.json()["code"] == "rate_limited"
        assert limited.headers["retry-after"] == "10"
        assert api.call("GET", path, "admin").status_code == 404  # another token's allowance
        now[0] += 10.0
        assert api.call("GET", path, "researcher").status_code == 404
        assert api.call("GET", path, "researcher").status_code == 429


@pytest.mark.parametrize(
    ("path", "role", "body"),
    [
        ("/api/v1/datasets", "site", "dataset"),
        ("/api/v1/studies", "admin", "study"),
        ("/api/v1/statements", "site", "note"),
    ],
)
def test_a_nul_character_in_a_change_is_refused_before_anything_is_written(
    enrolled: Api, path: str, role: str, body: str
) -> None:
    # On PostgreSQL a text column refuses NUL: the change's audit row (its target built from
    # the request) must not be written before the input is validated, or this is a 500.
    site = enrolled.site
    payloads = {
        "dataset": site.signed("dataset.registered", {**site.dataset(), "dataset_id": "nul\0id"}),
        "study": study_document([site.name], "bad\0id"),
        "note": {
            "kind": "note.recorded",
            "payload": {"text": "IRB"},
            "signature": site.signed("note.recorded", {"text": "IRB"})["signature"][:-4] + "\0AA=",
        },
    }
    size = enrolled.service.ledger.size()
    actions = len(_actions(enrolled))
    response = enrolled.call("POST", path, role, json=payloads[body])
    assert response.status_code == 422, response.text
    assert enrolled.service.ledger.size() == size
    assert len(_actions(enrolled)) == actions
