"""A live console for browser tests: a real uvicorn on 127.0.0.1 over a real coordinator home.

``live`` initialises a coordinator (SQLite) in a temporary home, issues one token per role,
and serves the admin API's application (the console included) with uvicorn on an
ephemeral loopback port, in a thread of the test process, so the test can drive the same
:class:`CoordinatorService` the server uses (its SuperLink is kept in memory: runs are
submitted, stopped and recorded exactly as through the API). ``scene`` then records a
network's history through that service as the sites and the ServerApp would: two enrolled
sites with datasets, a study in two versions, signed approvals and a refusal, a run with a
round whose receipts are signed by the sites, a released-model-free ledger with two
checkpoints and a site's cosignature.

``browser`` is Debian's Chromium (``/usr/bin/chromium``, installed by ``.ci/run``) driven
through Playwright's Python API; no browser is ever downloaded. Screenshots go to
``VERACITY_CONSOLE_SCREENSHOTS`` or a temporary folder (never the repository).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from tests.factories import receipt_document
from tests.server.sites import Site, study_document, unique_site
from veracity.contracts.events import RoundCompleted
from veracity.contracts.receipts import RECEIPT_DOMAIN, Receipt, SignedReceipt
from veracity.ledger.checkpoint import cosign_checkpoint
from veracity.ledger.statement import sign_bound
from veracity.server.api.app import create_app
from veracity.server.api.serve import initialise
from veracity.server.api.settings import ApiSettings
from veracity.server.api.tokens import Role, TokenStore
from veracity.server.coordinator import CoordinatorService, InMemoryFederation, operator
from veracity.supervise import free_port

CHROMIUM = Path(os.environ.get("VERACITY_CHROMIUM", "/usr/bin/chromium"))
SETUP = operator("test-setup")
SERVER_APP = operator("serverapp")


@dataclass
class Live:
    """A console being served: its URL, tokens per role, the service behind it."""

    url: str
    tokens: dict[str, str]
    app: Any
    sites: list[Site] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def service(self) -> CoordinatorService:
        """The server's coordinator service."""
        service: CoordinatorService = self.app.state.service
        return service

    @property
    def token_store(self) -> TokenStore:
        """The server's token store."""
        tokens: TokenStore = self.app.state.tokens
        return tokens


def signed_round(
    sites: list[Site], run_id: str, study_hash: str, number: int, epsilon: float
) -> RoundCompleted:
    """A ``round.completed`` with a receipt signed by each site for dataset ``cohort-1``."""
    receipts = []
    for site in sites:
        receipt = receipt_document(
            site=site.name,
            study=study_hash,
            run_id=run_id,
            round=number,
            dataset_id="cohort-1",
            epsilon=epsilon,
        )
        receipts.append(
            SignedReceipt(
                receipt=Receipt.parse(receipt),
                signature=sign_bound(site.key, RECEIPT_DOMAIN, site.log_id, receipt),
            )
        )
    return RoundCompleted(
        run_id=run_id,
        study_hash=study_hash,
        round=number,
        participants=[site.name for site in sites],
        receipts=receipts,
        dropped=[],
        refused=[],
        aggregated_model_hash=f"{number:02d}" * 32,
        metrics={"train-loss": 1.0 / number},
    )


def _serve(app: Any, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="console-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    return server, thread


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The console on a real uvicorn over a fresh coordinator, one token per role."""
    home = tmp_path_factory.mktemp("console") / "coordinator"
    tokens: dict[str, str] = {}
    north, south = unique_site("north"), unique_site("south")
    with initialise(home, superlink_port=free_port()) as coordinator:
        store = TokenStore(coordinator.ledger.engine)
        for role in Role:
            tokens[role.value] = store.create(
                role=role,
                name=f"{role.value}-user",
                site=north.name if role is Role.SITE else None,
                expires_in=timedelta(days=1),
            ).token
    app = create_app(ApiSettings(data_dir=home, api_tls=False), federation=InMemoryFederation())
    server, thread = _serve(app, free_port())
    try:
        yield Live(
            url=f"http://127.0.0.1:{server.config.port}",
            tokens=tokens,
            app=app,
            sites=[north, south],
        )
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _statement(service: CoordinatorService, site: Site, kind: str, payload: dict[str, Any]) -> int:
    signed = site.signed(kind, payload)
    return service.record_statement(
        SETUP, kind, site.name, signed["payload"], signed["signature"]
    ).seq


@pytest.fixture(scope="module")
def scene(live: Live) -> Live:
    """A network's history recorded through the server's service, as the sites made it."""
    service = live.service
    north, south = live.sites
    for site in (north, south):
        service.enrol_site(
            SETUP,
            site.name,
            public_key_pem=site.key.public.pem(),
            proof=site.enrolment_proof(service.ledger.log_id),
            supernode_public_key=site.supernode_key,
        )
        _statement(service, site, "dataset.registered", site.dataset())
    first = service.propose_study(SETUP, study_document([north.name, south.name], "bc-1")).value
    revised = study_document([north.name, south.name], "bc-2")
    revised["dp"]["noise_multiplier"] = 1.3
    second = service.propose_study(SETUP, revised).value
    _statement(service, north, "study.approved", north.approval(second.study_hash))
    _statement(
        service, south, "study.refused", south.refusal(first.study_hash, "ethics review pending")
    )
    _statement(service, south, "study.approved", south.approval(second.study_hash))
    run_id = service.start_run(SETUP, second.study_hash).value.run_id
    service.record_round(
        SERVER_APP, signed_round([north, south], run_id, second.study_hash, 1, 0.8)
    )
    checkpoint = service.checkpoint(SETUP).value
    cosigned = {
        "site": north.name,
        "tree_size": checkpoint.tree_size,
        "root_hash": checkpoint.root_hash,
        "log_id": checkpoint.log_id,
        "signature": cosign_checkpoint(north.key, checkpoint),
    }
    _statement(service, north, "checkpoint.cosigned", cosigned)
    later = service.checkpoint(SETUP).value
    live.facts.update(
        study_v1=first.study_hash,
        study_v2=second.study_hash,
        run_id=run_id,
        checkpoints=(checkpoint.tree_size, later.tree_size),
        approved_seq=service.reads.decisions(second.study_hash)[north.name].seq,
    )
    return live


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the browser tests save screenshots (not the repository)."""
    configured = os.environ.get("VERACITY_CONSOLE_SCREENSHOTS")
    folder = Path(configured) if configured else tmp_path_factory.mktemp("console-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium under Playwright (skipped where neither is installed)."""
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield launched
        finally:
            launched.close()
