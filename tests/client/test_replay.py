"""Site-side replay: a site re-trains its own rounds and signs whether they match (#19)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.client.support import SITE, request_for
from veracity.cli import main
from veracity.client.replay import RoundKeeper, replay_run
from veracity.client.service import SiteAgent, TrainReply
from veracity.client.site import Clock, Site
from veracity.contracts.receipts import Receipt
from veracity.contracts.replay import seed_commitment
from veracity.crypto.keys import load_verify_key
from veracity.errors import InputError
from veracity.ledger.statement import verify_statement
from veracity.tasks.study import Study
from veracity.tasks.weights import weights_from_bytes, weights_hash, weights_to_bytes

# Every test here trains real rounds with Opacus.
pytestmark = pytest.mark.training

RUN = "2001"
ROUNDS = 3


@pytest.fixture
def os_seeded_agent(site_dir: Path, clock: Clock) -> Iterator[SiteAgent]:
    """An agent as in production: every round's seed comes from os.urandom."""
    agent = SiteAgent.open(site_dir, clock=clock)
    yield agent
    agent.close()


def _train(agent: SiteAgent, study: Study, rounds: int = ROUNDS) -> list[TrainReply]:
    replies: list[TrainReply] = []
    weights = None
    for number in range(1, rounds + 1):
        outcome = agent.handle_train(request_for(study, round=number, run_id=RUN, weights=weights))
        assert isinstance(outcome, TrainReply), getattr(outcome, "reason", outcome)
        replies.append(outcome)
        # The next global model: the update nudged, as an aggregate would be.
        weights = {name: value * np.float32(0.9) for name, value in outcome.weights.items()}
    return replies


@pytest.fixture
def trained(ready_site: Site, approved: Study, os_seeded_agent: SiteAgent) -> list[TrainReply]:
    return _train(os_seeded_agent, approved)


def test_a_sites_trained_rounds_replay_to_their_receipts_update_hashes(
    ready_site: Site, trained: list[TrainReply]
) -> None:
    outcome = replay_run(ready_site, RUN)

    assert outcome.confirmed
    statement = outcome.statement
    assert statement.kind == "replay.confirmed"
    assert [item["round"] for item in statement.payload["rounds"]] == [1, 2, 3]
    assert [item["update_hash"] for item in statement.payload["rounds"]] == [
        reply.receipt["update_hash"] for reply in trained
    ]
    assert [item["seed_commitment"] for item in statement.payload["rounds"]] == [
        reply.receipt["seed_commitment"] for reply in trained
    ]
    verify_statement(
        load_verify_key(ready_site.paths.public_key),
        statement.kind,
        SITE,
        statement.payload,
        statement.signature,
        log_id=ready_site.log_id,
    )
    queued = [entry.statement.statement_id for entry in ready_site.store.outbox()]
    assert statement.statement_id in queued


def test_one_round_replays_alone(ready_site: Site, trained: list[TrainReply]) -> None:
    outcome = replay_run(ready_site, RUN, round=3)

    assert outcome.confirmed
    assert [item["round"] for item in outcome.statement.payload["rounds"]] == [3]


def test_the_receipts_seed_commitment_is_that_of_the_stored_seed(
    ready_site: Site, trained: list[TrainReply]
) -> None:
    for number, reply in enumerate(trained, start=1):
        seed = ready_site.store.stored_round_seed(run_id=RUN, round=number)
        assert seed is not None
        assert len(seed) == 32
        receipt = Receipt.parse(reply.receipt)
        assert receipt.seed_commitment == seed_commitment(run_id=RUN, round=number, seed=seed)
    seeds = {ready_site.store.stored_round_seed(run_id=RUN, round=n) for n in (1, 2, 3)}
    assert len(seeds) == 3  # a fresh secret seed per round


def test_a_stored_round_seed_is_never_replaced(ready_site: Site, trained: list[TrainReply]) -> None:
    seed = ready_site.store.stored_round_seed(run_id=RUN, round=2)
    assert seed is not None
    ready_site.store.round_seed(run_id=RUN, round=2, fresh=b"\x00" * 32)  # kept, not replaced
    assert ready_site.store.stored_round_seed(run_id=RUN, round=2) == seed


def test_replaying_spends_no_budget(ready_site: Site, trained: list[TrainReply]) -> None:
    spends = ready_site.store.list_spends()
    history = ready_site.store.dataset_history("bc-0")

    replay_run(ready_site, RUN)

    assert ready_site.store.list_spends() == spends
    assert ready_site.store.dataset_history("bc-0") == history


def test_a_changed_data_file_is_refused(
    ready_site: Site, trained: list[TrainReply], bc_csv: Path
) -> None:
    outbox = ready_site.store.outbox()
    bc_csv.write_bytes(bc_csv.read_bytes().replace(b"1", b"2", 1))

    with pytest.raises(InputError, match="no longer matches its commitment"):
        replay_run(ready_site, RUN)
    assert ready_site.store.outbox() == outbox  # nothing signed


def _kept_round_path(site: Site, number: int) -> Path:
    keeper = RoundKeeper(site.paths.root)
    return keeper._run_dir(RUN) / f"round-{number}.json"


def test_an_update_the_site_did_not_produce_fails_the_replay_at_its_round(
    ready_site: Site, trained: list[TrainReply]
) -> None:
    path = _kept_round_path(ready_site, 2)
    record = json.loads(path.read_text())
    record["receipt"]["update_hash"] = "ab" * 32
    path.write_text(json.dumps(record))

    outcome = replay_run(ready_site, RUN)

    assert not outcome.confirmed
    payload = outcome.statement.payload
    assert outcome.statement.kind == "replay.failed"
    assert payload["round"] == 2
    assert payload["expected_update_hash"] == "ab" * 32
    assert payload["replayed_update_hash"] == trained[1].receipt["update_hash"]
    assert [item["round"] for item in payload["confirmed"]] == [1]


def test_an_altered_global_model_fails_the_replay_at_its_round(
    ready_site: Site, trained: list[TrainReply]
) -> None:
    record = json.loads(_kept_round_path(ready_site, 3).read_text())
    keeper = RoundKeeper(ready_site.paths.root)
    path = keeper.global_path(record["global_model_hash"])
    weights = keeper.load_global(record["global_model_hash"])
    assert weights is not None
    weights["linear.bias"] = weights["linear.bias"] + np.float32(0.25)
    path.write_bytes(weights_to_bytes(weights))

    outcome = replay_run(ready_site, RUN)

    assert outcome.statement.kind == "replay.failed"
    assert outcome.statement.payload["round"] == 3
    assert [item["round"] for item in outcome.statement.payload["confirmed"]] == [1, 2]


def test_a_changed_seed_fails_the_replay_at_its_round(
    ready_site: Site, trained: list[TrainReply]
) -> None:
    from veracity.client.store import SecretRow

    name = ready_site.store._round_seed_name(RUN, 2)
    with ready_site.store._transaction() as session:
        row = session.get(SecretRow, name)
        assert row is not None
        row.value_hex = ("00" if not row.value_hex.startswith("00") else "01") + row.value_hex[2:]

    outcome = replay_run(ready_site, RUN)

    assert outcome.statement.kind == "replay.failed"
    assert outcome.statement.payload["round"] == 2
    assert "commitment" in outcome.statement.payload["reason"]


def test_a_global_model_kept_under_its_hash_is_the_one_received(
    ready_site: Site, approved: Study, trained: list[TrainReply]
) -> None:
    record = json.loads(_kept_round_path(ready_site, 1).read_text())
    first = request_for(approved, round=1, run_id=RUN)
    assert record["global_model_hash"] == weights_hash(first.weights)


def test_the_cli_replays_and_exits_1_on_a_changed_data_file(
    ready_site: Site,
    trained: list[TrainReply],
    bc_csv: Path,
    site_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["site", "replay", "--run", RUN, "--data-dir", str(site_dir)]
    assert main([*argv, "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["kind"] == "replay.confirmed"
    assert [item["round"] for item in document["rounds"]] == [1, 2, 3]

    bc_csv.write_bytes(bc_csv.read_bytes().replace(b"1", b"2", 1))
    assert main(argv) == 1
    assert "no longer matches its commitment" in capsys.readouterr().err


def test_rounds_clipped_by_opacus_hooks_replay_too(
    ready_site: Site, approved: Study, site_dir: Path, clock: Clock
) -> None:
    config = json.loads((site_dir / "site.json").read_text())
    (site_dir / "site.json").write_text(json.dumps({**config, "clipping": "opacus-hooks"}))
    with SiteAgent.open(site_dir, clock=clock) as agent:
        assert agent.site.config.clipping == "opacus-hooks"
        _train(agent, approved, rounds=2)

    outcome = replay_run(ready_site, RUN)

    assert outcome.confirmed
    assert [item["round"] for item in outcome.statement.payload["rounds"]] == [1, 2]


# --- a global model the site no longer keeps, fetched from the coordinator ----------------
def _drop_globals(site: Site) -> dict[str, bytes]:
    """Remove the site's kept global models; return them by hash (the coordinator's copies)."""
    folder = RoundKeeper(site.paths.root).global_path("0" * 64).parent
    kept = {path.stem: path.read_bytes() for path in folder.glob("*.npz")}
    for path in folder.glob("*.npz"):
        path.unlink()
    return kept


def test_missing_global_models_are_fetched_checked_and_kept_again(
    ready_site: Site, trained: list[TrainReply]
) -> None:
    coordinator_copies = _drop_globals(ready_site)
    asked: list[tuple[str, str]] = []

    def fetch(run_id: str, model_hash: str) -> bytes:
        asked.append((run_id, model_hash))
        return coordinator_copies[model_hash]

    outcome = replay_run(ready_site, RUN, fetch=fetch)

    assert outcome.statement.kind == "replay.confirmed", outcome.statement.payload
    assert len(asked) == ROUNDS
    assert {run for run, _ in asked} == {RUN}
    keeper = RoundKeeper(ready_site.paths.root)
    assert all(keeper.global_path(model_hash).is_file() for _, model_hash in asked)


def test_a_fetched_global_model_of_another_hash_fails_the_replay_at_its_round(
    ready_site: Site, trained: list[TrainReply]
) -> None:
    coordinator_copies = _drop_globals(ready_site)
    record = json.loads(_kept_round_path(ready_site, 2).read_text())
    # A coordinator that serves round 2's global model altered (one bias nudged).
    altered = dict(weights_from_bytes(coordinator_copies[record["global_model_hash"]]))
    altered["linear.bias"] = altered["linear.bias"] + np.float32(0.25)

    def fetch(run_id: str, model_hash: str) -> bytes:
        if model_hash == record["global_model_hash"]:
            return weights_to_bytes(altered)
        return coordinator_copies[model_hash]

    outcome = replay_run(ready_site, RUN, fetch=fetch)

    assert outcome.statement.kind == "replay.failed"
    assert outcome.statement.payload["round"] == 2
    assert "does not have the hash" in outcome.statement.payload["reason"]
    assert not RoundKeeper(ready_site.paths.root).global_path(record["global_model_hash"]).exists()


def test_a_missing_global_model_without_a_coordinator_fails_at_round_one(
    ready_site: Site, trained: list[TrainReply]
) -> None:
    _drop_globals(ready_site)

    outcome = replay_run(ready_site, RUN)

    assert (outcome.statement.kind, outcome.statement.payload["round"]) == ("replay.failed", 1)
    assert "missing" in outcome.statement.payload["reason"]


def test_a_coordinator_that_cannot_be_reached_fails_no_replay(
    ready_site: Site, trained: list[TrainReply]
) -> None:
    """A coordinator briefly down (or a mistyped token) became a signed, permanent
    ``replay.failed`` in the ledger; it says nothing about the round, so nothing is signed."""
    import httpx

    from veracity.client.replay import coordinator_fetcher
    from veracity.errors import TransportError

    _drop_globals(ready_site)
    outbox = [entry.statement for entry in ready_site.store.outbox()]
    down = coordinator_fetcher(
        "https://127.0.0.1:9",
        "vrs_token",
        None,
        transport=httpx.MockTransport(lambda request: httpx.Response(503, text="restarting")),
    )

    with pytest.raises(TransportError, match="503"):
        replay_run(ready_site, RUN, fetch=down)

    assert [entry.statement for entry in ready_site.store.outbox()] == outbox
    # The coordinator's "no such model" is an answer about the round: that one fails it.
    gone = coordinator_fetcher(
        "https://127.0.0.1:9",
        "vrs_token",
        None,
        transport=httpx.MockTransport(lambda request: httpx.Response(404, text="pruned")),
    )
    outcome = replay_run(ready_site, RUN, fetch=gone)
    assert (outcome.statement.kind, outcome.statement.payload["round"]) == ("replay.failed", 1)
    assert "serves no such model" in outcome.statement.payload["reason"]
