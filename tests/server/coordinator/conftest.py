"""Fixtures for the coordinator service: a fresh coordinator over a SuperLink kept in memory.

``service`` runs on SQLite; ``service_on`` on each database (``db_url``). Changes a test
only sets up are made as ``SETUP``; the actor under test is named in the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factories import receipt_document
from tests.server.faults import failing_at, failing_commit
from tests.server.sites import Site, study_document
from veracity.contracts.events import RoundCompleted
from veracity.contracts.receipts import RECEIPT_DOMAIN, Receipt, SignedReceipt
from veracity.ledger.statement import sign_bound
from veracity.server.coordinator import (
    CoordinatorService,
    InMemoryFederation,
    init_coordinator,
    operator,
)

#: Who sets a test's scene.
SETUP = operator("test-setup")

__all__ = [
    "SETUP",
    "enrol",
    "approve",
    "ready_study",
    "round_completed",
    "failing_at",
    "failing_commit",
]


@pytest.fixture
def federation() -> InMemoryFederation:
    """The SuperLink, in memory."""
    return InMemoryFederation()


@pytest.fixture
def service(tmp_path: Path, federation: InMemoryFederation) -> Iterator[CoordinatorService]:
    """A fresh coordinator on SQLite over the in-memory SuperLink."""
    with init_coordinator(tmp_path / "coordinator", federation=federation) as opened:
        yield opened


@pytest.fixture
def service_on(
    tmp_path: Path, db_url: str, federation: InMemoryFederation
) -> Iterator[CoordinatorService]:
    """A fresh coordinator on each database over the in-memory SuperLink."""
    with init_coordinator(tmp_path / "coordinator", db_url=db_url, federation=federation) as opened:
        yield opened


def enrol(service: CoordinatorService, site: Site, *, dataset: bool = True) -> None:
    """Enrol ``site`` and record its dataset ``cohort-1`` (set-up)."""
    service.enrol_site(
        SETUP,
        site.name,
        public_key_pem=site.key.public.pem(),
        proof=site.enrolment_proof(service.ledger.log_id),
        supernode_public_key=site.supernode_key,
    )
    if dataset:
        signed = site.signed("dataset.registered", site.dataset())
        service.record_statement(
            SETUP, "dataset.registered", site.name, signed["payload"], signed["signature"]
        )


def approve(service: CoordinatorService, site: Site, study_hash: str, cap: float = 2.0) -> None:
    """Record ``site``'s signed approval of a study (set-up)."""
    signed = site.signed("study.approved", site.approval(study_hash, cap=cap))
    service.record_statement(
        SETUP, "study.approved", site.name, signed["payload"], signed["signature"]
    )


def ready_study(service: CoordinatorService, *sites: Site, study_id: str = "bc-1") -> str:
    """A study over ``sites``, enrolled and approved by all of them; its hash."""
    for site in sites:
        enrol(service, site)
    document = study_document([site.name for site in sites], study_id)
    study_hash = service.propose_study(SETUP, document).value.study_hash
    for site in sites:
        approve(service, site, study_hash)
    return study_hash


def round_completed(site: Site, run_id: str, study_hash: str, number: int = 1) -> RoundCompleted:
    """A ``round.completed`` of one participant, its receipt signed by ``site``."""
    receipt = receipt_document(site=site.name, study=study_hash, run_id=run_id, round=number)
    return RoundCompleted(
        run_id=run_id,
        study_hash=study_hash,
        round=number,
        participants=[site.name],
        receipts=[
            SignedReceipt(
                receipt=Receipt.parse(receipt),
                signature=sign_bound(site.key, RECEIPT_DOMAIN, site.log_id, receipt),
            )
        ],
        dropped=[],
        refused=[],
        aggregated_model_hash=f"{number:02d}" * 32,
        metrics={"train-loss": 1.0 / number},
    )
