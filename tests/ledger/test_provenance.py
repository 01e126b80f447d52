"""PROV-JSON lineage derived from the entries of one study."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from prov.model import ProvDocument

from veracity.cli import main
from veracity.contracts.events import ROOT_ACTOR
from veracity.errors import InputError
from veracity.ledger.statement import sign_statement

from .conftest import STUDY, STUDY_HASH, World

MODEL = "f" * 64


def record_study(world: World) -> None:
    root, ledger = world.root, world.ledger
    ledger.append(
        "study.proposed",
        ROOT_ACTOR,
        {"study_id": "bc-1", "study_hash": STUDY_HASH, "study": STUDY, "code_hash": "c" * 64},
        signer=root,
    )
    for site in ("hospital-a", "hospital-b"):
        world.dataset(site)
        approval = {
            "study_hash": STUDY_HASH,
            "site": site,
            "dataset_id": "d1",
            "epsilon_cap": 3.0,
            "signed_at": "2026-11-27T15:47:52.123456Z",
        }
        ledger.append(
            "study.approved",
            site,
            approval,
            signature=sign_statement(
                world.keys[site], "study.approved", site, approval, log_id=ledger.log_id
            ),
        )
    ledger.append(
        "run.started",
        ROOT_ACTOR,
        {
            "run_id": "9001",
            "study_hash": STUDY_HASH,
            "fab_hash": "a" * 64,
            "config_hash": "b" * 64,
            "package_versions": {"flwr": "1.42.0", "opacus": "1.6.0"},
            "seed_commitment": "d" * 64,
        },
        signer=root,
    )
    world.round("9001", STUDY_HASH, 1, ["hospital-a", "hospital-b"], "e" * 64)
    world.round("9001", STUDY_HASH, 2, ["hospital-a", "hospital-b"], MODEL)
    ledger.append(
        "run.finished",
        ROOT_ACTOR,
        {
            "run_id": "9001",
            "study_hash": STUDY_HASH,
            "status": "completed",
            "reason": "",
            "rounds_completed": 2,
            "model_hash": MODEL,
        },
        signer=root,
    )
    ledger.append(
        "model.released",
        ROOT_ACTOR,
        {
            "model_hash": MODEL,
            "run_id": "9001",
            "study_hash": STUDY_HASH,
            "model": {"family": "logistic", "n_features": 2},
            "datasets": [
                {"site": s, "dataset_id": "d1", "commitment": "0" * 64}
                for s in ("hospital-a", "hospital-b")
            ],
            "epsilon": {"hospital-a": 1.0, "hospital-b": 1.0},
            "metrics": {"auc": 0.93},
            "card_hash": "9" * 64,
        },
        signer=root,
    )
    ledger.checkpoint()


def test_provenance_links_model_rounds_datasets_sites_and_study(
    sqlite_url: str, make_world: Callable[..., World]
) -> None:
    world = make_world(sqlite_url)
    record_study(world)
    document = world.ledger.provenance(MODEL)
    parsed = ProvDocument.deserialize(content=json.dumps(document), format="json")
    assert parsed.serialize(format="json") is not None
    entities, activities, agents = document["entity"], document["activity"], document["agent"]
    assert f"veracity:model/{MODEL}" in entities
    assert {"veracity:dataset/hospital-a/d1", "veracity:dataset/hospital-b/d1"} <= set(entities)
    assert f"veracity:study/{STUDY_HASH}" in entities
    assert {"veracity:run/9001", "veracity:run/9001/round/1", "veracity:run/9001/round/2"} <= set(
        activities
    )
    assert {
        "veracity:site/hospital-a",
        "veracity:site/hospital-b",
        "veracity:agent/coordinator",
    } <= set(agents)
    generated = {
        (r["prov:entity"], r["prov:activity"]) for r in document["wasGeneratedBy"].values()
    }
    assert (f"veracity:model/{MODEL}", "veracity:run/9001/round/2") in generated
    derived = {
        (r["prov:generatedEntity"], r["prov:usedEntity"])
        for r in document["wasDerivedFrom"].values()
    }
    assert (f"veracity:model/{MODEL}", "veracity:model/" + "e" * 64) in derived
    assert (f"veracity:model/{MODEL}", "veracity:dataset/hospital-a/d1") in derived
    ledger_entity = entities[f"veracity:ledger/{world.ledger.log_id}"]
    checkpoint = world.ledger.latest_checkpoint()
    assert checkpoint is not None
    assert ledger_entity["veracity:checkpointSize"] == {
        "$": str(checkpoint.tree_size),
        "type": "xsd:int",
    }


def test_unknown_model_is_refused(sqlite_url: str, make_world: Callable[..., World]) -> None:
    world = make_world(sqlite_url)
    with pytest.raises(InputError, match="no model"):
        world.ledger.provenance("0" * 64)


def test_provenance_command_prints_prov_json_and_prov_n(
    tmp_path: Path, make_world: Callable[..., World], capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    world = make_world(url)
    record_study(world)
    assert main(["ledger", "provenance", MODEL, "--db", url, "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert f"veracity:model/{MODEL}" in document["entity"]
    assert main(["ledger", "provenance", MODEL, "--db", url]) == 0
    assert capsys.readouterr().out.startswith("document")
