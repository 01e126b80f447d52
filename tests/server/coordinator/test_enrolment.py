"""Enrolment and revocation through the coordinator service, against the SuperLink in memory.

The policy under test: the SuperLink hears of an enrolment last, just before the commit,
because Flower never registers a withdrawn SuperNode key again. A change that fails before
that point leaves the SuperLink untouched (the site can simply try again); a failed commit
withdraws the registration.
"""

from __future__ import annotations

import pytest

from tests.server.sites import Site, study_document
from veracity.contracts.events import StudyApproved
from veracity.errors import Conflict, InputError, NotFound, TransportError
from veracity.ledger.possession import sign_enrolment
from veracity.server.coordinator import CoordinatorService, InMemoryFederation, Recorded, operator
from veracity.server.coordinator.records import EnrolledSite

from .conftest import SETUP, approve, enrol, failing_at, failing_commit, ready_study

ALICE = operator("alice")


def _enrol(service: CoordinatorService, site: Site) -> Recorded[EnrolledSite]:
    return service.enrol_site(
        ALICE,
        site.name,
        public_key_pem=site.key.public.pem(),
        proof=site.enrolment_proof(service.ledger.log_id),
        supernode_public_key=site.supernode_key,
    )


def test_enrolment_records_the_key_and_registers_the_supernode(
    service: CoordinatorService, federation: InMemoryFederation
) -> None:
    site = Site("north")
    recorded = service.enrol_site(
        ALICE,
        site.name,
        public_key_pem=site.key.public.pem(),
        proof=site.enrolment_proof(service.ledger.log_id),
        supernode_public_key=site.supernode_key,
    )
    assert recorded.entry.kind == "key.enrolled"
    assert recorded.entry.payload["supernode_public_key"] == site.supernode_key
    assert recorded.value.seq == recorded.seq
    assert recorded.value.key_id == site.key.public.key_id
    (node,) = federation.list_nodes()
    assert (node.node_id, node.name, node.status) == (recorded.value.node_id, "north", "registered")
    stored = service.reads.site("north")
    assert (stored.key_id, stored.enrolled_seq) == (site.key.public.key_id, recorded.seq)
    assert service.site_key("north") == site.key.public


def test_the_supernode_is_registered_after_the_entry_is_written(
    service: CoordinatorService, federation: InMemoryFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = Site("north")
    sizes: list[int] = []
    register = federation.register_node

    def observed(name: str, key: str) -> int:
        sizes.append(service.ledger.size())  # read on another connection: committed entries
        return register(name, key)

    monkeypatch.setattr(federation, "register_node", observed)
    _enrol(service, site)
    # The SuperLink was told inside the change's transaction, before its commit (with the
    # failing-write test below: after its entry was written).
    assert sizes == [service.ledger.size() - 1]


def test_an_enrolment_whose_write_fails_leaves_the_supernode_key_usable(
    service: CoordinatorService, federation: InMemoryFederation
) -> None:
    site = Site("north")
    size = service.ledger.size()
    with (
        failing_at(service.ledger.engine, "INSERT INTO ledger_entry"),
        pytest.raises(Exception, match="No space left"),
    ):
        _enrol(service, site)
    assert service.ledger.size() == size
    assert federation.list_nodes() == []
    # Flower never registers a withdrawn key again: had it heard of the failed enrolment,
    # this retry with the same SuperNode key would be refused.
    _enrol(service, site)
    assert [n.status for n in federation.list_nodes()] == ["registered"]


def test_an_enrolment_whose_commit_fails_withdraws_its_supernode(
    service: CoordinatorService, federation: InMemoryFederation
) -> None:
    site = Site("north")
    with failing_commit(service.ledger.engine), pytest.raises(Exception, match="Input/output"):
        _enrol(service, site)
    (node,) = federation.list_nodes()
    assert node.status == "unregistered"
    with pytest.raises(NotFound):
        service.reads.site("north")
    assert service.ledger.key_at("north") is None


def test_a_supernode_key_the_superlink_holds_already_records_nothing(
    service: CoordinatorService, federation: InMemoryFederation
) -> None:
    site = Site("north")
    federation.register_node("elsewhere", site.supernode_key)
    size = service.ledger.size()
    with pytest.raises(Conflict):
        _enrol(service, site)
    assert service.ledger.size() == size
    assert service.reads.sites() == []


def test_an_enrolment_without_a_superlink_records_nothing(
    service: CoordinatorService, federation: InMemoryFederation
) -> None:
    federation.reachable = False
    size = service.ledger.size()
    with pytest.raises(TransportError):
        _enrol(service, Site("north"))
    assert service.ledger.size() == size
    assert service.reads.sites() == []


def test_a_site_is_enrolled_once(
    service: CoordinatorService, federation: InMemoryFederation
) -> None:
    site = Site("north")
    _enrol(service, site)
    calls = len(federation.calls)
    with pytest.raises(Conflict, match="already enrolled"):
        _enrol(service, Site("north"))
    assert len(federation.calls) == calls  # refused before the SuperLink is asked


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("North", None),  # not a DNS label
        ("coordinator", None),  # the root's name
        ("north", "ssh-ed25519 AAAA nope"),  # not ECDSA
    ],
)
def test_malformed_enrolments_are_refused_before_anything_happens(
    service: CoordinatorService, federation: InMemoryFederation, name: str, key: str | None
) -> None:
    site = Site("north")
    size = service.ledger.size()
    with pytest.raises(InputError):
        service.enrol_site(
            ALICE,
            name,
            public_key_pem=site.key.public.pem(),
            proof=sign_enrolment(site.key, log_id=service.ledger.log_id, name=name, role="site"),
            supernode_public_key=key or site.supernode_key,
        )
    assert service.ledger.size() == size
    assert federation.list_nodes() == []


def test_a_revoked_key_no_longer_approves_and_a_new_one_can_be_enrolled(
    service: CoordinatorService,
) -> None:
    north, south = Site("north"), Site("south")
    study_hash = ready_study(service, north, south)
    recorded = service.revoke_site_key(ALICE, "north", reason="key leaked")
    assert recorded.entry.kind == "key.revoked"
    assert recorded.value == north.key.public.key_id
    assert set(service.reads.approvals(study_hash)) == {"south"}
    assert service.reads.site("north").revoked
    with pytest.raises(NotFound):
        service.site_key("north")

    rotated = Site("north")
    enrol(service, rotated, dataset=False)
    assert service.reads.site("north").key_id == rotated.key.public.key_id
    # Its old approval counts again only because the site holds a key again; a fresh
    # approval signed with the new key replaces it.
    approve(service, rotated, study_hash, cap=1.5)
    decision = service.reads.decisions(study_hash)["north"].statement
    assert isinstance(decision, StudyApproved)
    assert decision.epsilon_cap == 1.5


def test_only_a_site_key_is_revoked(service: CoordinatorService) -> None:
    with pytest.raises(InputError, match="holds no site key"):
        service.revoke_site_key(ALICE, "nobody", reason="x")
    with pytest.raises(InputError, match="holds no site key"):
        service.revoke_site_key(ALICE, "coordinator", reason="x")


def test_a_study_names_only_enrolled_sites_with_keys(service: CoordinatorService) -> None:
    north = Site("north")
    enrol(service, north)
    with pytest.raises(InputError, match="not enrolled"):
        service.propose_study(SETUP, study_document(["north", "south"]))
    service.revoke_site_key(ALICE, "north", reason="left the network")
    with pytest.raises(InputError, match="not enrolled"):
        service.propose_study(SETUP, study_document(["north"]))


def test_a_site_that_rotates_its_signing_key_keeps_its_supernode(
    service: CoordinatorService, federation: InMemoryFederation
) -> None:
    site = Site("north")
    first = _enrol(service, site)
    service.revoke_site_key(ALICE, "north", reason="rotation")
    rotated = Site("north", supernode_key=site.supernode_key)
    again = _enrol(service, rotated)
    assert again.value.node_id == first.value.node_id
    assert [(n.name, n.status) for n in federation.list_nodes()] == [("north", "registered")]
    assert service.site_key("north") == rotated.key.public
