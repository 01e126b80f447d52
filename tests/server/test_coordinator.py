"""The coordinator service against a real SuperLink (TLS, SuperNode authentication)."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from tests.server.conftest import make_site_identity
from veracity.crypto.keys import generate_signing_key
from veracity.errors import ApprovalMissing, Conflict, InputError, SignatureError
from veracity.ledger.possession import sign_enrolment
from veracity.ledger.statement import sign_statement
from veracity.server.coordinator import CoordinatorService, operator
from veracity.server.fab import build_fab

pytestmark = pytest.mark.integration

ALICE = operator("alice")


def _study(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "study_id": "bc-1",
        "model": {"family": "logistic", "n_features": 2},
        "features": ["a", "b"],
        "label": "y",
        "scaling": [[0.0, 1.0], [0.0, 1.0]],
        "dp": {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5},
        "training": {"batch_size": 16, "local_epochs": 1, "learning_rate": 0.1},
        "rounds": 2,
        "min_sites": 2,
        "epsilon_caps": {"hospital-a": 3.0, "hospital-b": 3.0},
    }
    document.update(changes)
    return document


def _dataset_statement(site: str) -> dict[str, Any]:
    return {
        "site": site,
        "dataset_id": "bc",
        "commitment": "11" * 32,
        "schema_hash": "22" * 32,
        "rows": 150,
        "label": "y",
        "features": ["a", "b"],
        "signed_at": "2026-11-27T10:00:00.000000Z",
    }


def test_enrolment_registers_the_supernode_and_records_the_key(
    coordinator_with_superlink: CoordinatorService,
) -> None:
    coordinator = coordinator_with_superlink
    site = make_site_identity("hospital-a")
    enrolled = coordinator.enrol_site(
        ALICE,
        "hospital-a",
        public_key_pem=site.key.public.pem(),
        proof=sign_enrolment(
            site.key, log_id=coordinator.ledger.log_id, name="hospital-a", role="site"
        ),
        supernode_public_key=site.supernode_public,
    ).value
    nodes = {node.name: node for node in coordinator.federation.list_nodes()}
    assert nodes["hospital-a"].node_id == enrolled.node_id
    assert coordinator.site_key("hospital-a") == site.key.public
    assert coordinator.reads.site("hospital-a").supernode_public_key == site.supernode_public
    with pytest.raises(InputError, match="already enrolled"):
        coordinator.enrol_site(
            ALICE,
            "hospital-a",
            public_key_pem=site.key.public.pem(),
            proof=sign_enrolment(
                site.key, log_id=coordinator.ledger.log_id, name="hospital-a", role="site"
            ),
            supernode_public_key=site.supernode_public,
        )


def test_an_enrolment_whose_entry_is_not_written_can_be_retried_with_the_same_supernode_key(
    coordinator_with_superlink: CoordinatorService,
) -> None:
    coordinator = coordinator_with_superlink
    site = make_site_identity("hospital-a")

    def enrol() -> Any:
        return coordinator.enrol_site(
            ALICE,
            "hospital-a",
            public_key_pem=site.key.public.pem(),
            proof=sign_enrolment(
                site.key, log_id=coordinator.ledger.log_id, name="hospital-a", role="site"
            ),
            supernode_public_key=site.supernode_public,
        )

    def fail(_c: Any, _cursor: Any, sql: str, params: Any, _ctx: Any, _many: bool) -> None:
        if sql.lstrip().upper().startswith("INSERT INTO LEDGER_ENTRY"):
            raise sa.exc.OperationalError(sql, params, OSError(28, "No space left on device"))

    engine = coordinator.ledger.engine
    sa.event.listen(engine, "before_cursor_execute", fail)
    try:
        with pytest.raises(sa.exc.OperationalError):
            enrol()
    finally:
        sa.event.remove(engine, "before_cursor_execute", fail)
    # Flower refuses a key it ever held: the SuperLink must not have heard of the failure.
    assert coordinator.federation.list_nodes() == []
    enrolled = enrol().value
    (node,) = coordinator.federation.list_nodes()
    assert (node.node_id, node.status) == (enrolled.node_id, "registered")


def test_a_study_flows_from_proposal_to_approvals_and_a_run_needs_enough_of_them(
    coordinator_with_superlink: CoordinatorService,
) -> None:
    coordinator = coordinator_with_superlink
    sites = [make_site_identity(name) for name in ("hospital-a", "hospital-b")]
    for site in sites:
        coordinator.enrol_site(
            ALICE,
            site.name,
            public_key_pem=site.key.public.pem(),
            proof=sign_enrolment(
                site.key, log_id=coordinator.ledger.log_id, name=site.name, role="site"
            ),
            supernode_public_key=site.supernode_public,
        )
        payload = _dataset_statement(site.name)
        signature = sign_statement(
            site.key, "dataset.registered", site.name, payload, log_id=coordinator.ledger.log_id
        )
        coordinator.record_statement(ALICE, "dataset.registered", site.name, payload, signature)
    study = coordinator.propose_study(ALICE, _study()).value.study
    assert study.code_hash == build_fab().fab_hash

    first = sites[0]
    approval = {
        "study_hash": study.study_hash,
        "site": first.name,
        "dataset_id": "bc",
        "epsilon_cap": 2.5,
        "signed_at": "2026-11-27T10:01:00.000000Z",
    }
    coordinator.record_statement(
        ALICE,
        "study.approved",
        first.name,
        approval,
        sign_statement(
            first.key, "study.approved", first.name, approval, log_id=coordinator.ledger.log_id
        ),
    )
    assert set(coordinator.reads.approvals(study.study_hash)) == {"hospital-a"}
    with pytest.raises(ApprovalMissing):
        coordinator.start_run(ALICE, study.study_hash)
    assert coordinator.federation.list_runs() == []
    report = coordinator.ledger.verify(coordinator.ledger.identity_public_key)
    assert report.entries == coordinator.ledger.size()


def test_statements_that_do_not_fit_are_refused(
    coordinator_with_superlink: CoordinatorService,
) -> None:
    coordinator = coordinator_with_superlink
    site = make_site_identity("hospital-a")
    other = make_site_identity("hospital-b")
    for each in (site, other):
        coordinator.enrol_site(
            ALICE,
            each.name,
            public_key_pem=each.key.public.pem(),
            proof=sign_enrolment(
                each.key, log_id=coordinator.ledger.log_id, name=each.name, role="site"
            ),
            supernode_public_key=each.supernode_public,
        )
    payload = _dataset_statement(site.name)
    forged = sign_statement(
        generate_signing_key(),
        "dataset.registered",
        site.name,
        payload,
        log_id=coordinator.ledger.log_id,
    )
    with pytest.raises(SignatureError):
        coordinator.record_statement(ALICE, "dataset.registered", site.name, payload, forged)
    with pytest.raises(InputError, match="names site"):
        coordinator.record_statement(
            ALICE,
            "dataset.registered",
            other.name,
            payload,
            sign_statement(
                other.key,
                "dataset.registered",
                other.name,
                payload,
                log_id=coordinator.ledger.log_id,
            ),
        )
    study = coordinator.propose_study(ALICE, _study()).value.study
    too_much = {
        "study_hash": study.study_hash,
        "site": site.name,
        "dataset_id": "bc",
        "epsilon_cap": 9.0,
        "signed_at": "2026-11-27T10:01:00.000000Z",
    }
    with pytest.raises(InputError, match="exceeds"):
        coordinator.record_statement(
            ALICE,
            "study.approved",
            site.name,
            too_much,
            sign_statement(
                site.key, "study.approved", site.name, too_much, log_id=coordinator.ledger.log_id
            ),
        )
    with pytest.raises(InputError, match="code_hash"):
        coordinator.propose_study(ALICE, _study(study_id="bc-2", code_hash="00" * 32))
    with pytest.raises(Conflict):
        coordinator.propose_study(ALICE, _study())
