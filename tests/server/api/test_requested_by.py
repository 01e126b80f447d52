"""Who asked: every admin action names its requester inside the payload the root signs.

The attack: the ledger named "coordinator" for every admin action, so an auditor holding
the signed ledger could not tell which person enrolled a site, proposed a study or stopped a
run (the API's own action table, which says so, is the coordinator's word, not signed);
weight downloads and query budgets reached only that table.
"""

from __future__ import annotations

from typing import Any

from tests.server.api.conftest import Api, release_model
from veracity.tasks.weights import weights_to_bytes


def test_an_admin_action_names_the_tokens_holder_in_the_signed_payload(api: Api) -> None:
    body = api.site.enrolment(api.service.ledger.log_id)
    assert api.call("POST", "/api/v1/sites", "admin", json=body).status_code == 201
    entries = api.service.ledger.entries(kind="key.enrolled")
    enrolled = [e for e in entries if e.payload["name"] == api.site.name]
    assert len(enrolled) == 1
    assert enrolled[0].payload["requested_by"] == "admin-user"
    genesis = entries[0]
    assert "requested_by" not in genesis.payload  # the root's own enrolment at genesis
    answer = api.call("GET", f"/api/v1/ledger/entries/{enrolled[0].seq}", "auditor").json()
    assert answer["payload"]["requested_by"] == "admin-user"


def test_a_revocation_names_who_revoked(api: Api) -> None:
    api.enrol(api.site)
    response = api.call(
        "POST",
        f"/api/v1/sites/{api.site.name}/revoke",
        "admin",
        json={"reason": "its key leaked", "withdraw_supernode": False},
    )
    assert response.status_code == 200, response.text
    (revoked,) = api.service.ledger.entries(kind="key.revoked")
    assert revoked.payload["requested_by"] == "admin-user"
    assert revoked.payload["reason"] == "its key leaked"
    assert api.service.ledger.key_at(api.site.name) is None
    sites = api.call("GET", "/api/v1/sites", "admin").json()["items"]
    assert [s["key_id"] for s in sites if s["name"] == api.site.name] == [None]
    again = api.call(
        "POST", f"/api/v1/sites/{api.site.name}/revoke", "admin", json={"reason": "twice"}
    )
    assert again.status_code == 422
    as_site = api.call(
        "POST", f"/api/v1/sites/{api.site.name}/revoke", "site", json={"reason": "mine"}
    )
    assert as_site.status_code == 403


def test_token_issue_and_revocation_are_ledger_events_naming_who(api: Api) -> None:
    created = api.call(
        "POST",
        "/api/v1/tokens",
        "admin",
        json={"role": "researcher", "name": "clinic north", "expires_in_days": 7},
    )
    assert created.status_code == 201, created.text
    info = created.json()["info"]
    (issued,) = api.service.ledger.entries(kind="token.issued")
    assert issued.payload == {
        "token_id": info["id"],
        "name": "clinic north",
        "role": "researcher",
        "expires_at": info["expires_at"],
        "requested_by": "admin-user",
    }
    assert created.json()["token"] not in issued.body.decode()
    for _ in range(2):  # revoking twice records once
        answer = api.call("POST", f"/api/v1/tokens/{info['id']}/revoke", "admin")
        assert answer.status_code == 200
    (revoked,) = api.service.ledger.entries(kind="token.revoked")
    assert revoked.payload == {
        "token_id": info["id"],
        "name": "clinic north",
        "requested_by": "admin-user",
    }
    actions = api.call("GET", "/api/v1/actions", "admin").json()["items"]
    token_actions = [(a["action"], a["ledger_seq"]) for a in actions if "token" in a["action"]]
    assert token_actions[-2:] == [("token.create", issued.seq), ("token.revoke", revoked.seq)]


def test_weight_downloads_and_query_budgets_are_ledger_events_naming_who(
    api: Api, trained_models: dict[str, Any], breast_cancer: Any
) -> None:
    spec, weights = trained_models["logistic"]
    model = release_model(api, spec, weights, list(breast_cancer.feature_names), "malignant")

    download = api.call("GET", f"/api/v1/models/{model}/weights", "admin")
    assert download.status_code == 200
    assert download.content == weights_to_bytes(api.service.registry.get(model).weights)
    (downloaded,) = api.service.ledger.entries(kind="model.downloaded")
    assert downloaded.payload == {"model_hash": model, "requested_by": "admin-user"}
    assert api.call("GET", f"/api/v1/models/{'0' * 64}/weights", "admin").status_code == 404
    assert len(api.service.ledger.entries(kind="model.downloaded")) == 1  # nothing served

    path = f"/api/v1/models/{model}/budgets/clinic-north"
    answer = api.call("PUT", path, "admin", json={"budget": 31})
    assert answer.status_code == 200, answer.text
    assert api.call("PUT", path, "admin", json={"budget": -1}).status_code == 422
    (budget_set,) = api.service.ledger.entries(kind="inference.budget_set")
    assert budget_set.payload == {
        "model_hash": model,
        "requester": "clinic-north",
        "budget": 31,
        "requested_by": "admin-user",
    }
    actions = api.call("GET", "/api/v1/actions", "admin").json()["items"]
    recorded = [(a["action"], a["ledger_seq"]) for a in actions if a["target"].startswith(model)]
    assert recorded[-2:] == [
        ("model.weights", downloaded.seq),
        ("inference.budget", budget_set.seq),
    ]
    api.service.ledger.verify(api.service.ledger.identity_public_key)
