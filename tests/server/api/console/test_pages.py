"""The console's pages through the app (TestClient): sign-in, role-aware screens, changes.

Browser tests with a real Chromium are in ``test_browser.py``; these check the server side:
which screens each role gets, that a revoked token is refused on its next page, that a
change needs the page's CSRF value, and that every page forbids other origins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.server.api.conftest import SETUP, Api, site_witness, study_document
from veracity.server.api.console.screens import SCREENS, screens_for
from veracity.server.api.console.session import COOKIE, csrf_value
from veracity.server.api.tokens import Role
from veracity.server.coordinator.site_software import SiteSoftware, record_site_software

ROLES = ["admin", "site", "researcher", "auditor"]


def sign_in(api: Api, role: str) -> None:
    """Sign the test client in with ``role``'s token (the cookie the form sets)."""
    api.client.cookies.clear()
    answer = api.client.post("/signin", data={"token": api.tokens[role]}, follow_redirects=False)
    assert answer.status_code == 303
    assert COOKIE in answer.cookies


def get(api: Api, path: str, **kwargs: Any) -> Any:
    return api.client.get(path, follow_redirects=False, **kwargs)


def test_a_page_without_a_session_goes_to_sign_in(api: Api) -> None:
    api.client.cookies.clear()
    answer = get(api, "/runs")
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/signin?next=/runs")


def test_an_unknown_token_is_refused_at_sign_in(api: Api) -> None:
    answer = api.client.post("/signin", data={"token": "vrc_nope"}, follow_redirects=False)
    assert answer.status_code == 401
    assert COOKIE not in answer.cookies


@pytest.mark.parametrize("role", ROLES)
def test_each_role_opens_exactly_its_screens(api: Api, role: str) -> None:
    sign_in(api, role)
    allowed = {s.key for s in screens_for(Role(role))}
    overview = get(api, "/")
    assert overview.status_code == 200
    for screen in SCREENS:
        linked = f'data-screen="{screen.key}"' in overview.text
        assert linked == (screen.key in allowed), screen.key
        status = get(api, screen.path).status_code
        assert status == (200 if screen.key in allowed else 403), screen.key


def test_a_revoked_token_is_refused_on_its_next_page(api: Api) -> None:
    sign_in(api, "auditor")
    assert get(api, "/ledger").status_code == 200
    auditor = api.token_store.lookup(api.tokens["auditor"])
    assert auditor is not None
    api.token_store.revoke(auditor.id)
    answer = get(api, "/ledger")
    assert answer.status_code == 303
    assert "revoked" in answer.headers["location"]


def test_the_admin_revokes_a_token_from_the_console(api: Api) -> None:
    sign_in(api, "admin")
    target = api.token_store.lookup(api.tokens["researcher"])
    assert target is not None
    answer = api.client.post(
        f"/access/tokens/{target.id}/revoke",
        data={"csrf": csrf_value(api.tokens["admin"])},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    refused = api.call("GET", "/api/v1/whoami", "researcher")
    assert refused.status_code == 401


def test_a_change_without_the_page_csrf_value_is_refused(api: Api) -> None:
    sign_in(api, "admin")
    target = api.token_store.lookup(api.tokens["researcher"])
    assert target is not None
    answer = api.client.post(f"/access/tokens/{target.id}/revoke", data={"csrf": "0" * 64})
    assert answer.status_code == 403
    assert api.call("GET", "/api/v1/whoami", "researcher").status_code == 200


def test_a_change_from_another_origin_is_refused(api: Api) -> None:
    sign_in(api, "admin")
    target = api.token_store.lookup(api.tokens["researcher"])
    assert target is not None
    answer = api.client.post(
        f"/access/tokens/{target.id}/revoke",
        data={"csrf": csrf_value(api.tokens["admin"])},
        headers={"Origin": "https://evil.example"},
    )
    assert answer.status_code == 403
    assert api.call("GET", "/api/v1/whoami", "researcher").status_code == 200


def test_pages_allow_only_their_own_origin(api: Api) -> None:
    sign_in(api, "admin")
    policy = get(api, "/").headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy


def test_a_sign_in_never_redirects_to_another_host(api: Api) -> None:
    answer = api.client.post(
        "/signin",
        data={"token": api.tokens["admin"], "next": "//evil.example/x"},
        follow_redirects=False,
    )
    assert answer.headers["location"] == "/"


def test_the_admin_issues_a_token_shown_once(api: Api) -> None:
    sign_in(api, "admin")
    answer = api.client.post(
        "/access/tokens",
        data={
            "csrf": csrf_value(api.tokens["admin"]),
            "role": "auditor",
            "name": "ethics-board",
            "days": "7",
        },
    )
    assert answer.status_code == 200
    issued = answer.text.split('id="issued" readonly value="')[1].split('"')[0]
    assert (
        api.call(
            "GET", "/api/v1/whoami", None, headers={"Authorization": f"Bearer {issued}"}
        ).json()["name"]
        == "ethics-board"
    )


def test_a_site_sees_only_studies_naming_it(api: Api) -> None:
    api.enrol(api.site)
    api.enrol(api.other_site)
    mine = api.propose(study_document([api.site.name], "mine"))
    theirs = api.propose(study_document([api.other_site.name], "theirs"))
    sign_in(api, "site")
    listing = get(api, "/studies").text
    assert mine in listing
    assert theirs not in listing
    assert get(api, f"/studies/{theirs}").status_code == 404


def test_a_study_diff_shows_the_changed_terms(api: Api) -> None:
    api.enrol(api.site)
    first = api.propose(study_document([api.site.name], "v1"))
    second = api.propose(study_document([api.site.name], "v2"))
    sign_in(api, "admin")
    page = get(api, f"/studies/diff?old={first}&new={second}")
    assert page.status_code == 200
    assert "<del>-  &#34;study_id&#34;: &#34;v1&#34;,</del>" in page.text
    assert "<ins>+  &#34;study_id&#34;: &#34;v2&#34;,</ins>" in page.text


def test_a_note_with_markup_is_shown_as_text_not_run(api: Api) -> None:
    api.enrol(api.site)
    hostile = '<script>alert(1)</script><img src="https://evil.example/x">'
    signed = api.site.signed("note.recorded", {"text": hostile})
    api.service.record_statement(
        SETUP, "note.recorded", api.site.name, signed["payload"], signed["signature"]
    )
    sign_in(api, "auditor")
    page = get(api, "/ledger?kind=note.recorded").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert(1)" not in page
    assert '<img src="https://evil.example' not in page


def test_a_model_shows_its_card_release_and_inferences_per_requester(api: Api) -> None:
    import numpy as np

    from tests.server.api.conftest import release_model
    from veracity.contracts.events import InferenceServed
    from veracity.tasks.spec import ModelFamily, ModelSpec

    spec = ModelSpec(family=ModelFamily.LOGISTIC, n_features=2)
    weights = {
        "linear.weight": np.array([[0.5, -0.25]], dtype=np.float32),
        "linear.bias": np.array([0.1], dtype=np.float32),
    }
    model_hash = release_model(api, spec, weights, ["a", "b"], "y")
    for total in (3, 5):
        api.service.record_inference(
            InferenceServed(
                model_hash=model_hash,
                requester="clinic-7",
                he_params_hash="ab" * 32,
                batch_size=total,
                request_hash=f"{total:02d}" * 32,
                served_total=total,
            )
        )
    sign_in(api, "researcher")
    page = get(api, f"/models/{model_hash}")
    assert page.status_code == 200
    assert "bc-logistic" in page.text
    assert "accuracy 0.95" in page.text
    row = page.text.split('<th scope="row">clinic-7</th>')[1].split("</tr>")[0]
    assert row == "<td>2</td><td>5</td>"


def test_the_ledger_explorer_filters_by_kind_actor_and_time(api: Api) -> None:
    api.enrol(api.site)
    api.enrol(api.other_site)
    api.register(api.site)
    api.register(api.other_site)
    sign_in(api, "auditor")
    by_kind = get(api, "/ledger?kind=dataset.registered").text
    assert by_kind.count('data-seq="') == 2
    by_actor = get(api, f"/ledger?kind=dataset.registered&actor={api.site.name}").text
    assert by_actor.count('data-seq="') == 1
    assert get(api, "/ledger?after=2999-01-01").text.count('data-seq="') == 0
    assert get(api, "/ledger?before=2000-01-01").text.count('data-seq="') == 0
    assert get(api, "/ledger?kind=no.such").status_code == 422


def test_an_auditor_may_not_sign_a_checkpoint(api: Api) -> None:
    sign_in(api, "auditor")
    size = api.service.ledger.size()
    answer = api.client.post(
        "/ledger/checkpoints", data={"csrf": csrf_value(api.tokens["auditor"])}
    )
    assert answer.status_code == 403
    assert api.service.ledger.latest_checkpoint() is None
    assert api.service.ledger.size() == size


def test_the_overview_shows_the_witnesses_that_cosigned_the_latest_checkpoint(
    api: Api, tmp_path: Path
) -> None:
    api.enrol(api.site)
    api.register(api.site)
    api.service.ledger.checkpoint()
    sign_in(api, "auditor")
    assert "no witness has cosigned this checkpoint yet" in get(api, "/").text
    witness = site_witness(api, tmp_path / "w")
    assert witness.once()["cosigned"] == api.service.ledger.latest_checkpoint().tree_size  # type: ignore[union-attr]
    sign_in(api, "auditor")
    overview = get(api, "/").text
    witnesses = overview.split('id="witnesses"')[1].split("</dd>")[0]
    assert api.site.name in witnesses
    assert "2027-01-15T08:00:00Z" in witnesses  # the witness's own clock: 1.8e9 s
    assert api.other_site.name not in witnesses
    checkpoints = get(api, "/ledger/checkpoints").text
    assert f'title="cosignature/v1 by key {witness.witness.verifier.key_id.hex()}' in checkpoints


def test_the_overview_shows_each_sites_reported_software(api: Api) -> None:
    api.enrol(api.site)
    api.enrol(api.other_site)
    code = "cd" * 32
    record_site_software(
        api.service.home.data_dir,
        [SiteSoftware(api.site.name, "9.8.7", code, "42", "2026-12-06T09:00:00Z")],
    )
    sign_in(api, "admin")
    rows = {
        row.split("</th>")[0].split(">")[-1]: row
        for row in get(api, "/").text.split('<tr><th scope="row">')[1:]
    }
    assert "Veracity 9.8.7" in rows[api.site.name]
    assert f'title="{code}"' in rows[api.site.name]
    assert "run 42" in rows[api.site.name]
    assert "not reported yet" in rows[api.other_site.name]
