"""Every route, called with every role and with no token: the expected status is the table.

The calls that the table allows succeed for real (a site is enrolled on the SuperLink, a
run is started on it and stopped, an encrypted prediction is served), so a 2xx cell means
the role can do the thing, not just get past the guard.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from veracity.crypto.keys import generate_signing_key
from veracity.he.wire import CONTENT_TYPE
from veracity.ledger.note import SIG_COSIGNATURE_V1, Note, NoteVerifier, cosign
from veracity.ledger.witnessed import witness_name
from veracity.server.api.app import route_roles
from veracity.tasks.study import Study
from veracity.tasks.weights import weights_hash

from .conftest import (
    Api,
    EncryptedQuery,
    Site,
    encrypted_query,
    release_model,
    study_document,
    unique_site,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROLES = ("admin", "site", "researcher", "auditor", None)

# method, path,                                       admin site researcher auditor none
MATRIX: list[tuple[str, str, int, int, int, int, int]] = [
    ("GET", "/health",                                    200, 200, 200, 200, 200),
    ("GET", "/ready",                                     200, 200, 200, 200, 200),
    ("GET", "/api/v1/whoami",                             200, 200, 200, 200, 401),
    ("POST", "/api/v1/sites",                             201, 403, 403, 403, 401),
    ("GET", "/api/v1/sites",                              200, 403, 403, 403, 401),
    ("GET", "/api/v1/sites/{site}",                       200, 200, 403, 403, 401),
    ("POST", "/api/v1/sites/{name}/revoke",               200, 403, 403, 403, 401),
    ("POST", "/api/v1/sites/{name}/rotations",            201, 403, 403, 403, 401),
    ("POST", "/api/v1/datasets",                          403, 201, 403, 403, 401),
    ("GET", "/api/v1/datasets",                           200, 200, 403, 403, 401),
    ("POST", "/api/v1/studies",                           201, 403, 403, 403, 401),
    ("GET", "/api/v1/studies",                            200, 200, 403, 403, 401),
    ("GET", "/api/v1/studies/{study}",                    200, 200, 403, 403, 401),
    ("POST", "/api/v1/studies/{study}/decisions",         403, 201, 403, 403, 401),
    ("POST", "/api/v1/statements",                        403, 201, 403, 403, 401),
    ("POST", "/api/v1/runs",                              201, 403, 403, 403, 401),
    ("GET", "/api/v1/runs",                               200, 403, 403, 403, 401),
    ("GET", "/api/v1/runs/{run}",                         200, 403, 403, 403, 401),
    ("GET", "/api/v1/runs/{run}/rounds",                  200, 403, 403, 403, 401),
    ("GET", "/api/v1/runs/{run}/logs",                    200, 403, 403, 403, 401),
    ("GET", "/api/v1/runs/{run}/archive",                 200, 403, 403, 200, 401),
    ("GET", "/api/v1/runs/{run}/models/{global}",         200, 200, 403, 200, 401),
    ("POST", "/api/v1/runs/prune",                        200, 403, 403, 403, 401),
    ("POST", "/api/v1/runs/{run}/stop",                   200, 403, 403, 403, 401),
    ("POST", "/api/v1/analyses",                          201, 403, 201, 403, 401),
    ("GET", "/api/v1/analyses/{analysis}/runs/{analysis_run}", 200, 403, 200, 403, 401),
    ("GET", "/api/v1/models",                             200, 200, 200, 403, 401),
    ("GET", "/api/v1/models/{model}",                     200, 200, 200, 200, 401),
    ("GET", "/api/v1/models/{model}/weights",             200, 403, 403, 403, 401),
    ("GET", "/api/v1/models/{model}/budgets",             200, 403, 403, 403, 401),
    ("PUT", "/api/v1/models/{model}/budgets/{requester}", 200, 403, 403, 403, 401),
    ("POST", "/api/v1/models/{model}/explanations",      201, 403, 403, 403, 401),
    ("GET", "/api/v1/models/{model}/explanations",       200, 200, 200, 200, 401),
    ("GET", "/api/v1/inference/models/{model}",           200, 403, 200, 403, 401),
    ("POST", "/api/v1/inference/contexts",                201, 403, 201, 403, 401),
    ("POST", "/api/v1/inference/models/{model}/predict",  200, 403, 200, 403, 401),
    ("GET", "/api/v1/ledger",                             200, 403, 403, 200, 401),
    ("GET", "/api/v1/ledger/entries",                     200, 403, 403, 200, 401),
    ("GET", "/api/v1/ledger/entries/{seq}",               200, 403, 403, 200, 401),
    ("GET", "/api/v1/ledger/verify",                      200, 403, 403, 200, 401),
    ("POST", "/api/v1/ledger/jobs",                       202, 403, 403, 202, 401),
    ("GET", "/api/v1/ledger/jobs/{job}",                  200, 403, 403, 200, 401),
    ("GET", "/api/v1/ledger/jobs/{job}/bundle",           200, 403, 403, 200, 401),
    ("GET", "/api/v1/ledger/proofs/inclusion",            200, 403, 403, 200, 401),
    ("GET", "/api/v1/ledger/proofs/consistency",          200, 403, 403, 200, 401),
    ("GET", "/api/v1/ledger/checkpoints",                 200, 403, 403, 200, 401),
    ("POST", "/api/v1/ledger/checkpoints",                201, 403, 403, 403, 401),
    ("GET", "/api/v1/ledger/checkpoints/latest",          200, 403, 403, 200, 401),
    ("GET", "/api/v1/ledger/export",                      200, 403, 403, 200, 401),
    ("GET", "/api/v1/ledger/provenance/{model}",          200, 403, 403, 200, 401),
    ("GET", "/api/v1/ledger/witness/vkey",                200, 200, 403, 200, 401),
    ("GET", "/api/v1/ledger/witness/checkpoint",          200, 200, 403, 200, 401),
    ("GET", "/api/v1/ledger/witness/consistency",         200, 200, 403, 200, 401),
    ("GET", "/api/v1/ledger/witness/entries",             200, 200, 403, 200, 401),
    ("POST", "/api/v1/ledger/witness/cosignatures",       403, 201, 403, 403, 401),
    ("POST", "/api/v1/tokens",                            201, 403, 403, 403, 401),
    ("GET", "/api/v1/tokens",                             200, 403, 403, 403, 401),
    ("POST", "/api/v1/tokens/{token_id}/revoke",          200, 403, 403, 403, 401),
    ("GET", "/api/v1/actions",                            200, 403, 403, 403, 401),
]  # fmt: skip

_PLACEHOLDERS = {
    "{site}": "{name}",
    "{study}": "{study_hash}",
    "{run}": "{run_id}",
    "{model}": "{model_hash}",
    "{global}": "{model_hash}",
    "{seq}": "{seq}",
    "{token_id}": "{token_id}",
    "{requester}": "{requester}",
    "{analysis}": "{study_hash}",
    "{analysis_run}": "{run_id}",
    "{job}": "{job_id}",
}


@dataclass
class World:
    """What the table's calls act on, set up through the coordinator."""

    api: Api
    study_hash: str
    model_hash: str
    token_id: str
    query: EncryptedQuery
    analysis_hash: str
    run_id: str = "0"
    analysis_run_id: str = "0"
    explain_run_id: str = "0"
    job_id: str = "0" * 24
    made: list[str] = field(default_factory=list)
    spare: Site | None = None

    def path(self, template: str) -> str:
        return (
            template.replace("{analysis_run}", self.analysis_run_id)
            .replace("{job}", self.job_id)
            .replace("{analysis}", self.analysis_hash)
            .replace("{site}", self.api.site.name)
            .replace("{study}", self.study_hash)
            .replace("{run}", self.run_id)
            .replace("{model}", self.model_hash)
            .replace("{global}", self._initial_model())
            .replace("{seq}", "1")
            .replace("{token_id}", self.token_id)
            .replace("{requester}", "researcher-user")
            .replace("{name}", self._spare_site() if "{name}" in template else "")
        )

    def _initial_model(self) -> str:
        """The hash of the study's initial model: the first global model of its runs."""
        study = self.api.service.reads.study(self.study_hash).study
        assert isinstance(study, Study)
        return weights_hash(study.model_spec.initial_weights(study.model_seed))

    def _spare_site(self) -> str:
        """A site enrolled for this request alone (a revocation succeeds once per key)."""
        spare = unique_site("spare")
        self.api.enrol(spare)
        self.spare = spare
        return spare.name

    def _handover(self) -> dict[str, Any]:
        """The spare site's hand-over to a new key (the path named it just before)."""
        assert self.spare is not None
        log_id = self.api.service.ledger.log_id
        return {"json": self.spare.handover(log_id, generate_signing_key())}

    def _cosignature(self) -> dict[str, Any]:
        """A fresh witness key's valid cosignature of the newest checkpoint, as the site."""
        served = self.api.call("GET", "/api/v1/ledger/witness/checkpoint", "admin").json()
        text = Note.parse(served["note"]).text
        key, name = generate_signing_key(), witness_name(self.api.site.name)
        verifier = NoteVerifier.for_key(name, key.public, sig_type=SIG_COSIGNATURE_V1)
        line = cosign(key, name, text, timestamp=1_800_000_000).line()
        return {
            "json": {"tree_size": served["tree_size"], "cosignature": line, "vkey": str(verifier)}
        }

    def _job_done(self) -> dict[str, Any]:
        """Nothing to send; first the export job the table started has finished."""
        for _ in range(600):
            job = self.api.call("GET", f"/api/v1/ledger/jobs/{self.job_id}", "admin").json()
            if job["status"] in ("done", "failed"):
                break
            time.sleep(0.1)
        return {}

    def request(self, method: str, template: str) -> dict[str, Any]:
        """Keyword arguments of a valid request (fresh each time, so successes repeat)."""
        site = self.api.site
        tag = secrets.token_hex(3)
        bodies: dict[tuple[str, str], Callable[[], dict[str, Any]]] = {
            ("POST", "/api/v1/sites"): lambda: {
                "json": unique_site("east").enrolment(self.api.service.ledger.log_id)
            },
            ("POST", "/api/v1/datasets"): lambda: {
                "json": site.signed("dataset.registered", site.dataset(f"cohort-{tag}"))
            },
            ("POST", "/api/v1/studies"): lambda: {
                "json": study_document([site.name], study_id=f"matrix-{tag}")
            },
            ("POST", "/api/v1/studies/{study}/decisions"): lambda: {
                "json": {
                    "kind": "study.approved",
                    **site.signed("study.approved", site.approval(self.study_hash)),
                }
            },
            ("POST", "/api/v1/statements"): lambda: {
                "json": {
                    "kind": "note.recorded",
                    **site.signed("note.recorded", {"text": f"ethics approval {tag}"}),
                }
            },
            ("POST", "/api/v1/runs"): lambda: {"json": {"study_hash": self.study_hash}},
            ("POST", "/api/v1/runs/prune"): lambda: {
                "json": {"older_than_days": 0, "dry_run": True}
            },
            ("POST", "/api/v1/ledger/jobs"): lambda: {"json": {"kind": "export"}},
            ("GET", "/api/v1/ledger/jobs/{job}/bundle"): self._job_done,
            ("POST", "/api/v1/analyses"): lambda: {"json": {"study_hash": self.analysis_hash}},
            ("GET", "/api/v1/runs/{run}/logs"): lambda: {"params": {"wait": 0.2}},
            ("POST", "/api/v1/inference/contexts"): lambda: {
                "content": self.query.context,
                "headers": {"Content-Type": CONTENT_TYPE},
            },
            ("POST", "/api/v1/inference/models/{model}/predict"): lambda: {
                "content": self.query.request,
                "headers": {"Content-Type": CONTENT_TYPE},
            },
            ("PUT", "/api/v1/models/{model}/budgets/{requester}"): lambda: {
                "json": {"budget": 100_000}
            },
            ("POST", "/api/v1/models/{model}/explanations"): lambda: {
                "json": {"epsilon": 0.5, "clip_norm": 1.0, "steps": 8}
            },
            ("GET", "/api/v1/ledger/proofs/inclusion"): lambda: {"params": {"seq": 1}},
            ("GET", "/api/v1/ledger/proofs/consistency"): lambda: {"params": {"old_size": 1}},
            ("POST", "/api/v1/sites/{name}/revoke"): lambda: {"json": {"reason": "rotation"}},
            ("POST", "/api/v1/sites/{name}/rotations"): self._handover,
            ("GET", "/api/v1/ledger/witness/consistency"): lambda: {"params": {"old_size": 1}},
            ("GET", "/api/v1/ledger/witness/entries"): lambda: {"params": {"start": 0, "end": 2}},
            ("POST", "/api/v1/ledger/witness/cosignatures"): self._cosignature,
            ("POST", "/api/v1/tokens"): lambda: {
                "json": {"role": "researcher", "name": f"clinic {tag}"}
            },
        }
        factory = bodies.get((method, template))
        return factory() if factory is not None else {}


@pytest.fixture
def world(api_with_superlink: Api, trained_models: dict[str, Any], breast_cancer: Any) -> World:
    api = api_with_superlink
    site, other = api.site, api.other_site
    for member in (site, other):
        api.enrol(member)
        api.register(member)
    study_hash = api.propose(study_document([site.name, other.name]))
    api.approve(site, study_hash)
    spec, weights = trained_models["logistic"]
    model_hash = release_model(
        api, spec, weights, list(breast_cancer.feature_names), "malignant", study_hash=study_hash
    )
    api.service.ledger.checkpoint()
    analysis_hash = api.propose(
        {
            "kind": "analysis",
            "study_id": "matrix-analysis",
            "columns": {"age": {"lower": 0.0, "upper": 100.0}},
            "queries": [{"query_id": "n", "kind": "count", "epsilon": 0.5}],
            "delta": 1e-5,
            "epsilon_caps": {site.name: 2.0},  # the cap site.approval() signs
        }
    )
    api.approve(site, analysis_hash)
    token_id = api.token_store.create(role="auditor", name="to be revoked").info.id
    described = api.call("GET", f"/api/v1/inference/models/{model_hash}", "admin").json()
    query = encrypted_query(described, breast_cancer.test_x[:1])
    return World(api, study_hash, model_hash, token_id, query, analysis_hash)


def _expected(row: tuple[str, str, int, int, int, int, int]) -> dict[str | None, int]:
    return dict(zip(ROLES, row[2:], strict=True))


def test_every_route_answers_every_role_as_the_table_says(world: World) -> None:
    api = world.api
    mismatches = []
    for row in MATRIX:
        method, template = row[0], row[1]
        for role, status in _expected(row).items():
            response = api.call(
                method, world.path(template), role, **world.request(method, template)
            )
            if method == "POST" and template == "/api/v1/runs" and response.status_code == 201:
                world.run_id = response.json()["run_id"]
            if (
                method == "POST"
                and template == "/api/v1/ledger/jobs"
                and response.status_code == 202
            ):
                world.job_id = response.json()["job_id"]
            if method == "POST" and template == "/api/v1/analyses" and response.status_code == 201:
                world.analysis_run_id = response.json()["run_id"]
            if template.endswith("/explanations") and response.status_code == 201:
                world.explain_run_id = response.json()["run_id"]
            if response.status_code != status:
                mismatches.append(
                    f"{method} {template} as {role}: {response.status_code} != {status} "
                    f"({response.text[:160]})"
                )
            if response.status_code in (401, 403):
                body = response.json()
                assert body["code"] in ("unauthenticated", "forbidden"), body
            if response.status_code == 401:
                assert response.headers["www-authenticate"] == "Bearer"
    assert not mismatches, "\n".join(mismatches)
    entries = api.service.ledger.entries()
    served = [e.payload["requester"] for e in entries if e.kind == "inference.served"]
    assert sorted(served) == ["admin-user", "researcher-user"]
    finished = [
        e.payload
        for e in entries
        if e.kind == "run.finished"
        and e.payload["study_hash"] == world.study_hash
        and e.payload["run_id"] != world.explain_run_id  # waits for sites that never come
    ]
    assert [(f["run_id"], f["status"]) for f in finished] == [(world.run_id, "stopped")]


def test_the_table_covers_every_route_and_matches_the_declared_roles(api: Api) -> None:
    declared = route_roles(api.app)
    tabled = {(row[0], row[1]): row for row in MATRIX if row[1].startswith("/api/v1")}
    as_routes = {}
    for (method, template), row in tabled.items():
        path = template
        for short, name in _PLACEHOLDERS.items():
            path = path.replace(short, name)
        as_routes[(method, path)] = row
    assert set(as_routes) == set(declared)
    for key, row in as_routes.items():
        allowed = {role for role, status in _expected(row).items() if 200 <= status < 300}
        assert allowed == {role.value for role in declared[key]}, key


def test_refusals_are_logged(world: World, caplog: pytest.LogCaptureFixture) -> None:
    api = world.api
    with caplog.at_level("WARNING", logger="veracity.server.api.auth"):
        api.call("GET", "/api/v1/ledger", None)
        api.call("GET", "/api/v1/ledger", "researcher")
        api.call("GET", "/api/v1/ledger", None, headers={"Authorization": "Bearer vrc_nope"})
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("401 GET /api/v1/ledger") and "no bearer token" in m for m in messages)
    assert any(m.startswith("401 GET /api/v1/ledger") and "unknown token" in m for m in messages)
    assert any(m.startswith("403 GET /api/v1/ledger") and "researcher" in m for m in messages)
    assert all(api.tokens["researcher"] not in m for m in messages)
