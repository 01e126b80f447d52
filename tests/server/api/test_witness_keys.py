"""A running site witness follows the keys: its site's rotation, and the log key's (#18).

The witness of ``veracity site start`` read its site's keys once, at start: a key rotation
made during a long run (``site rotate-key``, then the admin's ``sites rotate --handover``)
was refused as "a key the site does not hold", and the site stopped cosigning. It now
reads them before each cosignature; a key event enrolling a key the site never held is
still refused, loudly. A log key rotation during the run is followed from the entries.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.server.api.conftest import Api
from tests.server.api.test_site_rotation import (  # noqa: F401 - a fixture
    _admin,
    _enrolled_site,
    admin_over_testclient,
)
from veracity.cli import main
from veracity.client.witness import SiteWitness, open_site_witness
from veracity.contracts.events import ROOT_ACTOR
from veracity.crypto.keys import generate_signing_key, load_signing_key
from veracity.errors import LedgerIntegrityError
from veracity.ledger.log_key import recover_log_key, rotate_log_key
from veracity.ledger.possession import sign_enrolment


def _witness(api: Api, root: Path, token: str) -> SiteWitness:
    return open_site_witness(
        root,
        api_url="http://testserver/api/v1",
        token=token,
        transport=api.client._transport,  # the app, in process
    )


def _size(api: Api) -> int:
    checkpoint = api.service.ledger.latest_checkpoint()
    assert checkpoint is not None
    return checkpoint.tree_size


@pytest.mark.usefixtures("admin_over_testclient")
def test_a_running_site_witness_follows_its_sites_key_rotation(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "site"
    site, token = _enrolled_site(api, root)
    site.close()
    api.service.ledger.checkpoint()
    witness = _witness(api, root, token)  # started before the rotation, kept running
    assert witness.once()["cosigned"] == _size(api)

    handover = tmp_path / "handover.json"
    log_id = api.service.ledger.log_id
    rotate = ["site", "rotate-key", "--data-dir", str(root), "--log-id", log_id]
    assert main([*rotate, "--out", str(handover)]) == 0
    assert main(_admin(api, "rotate", "clinic-rotating", "--handover", str(handover))) == 0
    api.service.ledger.checkpoint()
    assert witness.once()["cosigned"] == _size(api)
    assert main(["site", "rotate-key", "--data-dir", str(root), "--complete"]) == 0
    api.enrol(api.site)
    api.service.ledger.checkpoint()
    assert witness.once()["cosigned"] == _size(api)
    capsys.readouterr()

    # The root takes the name over (revokes, recovers to a key the site never held):
    # refused, loudly, every time.
    stranger = generate_signing_key()
    public = tmp_path / "stranger.pub"
    public.write_text(stranger.public.pem(), encoding="ascii")
    proof = sign_enrolment(stranger, log_id=log_id, name="clinic-rotating", role="site")
    args = ["rotate", "clinic-rotating", "--recover", "--reason", "taken over",
            "--public-key", str(public), "--proof", proof]  # fmt: skip
    assert main(_admin(api, *args)) == 0
    api.service.ledger.checkpoint()
    for _ in range(2):
        with pytest.raises(LedgerIntegrityError, match="refuses to cosign"):
            witness.once()


def test_a_running_site_witness_follows_a_log_key_rotation(api: Api, tmp_path: Path) -> None:
    root = tmp_path / "site"
    site, token = _enrolled_site(api, root)
    site.close()
    ledger = api.service.ledger
    ledger.checkpoint()
    witness = _witness(api, root, token)
    assert witness.once()["cosigned"] == _size(api)

    identity = load_signing_key(api.data_dir / "identity" / "root.pem")
    rotate_log_key(ledger, identity=identity, new_key=generate_signing_key())
    ledger.append("note.recorded", ROOT_ACTOR, {"text": "after"}, signer=ledger.root_key)
    ledger.checkpoint()
    done = witness.once()
    assert done["cosigned"] == _size(api), json.dumps(done)
    state = witness.witness.state()
    assert len(state.log_keys) == 2  # the outgoing and the incoming log key


def test_a_log_key_recovery_is_followed_by_the_witness_and_shown_by_the_api(
    api: Api, tmp_path: Path
) -> None:
    root = tmp_path / "site"
    site, token = _enrolled_site(api, root)
    site.close()
    ledger = api.service.ledger
    ledger.checkpoint()
    witness = _witness(api, root, token)
    assert witness.once()["cosigned"] == _size(api)

    identity = load_signing_key(api.data_dir / "identity" / "root.pem")
    new_key = generate_signing_key()
    entry = recover_log_key(ledger, identity=identity, new_key=new_key, reason="disk died")
    ledger.append("note.recorded", ROOT_ACTOR, {"text": "after"}, signer=ledger.root_key)
    ledger.checkpoint()
    assert witness.once()["cosigned"] == _size(api)
    assert witness.witness.state().log_keys == [new_key.public.raw.hex()]
    report = api.call("GET", "/api/v1/ledger/verify", "auditor").json()
    assert report["ok"] is True, report
    assert report["key_recoveries"] == [
        {"seq": entry.seq, "name": ROOT_ACTOR, "key_id": new_key.public.key_id}
    ]
