"""The console in a real Chromium against a live server (issue 17's "done when").

Each test signs in through the page's own form, as a person would. Every request the
pages make is recorded and must stay on the server's own origin. Screenshots of each screen
at 1280 and 390 px are saved to the ``screenshots`` folder (not the repository).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server.api.console.conftest import SERVER_APP, Live, signed_round
from veracity.server.api.console.screens import SCREENS, screens_for
from veracity.server.api.tokens import Role

pytestmark = pytest.mark.integration

WIDTHS = {"wide": 1280, "narrow": 390}
WAIT_MS = 20_000


class Session:
    """One person's browser context, signed in with a role's token; records every request."""

    def __init__(self, browser: Any, live: Live, role: str, *, width: int = 1280) -> None:
        self.live = live
        self.context = browser.new_context(viewport={"width": width, "height": 900})
        self.requests: list[str] = []
        self.context.on("request", lambda request: self.requests.append(request.url))
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.sign_in(live.tokens[role])

    def sign_in(self, token: str) -> None:
        """Fill the sign-in form and submit it."""
        self.page.goto(f"{self.live.url}/signin")
        self.page.get_by_label("Access token").fill(token)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_load_state()

    def open(self, path: str) -> Any:
        """Go to ``path``; the response."""
        return self.page.goto(f"{self.live.url}{path}")

    def off_origin(self) -> list[str]:
        """Requests that left the server's origin."""
        return [url for url in self.requests if not url.startswith(self.live.url + "/")]

    def close(self) -> None:
        """Close the context."""
        self.context.close()


@pytest.fixture
def sessions(browser: Any, scene: Live) -> Iterator[list[Session]]:
    """Sessions opened by a test, closed after it; each must have stayed on its origin."""
    opened: list[Session] = []
    yield opened
    for session in opened:
        leaked = session.off_origin()
        session.close()
        assert leaked == [], f"requests left the server's origin: {leaked}"


def open_session(
    sessions: list[Session], browser: Any, live: Live, role: str, **kw: Any
) -> Session:
    session = Session(browser, live, role, **kw)
    sessions.append(session)
    return session


@pytest.mark.parametrize("role", [r.value for r in Role])
def test_each_role_sees_exactly_its_screens(
    browser: Any, scene: Live, sessions: list[Session], screenshots: Path, role: str
) -> None:
    allowed = {s.key for s in screens_for(Role(role))}
    for label, width in WIDTHS.items():
        session = open_session(sessions, browser, scene, role, width=width)
        page = session.page
        assert page.url == f"{scene.url}/"
        linked = set(
            page.locator("nav a[data-screen]").evaluate_all("l => l.map(a => a.dataset.screen)")
        )
        assert linked == allowed
        for screen in SCREENS:
            response = session.open(screen.path)
            if screen.key in allowed:
                assert response.status == 200, screen.key
                assert page.locator("h1").first.is_visible()
                page.screenshot(
                    path=str(screenshots / f"{role}-{screen.key}-{label}.png"), full_page=True
                )
            else:
                assert response.status == 403, screen.key
                assert page.get_by_role("heading", name="Not for your role").is_visible()
        # Nothing is wider than the window: the layout works at this width.
        session.open("/")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{role} overview overflows by {overflow} px at {width} px"


def test_keyboard_reaches_the_navigation_from_the_skip_link(
    browser: Any, scene: Live, sessions: list[Session]
) -> None:
    page = open_session(sessions, browser, scene, "admin").page
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.dataset.screen") == "overview"
    unlabelled = page.evaluate(
        """[...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
           .filter(e => !e.labels || e.labels.length === 0).map(e => e.name)"""
    )
    assert unlabelled == []


def test_overview_shows_sites_studies_runs_and_the_cosigned_checkpoint(
    browser: Any, scene: Live, sessions: list[Session]
) -> None:
    page = open_session(sessions, browser, scene, "admin").page
    north, south = scene.sites
    sites = page.locator("section[aria-labelledby=h-sites]")
    assert north.name in sites.inner_text()
    assert south.name in sites.inner_text()
    assert (
        "2 of 2 sites approved" in page.locator("section[aria-labelledby=h-studies]").inner_text()
    )
    assert (
        f"Run {scene.facts['run_id']}"
        in page.locator("section[aria-labelledby=h-runs]").inner_text()
    )
    checkpoint = page.locator("section[aria-labelledby=h-checkpoint]").inner_text()
    assert f"{scene.facts['checkpoints'][1]} of" in checkpoint


def test_a_run_shows_new_rounds_without_a_reload_and_an_admin_stops_it(
    browser: Any, scene: Live, sessions: list[Session], screenshots: Path
) -> None:
    session = open_session(sessions, browser, scene, "admin")
    page = session.page
    run_id = scene.facts["run_id"]
    north, south = scene.sites
    session.open(f"/runs/{run_id}")
    assert page.locator("tr[data-round='1']").is_visible()
    loads: list[str] = []
    page.on("load", lambda _: loads.append(page.url))
    two = signed_round([north, south], run_id, scene.facts["study_v2"], 2, 1.4)
    scene.service.record_round(SERVER_APP, two)
    page.locator("tr[data-round='2']").wait_for()
    assert page.locator("#rounds-done").inner_text() == "2"
    assert f"{south.name}: 1.400" in page.locator("tr[data-round='2']").inner_text()
    assert loads == [], "the page reloaded"
    page.screenshot(path=str(screenshots / "admin-run-live.png"), full_page=True)
    page.get_by_role("button", name="Stop this run").click()
    page.wait_for_load_state()
    assert "stopped" in page.locator("#run-state").inner_text()
    assert scene.service.reads.run(run_id).finished is not None


def test_an_inclusion_proof_verifies_in_the_browser_and_fails_when_tampered(
    browser: Any, scene: Live, sessions: list[Session], screenshots: Path
) -> None:
    page = open_session(sessions, browser, scene, "auditor").page
    seq = scene.facts["approved_seq"]
    page.goto(f"{scene.url}/ledger/entries/{seq}")
    verdict = page.locator("#verdict")
    page.locator("#verdict[data-state]").wait_for()
    assert verdict.get_attribute("data-state") == "verified", verdict.inner_text()
    page.screenshot(path=str(screenshots / "auditor-proof-verified.png"), full_page=True)
    # Tamper with the first hash of the path, in the page, and check again.
    bundle = json.loads(page.locator("#proof-json").input_value())
    first = bundle["proof"]["proof"][0]
    bundle["proof"]["proof"][0] = ("0" if first[0] != "0" else "1") + first[1:]
    page.locator("#proof-json").fill(json.dumps(bundle))
    page.get_by_role("button", name="Verify in this browser").click()
    page.locator("#verdict[data-state=failed]").wait_for()
    assert "another root" in verdict.inner_text()
    page.screenshot(path=str(screenshots / "auditor-proof-tampered.png"), full_page=True)


def test_a_forged_checkpoint_signature_fails_in_the_browser(
    browser: Any, scene: Live, sessions: list[Session]
) -> None:
    page = open_session(sessions, browser, scene, "auditor").page
    page.goto(f"{scene.url}/ledger/entries/{scene.facts['approved_seq']}")
    page.locator("#verdict[data-state=verified]").wait_for()
    bundle = json.loads(page.locator("#proof-json").input_value())
    bundle["checkpoint"]["timestamp"] = "2000-01-01T00:00:00.000000Z"
    page.locator("#proof-json").fill(json.dumps(bundle))
    page.get_by_role("button", name="Verify in this browser").click()
    page.locator("#verdict[data-state=failed]").wait_for()
    assert "does not verify under the root key" in page.locator("#verdict").inner_text()


def test_consistency_between_two_checkpoints_verifies_in_the_browser(
    browser: Any, scene: Live, sessions: list[Session], screenshots: Path
) -> None:
    page = open_session(sessions, browser, scene, "auditor").page
    old, new = scene.facts["checkpoints"]
    page.goto(f"{scene.url}/ledger/checkpoints")
    page.get_by_label("Older checkpoint").select_option(str(old))
    page.get_by_label("Newer checkpoint").select_option(str(new))
    page.get_by_role("button", name="Check consistency").click()
    page.locator("#verdict[data-state]").wait_for()
    assert page.locator("#verdict").get_attribute("data-state") == "verified"
    page.screenshot(path=str(screenshots / "auditor-consistency.png"), full_page=True)
    bundle = json.loads(page.locator("#proof-json").input_value())
    bundle["new_checkpoint"]["root_hash"] = bundle["old_checkpoint"]["root_hash"]
    page.locator("#proof-json").fill(json.dumps(bundle))
    page.get_by_role("button", name="Verify in this browser").click()
    page.locator("#verdict[data-state=failed]").wait_for()


def test_an_admin_revokes_a_token_and_its_next_request_is_refused(
    browser: Any, scene: Live, sessions: list[Session]
) -> None:
    victim_token = scene.token_store.create(role=Role.AUDITOR, name="leaving-auditor").token
    victim = open_session(sessions, browser, scene, "auditor")
    victim.sign_in(victim_token)
    assert victim.open("/ledger").status == 200
    admin = open_session(sessions, browser, scene, "admin").page
    admin.goto(f"{scene.url}/access")
    info = scene.token_store.lookup(victim_token)
    assert info is not None
    admin.locator(f"tr[data-token='{info.id}']").get_by_role(
        "button", name=re.compile("Revoke")
    ).click()
    admin.wait_for_load_state()
    assert "revoked" in admin.locator(f"tr[data-token='{info.id}']").inner_text()
    victim.open("/ledger")
    assert victim.page.url.startswith(f"{scene.url}/signin")
    assert "revoked" in victim.page.get_by_role("alert").inner_text()


def test_a_site_sees_its_own_budget_spent_against_its_cap(
    browser: Any, scene: Live, sessions: list[Session], screenshots: Path
) -> None:
    page = open_session(sessions, browser, scene, "site").page
    north = scene.sites[0]
    page.goto(f"{scene.url}/budgets")
    headings = page.locator("main h2").all_inner_texts()
    assert headings == [f"{north.name} / cohort-1"]
    chart = page.locator("svg.chart")
    assert chart.locator("path.spent").count() == 1
    assert chart.locator("line.cap").count() == 1
    assert "of cap 2.000" in page.locator("main").inner_text()
    page.screenshot(path=str(screenshots / "site-budget-chart.png"), full_page=True)
