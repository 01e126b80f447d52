"""``GET /runs/{run}/archive``: an auditor downloads a run's archive and replays it."""

from __future__ import annotations

import io
import json
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.server.conftest import make_site_identity
from tests.server.test_central_dp_run import (  # noqa: F401
    NODES,
    SETUP,
    SIGNED_AT,
    _execute,
    _task_identity,
    enrol_sites,
)
from tests.server.test_replay import RUN, _propose_plain
from veracity.api_client import ApiError, CoordinatorClient
from veracity.contracts.events import UpdatesPruned
from veracity.errors import InputError
from veracity.ledger.possession import sign_enrolment
from veracity.ledger.statement import sign_statement
from veracity.ledger.verify import MAX_ENTRY_BYTES
from veracity.server.api.tokens import Role
from veracity.server.coordinator import operator
from veracity.server.coordinator.runs import PRUNED_PER_ENTRY
from veracity.server.fab import build_fab
from veracity.server.replay import replay_aggregation
from veracity.server.round_archive import UpdateStore, extract_archive, write_archive_zip
from veracity.tasks.breast_cancer import FEATURES, LABEL, breast_cancer_study
from veracity.tasks.weights import weights_from_bytes, weights_hash

from .conftest import Api


def test_an_auditor_downloads_a_run_archive_that_replays(api: Api, tmp_path: Path) -> None:
    network = enrol_sites(api.service)
    _execute(network, _propose_plain(network, rounds=2), RUN)
    bundle = tmp_path / "ledger.jsonl"
    api.service.ledger.export_bundle(bundle)

    response = api.call("GET", f"/api/v1/runs/{RUN}/archive", "auditor")

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    index = extract_archive(response.content, tmp_path / "archive")
    assert [r["round"] for r in index["rounds"]] == [1, 2]
    report = replay_aggregation(
        bundle, tmp_path / "archive", trusted_root=api.service.ledger.identity_public_key
    )
    assert report.rounds == 2


def test_a_site_fetches_its_runs_global_models_by_hash_and_nothing_else(api: Api) -> None:
    network = enrol_sites(api.service)
    study = _propose_plain(network, rounds=2)
    _execute(network, study, RUN)
    rounds = [e.payload for e in api.service.ledger.iter_entries(kind="round.completed")]
    token = api.token_store.create(role=Role.SITE, name="replayer", site="hospital-a").token
    as_site = {"Authorization": f"Bearer {token}"}
    initial = weights_hash(study.model_spec.initial_weights(study.model_seed))

    for model_hash, number in ((initial, 0), (rounds[0]["aggregated_model_hash"], 1)):
        response = api.client.get(f"/api/v1/runs/{RUN}/models/{model_hash}", headers=as_site)
        assert response.status_code == 200, response.text
        assert weights_hash(weights_from_bytes(response.content)) == model_hash
        assert response.headers["x-veracity-round"] == str(number)
        named = api.service.ledger.get(int(response.headers["x-veracity-seq"]))
        assert named.kind == ("run.started" if number == 0 else "round.completed")

    # A site's update is kept by hash too, but it is not a global model: not served.
    update = rounds[0]["receipts"][0]["receipt"]["update_hash"]
    assert UpdateStore(api.service.home.updates).path(update).is_file()
    path = f"/api/v1/runs/{RUN}/models/{update}"
    assert api.client.get(path, headers=as_site).status_code == 404
    # A site that took no part in the run, and a researcher, get nothing.
    aggregate = f"/api/v1/runs/{RUN}/models/{rounds[0]['aggregated_model_hash']}"
    assert api.call("GET", aggregate, "site").status_code == 404
    assert api.call("GET", aggregate, "researcher").status_code == 403
    assert api.call("GET", aggregate, "auditor").status_code == 200


def test_the_last_rounds_aggregate_is_the_model_and_is_never_served_to_a_site(api: Api) -> None:
    """The released model is the last round's aggregate: served by this route, a site (or
    an auditor) would get its plaintext weights with no ``model.downloaded`` entry."""
    network = enrol_sites(api.service)
    study = _propose_plain(network, rounds=2)
    _execute(network, study, RUN)
    last = [e.payload for e in api.service.ledger.iter_entries(kind="round.completed")][-1]
    (released,) = [e.payload for e in api.service.ledger.iter_entries(kind="model.released")]
    assert last["aggregated_model_hash"] == released["model_hash"]
    token = api.token_store.create(role=Role.SITE, name="replayer", site="hospital-a").token
    path = f"/api/v1/runs/{RUN}/models/{released['model_hash']}"
    size = api.service.ledger.size()

    answer = api.client.get(path, headers={"Authorization": f"Bearer {token}"})

    assert answer.status_code == 404, answer.text
    assert "administrators" in answer.text
    assert api.call("GET", path, "auditor").status_code == 404
    assert api.service.ledger.size() == size
    # The model's weights stay an administrator's recorded download.
    download = api.call("GET", f"/api/v1/models/{released['model_hash']}/weights", "admin")
    assert download.status_code == 200
    assert api.service.ledger.get(api.service.ledger.size() - 1).kind in {
        "model.downloaded",
        "checkpoint",
    }


def test_a_site_that_approves_after_the_run_started_gets_none_of_its_models(api: Api) -> None:
    """Approving a study later does not open the global models of a run it never joined."""
    network = enrol_sites(api.service)
    coordinator, log_id = api.service, api.service.ledger.log_id
    # A study of four sites; three approve and train, the fourth approves afterwards.
    late = make_site_identity("hospital-late")
    coordinator.enrol_site(
        SETUP,
        late.name,
        public_key_pem=late.key.public.pem(),
        proof=sign_enrolment(late.key, log_id=log_id, name=late.name, role="site"),
        supernode_public_key=late.supernode_public,
    )
    registered = {
        "site": late.name, "dataset_id": "bc", "commitment": "cd" * 32,
        "schema_hash": "ef" * 32, "rows": 100, "label": LABEL, "features": list(FEATURES),
        "signed_at": SIGNED_AT,
    }  # fmt: skip
    signature = sign_statement(late.key, "dataset.registered", late.name, registered, log_id=log_id)
    coordinator.record_statement(SETUP, "dataset.registered", late.name, registered, signature)
    study = breast_cancer_study(
        study_id="bc-late",
        epsilon_caps={**dict.fromkeys(NODES.values(), 3.0), "hospital-late": 3.0},
        noise_multiplier=1.7,
        code_hash=build_fab().fab_hash,
        rounds=2,
        min_sites=3,
    )
    coordinator.propose_study(SETUP, study.to_document())
    for site in network.sites.values():
        approval = {
            "study_hash": study.study_hash, "site": site.name, "dataset_id": "bc",
            "epsilon_cap": 3.0, "signed_at": SIGNED_AT,
        }  # fmt: skip
        signature = sign_statement(site.key, "study.approved", site.name, approval, log_id=log_id)
        coordinator.record_statement(SETUP, "study.approved", site.name, approval, signature)
    _execute(network, study, RUN)
    first = next(e.payload for e in api.service.ledger.iter_entries(kind="round.completed"))
    approval = {
        "study_hash": study.study_hash, "site": late.name, "dataset_id": "bc",
        "epsilon_cap": 3.0, "signed_at": SIGNED_AT,
    }  # fmt: skip
    signature = sign_statement(late.key, "study.approved", late.name, approval, log_id=log_id)
    coordinator.record_statement(SETUP, "study.approved", late.name, approval, signature)
    assert late.name in api.service.reads.approvals(study.study_hash)
    token = api.token_store.create(role=Role.SITE, name="late", site=late.name).token
    path = f"/api/v1/runs/{RUN}/models/{first['aggregated_model_hash']}"

    answer = api.client.get(path, headers={"Authorization": f"Bearer {token}"})

    assert answer.status_code == 404, answer.text
    # A site that took part still gets it.
    member = api.token_store.create(role=Role.SITE, name="member", site="hospital-a").token
    ok = api.client.get(path, headers={"Authorization": f"Bearer {member}"})
    assert ok.status_code == 200, ok.text


def _hashes(api: Api, run_id: str) -> set[str]:
    named: set[str] = set()
    for entry in api.service.ledger.iter_entries(kind="round.completed"):
        if entry.payload["run_id"] == run_id:
            named.add(entry.payload["aggregated_model_hash"])
            named.update(r["receipt"]["update_hash"] for r in entry.payload["receipts"])
    return named


UNRELEASED = "8"


def test_a_prune_deletes_old_archives_but_keeps_a_released_models_unless_told(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    network = enrol_sites(api.service)
    study = _propose_plain(network, rounds=2)
    _execute(network, study, RUN)  # released
    monkeypatch.setattr(
        "veracity.server.study_run.release_model",
        lambda *_a, **_k: (_ for _ in ()).throw(RuntimeError("the disk is full")),
    )
    other = _propose_plain(network, rounds=1, study_id="bc-other", model_seed=1)
    with pytest.raises(RuntimeError):
        _execute(network, other, UNRELEASED)  # its round recorded, nothing released
    monkeypatch.undo()
    store = UpdateStore(api.service.home.updates)
    released, unreleased = _hashes(api, RUN), _hashes(api, UNRELEASED)
    assert released
    assert unreleased
    size = api.service.ledger.size()
    body = {"older_than_days": 0, "dry_run": True}

    dry = api.call("POST", "/api/v1/runs/prune", "admin", json=body)

    assert dry.status_code == 200, dry.text
    assert (dry.json()["runs"], dry.json()["kept_released"]) == ([UNRELEASED], [RUN])
    assert dry.json()["seq"] is None
    assert api.service.ledger.size() == size
    assert all(store.path(h).is_file() for h in unreleased)
    assert api.call("POST", "/api/v1/runs/prune", "auditor", json=body).status_code == 403

    pruned = api.call("POST", "/api/v1/runs/prune", "admin", json={"older_than_days": 0})

    assert pruned.status_code == 200, pruned.text
    entry = api.service.ledger.get(pruned.json()["seq"])
    assert entry.kind == "updates.pruned"
    assert entry.payload["runs"] == [UNRELEASED]
    assert entry.payload["kept_released"] == [RUN]
    assert set(entry.payload["removed"]) == unreleased
    assert entry.payload["requested_by"] == "admin-user"
    assert not any(store.path(h).exists() for h in unreleased)
    assert all(store.path(h).is_file() for h in released)
    gone = api.call("GET", f"/api/v1/runs/{UNRELEASED}/archive", "auditor")
    assert gone.status_code == 404
    assert "updates.pruned" in gone.text
    assert api.call("GET", f"/api/v1/runs/{RUN}/archive", "auditor").status_code == 200
    # Nothing left to remove: nothing recorded.
    again = api.call("POST", "/api/v1/runs/prune", "admin", json={"older_than_days": 0})
    assert (again.json()["seq"], again.json()["removed"]) == (None, 0)
    # Runs younger than the cutoff are never eligible.
    young = api.call(
        "POST", "/api/v1/runs/prune", "admin", json={"older_than_days": 1, "include_released": True}
    )
    assert (young.json()["runs"], young.json()["seq"]) == ([], None)

    told = api.call(
        "POST", "/api/v1/runs/prune", "admin", json={"older_than_days": 0, "include_released": True}
    )

    assert told.json()["runs"] == [RUN]
    assert api.service.ledger.get(told.json()["seq"]).payload["include_released"] is True
    assert not any(store.path(h).exists() for h in released)
    api.service.ledger.verify(api.service.ledger.identity_public_key)


def _one_released_one_not(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``RUN`` (released, 1 round) and ``UNRELEASED`` (1 round recorded, no release)."""
    network = enrol_sites(api.service)
    _execute(network, _propose_plain(network, rounds=1), RUN)
    monkeypatch.setattr(
        "veracity.server.study_run.release_model",
        lambda *_a, **_k: (_ for _ in ()).throw(RuntimeError("the disk is full")),
    )
    other = _propose_plain(network, rounds=1, study_id="bc-other", model_seed=1)
    with pytest.raises(RuntimeError):
        _execute(network, other, UNRELEASED)
    monkeypatch.undo()


def _pruned_entries(api: Api) -> list[dict[str, Any]]:
    return [e.payload for e in api.service.ledger.iter_entries(kind="updates.pruned")]


def test_a_large_prune_takes_consecutive_entries_and_no_file_is_ever_recorded_twice(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: one entry however many files (over 8 MiB, refused, from ~125,000), and a
    # second prune (a concurrent one, or one after a deletion cut short) that found files
    # the first had recorded but not yet deleted recorded them again.
    _one_released_one_not(api, monkeypatch)
    store = UpdateStore(api.service.home.updates)
    unreleased = sorted(_hashes(api, UNRELEASED))
    assert len(unreleased) >= 3
    kept = {h: store.path(h).read_bytes() for h in unreleased}

    plan, seq = api.service.prune_updates(operator(), older_than_days=0, per_entry=2)

    assert seq is not None
    entries = _pruned_entries(api)
    assert [len(p["removed"]) for p in entries] == [2] * (len(unreleased) // 2) + (
        [1] if len(unreleased) % 2 else []
    )
    assert [api.service.ledger.get(seq + i).kind for i in range(len(entries))] == [
        "updates.pruned"
    ] * len(entries)
    assert sorted(h for p in entries for h in p["removed"]) == unreleased == sorted(plan.removed)
    assert sum(p["removed_bytes"] for p in entries) == sum(map(len, kept.values()))
    assert all(p["runs"] == [UNRELEASED] for p in entries)
    assert [p["kept_released"] for p in entries] == [[RUN]] + [[]] * (len(entries) - 1)
    assert not any(store.path(h).exists() for h in unreleased)
    for digest, data in kept.items():  # as if that prune's deletion had not happened yet
        store.path(digest).write_bytes(data)

    again = api.call("POST", "/api/v1/runs/prune", "admin", json={"older_than_days": 0})

    assert again.status_code == 200, again.text
    assert (again.json()["seq"], again.json()["removed"]) == (None, 0)
    assert not any(store.path(h).exists() for h in unreleased)  # deleted, not recorded
    assert _pruned_entries(api) == entries
    api.service.ledger.verify(api.service.ledger.identity_public_key)


def test_a_file_archived_again_after_its_prune_is_recorded_again_with_its_new_run(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: a later run that made the same weights archived the pruned file again, and
    # its prune deleted it as a leftover of the first, with no entry naming the new run.
    network = enrol_sites(api.service)
    study = _propose_plain(network, rounds=1)
    monkeypatch.setattr(
        "veracity.server.study_run.release_model",
        lambda *_a, **_k: (_ for _ in ()).throw(RuntimeError("the disk is full")),
    )
    with pytest.raises(RuntimeError):
        _execute(network, study, UNRELEASED)
    first = api.call("POST", "/api/v1/runs/prune", "admin", json={"older_than_days": 0})
    assert first.json()["runs"] == [UNRELEASED]
    with pytest.raises(RuntimeError):
        _execute(network, study, "9")  # the same deterministic round: the same files
    store = UpdateStore(api.service.home.updates)
    files = _hashes(api, "9")
    assert files == _hashes(api, UNRELEASED)
    assert all(store.path(h).is_file() for h in files)

    again = api.call("POST", "/api/v1/runs/prune", "admin", json={"older_than_days": 0})

    assert again.json()["seq"] is not None
    entry = api.service.ledger.get(again.json()["seq"])
    assert "9" in entry.payload["runs"]  # (and the first run, which names the same files)
    assert set(entry.payload["removed"]) == files
    assert not any(store.path(h).exists() for h in files)


def test_one_entry_of_the_default_prune_batch_fits_in_an_entry() -> None:
    # Unbatched, a prune of ~125,000 files made one entry over 8 MiB that the ledger
    # refused, so retention could never run again.
    def size(files: int) -> int:
        payload = UpdatesPruned(
            requested_by="admin-user",
            older_than_days=0,
            before="2026-01-01T00:00:00Z",
            include_released=False,
            runs=["1"],
            kept_released=[],
            removed=[f"{n:064x}" for n in range(files)],
            removed_bytes=files,
        )
        return len(json.dumps(payload.model_dump(mode="json")).encode())

    assert size(PRUNED_PER_ENTRY) < MAX_ENTRY_BYTES // 2
    assert size(130_000) > MAX_ENTRY_BYTES


def test_a_file_an_unpruned_run_also_names_is_never_deleted(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    network = enrol_sites(api.service)
    study = _propose_plain(network, rounds=1)
    _execute(network, study, RUN)  # released
    monkeypatch.setattr(
        "veracity.server.study_run.release_model",
        lambda *_a, **_k: (_ for _ in ()).throw(RuntimeError("the disk is full")),
    )
    with pytest.raises(RuntimeError):
        _execute(network, study, UNRELEASED)  # the same deterministic round: the same files
    monkeypatch.undo()
    assert _hashes(api, UNRELEASED) == _hashes(api, RUN)

    pruned = api.call("POST", "/api/v1/runs/prune", "admin", json={"older_than_days": 0})

    assert (pruned.json()["removed"], pruned.json()["seq"]) == (0, None)
    store = UpdateStore(api.service.home.updates)
    assert all(store.path(h).is_file() for h in _hashes(api, RUN))


def test_an_unknown_run_has_no_archive(api: Api) -> None:
    response = api.call("GET", "/api/v1/runs/999/archive", "auditor")

    assert response.status_code == 404


def test_an_archive_with_a_path_outside_its_layout_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("index.json", '{"format": "veracity.run-archive.v1", "rounds": []}')
        archive.writestr("../escape.npz", b"x")

    with pytest.raises(InputError, match=r"not weights/<hash>\.npz"):
        extract_archive(buffer.getvalue(), tmp_path / "out")
    assert not (tmp_path / "escape.npz").exists()


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


INDEX = b'{"format": "veracity.run-archive.v1", "rounds": []}'


def test_a_compressed_member_is_refused_before_anything_is_unpacked(tmp_path: Path) -> None:
    # 64 MiB of zeros compress to ~64 KiB: a zip bomb grows the same way, only more.
    bomb = _zip({"index.json": INDEX, "weights/" + "a" * 64 + ".npz": bytes(64 << 20)},
                zipfile.ZIP_DEFLATED)  # fmt: skip
    assert len(bomb) < 1 << 20
    with pytest.raises(InputError, match="is compressed"):
        extract_archive(bomb, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_existing_directory_is_never_unpacked_into(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with pytest.raises(InputError, match="exists"):
        extract_archive(_zip({"index.json": INDEX}), home)
    assert list(home.iterdir()) == []


def test_an_index_without_its_rounds_is_refused(tmp_path: Path) -> None:
    data = _zip({"index.json": b'{"format": "veracity.run-archive.v1"}'})
    with pytest.raises(InputError, match="index is not"):
        extract_archive(data, tmp_path / "out")


# --------------------------------------------------------------- large archives (#16)
class _Entry:
    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload


class _Ledger:
    """The ``round.completed`` entries of one run, naming weights kept in a store."""

    def __init__(self, rounds: list[dict[str, Any]]) -> None:
        self.rounds = rounds

    def iter_entries(self, *, kind: str | None = None) -> Iterator[_Entry]:
        assert kind == "round.completed"
        return iter(_Entry(payload) for payload in self.rounds)


#: One weights file of about 4 MiB; the archive holds ROUNDS * 4 of them (128 MiB).
FILE_FLOATS, ROUNDS = 1 << 20, 8


def _large_run(store: UpdateStore) -> _Ledger:
    """A run of ROUNDS rounds, three site updates and one model each, all different."""
    rng = np.random.default_rng(0)
    rounds = []
    for number in range(1, ROUNDS + 1):
        digests = [
            store.put({"w": rng.standard_normal(FILE_FLOATS).astype(np.float32)}) for _ in range(4)
        ]
        rounds.append(
            {
                "run_id": "7",
                "study_hash": "b" * 64,
                "round": number,
                "receipts": [
                    {"receipt": {"site": f"site-{i}", "update_hash": d}}
                    for i, d in enumerate(digests[:3])
                ],
                "aggregated_model_hash": digests[3],
            }
        )
    return _Ledger(rounds)


def _peak_bytes(work: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_a_large_archive_is_written_and_unpacked_in_bounded_memory(tmp_path: Path) -> None:
    """#16: the archive was built in memory (every file, then the zip): 2x its size."""
    store = UpdateStore(tmp_path / "updates")
    ledger = _large_run(store)
    one_file = FILE_FLOATS * 4
    archive_size = ROUNDS * 4 * one_file
    zipped = tmp_path / "run.zip"

    def write() -> None:
        with zipped.open("wb") as target:
            write_archive_zip(ledger, store, "7", target)

    written_peak = _peak_bytes(write)
    assert zipped.stat().st_size > archive_size
    unpacked_peak = _peak_bytes(lambda: extract_archive(zipped, tmp_path / "out"))

    # One weights file at a time (read, parsed and re-hashed, written): a few copies of one
    # file, not the archive (32 files; built in memory it peaked at twice the archive).
    assert written_peak < 6 * one_file <= archive_size / 5, written_peak
    assert unpacked_peak < 2 * one_file, unpacked_peak
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert len(index["rounds"]) == ROUNDS
    for payload in ledger.rounds:
        kept = UpdateStore(tmp_path / "out" / "weights")
        assert kept.get(payload["aggregated_model_hash"])["w"].shape == (FILE_FLOATS,)


def test_the_api_streams_the_archive_with_its_length_and_the_cli_client_downloads_it(
    api: Api, tmp_path: Path
) -> None:
    network = enrol_sites(api.service)
    _execute(network, _propose_plain(network, rounds=2), RUN)
    client = CoordinatorClient("http://testserver/api/v1", transport=api.client._transport)

    with (tmp_path / "run.zip").open("wb") as target:
        size = client.download_run_archive(api.tokens["auditor"], RUN, target)

    response = api.call("GET", f"/api/v1/runs/{RUN}/archive", "auditor")
    assert int(response.headers["content-length"]) == len(response.content) == size
    index = extract_archive(tmp_path / "run.zip", tmp_path / "archive")
    assert [r["round"] for r in index["rounds"]] == [1, 2]
    with pytest.raises(ApiError) as refused:
        client.download_run_archive(api.tokens["auditor"], "999", io.BytesIO())
    assert refused.value.status == 404
