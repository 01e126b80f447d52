"""``veracity demo``: a whole research network on one machine, then audited.

A coordinator (SuperLink with TLS and SuperNode authentication, the admin API over HTTPS),
three hospitals with their own data, keys and budgets, a clinic and an auditor, all on
127.0.0.1 and all real processes:

1. The coordinator is initialised (root key, CA, ledger) and started.
2. Each hospital initialises its site (its own keys and store) and registers its own
   non-IID partition of scikit-learn's breast-cancer data, written as a CSV in its folder.
3. The admin enrols the sites through the API; each site's SuperNode connects, and each
   site's witness starts cosigning the coordinator's checkpoints.
4. Sites submit their signed dataset registrations; the admin proposes a study (the
   HE-friendly MLP, record-level DP); each site operator approves it with an epsilon cap.
5. The run trains with Opacus at every site; the model is released with its card.
6. A clinic runs ``veracity predict`` on held-out patients under encryption.
7. An auditor exports the ledger and verifies the bundle offline with the root public key
   and a C2SP policy (the log key, the three witness keys, quorum 2) and its own state
   directory, and reads the model's provenance.
8. One site replays its last round (``veracity site replay``: re-trained from the global
   model and secret seed it kept, to its receipt's update hash) and delivers the signed
   ``replay.confirmed``; the auditor downloads the run archive and recomputes every
   round's aggregation (``veracity ledger replay``'s check).

Each stage is a small step function over one :class:`DemoState` (:data:`DEMO_STEPS`, in
order: coordinator up, sites set up, enrolled, study approved, warmed up, trained,
inference checked, explained, audited, replayed); the steps talk to the admin API through
the typed :class:`~veracity.api_client.CoordinatorClient`, and the summary is
:meth:`DemoState.summary`. Everything the demo starts is stopped on exit, on Ctrl-C and on
failure. The data directory is kept so that the ledger can be audited again with the
ledger CLI.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from rich.console import Console

from veracity.errors import ConfigError, TransportError, VerificationError
from veracity.localnet import LocalSite, approve, create_site
from veracity.supervise import ProcessGroup, free_port, stopping_on_signals

if TYPE_CHECKING:
    from veracity.api_client import CoordinatorClient
    from veracity.client.supernode import SiteNode
    from veracity.server.api.serve import Services
    from veracity.tasks.breast_cancer import FederatedSplit
    from veracity.tasks.study import Study

__all__ = ["DemoOptions", "DemoState", "DemoStep", "DEMO_STEPS", "run_demo"]

SITES = ("hospital-a", "hospital-b", "hospital-c")
_T = TypeVar("_T")


@dataclass(frozen=True)
class DemoOptions:
    """What the demo runs: where, how many rounds, and the privacy terms."""

    data_dir: Path
    rounds: int = 3
    #: Training's 2.94 and the explanation's share (:data:`EXPLAIN_EPSILON`) fit under it.
    epsilon_cap: float = 3.5
    #: 3 rounds of 5 steps at sample rate 0.2 cost replace-one epsilon 2.94 (add/remove 1.71).
    noise_multiplier: float = 2.2
    seed: int = 0
    #: Keep the coordinator (SuperLink, admin API and web console) up after the audit, until
    #: Ctrl-C or SIGTERM, so a person can look around in the console.
    keep_running: bool = False


@dataclass(frozen=True)
class Trained:
    """What the training step leaves: the run, its model and its rounds."""

    run_id: str
    model_hash: str
    rounds: list[dict[str, Any]]


@dataclass(frozen=True)
class InferenceCheck:
    """The clinic's encrypted scores against the released model in plaintext."""

    patients: int
    agreement: float
    max_abs_error: float
    accuracy: float
    auc: float


@dataclass(frozen=True)
class Analytics:
    """What the analytics step leaves: answers against the non-private ones, epsilon spent."""

    queries: int
    epsilon_spent: dict[str, float]
    max_abs_error: float


@dataclass(frozen=True)
class Explanation:
    """What the explanation step leaves: the recorded report's hash and its top features."""

    run_id: str
    report_hash: str
    top_features: list[str]
    epsilon: float


#: Each site's epsilon for the released model's explanation, and its per-record bound.
EXPLAIN_EPSILON, EXPLAIN_CLIP = 0.4, 1.0


@dataclass(frozen=True)
class Audit:
    """What the auditor exported, verified and read."""

    bundle: Path
    root_public_key: Path
    entries: int
    provenance: dict[str, Any]
    witnesses: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)


def _need(value: _T | None, what: str) -> _T:
    if value is None:
        raise ConfigError(f"the demo has no {what} yet (a step ran out of order)")
    return value


@dataclass
class DemoState:
    """The network as the demo has built it so far: each step adds its part.

    Parameters
    ----------
    options
        What the demo runs.
    root
        The demo's (fresh, resolved) data directory.
    """

    options: DemoOptions
    root: Path
    group: ProcessGroup = field(default_factory=ProcessGroup)
    started: float = field(default_factory=time.monotonic)
    timings: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    services: Services | None = None
    client: CoordinatorClient | None = None
    split: FederatedSplit | None = None
    sites: list[LocalSite] = field(default_factory=list)
    nodes: list[SiteNode] = field(default_factory=list)
    clinic_csv: Path | None = None
    study: Study | None = None
    trained: Trained | None = None
    analytics: Analytics | None = None
    inference: InferenceCheck | None = None
    explanation: Explanation | None = None
    audit: Audit | None = None
    #: Site-side and aggregation replay (#19).
    replay: dict[str, Any] | None = None

    @property
    def coordinator_dir(self) -> Path:
        """The coordinator's data directory."""
        return self.root / "coordinator"

    @property
    def api(self) -> CoordinatorClient:
        """The admin API client (once the coordinator is up)."""
        return _need(self.client, "admin API")

    def close(self) -> None:
        """Close the API client and stop every process the demo started."""
        if self.client is not None:
            self.client.close()
        self.group.stop_all()

    def summary(self) -> dict[str, Any]:
        """The summary document (``veracity demo --format json``) of a completed demo."""
        from veracity.server.coordinator import CoordinatorHome

        study, trained = _need(self.study, "study"), _need(self.trained, "trained model")
        inference, audit = _need(self.inference, "inference check"), _need(self.audit, "audit")
        analytics = _need(self.analytics, "analytics")
        explanation = _need(self.explanation, "explanation")
        last_receipts = {r["receipt"]["site"]: r["receipt"] for r in trained.rounds[-1]["receipts"]}
        config = CoordinatorHome.load(self.coordinator_dir)
        return {
            "ok": True,
            "duration_s": round(time.monotonic() - self.started, 1),
            "data_dir": str(self.root),
            "sites": [_site_summary(site, last_receipts, self.options) for site in self.sites],
            "study": {
                "study_id": study.study_id,
                "study_hash": study.study_hash,
                "rounds": self.options.rounds,
            },
            "run_id": trained.run_id,
            "model": {
                "hash": trained.model_hash,
                "accuracy": inference.accuracy,
                "auc": inference.auc,
            },
            "inference": {
                "patients": inference.patients,
                "agreement": inference.agreement,
                "max_abs_error": inference.max_abs_error,
            },
            "ledger": {
                "db_url": config.db_url,
                "bundle": str(audit.bundle),
                "root_public_key": str(audit.root_public_key),
                "entries": audit.entries,
                "verified": True,
                "witnesses": audit.witnesses,
                "policy": audit.policy,
            },
            "provenance": _provenance_summary(audit.provenance),
            "analytics": {
                "queries": analytics.queries,
                "epsilon_spent": analytics.epsilon_spent,
                "max_abs_error": analytics.max_abs_error,
            },
            "explanation": {
                "report_hash": explanation.report_hash,
                "top_features": explanation.top_features,
                "run_id": explanation.run_id,
                "epsilon_per_site": explanation.epsilon,
            },
            "replay": _need(self.replay, "replay"),
            "console": self.console_access(),
            "timings_s": self.timings,
        }

    def console_access(self) -> dict[str, str]:
        """The web console's URL, its CA certificate and a read-only (auditor) token."""
        services = _need(self.services, "coordinator services")
        return {
            "url": services.console_url,
            "ca_cert": str(services.ca_cert),
            "read_only_token": self.tokens["console"],
        }


def _site_summary(
    site: LocalSite, receipts: dict[str, dict[str, Any]], options: DemoOptions
) -> dict[str, Any]:
    receipt = receipts.get(site.name)
    return {
        "name": site.name,
        "rows": site.rows,
        "neighbouring": "replace-one",
        "epsilon": float(receipt["epsilon"]) if receipt is not None else None,
        "epsilon_add_remove": (
            float(receipt["epsilon_add_remove"]) if receipt is not None else None
        ),
        "epsilon_cap": options.epsilon_cap,
    }


def _fresh_directory(path: Path) -> Path:
    if path.exists() and any(path.iterdir()):
        raise ConfigError(f"{path} is not empty; the demo needs a fresh data directory")
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def _poll(what: str, timeout: float, probe: Callable[[], _T | None], interval: float = 0.5) -> _T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            raise TransportError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _veracity(*args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """Run the ``veracity`` CLI as a separate process, as a person would."""
    return subprocess.run(
        [sys.executable, "-m", "veracity", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _write_clinic_files(directory: Path, features: np.ndarray, labels: np.ndarray) -> Path:
    from veracity.tasks.breast_cancer import FEATURES

    directory.mkdir(parents=True, exist_ok=True)
    patients = directory / "patients.csv"
    with patients.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", *FEATURES])
        for index, row in enumerate(features):
            writer.writerow([f"p{index:04d}", *(repr(float(v)) for v in row)])
    with (directory / "outcomes.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", "diagnosis"])
        for index, label in enumerate(labels):
            writer.writerow([f"p{index:04d}", int(label)])
    return patients


# ---- the steps, in order -------------------------------------------------------------


def start_coordinator(state: DemoState) -> None:
    """Initialise the coordinator, issue one token per person, start SuperLink and API."""
    from veracity.api_client import CoordinatorClient
    from veracity.server.api.serve import initialise, issue_token, start_services
    from veracity.server.api.settings import ApiSettings
    from veracity.server.coordinator import CoordinatorHome

    home = state.coordinator_dir
    initialise(home, superlink_port=free_port()).close()
    # The identity key goes offline, as an operator moves it: the coordinator runs on its
    # log key alone (keys/log.pem); only a log key rotation would need the identity again.
    offline = state.root / "offline"
    offline.mkdir(mode=0o700, exist_ok=True)
    identity = CoordinatorHome.load(home).identity_dir
    if identity.exists():
        shutil.move(identity, offline / "identity")
    for key, role, name in [
        ("admin", "admin", "demo-admin"),
        ("clinic", "researcher", "clinic"),
        ("auditor", "auditor", "auditor"),
        # Printed with the console's URL: an auditor token reads and never changes anything.
        ("console", "auditor", "console-viewer"),
    ]:
        state.tokens[key] = issue_token(home, role=role, name=name).token
    for site in SITES:
        operator = f"{site}-operator"
        state.tokens[site] = issue_token(home, role="site", name=operator, site=site).token
    settings = ApiSettings(data_dir=home, api_port=free_port())
    state.services = start_services(settings, state.group)
    state.client = CoordinatorClient(state.services.api_url, ca_cert=state.services.ca_cert)


def set_up_sites(state: DemoState) -> None:
    """Each hospital makes its keys and store and registers its own non-IID partition."""
    from veracity.tasks.breast_cancer import federated_split

    split = federated_split(len(SITES), seed=state.options.seed, skew=0.6)
    state.split = split
    state.sites = [
        create_site(state.root / "sites" / name, name, partition)
        for name, partition in zip(SITES, split.sites, strict=True)
    ]
    test = split.test
    state.clinic_csv = _write_clinic_files(state.root / "clinic", test.features, test.labels)


def _log_vkey(state: DemoState) -> str:
    """The log's note verifier key, read from the coordinator's database (pinned by sites)."""
    from veracity.ledger.ledger import Ledger
    from veracity.ledger.witnessed import WitnessedLog
    from veracity.server.coordinator import CoordinatorHome

    with Ledger.open(CoordinatorHome.load(state.coordinator_dir).db_url) as ledger:
        return WitnessedLog(ledger).verifier.vkey()


def enrol_sites(state: DemoState) -> None:
    """The admin enrols the sites, their SuperNodes and witnesses start, each registers data."""
    from veracity.client.supernode import SuperNodeOptions, start_site_node
    from veracity.client.witness import start_site_witness
    from veracity.ledger.ledger import Ledger
    from veracity.server.coordinator import CoordinatorHome

    services = _need(state.services, "services")
    log_vkey = _log_vkey(state)
    node_options = SuperNodeOptions(
        superlink=services.superlink_address, ca_cert=services.ca_cert, idle_poll=0.2
    )
    with Ledger.open(CoordinatorHome.load(state.coordinator_dir).db_url) as ledger:
        log_id = ledger.log_id
    for site in state.sites:
        state.api.enrol_site(
            state.tokens["admin"],
            name=site.name,
            public_key=site.public_key_pem,
            supernode_public_key=site.supernode_public_key,
            proof=site.enrolment_proof(log_id),
        )
        state.nodes.append(start_site_node(site.directory, node_options, state.group, wait=False))
        start_site_witness(
            site.directory,
            state.group,
            api_url=services.api_url,
            token=state.tokens[site.name],
            ca_cert=services.ca_cert,
            log_vkey=log_vkey,
            interval=0.5,
        )
    for site in state.sites:
        statement = site.registration
        state.api.register_dataset(
            state.tokens[site.name], payload=statement.payload, signature=statement.signature
        )


def _demo_study(options: DemoOptions) -> Study:
    """The study the admin proposes: the HE-friendly MLP under record-level DP."""
    from veracity.server.fab import build_fab
    from veracity.tasks.breast_cancer import breast_cancer_study
    from veracity.tasks.spec import ModelFamily

    return breast_cancer_study(
        study_id=f"breast-cancer-demo-{datetime.now(UTC):%Y%m%d%H%M%S}",
        epsilon_caps=dict.fromkeys(SITES, options.epsilon_cap),
        noise_multiplier=options.noise_multiplier,
        code_hash=build_fab().fab_hash,
        family=ModelFamily.POLY_MLP,
        rounds=options.rounds,
        min_sites=2,
        learning_rate=1.0,
        model_seed=options.seed,
    )


def approve_study(state: DemoState) -> None:
    """The admin proposes the study; each operator reviews what is served and approves it."""
    from veracity.tasks.study import parse_study

    study = _demo_study(state.options)
    proposed = state.api.propose_study(state.tokens["admin"], study.to_document())
    if proposed.study_hash != study.study_hash:
        raise VerificationError("the coordinator recorded another study than proposed")
    for site in state.sites:
        # Each operator reviews the document the coordinator serves, and signs an approval
        # of exactly that document (its hash is what they approve).
        served = state.api.study(state.tokens[site.name], study.study_hash)
        reviewed = parse_study(served.study)
        if reviewed.study_hash != study.study_hash:
            raise VerificationError("the coordinator serves another study document")
        statement = approve(site, reviewed, epsilon_cap=state.options.epsilon_cap)
        state.api.decide(
            state.tokens[site.name],
            study.study_hash,
            kind=statement.kind,
            payload=statement.payload,
            signature=statement.signature,
        )
    state.study = study


def warm_up_sites(state: DemoState) -> None:
    """Wait until every site's worker has loaded torch and Opacus."""
    for node in state.nodes:
        node.wait_ready()


def _demo_analysis(options: DemoOptions) -> dict[str, Any]:
    """The analysis study the admin proposes before training: counts and a histogram."""
    from veracity.server.fab import build_fab
    from veracity.tasks.breast_cancer import LABEL

    return {
        "kind": "analysis",
        "study_id": f"breast-cancer-analytics-{datetime.now(UTC):%Y%m%d%H%M%S}",
        "title": "Patients, malignant patients, and tumour radius before training",
        "columns": {
            "mean_radius": {"lower": 5.0, "upper": 30.0},
            LABEL: {"lower": 0.0, "upper": 1.0},
        },
        "queries": [
            {"query_id": "patients", "kind": "count", "epsilon": 0.5},
            {"query_id": "malignant", "kind": "count", "epsilon": 0.5,
             "cohort": [{"column": LABEL, "op": "==", "value": 1.0}]},
            {"query_id": "mean-radius-histogram", "kind": "histogram", "column": "mean_radius",
             "bins": [5.0, 10.0, 15.0, 20.0, 25.0, 30.0], "epsilon": 0.5},
        ],
        "delta": 1e-5,
        "epsilon_caps": dict.fromkeys(SITES, options.epsilon_cap),
        "min_sites": 2,
        "code_hash": build_fab().fab_hash,
    }  # fmt: skip


def run_analytics(state: DemoState) -> None:
    """An analysis study first: each site approves it and answers with its own noise."""
    from veracity.analytics.combine import read_figures
    from veracity.analytics.mechanism import exact_release
    from veracity.client.analysis import approve_analysis
    from veracity.client.site import Site
    from veracity.contracts.analysis import AnalysisStudy
    from veracity.localnet import DATASET_ID
    from veracity.tasks.breast_cancer import FEATURES, LABEL

    admin = state.tokens["admin"]
    study = AnalysisStudy.parse(_demo_analysis(state.options))
    proposed = state.api.propose_study(admin, study.to_document())
    if proposed.study_hash != study.study_hash:
        raise VerificationError("the coordinator recorded another analysis study than proposed")
    for site in state.sites:
        with Site.open(site.directory) as opened:
            _decision, statement = approve_analysis(
                opened, study, dataset_id=DATASET_ID, epsilon_cap=state.options.epsilon_cap
            )
        state.api.decide(
            state.tokens[site.name],
            study.study_hash,
            kind=statement.kind,
            payload=statement.payload,
            signature=statement.signature,
        )
    started = state.api.send("POST", "/analyses", admin, json={"study_hash": study.study_hash})
    path = f"/analyses/{study.study_hash}/runs/{started.json()['run_id']}"

    def finished() -> dict[str, Any] | None:
        results: dict[str, Any] = state.api.send("GET", path, admin).json()
        state.group.check_alive()
        return results if results["finished"] is not None else None

    results = _poll("the analysis to finish", 300, finished, interval=0.25)
    if results["finished"]["status"] != "completed" or len(results["answers"]) != len(
        study.queries
    ):
        raise TransportError(f"the analysis ended: {results['finished']['reason']}")
    split = _need(state.split, "data split")
    pooled = {name: np.concatenate([p.features[:, i] for p in split.sites])
              for i, name in enumerate(FEATURES)}  # fmt: skip
    pooled[LABEL] = np.concatenate([p.labels for p in split.sites]).astype(np.float64)
    worst = 0.0
    epsilon: dict[str, float] = {}
    for payload in results["answers"]:
        query = study.query(payload["query_id"])
        exact = exact_release(study, query, pooled).values
        truth = read_figures(study, query, exact, np.zeros(len(exact))).value
        worst = max(
            worst, *(abs(a - b) for a, b in zip(payload["answer"]["value"], truth, strict=True))
        )
        for signed in payload["receipts"]:
            receipt = signed["receipt"]
            epsilon[receipt["site"]] = max(epsilon.get(receipt["site"], 0.0), receipt["epsilon"])
    state.analytics = Analytics(
        queries=len(results["answers"]), epsilon_spent=epsilon, max_abs_error=round(worst, 3)
    )


def train(state: DemoState) -> None:
    """The admin starts the run; every site trains with DP-SGD; the model is released."""
    admin, study = state.tokens["admin"], _need(state.study, "study")
    run_id = state.api.start_run(admin, study.study_hash).run_id

    def finished() -> dict[str, Any] | None:
        status = state.api.run(admin, run_id)
        state.group.check_alive()
        return status.finished

    outcome = _poll("the run to finish", 600, finished)
    if outcome["status"] != "completed":
        raise TransportError(f"the run ended {outcome['status']}: {outcome['reason']}")
    rounds = state.api.rounds(admin, run_id).items
    state.trained = Trained(run_id=run_id, model_hash=outcome["model_hash"], rounds=rounds)


def check_inference(state: DemoState) -> None:
    """The clinic scores held-out patients under encryption; compare with plaintext."""
    from sklearn.metrics import roc_auc_score

    from veracity.tasks.breast_cancer import standardise
    from veracity.tasks.spec import ModelSpec, predict_logits
    from veracity.tasks.weights import weights_from_bytes

    model_hash = _need(state.trained, "trained model").model_hash
    scores = _predict_encrypted(state, model_hash)
    card = state.api.model(state.tokens["clinic"], model_hash)
    weights = weights_from_bytes(state.api.weights(state.tokens["admin"], model_hash))
    test = _need(state.split, "data split").test
    logits = predict_logits(ModelSpec.from_dict(card.model), weights, standardise(test.features))
    plain = 1.0 / (1.0 + np.exp(-logits))
    probability = np.array([float(row["probability"]) for row in scores])
    decision = np.array([int(row["decision"]) for row in scores])
    state.inference = InferenceCheck(
        patients=len(scores),
        agreement=float(np.mean(decision == (plain >= 0.5))),
        max_abs_error=float(np.max(np.abs(probability - plain))),
        accuracy=float(np.mean(decision == test.labels)),
        auc=float(roc_auc_score(test.labels, probability)),
    )


def explain_model(state: DemoState) -> None:
    """The admin asks the sites to explain the released model under their budgets."""
    admin = state.tokens["admin"]
    model_hash = _need(state.trained, "trained model").model_hash
    started = state.api.explain_model(
        admin, model_hash, epsilon=EXPLAIN_EPSILON, clip_norm=EXPLAIN_CLIP, steps=32, delta=None
    )

    def finished() -> dict[str, Any] | None:
        status = state.api.run(admin, started.run_id)
        state.group.check_alive()
        return status.finished

    outcome = _poll("the explanation run to finish", 600, finished)
    if outcome["status"] != "completed":
        raise TransportError(f"the explanation ended {outcome['status']}: {outcome['reason']}")
    (item,) = [
        e for e in state.api.explanations(admin, model_hash).items if e.run_id == started.run_id
    ]
    state.explanation = Explanation(
        run_id=started.run_id,
        report_hash=item.report_hash,
        top_features=item.top_features,
        epsilon=EXPLAIN_EPSILON,
    )


def _predict_encrypted(state: DemoState, model_hash: str) -> list[dict[str, str]]:
    """Run ``veracity predict`` as the clinic would; the rows of its scores CSV."""
    services = _need(state.services, "services")
    scores_csv = state.root / "clinic" / "scores.csv"
    predicted = _veracity(
        "predict", "--model", model_hash, "--input", str(_need(state.clinic_csv, "clinic CSV")),
        "--server", services.api_url.removesuffix("/api/v1"),
        "--token", state.tokens["clinic"], "--ca-cert", str(services.ca_cert),
        "--out", str(scores_csv), "--id-column", "patient_id", "--format", "json",
    )  # fmt: skip
    if predicted.returncode != 0:
        raise TransportError(f"veracity predict failed: {predicted.stderr.strip()}")
    with scores_csv.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _cosigned_note(state: DemoState, quorum: int, timeout: float = 120.0) -> tuple[str, int]:
    """The newest checkpoint note once ``quorum`` site witnesses have cosigned it."""
    from veracity.ledger.note import Note
    from veracity.ledger.witnessed import witness_name

    names = {witness_name(site.name) for site in state.sites}
    auditor = state.tokens["auditor"]

    def cosigned() -> tuple[str, int] | None:
        served = state.api.send("GET", "/ledger/witness/checkpoint", auditor).json()
        note = Note.parse(served["note"])
        count = len({s.name for s in note.signatures if s.name in names})
        return (served["note"], int(served["tree_size"])) if count >= quorum else None

    return _poll(f"{quorum} witness cosignatures", timeout, cosigned)


def audit_ledger(state: DemoState) -> None:
    """The auditor exports the ledger, verifies it with a 2-of-3 policy, and reads provenance.

    The newest checkpoint must carry cosignatures of two of the three sites' witnesses; the
    auditor's state directory keeps it, so the next audit must extend it.
    """
    auditor, model_hash = state.tokens["auditor"], _need(state.trained, "model").model_hash
    directory = state.root / "auditor"
    directory.mkdir()
    state.api.send("POST", "/ledger/checkpoints", state.tokens["admin"])
    note_text, size = _cosigned_note(state, quorum=2)
    note = directory / "checkpoint.note"
    note.write_text(note_text, encoding="utf-8")
    bundle = directory / "ledger.jsonl"
    bundle.write_bytes(state.api.export_ledger(auditor))
    root_public_key = directory / "root.pub"
    shutil.copyfile(state.coordinator_dir / "keys" / "root.pub", root_public_key)
    policy = directory / "policy.txt"
    sites = [arg for site in state.sites for arg in ("--site-dir", str(site.directory))]
    written = _veracity(
        "ledger", "policy", "--vkey", _log_vkey(state), "--quorum", "2", *sites,
        "--out", str(policy),
    )  # fmt: skip
    if written.returncode != 0:
        raise ConfigError(f"the auditor could not write the policy: {written.stderr}")
    audit_state = directory / "state"
    verified = _veracity(
        "ledger", "verify", "--bundle", str(bundle), "--trust", str(root_public_key),
        "--policy", str(policy), "--state", str(audit_state), "--note", str(note),
        "--format", "json",
    )  # fmt: skip
    report = json.loads(verified.stdout) if verified.stdout.strip() else {}
    if verified.returncode != 0 or not report.get("ok"):
        raise VerificationError(
            f"the auditor could not verify the ledger: {report or verified.stderr}"
        )
    provenance = state.api.provenance(auditor, model_hash)
    (directory / "provenance.json").write_text(json.dumps(provenance, indent=2), encoding="utf-8")
    witnessed = report["witnesses"]
    state.audit = Audit(
        bundle,
        root_public_key,
        int(report["entries"]),
        provenance,
        witnesses={
            "tree_size": size,
            "cosigned_by": witnessed["cosigned_by"],
            "note": str(note),
        },
        policy={
            "path": str(policy),
            "quorum": witnessed["quorum"],
            "state_dir": str(audit_state),
        },
    )


def replay_run(state: DemoState) -> None:
    """One site replays its last round; the auditor replays the run's aggregation.

    The site re-trains the round from the global model and secret seed it kept (``veracity
    site replay``), signs ``replay.confirmed`` and delivers it to the ledger (``veracity
    site sync``); the auditor downloads the run archive and a fresh ledger bundle and
    recomputes every round's FedAvg (:func:`veracity.server.replay.replay_aggregation`).
    """
    from veracity.crypto.keys import load_verify_key
    from veracity.server.replay import replay_aggregation
    from veracity.server.round_archive import extract_archive

    trained, services = _need(state.trained, "trained model"), _need(state.services, "services")
    audit = _need(state.audit, "audit")
    site = state.sites[0]
    (receipt,) = [
        r["receipt"] for r in trained.rounds[-1]["receipts"] if r["receipt"]["site"] == site.name
    ]
    replayed = _veracity(
        "site", "replay", "--run", str(receipt["run_id"]), "--round", str(receipt["round"]),
        "--data-dir", str(site.directory), "--format", "json",
    )  # fmt: skip
    outcome = json.loads(replayed.stdout) if replayed.stdout.strip() else {}
    if replayed.returncode != 0 or outcome.get("kind") != "replay.confirmed":
        raise VerificationError(
            f"{site.name} could not replay round {receipt['round']}: "
            f"{outcome or replayed.stderr.strip()}"
        )
    synced = _veracity(
        "site", "sync", "--server", services.api_url.removesuffix("/api/v1"),
        "--token", state.tokens[site.name], "--ca-cert", str(services.ca_cert),
        "--data-dir", str(site.directory), "--format", "json",
    )  # fmt: skip
    delivered = json.loads(synced.stdout) if synced.stdout.strip() else {}
    recorded = [*delivered.get("delivered", []), *delivered.get("already_recorded", [])]
    if synced.returncode != 0 or outcome["statement_id"] not in recorded:
        raise TransportError(f"{site.name} could not deliver its replay: {synced.stderr.strip()}")
    directory = state.root / "auditor" / "replay"
    directory.mkdir(parents=True)
    auditor = state.tokens["auditor"]
    bundle = directory / "ledger.jsonl"
    bundle.write_bytes(state.api.export_ledger(auditor))
    archive = directory / "archive"
    with tempfile.TemporaryFile() as spool:
        state.api.download_run_archive(auditor, trained.run_id, spool)
        spool.seek(0)
        extract_archive(spool, archive)
    report = replay_aggregation(
        bundle, archive, trusted_root=load_verify_key(audit.root_public_key)
    )
    (item,) = outcome["rounds"]
    state.replay = {
        "sites_confirmed": [site.name],
        "aggregation_verified": report.final_model_hash == trained.model_hash,
        "site_round": int(item["round"]),
        "site_replay_s": round(float(item["replay_seconds"]), 3),
        "site_train_s": round(float(item["train_seconds"]), 3),
        "aggregation_rounds": report.rounds,
    }


@dataclass(frozen=True)
class DemoStep:
    """One named step: its key in ``timings_s``, its progress line, and what it does."""

    key: str
    text: str
    run: Callable[[DemoState], None]


#: The demo, in order. ``{rounds}`` in a text is the number of rounds.
DEMO_STEPS: tuple[DemoStep, ...] = (
    DemoStep(
        "coordinator",
        "Coordinator: root key, CA, ledger; SuperLink and admin API",
        start_coordinator,
    ),
    DemoStep("sites", "Hospitals: keys, stores, their own data registered", set_up_sites),
    DemoStep("enrol", "Admin enrols the sites; their SuperNodes connect", enrol_sites),
    DemoStep("study", "Admin proposes the study; each site operator approves it", approve_study),
    DemoStep("warmup", "Site agents load torch and Opacus (once per site)", warm_up_sites),
    DemoStep(
        "analytics",
        "Analytics first: counts and a histogram under each site's budget",
        run_analytics,
    ),
    DemoStep("training", "Federated training: {rounds} rounds, DP-SGD at every site", train),
    DemoStep("inference", "Clinic: encrypted predictions with veracity predict", check_inference),
    DemoStep(
        "explanation",
        "Explanation: integrated gradients at each site, clipped, noised, charged",
        explain_model,
    ),
    DemoStep(
        "audit",
        "Auditor: export the ledger, verify offline with 2 of 3 witnesses, provenance",
        audit_ledger,
    ),
    DemoStep(
        "replay",
        "Replay: a site re-trains its last round; the auditor recomputes the aggregation",
        replay_run,
    ),
)


@contextmanager
def _progress(console: Console, state: DemoState, step: DemoStep) -> Iterator[None]:
    """A spinner on stderr while ``step`` runs, then its time (kept in ``state.timings``)."""
    text = step.text.format(rounds=state.options.rounds)
    started = time.monotonic()
    with console.status(f"{text}...", spinner="dots"):
        yield
    elapsed = time.monotonic() - started
    state.timings[step.key] = round(elapsed, 2)
    console.print(f"[green]done[/green] {text} [dim]({elapsed:.1f} s)[/dim]")


def _serve_until_interrupted(console: Console, state: DemoState) -> None:
    """Keep the coordinator up until Ctrl-C or SIGTERM (``--keep-running``)."""
    access = state.console_access()
    console.print(
        f"The coordinator stays up. Web console: [bold]{access['url']}[/bold] "
        f"(CA certificate {access['ca_cert']}); sign in with the read-only token printed "
        "in the summary. Press Ctrl-C to stop."
    )
    api = _need(state.services, "coordinator services").api
    try:
        while api.alive():
            time.sleep(1.0)
        console.print(f"[red]the admin API exited[/red]; its log: {api.log_path}")
    except KeyboardInterrupt:
        console.print("stopping the coordinator")


def run_demo(
    options: DemoOptions,
    *,
    console: Console,
    on_summary: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the whole study and audit, step by step; return the summary document.

    ``on_summary`` is given the summary as soon as the audit is done; with
    ``options.keep_running`` the coordinator then stays up until Ctrl-C or SIGTERM.

    Raises
    ------
    ConfigError
        If the data directory is not empty.
    TransportError
        If a service fails to start or answer.
    VerificationError
        If the auditor's offline verification fails.
    """
    state = DemoState(options, _fresh_directory(options.data_dir))
    try:
        with stopping_on_signals(state.group):
            for step in DEMO_STEPS:
                with _progress(console, state, step):
                    step.run(state)
            summary = state.summary()
            if on_summary is not None:
                on_summary(summary)
            if options.keep_running:
                _serve_until_interrupted(console, state)
    finally:
        state.close()
    return summary


def _provenance_summary(document: dict[str, Any]) -> dict[str, int]:
    """How many of each kind of thing the model's W3C PROV lineage holds (by ``prov:type``)."""
    counts: dict[str, int] = {}
    for section in ("entity", "activity", "agent"):
        for records in document.get(section, {}).values():
            for record in records if isinstance(records, list) else [records]:
                kind = str(record.get("prov:type", section)).removeprefix("veracity:")
                counts[kind] = counts.get(kind, 0) + 1
    for relation in ("used", "wasGeneratedBy", "wasDerivedFrom", "wasAssociatedWith"):
        counts[relation] = len(document.get(relation, {}))
    return dict(sorted(counts.items()))
