"""Fixtures for the coordinator service: a fresh coordinator over a SuperLink kept in memory.

``service`` runs on SQLite; ``service_on`` on each database (``db_url``). Changes a test
only sets up are made as ``SETUP``; the actor under test is named in the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.server.sites import Site, study_document
from veracity.server.coordinator import (
    CoordinatorService,
    InMemoryFederation,
    init_coordinator,
    operator,
)

#: Who sets a test's scene.
SETUP = operator("test-setup")


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


@contextmanager
def failing_at(engine: Engine, statement: str) -> Iterator[list[str]]:
    """Make every statement starting with ``statement`` fail like a lost database."""
    hits: list[str] = []

    def before(_c: Any, _cursor: Any, sql: str, params: Any, _ctx: Any, _many: bool) -> None:
        if sql.lstrip().upper().startswith(statement.upper()):
            hits.append(sql)
            raise sa.exc.OperationalError(sql, params, OSError(28, "No space left on device"))

    sa.event.listen(engine, "before_cursor_execute", before)
    try:
        yield hits
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)


@contextmanager
def failing_commit(engine: Engine) -> Iterator[None]:
    """Make every commit fail (after everything in the transaction was written)."""

    def refuse(_connection: Any) -> None:
        raise sa.exc.OperationalError("COMMIT", {}, OSError(5, "Input/output error"))

    sa.event.listen(engine, "commit", refuse)
    try:
        yield
    finally:
        sa.event.remove(engine, "commit", refuse)


def ledger_size(service: CoordinatorService) -> int:
    """Entries in the ledger."""
    return service.ledger.size()


Change = Callable[[], object]
