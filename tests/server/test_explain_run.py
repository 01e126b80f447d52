"""An explanation run in process: a real coordinator (ledger, study, approvals, registry,
execute_run) and real sites (store, dataset, approval, budget), whose ClientApp's
``query.explain`` handler answers through the signed-reply Grid of the central-DP tests."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict

from tests.server.test_central_dp_run import (  # noqa: F401 - a fixture, registered by name
    NODES,
    SETUP,
    _execute,
    _Network,
    _SitesGrid,
    _task_identity,
)
from veracity.cli import main
from veracity.client import flower_app as client_app
from veracity.client.approvals import approve_study
from veracity.client.budget import history_to_json
from veracity.client.datasets import register_dataset
from veracity.client.site import Site, init_site
from veracity.contracts.events import ROOT_ACTOR
from veracity.contracts.explanation import ExplanationTerms, ReleaseExplanation, terms_hash
from veracity.core.canonical import canonical_hash, canonical_json
from veracity.errors import VerificationError
from veracity.server.coordinator import InMemoryFederation, init_coordinator, package_versions
from veracity.server.explanation import report_hash, verify_card_explanation
from veracity.server.fab import build_fab
from veracity.server.polling_grid import PollingGrid
from veracity.server.study_run import RunSettings, execute_run
from veracity.supervise import free_port
from veracity.tasks import breast_cancer
from veracity.tasks.study import Study

from .conftest import SiteIdentity, make_site_identity

TRAIN_RUN, EXPLAIN_RUN = "7", "8"


class _ExplainingGrid(_SitesGrid):
    """The central-DP tests' grid, with each site's real ClientApp answering ``query.explain``."""

    def __init__(self, *args: Any, site_dirs: dict[str, Path], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.site_dirs = site_dirs

    def _answer(self, request: Message) -> Message:
        if request.metadata.message_type != "query.explain":
            return super()._answer(request)
        name = NODES[request.metadata.dst_node_id]
        context = Context(
            run_id=int(self.run_id),
            node_id=request.metadata.dst_node_id,
            node_config={"site-dir": str(self.site_dirs[name])},
            state=RecordDict(),
            run_config={},
        )
        with client_app.run_code_hash(build_fab().fab_hash):
            reply: Message = client_app.explain(request, context)
        return reply


class _RealSites:
    def __init__(self, network: _Network, dirs: dict[str, Path]) -> None:
        self.network, self.dirs = network, dirs


@pytest.fixture(scope="module")
def sites_template(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, SiteIdentity]]:
    """A coordinator and three sites with the study approved, built once per module.

    Each test gets its own copy (:func:`sites`): the same files, so the same keys and
    ledger, and no test sees another's runs. The copies' site stores name this template's
    CSV files, which no test changes.
    """
    root = tmp_path_factory.mktemp("explain-sites")
    coordinator = init_coordinator(
        root / "coordinator", superlink_port=free_port(), federation=InMemoryFederation()
    )
    split = breast_cancer.federated_split(3, seed=0)
    identities: dict[str, SiteIdentity] = {}
    study = breast_cancer.breast_cancer_study(
        study_id="bc-explain",
        epsilon_caps=dict.fromkeys(NODES.values(), 3.0),
        noise_multiplier=1.7,
        code_hash=build_fab().fab_hash,
        rounds=1,
    )
    try:
        for index, name in enumerate(NODES.values()):
            init_site(root / name, name)
            with Site.open(root / name) as site:
                identity = make_site_identity(name)
                identities[name] = SiteIdentity(name, site.key, identity.supernode_public)
                coordinator.enrol_site(
                    SETUP,
                    name,
                    public_key_pem=site.key.public.pem(),
                    proof=site.enrolment_proof(coordinator.ledger.log_id),
                    supernode_public_key=identity.supernode_public,
                )
                csv = breast_cancer.write_csv(split.sites[index], root / f"{name}.csv")
                _, registered = register_dataset(
                    site, dataset_id="bc", path=csv, label=breast_cancer.LABEL
                )
                coordinator.record_statement(
                    SETUP, registered.kind, name, registered.payload, registered.signature
                )
        coordinator.propose_study(SETUP, study.to_document())
        for name in NODES.values():
            with Site.open(root / name) as site:
                _, approval, _ = approve_study(site, study, dataset_id="bc", epsilon_cap=3.0)
                coordinator.record_statement(
                    SETUP, approval.kind, name, approval.payload, approval.signature
                )
    finally:
        coordinator.close()
    return root, identities


@pytest.fixture
def sites(
    tmp_path: Path, sites_template: tuple[Path, dict[str, SiteIdentity]]
) -> Iterator[_RealSites]:
    template, identities = sites_template
    shutil.copytree(template, tmp_path, dirs_exist_ok=True)
    coordinator = init_coordinator(
        tmp_path / "coordinator", superlink_port=free_port(), federation=InMemoryFederation()
    )
    dirs = {name: tmp_path / name for name in NODES.values()}
    try:
        yield _RealSites(_Network(coordinator, dict(identities)), dirs)
    finally:
        with client_app._AGENTS_LOCK:
            for site_dir in dirs.values():
                client_app._EXPLAINERS.pop(site_dir.resolve(), None)
                client_app._ANALYSTS.pop(site_dir.resolve(), None)
                agent = client_app._AGENTS.pop(site_dir.resolve(), None)
                if agent is not None:
                    agent.close()
        coordinator.close()


def _study(sites: _RealSites) -> Study:
    (record,) = sites.network.coordinator.reads.studies()
    study = record.study
    assert isinstance(study, Study)
    return study


def _released(sites: _RealSites, study: Study) -> str:
    _execute(sites.network, study, TRAIN_RUN)
    (model,) = sites.network.coordinator.registry.list()
    return model


def _explain(sites: _RealSites, study: Study, terms: ExplanationTerms) -> None:
    coordinator = sites.network.coordinator
    config = {"explain": canonical_json(terms.to_json()).decode()}
    coordinator.ledger.append(
        "run.started",
        ROOT_ACTOR,
        {
            "run_id": EXPLAIN_RUN,
            "study_hash": study.study_hash,
            "fab_hash": study.code_hash,
            "config_hash": canonical_hash(config),
            "package_versions": package_versions(),
            "seed_commitment": canonical_hash({}),
        },
        signer=coordinator.root_key,
    )
    grid = _ExplainingGrid(
        sites.network.sites,
        study.study_hash,
        EXPLAIN_RUN,
        log_id=coordinator.ledger.log_id,
        site_dirs=sites.dirs,
    )
    settings = RunSettings(
        run_id=EXPLAIN_RUN,
        study_hash=study.study_hash,
        fab_hash=study.code_hash,
        round_timeout=30.0,
        node_wait=1.0,
        started_timeout=1.0,
        explain=config["explain"],
    )
    execute_run(coordinator, PollingGrid(grid, poll_interval=0.01), settings)


def _terms(study: Study, model: str, **changes: Any) -> ExplanationTerms:
    terms: dict[str, Any] = {
        "model_hash": model,
        "study_hash": study.study_hash,
        "steps": 8,
        "clip_norm": 1.0,
        "epsilon": 0.5,
        "delta": 1e-5,
    }
    return ExplanationTerms.parse({**terms, **changes})


def _entries(sites: _RealSites, kind: str) -> list[dict[str, Any]]:
    return [e.payload for e in sites.network.coordinator.ledger.iter_entries(kind=kind)]


def test_an_explanation_run_records_model_explained_whose_report_hash_matches(
    sites: _RealSites,
) -> None:
    study = _study(sites)
    model = _released(sites, study)
    terms = _terms(study, model)

    _explain(sites, study, terms)

    coordinator = sites.network.coordinator
    (explained,) = _entries(sites, "model.explained")
    report, plot = coordinator.registry.explanation(model, explained["report_hash"])
    assert report_hash(report) == explained["report_hash"]
    assert explained["terms_hash"] == terms_hash(terms)
    assert sorted(r["receipt"]["site"] for r in explained["receipts"]) == sorted(NODES.values())
    assert report["layout"] == "features"
    assert len(report["features"]["value"]) == len(breast_cancer.FEATURES)
    assert explained["top_features"] == report["top_features"]
    assert report["records"] == explained["records"] > 0
    assert plot.startswith(b"<svg")
    # The standard errors are the known noise: sqrt(3 sites) * z * clip / records.
    std = explained["receipts"][0]["receipt"]["noise_std"]
    assert np.allclose(report["features"]["se"], np.sqrt(3) * std / report["records"])
    coordinator.ledger.verify(coordinator.ledger.identity_public_key)
    (finished,) = [p for p in _entries(sites, "run.finished") if p["run_id"] == EXPLAIN_RUN]
    assert finished["status"] == "completed"


def test_each_sites_explanation_is_charged_to_its_dataset_and_recomputable_from_receipts(
    sites: _RealSites,
) -> None:
    study = _study(sites)
    model = _released(sites, study)

    _explain(sites, study, _terms(study, model, epsilon=0.7))

    (explained,) = _entries(sites, "model.explained")
    for signed in explained["receipts"]:
        receipt = signed["receipt"]
        with Site.open(sites.dirs[receipt["site"]]) as site:
            history = history_to_json(site.store.dataset_history("bc"))
        assert history == receipt["history"]
        assert receipt["epsilon_query"] == pytest.approx(0.7, abs=1e-3)


def test_a_spent_budget_refuses_the_explanation_and_nothing_is_recorded(
    sites: _RealSites,
) -> None:
    study = _study(sites)
    model = _released(sites, study)

    # Each site's cap for the study is 3: an explanation at epsilon 4 is refused everywhere.
    _explain(sites, study, _terms(study, model, epsilon=4.0))

    assert _entries(sites, "model.explained") == []
    refused = _entries(sites, "budget.refused")
    assert sorted(p["site"] for p in refused) == sorted(NODES.values())
    assert {p["run_id"] for p in refused} == {"query:explanation"}
    (finished,) = [p for p in _entries(sites, "run.finished") if p["run_id"] == EXPLAIN_RUN]
    assert finished["status"] == "insufficient_sites"
    assert "budget.refused" in finished["reason"]
    sites.network.coordinator.ledger.verify(sites.network.coordinator.ledger.identity_public_key)


# --- the explanation at release goes into the model card ---------------------------------
def _train_and_explain(sites: _RealSites, study: Study, asked: ReleaseExplanation) -> str:
    coordinator = sites.network.coordinator
    config = {"explain-at-release": canonical_json(asked.to_json()).decode()}
    coordinator.ledger.append(
        "run.started",
        ROOT_ACTOR,
        {
            "run_id": TRAIN_RUN,
            "study_hash": study.study_hash,
            "fab_hash": study.code_hash,
            "config_hash": canonical_hash(config),
            "package_versions": package_versions(),
            "seed_commitment": canonical_hash({"model_seed": study.model_seed}),
        },
        signer=coordinator.root_key,
    )
    grid = _ExplainingGrid(
        sites.network.sites,
        study.study_hash,
        TRAIN_RUN,
        log_id=coordinator.ledger.log_id,
        site_dirs=sites.dirs,
    )
    settings = RunSettings(
        run_id=TRAIN_RUN,
        study_hash=study.study_hash,
        fab_hash=study.code_hash,
        round_timeout=30.0,
        node_wait=1.0,
        started_timeout=1.0,
        explain_at_release=config["explain-at-release"],
    )
    execute_run(coordinator, PollingGrid(grid, poll_interval=0.01), settings)
    (model,) = coordinator.registry.list()
    return model


def _seq(sites: _RealSites, kind: str) -> int:
    (entry,) = sites.network.coordinator.ledger.iter_entries(kind=kind)
    return entry.seq


ASKED = ReleaseExplanation(steps=8, clip_norm=1.0, epsilon=0.5, delta=1e-5)


def test_an_explanation_at_release_is_in_the_card_that_model_released_hashes(
    sites: _RealSites,
) -> None:
    study = _study(sites)

    model = _train_and_explain(sites, study, ASKED)

    coordinator = sites.network.coordinator
    card = coordinator.registry.get(model).card
    (released,) = _entries(sites, "model.released")
    (explained,) = _entries(sites, "model.explained")
    section = card["explanation"]
    assert released["card_hash"] == canonical_hash(dict(card))
    assert section["report_hash"] == explained["report_hash"] == report_hash(section["report"])
    assert explained["run_id"] == released["run_id"] == TRAIN_RUN
    assert (
        explained["terms"] == section["terms"] == ASKED.for_model(model, study.study_hash).to_json()
    )
    # The report's values and standard errors, and the plot's hash, are in the card.
    block = section["report"]["features"]
    assert len(block["value"]) == len(block["se"]) == len(breast_cancer.FEATURES)
    _, plot = coordinator.registry.explanation(model, explained["report_hash"])
    assert plot.startswith(b"<svg")
    assert (
        verify_card_explanation(card, released, [explained], plot=plot) == explained["report_hash"]
    )
    # Recorded together: model.explained right after model.released.
    assert _seq(sites, "model.explained") == _seq(sites, "model.released") + 1
    # Charged to each dataset like an explanation run: the receipts' history shows it.
    for signed in explained["receipts"]:
        assert signed["receipt"]["epsilon_query"] == pytest.approx(0.5, abs=1e-3)
    coordinator.ledger.verify(coordinator.ledger.identity_public_key)
    (finished,) = _entries(sites, "run.finished")
    assert (finished["status"], finished["model_hash"]) == ("completed", model)


def test_a_card_whose_explanation_differs_from_the_ledger_is_caught(sites: _RealSites) -> None:
    study = _study(sites)
    model = _train_and_explain(sites, study, ASKED)
    card = dict(sites.network.coordinator.registry.get(model).card)
    (released,) = _entries(sites, "model.released")
    (explained,) = _entries(sites, "model.explained")
    _, plot = sites.network.coordinator.registry.explanation(model, explained["report_hash"])

    # A report edited in the card (a coordinator flattering its model) breaks the card hash.
    edited = copy.deepcopy(card)
    edited["explanation"]["report"]["features"]["value"][0] += 1.0
    with pytest.raises(VerificationError, match=r"model\.released"):
        verify_card_explanation(edited, released, [explained])
    # A card made consistent with a forged release names a report no model.explained records.
    edited["explanation"]["report_hash"] = report_hash(edited["explanation"]["report"])
    forged = {**released, "card_hash": canonical_hash(edited)}
    with pytest.raises(VerificationError, match=r"no model\.explained"):
        verify_card_explanation(edited, forged, [explained])
    # Another plot than the one the card names.
    with pytest.raises(VerificationError, match="plot"):
        verify_card_explanation(card, released, [explained], plot=plot + b" ")
    # A card with no explanation section.
    bare = {k: v for k, v in card.items() if k != "explanation"}
    with pytest.raises(VerificationError, match="no explanation report"):
        verify_card_explanation(bare, {**released, "card_hash": canonical_hash(bare)}, [])


def test_the_auditor_checks_a_card_against_a_bundle_from_the_cli(
    sites: _RealSites, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = _study(sites)
    model = _train_and_explain(sites, study, ASKED)
    coordinator = sites.network.coordinator
    bundle = tmp_path / "ledger.bundle"
    coordinator.ledger.export_bundle(bundle)
    root = tmp_path / "root.pub"
    root.write_text(coordinator.ledger.identity_public_key.pem(), encoding="utf-8")
    card = dict(coordinator.registry.get(model).card)
    (explained,) = _entries(sites, "model.explained")
    _, plot = coordinator.registry.explanation(model, explained["report_hash"])
    card_file, plot_file = tmp_path / "card.json", tmp_path / "explanation.svg"
    card_file.write_text(json.dumps({"card": card}), encoding="utf-8")
    plot_file.write_bytes(plot)
    args = ["ledger", "check-card", "--card", str(card_file), "--bundle", str(bundle)]
    args += ["--trust", str(root), "--plot", str(plot_file), "--format", "json"]

    assert main(args) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["report_hash"] == explained["report_hash"]

    plot_file.write_bytes(plot.replace(b"<svg", b"<svg data-x='1'", 1))
    assert main(args) == 1
    assert "plot" in capsys.readouterr().err


def test_an_explanation_at_release_refused_everywhere_still_releases_and_says_why(
    sites: _RealSites,
) -> None:
    study = _study(sites)

    # Each site's cap for the study is 3: an explanation at epsilon 4 is refused everywhere.
    model = _train_and_explain(
        sites, study, ReleaseExplanation(clip_norm=1.0, epsilon=4.0, delta=1e-5)
    )

    card = sites.network.coordinator.registry.get(model).card
    assert card["explanation"]["report_hash"] is None
    assert any("budget.refused" in why for why in card["explanation"]["not_recorded"])
    assert _entries(sites, "model.explained") == []
    (finished,) = _entries(sites, "run.finished")
    assert "explanation at release not recorded" in finished["reason"]


def test_a_site_answering_the_explanation_at_release_out_of_shape_cannot_stop_the_release(
    sites: _RealSites, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A site's signed answer with one figure too many made the report raise, and the run
    ended failed with no model after every round (and every site's budget) was spent."""
    from veracity.client import explanation as site_explanation

    honest = site_explanation._default_attribute
    calls: list[int] = []

    def one_rogue_site(*args: Any, **kwargs: Any) -> Any:
        rows = honest(*args, **kwargs)
        calls.append(rows.shape[1])
        if len(calls) == 1:  # the first site to answer adds a figure, and signs it
            return np.hstack([rows, rows[:, :1]])
        return rows

    monkeypatch.setattr(site_explanation, "_default_attribute", one_rogue_site)
    study = _study(sites)

    model = _train_and_explain(
        sites, study, ReleaseExplanation(clip_norm=1.0, epsilon=0.5, delta=1e-5)
    )

    assert len(calls) == 3
    card = sites.network.coordinator.registry.get(model).card
    assert card["explanation"]["report_hash"] is None  # two answers; the study needs three
    assert any("figures; the model has 30" in why for why in card["explanation"]["not_recorded"])
    (finished,) = _entries(sites, "run.finished")
    assert finished["status"] == "completed"
    assert finished["model_hash"] == model
