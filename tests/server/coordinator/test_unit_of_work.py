"""The unit of work: one transaction per change, its audit record, its undo steps."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from sqlalchemy.orm import Session

from tests.server.sites import Site
from veracity.errors import ConfigError, TransportError
from veracity.ledger.possession import sign_enrolment
from veracity.server.coordinator import CoordinatorService, InMemoryFederation, operator
from veracity.server.coordinator.unit_of_work import Actor

from .conftest import failing_at, ready_study

ALICE = operator("alice")


@dataclass
class Recording:
    """An audit hook that keeps its records beside the change (what api_action does)."""

    rows: list[tuple[str, str, str, str, int | None]] = field(default_factory=list)
    fail: bool = False

    def record(
        self, session: Session, *, actor: Actor, action: str, target: str, seq: int | None
    ) -> int:
        if self.fail:
            raise ConfigError("the audit record cannot be written")
        assert session.in_transaction()
        self.rows.append((actor.name, str(actor.role), action, target, seq))
        return len(self.rows)


def test_each_change_is_audited_with_its_actor_and_entry(service: CoordinatorService) -> None:
    hook = Recording()
    service.audit_hook = hook
    site = Site("north")
    recorded = service.enrol_site(
        ALICE,
        "north",
        public_key_pem=site.key.public.pem(),
        proof=sign_enrolment(site.key, log_id=service.ledger.log_id, name="north", role="site"),
        supernode_public_key=site.supernode_key,
    )
    assert recorded.action_id == 1
    assert hook.rows == [("alice", "operator", "site.enrol", "north", recorded.seq)]
    assert service.note_read(ALICE, "model.weights", "ab" * 32) == 2
    assert hook.rows[-1] == ("alice", "operator", "model.weights", "ab" * 32, None)


def test_a_change_whose_audit_record_fails_writes_nothing(
    service: CoordinatorService, federation: InMemoryFederation
) -> None:
    service.audit_hook = Recording(fail=True)
    site = Site("north")
    size = service.ledger.size()
    with pytest.raises(ConfigError):
        service.enrol_site(
            ALICE,
            "north",
            public_key_pem=site.key.public.pem(),
            proof=sign_enrolment(site.key, log_id=service.ledger.log_id, name="north", role="site"),
            supernode_public_key=site.supernode_key,
        )
    assert service.ledger.size() == size
    assert service.reads.sites() == []
    assert federation.list_nodes() == []  # the SuperLink is told only after the audit record


def test_an_undo_that_fails_is_logged_and_the_original_error_raised(
    service: CoordinatorService,
    federation: InMemoryFederation,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    study_hash = ready_study(service, Site("north"))

    def unreachable(run_id: int) -> bool:
        raise TransportError("SuperLink gone")

    monkeypatch.setattr(federation, "stop_run", unreachable)
    with (
        failing_at(service.ledger.engine, "INSERT INTO ledger_entry"),
        pytest.raises(Exception, match="No space left"),
    ):
        service.start_run(ALICE, study_hash)
    assert "could not undo part of run.start" in caplog.text
    assert list(service.home.runs.glob("*.seeds.json")) == []  # the other undo still ran


def test_nothing_is_appended_after_a_changes_external_effects(
    service: CoordinatorService,
) -> None:
    with service._change(ALICE, "test", "") as uow:
        uow.seal()
        with pytest.raises(ConfigError, match="appends nothing after"):
            uow.checkpoint()
    assert service.ledger.latest_checkpoint() is None
