"""Every site replays every round of a real run, then delivers its ``replay.confirmed``.

The module's network (one SuperLink with TLS and SuperNode authentication, three site
agents on 127.0.0.1) trains a two-round breast-cancer study started from the admin CLI
against a live API; each site then runs ``veracity site replay --run RUN`` (no
``--round``: all its rounds) and ``veracity site sync`` with its own token, as its
operator would, and the ledger must hold exactly one ``replay.confirmed`` per site naming
every round with the update hash that site's receipt in ``round.completed`` recorded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from tests.conftest import NETWORK_SITES, Network
from veracity.cli import main
from veracity.localnet import approve
from veracity.server.api import db
from veracity.server.api.serve import start_api
from veracity.server.api.settings import ApiSettings
from veracity.server.api.tokens import Role, TokenStore
from veracity.server.coordinator import operator
from veracity.server.fab import build_fab
from veracity.supervise import ProcessGroup, free_port
from veracity.tasks.breast_cancer import breast_cancer_study

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN = operator("admin")
ROUNDS = 2


@pytest.fixture(scope="module")
def api(network: Network) -> Iterator[tuple[str, dict[str, str]]]:
    """The admin API served by uvicorn over TLS, and a token per role and per site."""
    coordinator = network.coordinator
    db.upgrade(coordinator.ledger.engine)
    store = TokenStore(coordinator.ledger.engine)
    tokens = {"admin": store.create(role=Role.ADMIN, name="admin", expires_in=timedelta(days=1))}
    for name in NETWORK_SITES:
        tokens[name] = store.create(role=Role.SITE, name=f"{name}-cli", site=name)
    settings = ApiSettings(data_dir=coordinator.home.data_dir, api_port=free_port())
    with ProcessGroup() as group:
        _, base = start_api(settings, group)
        yield base, {who: issued.token for who, issued in tokens.items()}


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code = main([*args, "--format", "json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def test_every_site_replays_every_round_of_a_real_run_and_the_ledger_confirms_it(
    network: Network,
    api: tuple[str, dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    coordinator = network.coordinator
    server, tokens = api
    ca = str(coordinator.home.tls.ca_cert)
    study = breast_cancer_study(
        study_id="bc-replay-live",
        epsilon_caps=dict.fromkeys(NETWORK_SITES, 3.0),
        noise_multiplier=2.2,
        code_hash=build_fab().fab_hash,
        rounds=ROUNDS,
    )
    coordinator.propose_study(ADMIN, study.to_document())
    for name in NETWORK_SITES:
        statement = approve(network.sites[name], study, epsilon_cap=3.0)
        coordinator.record_statement(
            ADMIN, statement.kind, name, statement.payload, statement.signature
        )
    start = ["admin", "runs", "start", study.study_hash, "--watch"]
    assert main([*start, "--server", server, "--token", tokens["admin"], "--ca-cert", ca]) == 0
    capsys.readouterr()
    completed = [
        e.payload
        for e in coordinator.ledger.iter_entries(kind="round.completed")
        if e.payload["study_hash"] == study.study_hash
    ]
    assert [c["round"] for c in completed] == list(range(1, ROUNDS + 1))
    run_id = completed[0]["run_id"]
    receipts = {
        (signed["receipt"]["site"], c["round"]): signed["receipt"]["update_hash"]
        for c in completed
        for signed in c["receipts"]
    }
    assert {site for site, _ in receipts} == set(NETWORK_SITES)  # every site trained

    for name in NETWORK_SITES:
        directory = str(network.sites[name].directory)
        replayed = _cli(capsys, "site", "replay", "--run", run_id, "--data-dir", directory)
        assert replayed["kind"] == "replay.confirmed", replayed["payload"]
        synced = _cli(
            capsys, "site", "sync", "--server", server, "--token", tokens[name],
            "--ca-cert", ca, "--data-dir", directory,
        )  # fmt: skip
        assert synced["refused"] == {}
        assert synced["pending"] == 0

    confirmed = [
        e.payload
        for e in coordinator.ledger.iter_entries(kind="replay.confirmed")
        if e.payload["run_id"] == run_id
    ]
    assert sorted(c["site"] for c in confirmed) == sorted(NETWORK_SITES)  # one per site
    for confirmation in confirmed:
        assert [r["round"] for r in confirmation["rounds"]] == list(range(1, ROUNDS + 1))
        for replayed_round in confirmation["rounds"]:
            expected = receipts[(confirmation["site"], replayed_round["round"])]
            assert replayed_round["update_hash"] == expected
    assert not list(coordinator.ledger.iter_entries(kind="replay.failed"))
