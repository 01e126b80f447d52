"""Everything a site refuses is recorded (privacy review M5).

``approval.missing`` refusals (tampered terms, a wrong code hash, a changed or missing
dataset file, weights beyond the study's bound) used to be signed and answered but kept
nowhere: a coordinator that did not record them erased them. The site now keeps each in
its outbox, once, as a statement the ledger accepts like ``budget.refused``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.client.support import SITE, request_for
from veracity.client.service import Refusal, SiteAgent
from veracity.client.site import Site
from veracity.contracts.events import ROOT_ACTOR
from veracity.crypto.keys import generate_signing_key, load_verify_key
from veracity.errors import Conflict
from veracity.ledger.ledger import Ledger
from veracity.tasks.study import Study

AgentFactory = Callable[[], SiteAgent]


def _tampered(study: Study) -> dict[str, Any]:
    document = study.to_document()
    document["dp"] = {**document["dp"], "noise_multiplier": 0.3}  # under the approved hash
    return document


def test_a_refused_request_is_kept_in_the_outbox_once(
    ready_site: Site, approved: Study, agent_factory: AgentFactory
) -> None:
    agent = agent_factory()
    request = request_for(approved, round=1, document=_tampered(approved))

    first = agent.handle_train(request)
    again = agent.handle_train(request)
    other_round = agent.handle_train(request_for(approved, round=2, document=_tampered(approved)))

    assert isinstance(first, Refusal)
    assert isinstance(again, Refusal)
    assert isinstance(other_round, Refusal)
    assert first.kind == "approval.missing"
    assert again.statement == first.statement  # the same signed statement, not a new one
    queued = [e.statement for e in ready_site.store.outbox() if e.statement.kind == first.kind]
    assert queued == [first.statement, other_round.statement]
    assert first.payload["reason"].startswith("the study document does not match study_hash")


@pytest.mark.parametrize(
    "how", ["tampered-terms", "wrong-code-hash", "not-approved", "dataset-file-missing"]
)
def test_every_kind_of_approval_refusal_is_queued(
    how: str, ready_site: Site, approved: Study, bc_csv: Path, agent_factory: AgentFactory
) -> None:
    if how == "tampered-terms":
        request = request_for(approved, round=1, document=_tampered(approved))
    elif how == "wrong-code-hash":
        request = request_for(approved, round=1, code_hash="ee" * 32)
    elif how == "not-approved":
        request = request_for(approved.model_copy(update={"study_id": "other"}), round=1)
    else:
        bc_csv.unlink()
        request = request_for(approved, round=1)

    outcome = agent_factory().handle_train(request)

    assert isinstance(outcome, Refusal)
    assert outcome.kind == "approval.missing"
    kinds = [entry.statement.kind for entry in ready_site.store.outbox()]
    assert kinds.count("approval.missing") == 1


def test_the_ledger_records_the_sites_refusal_once(
    tmp_path: Path, ready_site: Site, approved: Study, agent_factory: AgentFactory
) -> None:
    outcome = agent_factory().handle_train(
        request_for(approved, round=1, document=_tampered(approved))
    )
    assert isinstance(outcome, Refusal)
    root = generate_signing_key()
    with Ledger.init(f"sqlite:///{tmp_path / 'ledger.db'}", root_key=root) as ledger:
        site_key = load_verify_key(ready_site.paths.public_key)
        enrolment = {
            "name": SITE,
            "role": "site",
            "public_key": site_key.pem(),
            "valid_from": "2026-03-01T09:00:00.000000Z",
            "proof": ready_site.enrolment_proof(ledger.log_id),
        }
        ledger.append("key.enrolled", ROOT_ACTOR, enrolment, signer=root)
        (queued,) = [
            e.statement for e in ready_site.store.outbox() if e.statement.kind == outcome.kind
        ]

        entry = ledger.append(queued.kind, SITE, queued.payload, signature=queued.signature)

        assert entry.kind == "approval.missing"
        assert entry.actor == SITE
        with pytest.raises(Conflict, match="already recorded"):
            ledger.append(queued.kind, SITE, queued.payload, signature=queued.signature)
        ledger.verify(root.public)
