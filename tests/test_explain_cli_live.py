"""``veracity admin`` explanations against a live API, with real processes on 127.0.0.1.

The module's network (one SuperLink with TLS and SuperNode authentication, three site agents)
trains a breast-cancer study; uvicorn serves the coordinator's admin API over TLS, and the
commands run as an operator would type them, over HTTPS with tokens: ``admin runs start
--explain-epsilon`` (the report goes into the model card), ``admin models explain --watch``
and ``admin models explanation``; then the auditor checks the card against an exported
bundle (``ledger check-card``), a site replays its round fetching the global model it lost
from the API (``site replay --server``), and ``admin runs prune --dry-run`` keeps the
released model's archive.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import NETWORK_SITES, Network
from veracity.cli import main
from veracity.client.replay import RoundKeeper
from veracity.localnet import approve
from veracity.server.api import db
from veracity.server.api.serve import start_api
from veracity.server.api.settings import ApiSettings
from veracity.server.api.tokens import Role, TokenStore
from veracity.server.coordinator import operator
from veracity.server.explanation import report_hash
from veracity.server.fab import build_fab
from veracity.supervise import ProcessGroup, free_port
from veracity.tasks.breast_cancer import FEATURES, breast_cancer_study

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN = operator("admin")


@dataclass
class LiveApi:
    network: Network
    server: str
    ca_cert: Path
    tokens: dict[str, str]

    def args(self, role: str) -> list[str]:
        return [
            "--server",
            self.server,
            "--token",
            self.tokens[role],
            "--ca-cert",
            str(self.ca_cert),
        ]


@pytest.fixture(scope="module")
def live(network: Network) -> Iterator[LiveApi]:
    coordinator = network.coordinator
    db.upgrade(coordinator.ledger.engine)
    store = TokenStore(coordinator.ledger.engine)
    tokens = {
        "admin": store.create(role=Role.ADMIN, name="admin-cli", expires_in=timedelta(days=1)),
        "researcher": store.create(role=Role.RESEARCHER, name="researcher-cli"),
        "auditor": store.create(role=Role.AUDITOR, name="auditor-cli"),
        "site": store.create(role=Role.SITE, name="site-a-cli", site=NETWORK_SITES[0]),
    }
    settings = ApiSettings(data_dir=coordinator.home.data_dir, api_port=free_port())
    with ProcessGroup() as group:
        _, base = start_api(settings, group)
        yield LiveApi(
            network,
            base,
            coordinator.home.tls.ca_cert,
            {role: issued.token for role, issued in tokens.items()},
        )


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code = main([*args, "--format", "json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def test_explanations_from_the_admin_cli_against_a_live_api(
    live: LiveApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    coordinator = live.network.coordinator
    study = breast_cancer_study(
        study_id="bc-explain-cli",
        epsilon_caps=dict.fromkeys(NETWORK_SITES, 3.0),
        noise_multiplier=2.2,
        code_hash=build_fab().fab_hash,
        rounds=1,
    )
    coordinator.propose_study(ADMIN, study.to_document())
    for name in NETWORK_SITES:
        statement = approve(live.network.sites[name], study, epsilon_cap=3.0)
        coordinator.record_statement(
            ADMIN, statement.kind, name, statement.payload, statement.signature
        )

    # 1. Train, and explain the final model before its release: the card holds the report.
    run_args = ["admin", "runs", "start", study.study_hash, "--explain-epsilon", "0.5"]
    run_args += ["--explain-clip-norm", "1", "--explain-steps", "8", "--watch"]
    assert main([*run_args, *live.args("admin")]) == 0, capsys.readouterr().err
    capsys.readouterr()
    (released,) = [
        e.payload
        for e in coordinator.ledger.iter_entries(kind="model.released")
        if e.payload["study_hash"] == study.study_hash
    ]
    model = released["model_hash"]
    shown = _cli(capsys, "admin", "models", "show", model, *live.args("admin"))
    section = shown["card"]["explanation"]
    assert section["report_hash"] == report_hash(section["report"])
    assert [e["report_hash"] for e in shown["explanations"]] == [section["report_hash"]]

    # 2. Explain it again, as a separate explanation run, and follow it to its report.
    out = tmp_path / "explanation"
    explained = _cli(
        capsys, "admin", "models", "explain", model, "--epsilon", "0.5", "--clip-norm", "1",
        "--steps", "8", "--watch", "--out", str(out), *live.args("admin"),
    )  # fmt: skip
    entries = [
        e.payload
        for e in coordinator.ledger.iter_entries(kind="model.explained")
        if e.payload["model_hash"] == model
    ]
    assert [e["report_hash"] for e in entries] == [section["report_hash"], explained["report_hash"]]
    assert explained["run_id"] == entries[1]["run_id"] != released["run_id"]
    assert sorted(explained["sites"]) == sorted(NETWORK_SITES)
    assert set(explained["report"]["features"]["labels"]) == set(FEATURES)
    report_file = Path(explained["files"]["report"])
    assert report_hash(json.loads(report_file.read_text())) == explained["report_hash"]
    assert Path(explained["files"]["plot"]).read_text().startswith("<svg")

    # 3. The latest report again, as a researcher reads it.
    latest = _cli(capsys, "admin", "models", "explanation", model, *live.args("researcher"))
    assert (latest["report_hash"], latest["seq"]) == (explained["report_hash"], explained["seq"])

    # 4. The auditor reads the card and checks its report against the exported ledger.
    card = tmp_path / "card.json"
    audited = _cli(capsys, "admin", "models", "show", model, *live.args("auditor"))
    card.write_text(json.dumps(audited), encoding="utf-8")
    bundle, root = tmp_path / "ledger.bundle", tmp_path / "root.pub"
    coordinator.ledger.export_bundle(bundle)
    root.write_text(coordinator.ledger.identity_public_key.pem(), encoding="utf-8")
    checked = _cli(
        capsys, "ledger", "check-card", "--card", str(card), "--bundle", str(bundle),
        "--trust", str(root),
    )  # fmt: skip
    assert checked["report_hash"] == section["report_hash"]

    # 5. A site that lost its kept global model replays its round, fetching it from the API.
    site = live.network.sites[NETWORK_SITES[0]]
    shutil.rmtree(RoundKeeper(site.directory).root / "globals")
    replayed = _cli(
        capsys, "site", "replay", "--run", released["run_id"], "--data-dir", str(site.directory),
        *live.args("site"),
    )  # fmt: skip
    assert replayed["kind"] == "replay.confirmed", replayed["payload"]

    # 6. Retention: a dry run keeps the released model's archive and records nothing.
    size = coordinator.ledger.size()
    pruned = _cli(
        capsys, "admin", "runs", "prune", "--older-than", "0", "--dry-run", *live.args("admin")
    )
    assert released["run_id"] in pruned["kept_released"]
    assert (pruned["removed"], pruned["seq"]) == (0, None)
    assert coordinator.ledger.size() == size
