"""``veracity admin`` commands no other test ran, against the real API app in process.

Each command runs as an operator types it (``veracity.cli.main``), over the admin API's
real app (its TestClient transport, the SuperLink kept in memory): ``sites show`` and
``sites revoke``, ``tokens list`` and ``tokens revoke``, ``runs stop``, a standalone
``runs watch`` (exit 0 on a completed run, 1 on a failed or stopped one), and ``runs
archive RUN --out DIR`` whose output ``veracity ledger replay`` verifies with the root key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.api.conftest import SETUP, Api, study_document
from tests.server.test_central_dp_run import _execute, _task_identity, enrol_sites  # noqa: F401
from tests.server.test_replay import _propose_plain
from veracity.api_client import CoordinatorClient
from veracity.cli import main

SERVER = "http://testserver/api/v1"


@pytest.fixture
def admin(api: Api, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run ``veracity admin ARGS --format json`` as the admin; (exit status, parsed stdout)."""
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

    def invoke(*args: str, role: str = "admin") -> tuple[int, Any]:
        capsys.readouterr()
        code = main(
            ["admin", *args, "--server", SERVER, "--token", api.tokens[role], "--format", "json"]
        )
        captured = capsys.readouterr()
        out = captured.out
        print(captured.err)  # shown when a test fails
        return code, (json.loads(out) if out.strip() else None)

    return invoke


def test_sites_show_and_revoke(api: Api, admin: Any) -> None:
    api.enrol(api.site)
    code, shown = admin("sites", "show", api.site.name)
    assert code == 0
    assert shown["name"] == api.site.name
    key_id = api.service.ledger.key_at(api.site.name)
    assert key_id is not None
    assert shown["key_id"] == key_id.key_id

    code, revoked = admin(
        "sites", "revoke", api.site.name, "--reason", "laptop stolen", "--keep-supernode"
    )
    assert code == 0
    (entry,) = api.service.ledger.entries(kind="key.revoked")
    assert revoked["seq"] == entry.seq
    assert entry.payload["reason"] == "laptop stolen"
    assert entry.payload["requested_by"] == "admin-user"
    assert api.service.ledger.key_at(api.site.name) is None
    code, _ = admin("sites", "revoke", api.site.name, "--reason", "again")
    assert code == 1  # refused: nothing left to revoke
    code, _ = admin("sites", "show", "no-such-site")
    assert code == 1


def test_tokens_list_and_revoke(api: Api, admin: Any) -> None:
    code, listed = admin("tokens", "list")
    assert code == 0
    names = {item["name"]: item for item in listed["items"]}
    assert {"admin-user", "researcher-user"} <= set(names)
    victim = names["researcher-user"]
    assert victim["revoked_at"] is None
    assert all("token" not in item for item in listed["items"])  # never the token itself

    code, revoked = admin("tokens", "revoke", victim["id"])
    assert code == 0
    assert revoked["id"] == victim["id"]
    assert revoked["revoked_at"] is not None
    (entry,) = api.service.ledger.entries(kind="token.revoked")
    assert entry.payload["token_id"] == victim["id"]
    assert entry.payload["requested_by"] == "admin-user"
    assert api.call("GET", "/api/v1/whoami", "researcher").status_code == 401
    code, listed = admin("tokens", "list")
    assert [t["revoked_at"] is not None for t in listed["items"] if t["id"] == victim["id"]] == [
        True
    ]


def test_runs_stop_then_watch_exits_1_on_a_stopped_or_failed_run(api: Api, admin: Any) -> None:
    api.enrol(api.site)
    api.register(api.site)
    study_hash = api.propose(study_document([api.site.name], "stoppable"))
    api.approve(api.site, study_hash)
    live = api.service.start_run(SETUP, study_hash).value.run_id

    code, stopped = admin("runs", "stop", live)
    assert code == 0
    (finished,) = api.service.ledger.entries(kind="run.finished")
    assert stopped["seq"] == finished.seq
    assert finished.payload["status"] == "stopped"
    assert finished.payload["requested_by"] == "admin-user"
    assert all(r.finished for r in api.service.federation.list_runs() if r.run_id == int(live))

    code, watched = admin("runs", "watch", live, "--interval", "0.1")
    assert code == 1
    assert watched["finished"]["status"] == "stopped"

    failing = api.service.start_run(SETUP, study_hash).value.run_id
    api.service.finish_run(
        SETUP, failing, study_hash, status="failed", reason="ServerApp died",
        rounds_completed=0, model_hash=None,
    )  # fmt: skip
    code, watched = admin("runs", "watch", failing, "--interval", "0.1")
    assert code == 1
    assert watched["finished"]["status"] == "failed"
    assert watched["finished"]["reason"] == "ServerApp died"


def test_a_run_a_restarted_superlink_forgot_is_shown_and_stopped_not_404(
    api: Api, admin: Any
) -> None:
    # The SuperLink keeps runs in memory: after a restart, `runs show` answered 404 for
    # every earlier run the ledger holds, and `runs stop` of one still running too.
    api.enrol(api.site)
    api.register(api.site)
    study_hash = api.propose(study_document([api.site.name], "forgotten"))
    api.approve(api.site, study_hash)
    live = api.service.start_run(SETUP, study_hash).value.run_id
    api.service.federation.forget_runs()  # type: ignore[attr-defined]

    shown = api.call("GET", f"/api/v1/runs/{live}", "admin")
    assert shown.status_code == 200, shown.text
    assert (shown.json()["run_id"], shown.json()["superlink"]) == (live, None)
    code, stopped = admin("runs", "stop", live)
    assert code == 0
    (finished,) = api.service.ledger.entries(kind="run.finished")
    assert stopped["seq"] == finished.seq
    assert finished.payload["status"] == "failed"
    assert "no record of the run" in finished.payload["reason"]
    assert "stop_run" not in api.service.federation.calls  # type: ignore[attr-defined]
    code, watched = admin("runs", "watch", live, "--interval", "0.1")
    assert code == 1
    assert watched["finished"]["status"] == "failed"


def test_runs_watch_exits_0_and_the_archive_replays(
    api: Api, admin: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    network = enrol_sites(api.service)
    # The (in-memory) SuperLink knows the run; the rounds run in process and are recorded.
    run = str(api.service.federation.start_run(b"fab", config={}))
    _execute(network, _propose_plain(network, rounds=2), run)

    code, watched = admin("runs", "watch", run, "--interval", "0.1")
    assert code == 0
    assert watched["finished"]["status"] == "completed"
    assert [r["round"] for r in watched["rounds"]] == [1, 2]

    archive = tmp_path / "archive"
    code, archived = admin("runs", "archive", run, "--out", str(archive))
    assert code == 0
    assert archived == {"archive": str(archive.absolute()), "run_id": run, "rounds": 2}
    code, _ = admin("runs", "archive", run, "--out", str(archive))
    assert code != 0  # never unpacked into an existing directory

    bundle = tmp_path / "ledger.jsonl"
    code, _ = admin("ledger", "export", "--out", str(bundle), role="auditor")
    assert code == 0
    root = tmp_path / "root.pub"
    root.write_text(api.service.ledger.identity_public_key.pem(), encoding="utf-8")
    capsys.readouterr()
    args = ["--bundle", str(bundle), "--archive", str(archive), "--trust", str(root)]
    assert main(["ledger", "replay", *args, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rounds"] == 2
    assert report["run_id"] == run
