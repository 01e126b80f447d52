"""Eight clients proposing and approving at once against two uvicorn workers on PostgreSQL.

Each client proposes its own study and has both sites approve it; all of them also race to
propose one shared study and to record one shared signed approval. Afterwards the ledger
verifies, every accepted call has exactly one entry (no event lost), nothing was recorded
twice (the shared study and approval exactly once), the API's action rows match the
entries one to one, and the coordinator's read model equals a rebuild from the log.
"""

from __future__ import annotations

import ssl
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from veracity.server.api.db import ActionRow
from veracity.server.api.serve import start_api
from veracity.server.api.settings import ApiSettings
from veracity.server.api.tokens import Role, TokenStore
from veracity.server.coordinator import CoordinatorService, InMemoryFederation, open_coordinator
from veracity.supervise import ProcessGroup, free_port

from .conftest import SETUP, Site, make_coordinator, study_document, unique_site

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLIENTS = 8


class Harness:
    def __init__(self, base: str, ca: Path, tokens: dict[str, str]) -> None:
        self.base = base
        self.context = ssl.create_default_context(cafile=str(ca))
        self.tokens = tokens

    def client(self, role: str) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.base}/api/v1",
            headers={"Authorization": f"Bearer {self.tokens[role]}"},
            verify=self.context,
            timeout=120.0,
        )


@pytest.fixture
def served(tmp_path: Path, pg_url: str) -> Iterator[tuple[Harness, CoordinatorService, Site, Site]]:
    data_dir = tmp_path / "coordinator"
    make_coordinator(data_dir, pg_url).close()
    # The sites are set up with their SuperNodes registered on a SuperLink kept in memory:
    # this test never asks the SuperLink anything.
    coordinator = open_coordinator(data_dir, federation=InMemoryFederation())
    north, south = unique_site("north"), unique_site("south")
    store = TokenStore(coordinator.ledger.engine)
    tokens = {"admin": store.create(role=Role.ADMIN, name="admin-user").token}
    for site in (north, south):
        coordinator.enrol_site(
            SETUP,
            site.name,
            public_key_pem=site.key.public.pem(),
            proof=site.enrolment_proof(coordinator.ledger.log_id),
            supernode_public_key=site.supernode_key,
        )
        signed = site.signed("dataset.registered", site.dataset())
        coordinator.record_statement(
            SETUP, "dataset.registered", site.name, signed["payload"], signed["signature"]
        )
        tokens[site.name] = store.create(
            role=Role.SITE, name=f"{site.name} ops", site=site.name
        ).token
    settings = ApiSettings(data_dir=data_dir, api_port=free_port(), api_workers=2)
    with ProcessGroup() as group:
        _api, base = start_api(settings, group)
        yield Harness(base, data_dir / "tls" / "ca.crt", tokens), coordinator, north, south
    coordinator.close()


def test_parallel_proposals_and_approvals_lose_and_duplicate_nothing(
    served: tuple[Harness, CoordinatorService, Site, Site],
) -> None:
    harness, coordinator, north, south = served
    sites = [north.name, south.name]
    contested = study_document(sites, "contested")
    barrier = threading.Barrier(CLIENTS)
    accepted: list[tuple[str, int, str]] = []  # (kind, seq, study_hash)
    refused: Counter[str] = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    shared: dict[str, Any] = {}

    def outcome(kind: str, response: httpx.Response, study_hash: str) -> None:
        with lock:
            if response.status_code == 201:
                accepted.append((kind, response.json()["seq"], study_hash))
            elif response.status_code == 409:
                refused[kind] += 1
            else:
                errors.append(f"{kind}: {response.status_code} {response.text[:300]}")

    def client(index: int) -> None:
        with (
            harness.client("admin") as admin,
            harness.client(north.name) as north_client,
            harness.client(south.name) as south_client,
        ):
            barrier.wait()
            mine = admin.post("/studies", json=study_document(sites, f"study-{index}"))
            study_hash = mine.json().get("study_hash", "") if mine.status_code == 201 else ""
            outcome("study.proposed", mine, study_hash)
            race = admin.post("/studies", json=contested)
            if race.status_code == 201:
                with lock:
                    shared["contested"] = race.json()["study_hash"]
            outcome("study.proposed", race, race.json().get("study_hash", ""))
            for site, http in ((north, north_client), (south, south_client)):
                body = {
                    "kind": "study.approved",
                    **site.signed("study.approved", site.approval(study_hash)),
                }
                outcome(
                    "study.approved",
                    http.post(f"/studies/{study_hash}/decisions", json=body),
                    study_hash,
                )
            barrier.wait()
            with lock:
                if "approval" not in shared:
                    contested_hash = shared["contested"]
                    shared["approval"] = {
                        "kind": "study.approved",
                        **north.signed("study.approved", north.approval(contested_hash)),
                    }
            barrier.wait()
            contested_hash = shared["contested"]
            outcome(
                "study.approved",
                north_client.post(f"/studies/{contested_hash}/decisions", json=shared["approval"]),
                contested_hash,
            )

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors

    # What was accepted: each client's study and two approvals, the shared study and
    # approval once; every other attempt at the shared ones was a conflict.
    kinds = Counter(kind for kind, _, _ in accepted)
    assert kinds == {"study.proposed": CLIENTS + 1, "study.approved": 2 * CLIENTS + 1}
    assert refused == {"study.proposed": CLIENTS - 1, "study.approved": CLIENTS - 1}

    # No event lost or duplicated: each accepted call is exactly one entry of its kind.
    seqs = [seq for _, seq, _ in accepted]
    assert len(set(seqs)) == len(seqs)
    entries = {e.seq: e for e in coordinator.ledger.entries()}
    for kind, seq, study_hash in accepted:
        assert entries[seq].kind == kind
        assert entries[seq].payload["study_hash"] == study_hash
    recorded = [e for e in entries.values() if e.kind in ("study.proposed", "study.approved")]
    assert sorted(e.seq for e in recorded) == sorted(seqs)
    proposed = [e.payload["study_hash"] for e in recorded if e.kind == "study.proposed"]
    assert len(set(proposed)) == len(proposed)
    assert sorted(entries) == list(range(len(entries)))

    # The API's record of who did what matches the entries one to one.
    with Session(coordinator.ledger.engine) as session:
        linked = session.execute(
            select(ActionRow.ledger_seq).where(ActionRow.ledger_seq.is_not(None))
        ).scalars()
        assert sorted(int(seq) for seq in linked if seq is not None) == sorted(seqs)

    # The read model the workers kept, change by change in each change's transaction, is
    # the one a rebuild from the log gives, and it answers what the ledger says.
    kept = coordinator.read_model.dump()
    coordinator.reindex()
    assert coordinator.read_model.dump() == kept
    studies = {record.study_hash for record in coordinator.reads.studies()}
    assert studies == {study_hash for kind, _, study_hash in accepted if kind == "study.proposed"}
    assert set(coordinator.reads.approvals(shared["contested"])) == {north.name}

    with harness.client("admin") as admin:
        report = admin.get("/ledger/verify").json()
    assert report["ok"] is True
    assert report["entries"] == len(entries)
