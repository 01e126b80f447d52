"""A site's key rotation end to end: the site's hand-over, the admin API, the admin CLI.

``veracity site rotate-key`` makes a new key beside the current one and writes the
hand-over (the new key's proof of possession, the outgoing key's signature);
``veracity admin sites rotate NAME --handover FILE`` posts it to
``POST /api/v1/sites/{name}/rotations``, which records ``key.rotated`` naming the admin;
``rotate-key --complete`` makes the site sign with the new key. A hand-over that the
outgoing key did not sign is refused; a lost key goes through ``--recover``, a visible
``key.recovered``.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.api.conftest import SETUP, Api
from veracity.api_client import CoordinatorClient
from veracity.cli import main
from veracity.client.site import Site, init_site
from veracity.contracts.events import NoteRecorded
from veracity.crypto.keys import generate_signing_key, load_signing_key
from veracity.ledger.statement import sign_statement
from veracity.server.api.tokens import Role


@pytest.fixture
def admin_over_testclient(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """``veracity admin`` commands reach ``api``'s app in process (its TestClient transport)."""
    transport: httpx.BaseTransport = api.client._transport

    class _Session:
        def __init__(self, server: str, token: str | None, ca_cert: Path | None) -> None:
            assert token is not None
            self.token = token
            self.server = server
            self.client = CoordinatorClient(server, transport=transport)

        def __enter__(self) -> _Session:
            return self

        def __exit__(self, *exc: object) -> None:
            self.client.close()

    monkeypatch.setattr("veracity.admin_cli._Api", _Session)


def _admin(api: Api, *args: str) -> list[str]:
    return ["admin", "sites", *args, "--server", "http://testserver/api/v1",
            "--token", api.tokens["admin"], "--format", "json"]  # fmt: skip


def _enrolled_site(api: Api, root: Path) -> tuple[Site, str]:
    """A real site directory enrolled with the coordinator, and a token of its own."""
    init_site(root, "clinic-rotating")
    site = Site.open(root)
    api.service.enrol_site(
        SETUP,
        site.name,
        public_key_pem=site.paths.public_key.read_text(encoding="utf-8"),
        supernode_public_key=site.paths.supernode_public_key.read_text(encoding="utf-8"),
        proof=site.enrolment_proof(api.service.ledger.log_id),
    )
    token = api.token_store.create(
        role=Role.SITE, name="clinic operator", site=site.name, expires_in=timedelta(days=1)
    ).token
    return site, token


def _note(api: Api, token: str, signed: dict[str, Any]) -> Any:
    return api.client.post(
        "/api/v1/statements",
        headers={"Authorization": f"Bearer {token}"},
        json={"kind": "note.recorded", **signed},
    )


@pytest.mark.usefixtures("admin_over_testclient")
def test_a_site_rotates_its_key_through_its_handover_and_the_admin_command(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "site"
    site, token = _enrolled_site(api, root)
    old_key = site.key
    site.close()
    log_id = api.service.ledger.log_id
    handover = tmp_path / "handover.json"
    rotate = ["site", "rotate-key", "--data-dir", str(root), "--log-id", log_id]
    assert main([*rotate, "--out", str(handover)]) == 0
    first = json.loads(handover.read_text(encoding="utf-8"))
    assert main([*rotate, "--out", str(handover)]) == 0  # asked again: the same new key
    assert json.loads(handover.read_text(encoding="utf-8"))["new_key_id"] == first["new_key_id"]
    assert first["key_id"] == old_key.public.key_id
    with Site.open(root) as waiting:
        assert waiting.key.public == old_key.public  # signs with the old key until recorded
    capsys.readouterr()

    assert main(_admin(api, "rotate", "clinic-rotating", "--handover", str(handover))) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["previous_key_id"], shown["key_id"]) == (first["key_id"], first["new_key_id"])
    (rotated,) = api.service.ledger.entries(kind="key.rotated")
    assert rotated.seq == shown["seq"]
    assert rotated.payload["requested_by"] == "admin-user"
    assert rotated.payload["outgoing_signature"] == first["outgoing_signature"]
    assert api.service.ledger.key_at("clinic-rotating").key_id == first["new_key_id"]  # type: ignore[union-attr]
    assert api.service.ledger.entries(kind="key.recovered") == []

    assert main(["site", "rotate-key", "--data-dir", str(root), "--complete"]) == 0
    with Site.open(root) as rotated_site:
        assert rotated_site.key.public.key_id == first["new_key_id"]
        new_note = rotated_site.sign(NoteRecorded(text="signed with the new key"))
    retired = load_signing_key(
        root / "keys" / "retired" / f"clinic-rotating.{first['key_id'][:16]}.pem"
    )
    assert retired.public == old_key.public
    payload = {"text": "signed with the old key"}
    old_note = {
        "payload": payload,
        "signature": sign_statement(
            old_key, "note.recorded", "clinic-rotating", payload, log_id=api.service.ledger.log_id
        ),
    }

    accepted = _note(api, token, {"payload": new_note.payload, "signature": new_note.signature})
    assert accepted.status_code == 201, accepted.text
    refused = _note(api, token, old_note)
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "signature_invalid"
    api.service.ledger.checkpoint()
    api.service.ledger.verify(api.service.ledger.identity_public_key)


def test_a_handover_the_outgoing_key_did_not_sign_is_refused(api: Api) -> None:
    api.enrol(api.site)
    log_id = api.service.ledger.log_id
    path = f"/api/v1/sites/{api.site.name}/rotations"
    forged = api.site.handover(log_id, generate_signing_key(), signer=generate_signing_key())
    response = api.call("POST", path, "admin", json=forged)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "signature_invalid"
    # The root cannot sign it either: only the site's own current key hands it over.
    root_key = api.service.ledger.root_key
    by_root = api.site.handover(log_id, generate_signing_key(), signer=root_key)
    assert api.call("POST", path, "admin", json=by_root).status_code == 422
    other_log = api.site.handover("ab" * 32, generate_signing_key())
    assert api.call("POST", path, "admin", json=other_log).status_code == 422
    assert api.service.ledger.entries(kind="key.rotated") == []
    assert api.service.ledger.key_at(api.site.name).key_id == api.site.key.public.key_id  # type: ignore[union-attr]


def test_a_stale_handover_is_a_conflict(api: Api) -> None:
    api.enrol(api.site)
    log_id = api.service.ledger.log_id
    path = f"/api/v1/sites/{api.site.name}/rotations"
    incoming = generate_signing_key()
    body = api.site.handover(log_id, incoming)
    assert api.call("POST", path, "admin", json=body).status_code == 201
    again = api.call("POST", path, "admin", json=body)  # from a key the site no longer holds
    assert again.status_code == 409, again.text
    assert again.json()["code"] == "conflict"
    assert len(api.service.ledger.entries(kind="key.rotated")) == 1


@pytest.mark.usefixtures("admin_over_testclient")
def test_a_lost_key_is_recovered_visibly_not_rotated(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api.enrol(api.site)
    name = api.site.name
    assert main(_admin(api, "rotate", name)) == 2  # neither a hand-over nor --recover
    assert main(_admin(api, "rotate", name, "--recover", "--reason", "lost")) == 2
    capsys.readouterr()
    new_key = generate_signing_key()
    public = tmp_path / "new.pub"
    public.write_text(new_key.public.pem(), encoding="ascii")
    from veracity.ledger.possession import sign_enrolment

    proof = sign_enrolment(new_key, log_id=api.service.ledger.log_id, name=name, role="site")
    args = ["rotate", name, "--recover", "--reason", "the disk died",
            "--public-key", str(public), "--proof", proof]  # fmt: skip
    assert main(_admin(api, *args)) == 0
    (revoked,) = api.service.ledger.entries(kind="key.revoked")
    (recovered,) = api.service.ledger.entries(kind="key.recovered")
    assert revoked.payload["reason"] == "the disk died"
    assert revoked.seq < recovered.seq
    assert api.service.ledger.entries(kind="key.rotated") == []
    assert api.service.ledger.key_at(name).key_id == new_key.public.key_id  # type: ignore[union-attr]
