"""Revoking a site with its SuperNode: the ledger entry first, the SuperLink second.

Incident response: a site whose keys leaked is cut off with ``key.revoked`` and its
SuperNode's registration withdrawn. The withdrawal is irreversible on Flower's side, so it
happens only once the entry is written; a write that fails leaves the SuperNode registered.
"""

from __future__ import annotations

import pytest

from tests.server.sites import Site
from veracity.server.coordinator import CoordinatorService, InMemoryFederation, operator

from .conftest import enrol, failing_at

ALICE = operator("alice")


def _status(federation: InMemoryFederation) -> list[tuple[str, str]]:
    return [(node.name, node.status) for node in federation.list_nodes()]


def test_revoking_with_the_supernode_records_then_withdraws(
    service: CoordinatorService, federation: InMemoryFederation
) -> None:
    north, south = Site("north"), Site("south")
    enrol(service, north, dataset=False)
    enrol(service, south, dataset=False)
    recorded = service.revoke_site_key(
        ALICE, "north", reason="its keys leaked", withdraw_supernode=True
    )
    assert recorded.entry.payload["requested_by"] == "alice"
    assert _status(federation) == [("north", "unregistered"), ("south", "registered")]
    # A new SuperNode key is needed to come back (Flower never takes the old one again).
    rotated = Site("north")
    enrol(service, rotated, dataset=False)
    assert sorted(_status(federation)) == [
        ("north", "registered"),
        ("north", "unregistered"),
        ("south", "registered"),
    ]


def test_a_revocation_that_is_not_written_withdraws_nothing(
    service: CoordinatorService, federation: InMemoryFederation
) -> None:
    enrol(service, Site("north"), dataset=False)
    with (
        failing_at(service.ledger.engine, "INSERT INTO ledger_entry"),
        pytest.raises(Exception, match="No space left"),
    ):
        service.revoke_site_key(ALICE, "north", reason="leaked", withdraw_supernode=True)
    assert _status(federation) == [("north", "registered")]
    assert service.ledger.entries(kind="key.revoked") == []
