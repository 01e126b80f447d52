"""A real site's outbox, signed for its own log, is refused by a coordinator of another log.

The site agent's path end to end: the site signs a note for the log it enrolled in (its
``DIR/log_id``), ``deliver_outbox`` posts it with a site token to ``POST /api/v1/statements``
of a running app whose ledger is another log, where the site's key is enrolled too (issue
18: a dishonest coordinator copying statements between logs). The app refuses it naming
its log; the same statement re-signed for that log (what a site of that log would send) is
recorded.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from tests.server.api.conftest import SETUP, Api
from veracity.client.outbox_sync import deliver_outbox
from veracity.client.site import Site, init_site
from veracity.contracts.events import NoteRecorded
from veracity.ledger.possession import sign_enrolment
from veracity.ledger.statement import sign_statement
from veracity.server.api.tokens import Role

OTHER_LOG = "ab" * 32


def test_a_sites_statement_for_another_log_is_refused_by_the_api(api: Api, tmp_path: Path) -> None:
    init_site(tmp_path / "site", "clinic-bound")
    with Site.open(tmp_path / "site") as site:
        site.enrolment_proof(OTHER_LOG)  # the site enrolled in another log first
        log_id = api.service.ledger.log_id
        api.service.enrol_site(
            SETUP,
            site.name,
            public_key_pem=site.key.public.pem(),
            supernode_public_key=site.paths.supernode_public_key.read_text(encoding="utf-8"),
            proof=sign_enrolment(site.key, log_id=log_id, name=site.name, role="site"),
        )
        note = site.sign(NoteRecorded(text="ethics approval REC-9"))
        site.store.add_statement(note, now=site.now())
        token = api.token_store.create(
            role=Role.SITE, name="clinic-operator", site=site.name, expires_in=timedelta(days=1)
        ).token
        size = api.service.ledger.size()
        report = deliver_outbox(
            site.store,
            server="http://testserver",
            token=token,
            ca_cert=None,
            transport=api.client._transport,
        )
        assert report.delivered == []
        (reason,) = report.refused.values()
        assert f"this log {log_id} (forged, or signed for another log)" in reason
        assert api.service.ledger.size() == size
        resigned = sign_statement(site.key, note.kind, note.actor, note.payload, log_id=log_id)
        response = api.call(
            "POST",
            "/api/v1/statements",
            "site",
            json={"kind": note.kind, "payload": note.payload, "signature": resigned},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 201, response.text
