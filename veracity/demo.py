"""``veracity demo``: a whole research network on one machine, then audited.

A coordinator (SuperLink with TLS and SuperNode authentication, the admin API over HTTPS),
three hospitals with their own data, keys and budgets, a clinic and an auditor, all on
127.0.0.1 and all real processes:

1. The coordinator is initialised (root key, CA, ledger) and started.
2. Each hospital initialises its site (its own keys and store) and registers its own
   non-IID partition of scikit-learn's breast-cancer data, written as a CSV in its folder.
3. The admin enrols the sites through the API; each site's SuperNode connects.
4. Sites submit their signed dataset registrations; the admin proposes a study (the
   HE-friendly MLP, record-level DP); each site operator approves it with an epsilon cap.
5. The run trains with Opacus at every site; the model is released with its card.
6. A clinic runs ``veracity predict`` on held-out patients under encryption.
7. An auditor exports the ledger, verifies the bundle offline with only the root public
   key, and reads the model's provenance.

Everything the demo starts is stopped on exit, on Ctrl-C and on failure. The data
directory is kept so that the ledger can be audited again with the ledger CLI.
"""

from __future__ import annotations

import csv
import json
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
from rich.console import Console

from veracity.errors import ConfigError, TransportError, VerificationError
from veracity.localnet import LocalSite, approve, create_site
from veracity.supervise import ProcessGroup, free_port, stopping_on_signals

__all__ = ["DemoOptions", "run_demo"]

SITES = ("hospital-a", "hospital-b", "hospital-c")
_T = TypeVar("_T")


@dataclass(frozen=True)
class DemoOptions:
    """What the demo runs: where, how many rounds, and the privacy terms."""

    data_dir: Path
    rounds: int = 3
    epsilon_cap: float = 3.0
    noise_multiplier: float = 1.6
    seed: int = 0


@dataclass
class _Steps:
    """Progress on stderr and the time each step took."""

    console: Console
    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def step(self, key: str, text: str) -> Iterator[None]:
        started = time.monotonic()
        with self.console.status(f"{text}...", spinner="dots"):
            yield
        elapsed = time.monotonic() - started
        self.timings[key] = round(elapsed, 2)
        self.console.print(f"[green]done[/green] {text} [dim]({elapsed:.1f} s)[/dim]")


class _Api:
    """A small client for the admin API (bearer token, pinned CA, JSON errors)."""

    def __init__(self, base: str, ca_cert: Path) -> None:
        self.base = base
        self.client = httpx.Client(
            verify=ssl.create_default_context(cafile=str(ca_cert)), timeout=60.0
        )

    def close(self) -> None:
        self.client.close()

    def call(self, method: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
        response = self.client.request(
            method, f"{self.base}{path}", headers={"Authorization": f"Bearer {token}"}, **kwargs
        )
        if response.status_code >= 400:
            raise TransportError(
                f"{method} {path} answered {response.status_code}: {response.text[:500]}"
            )
        return response

    def json(self, method: str, path: str, token: str, **kwargs: Any) -> Any:
        return self.call(method, path, token, **kwargs).json()


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


def run_demo(options: DemoOptions, *, console: Console) -> dict[str, Any]:
    """Run the whole study and audit; return the summary document.

    Raises
    ------
    ConfigError
        If the data directory is not empty.
    TransportError
        If a service fails to start or answer.
    VerificationError
        If the auditor's offline verification fails.
    """
    from sklearn.metrics import roc_auc_score

    from veracity.server.api.serve import initialise, issue_token, start_services
    from veracity.server.api.settings import ApiSettings
    from veracity.server.fab import build_fab
    from veracity.tasks.breast_cancer import breast_cancer_study, federated_split, standardise
    from veracity.tasks.spec import ModelFamily, ModelSpec, predict_logits
    from veracity.tasks.study import parse_study
    from veracity.tasks.weights import weights_from_bytes

    started = time.monotonic()
    root = _fresh_directory(options.data_dir)
    steps = _Steps(console)
    coordinator_dir = root / "coordinator"
    group = ProcessGroup()
    api: _Api | None = None
    try:
        with stopping_on_signals(group):
            with steps.step(
                "coordinator", "Coordinator: root key, CA, ledger; SuperLink and admin API"
            ):
                coordinator = initialise(coordinator_dir, superlink_port=free_port())
                coordinator.close()
                tokens = {
                    "admin": issue_token(coordinator_dir, role="admin", name="demo-admin").token,
                    "clinic": issue_token(coordinator_dir, role="researcher", name="clinic").token,
                    "auditor": issue_token(coordinator_dir, role="auditor", name="auditor").token,
                }
                for name in SITES:
                    tokens[name] = issue_token(
                        coordinator_dir, role="site", name=f"{name}-operator", site=name
                    ).token
                settings = ApiSettings(data_dir=coordinator_dir, api_port=free_port())
                services = start_services(settings, group)
                api = _Api(services.api_url, services.ca_cert)

            with steps.step("sites", "Hospitals: keys, stores, their own data registered"):
                split = federated_split(len(SITES), seed=options.seed, skew=0.6)
                sites: list[LocalSite] = [
                    create_site(root / "sites" / name, name, partition)
                    for name, partition in zip(SITES, split.sites, strict=True)
                ]
                clinic_csv = _write_clinic_files(
                    root / "clinic", split.test.features, split.test.labels
                )

            with steps.step("enrol", "Admin enrols the sites; their SuperNodes connect"):
                from veracity.client.supernode import SuperNodeOptions, start_site_node

                nodes = []
                for site in sites:
                    api.json(
                        "POST",
                        "/sites",
                        tokens["admin"],
                        json={
                            "name": site.name,
                            "public_key": site.public_key_pem,
                            "supernode_public_key": site.supernode_public_key,
                        },
                    )
                    node_options = SuperNodeOptions(
                        superlink=services.superlink_address,
                        ca_cert=services.ca_cert,
                        idle_poll=0.2,
                    )
                    nodes.append(start_site_node(site.directory, node_options, group, wait=False))
                for site in sites:
                    statement = site.registration
                    api.json(
                        "POST",
                        "/datasets",
                        tokens[site.name],
                        json={"payload": statement.payload, "signature": statement.signature},
                    )

            with steps.step("study", "Admin proposes the study; each site operator approves it"):
                study = breast_cancer_study(
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
                proposed = api.json("POST", "/studies", tokens["admin"], json=study.to_document())
                if proposed["study_hash"] != study.study_hash:
                    raise VerificationError("the coordinator recorded another study than proposed")
                for site in sites:
                    # Each operator reviews the document the coordinator serves, and signs
                    # an approval of exactly that document (its hash is what they approve).
                    served = api.json("GET", f"/studies/{study.study_hash}", tokens[site.name])
                    reviewed = parse_study(served["study"])
                    if reviewed.study_hash != study.study_hash:
                        raise VerificationError("the coordinator serves another study document")
                    statement = approve(site, reviewed, epsilon_cap=options.epsilon_cap)
                    api.json(
                        "POST",
                        f"/studies/{study.study_hash}/decisions",
                        tokens[site.name],
                        json={
                            "kind": statement.kind,
                            "payload": statement.payload,
                            "signature": statement.signature,
                        },
                    )

            with steps.step("warmup", "Site agents load torch and Opacus (once per site)"):
                for node in nodes:
                    node.wait_ready()

            with steps.step(
                "training", f"Federated training: {options.rounds} rounds, DP-SGD at every site"
            ):
                run = api.json(
                    "POST", "/runs", tokens["admin"], json={"study_hash": study.study_hash}
                )
                run_id = run["run_id"]

                def finished() -> dict[str, Any] | None:
                    status = api.json("GET", f"/runs/{run_id}", tokens["admin"])
                    group.check_alive()
                    return status if status["finished"] is not None else None

                outcome = _poll("the run to finish", 600, finished)["finished"]
                if outcome["status"] != "completed":
                    raise TransportError(f"the run ended {outcome['status']}: {outcome['reason']}")
                model_hash = outcome["model_hash"]
                rounds = api.json("GET", f"/runs/{run_id}/rounds", tokens["admin"])["items"]

            with steps.step("inference", "Clinic: encrypted predictions with veracity predict"):
                scores_csv = root / "clinic" / "scores.csv"
                predicted = _veracity(
                    "predict", "--model", model_hash, "--input", str(clinic_csv),
                    "--server", services.api_url.removesuffix("/api/v1"),
                    "--token", tokens["clinic"], "--ca-cert", str(services.ca_cert),
                    "--out", str(scores_csv), "--id-column", "patient_id", "--format", "json",
                )  # fmt: skip
                if predicted.returncode != 0:
                    raise TransportError(f"veracity predict failed: {predicted.stderr.strip()}")
                with scores_csv.open(encoding="utf-8") as handle:
                    scores = list(csv.DictReader(handle))
                card = api.json("GET", f"/models/{model_hash}", tokens["clinic"])
                weights = weights_from_bytes(
                    api.call("GET", f"/models/{model_hash}/weights", tokens["admin"]).content
                )
                spec = ModelSpec.from_dict(
                    card["model"] if "model" in card else card["card"]["model"]
                )
                plain_logits = predict_logits(spec, weights, standardise(split.test.features))
                plain_probability = 1.0 / (1.0 + np.exp(-plain_logits))
                encrypted_probability = np.array([float(row["probability"]) for row in scores])
                encrypted_decision = np.array([int(row["decision"]) for row in scores])
                labels = split.test.labels
                agreement = float(np.mean(encrypted_decision == (plain_probability >= 0.5)))
                max_abs_error = float(np.max(np.abs(encrypted_probability - plain_probability)))
                accuracy = float(np.mean(encrypted_decision == labels))
                auc = float(roc_auc_score(labels, encrypted_probability))

            with steps.step("audit", "Auditor: export the ledger, verify offline, provenance"):
                auditor_dir = root / "auditor"
                auditor_dir.mkdir()
                bundle = auditor_dir / "ledger.jsonl"
                bundle.write_bytes(api.call("GET", "/ledger/export", tokens["auditor"]).content)
                root_pub = auditor_dir / "root.pub"
                shutil.copyfile(coordinator_dir / "keys" / "root.pub", root_pub)
                verified = _veracity(
                    "ledger", "verify", "--bundle", str(bundle), "--trust", str(root_pub),
                    "--format", "json",
                )  # fmt: skip
                report = json.loads(verified.stdout) if verified.stdout.strip() else {}
                if verified.returncode != 0 or not report.get("ok"):
                    raise VerificationError(
                        f"the auditor could not verify the ledger: {report or verified.stderr}"
                    )
                provenance = api.json("GET", f"/ledger/provenance/{model_hash}", tokens["auditor"])
                (auditor_dir / "provenance.json").write_text(
                    json.dumps(provenance, indent=2), encoding="utf-8"
                )
    finally:
        if api is not None:
            api.close()
        group.stop_all()

    from veracity.server.coordinator import CoordinatorHome

    last_receipts = {r["receipt"]["site"]: r["receipt"] for r in rounds[-1]["receipts"]}
    site_summaries = [
        {
            "name": site.name,
            "rows": site.rows,
            "epsilon": (
                float(last_receipts[site.name]["epsilon"]) if site.name in last_receipts else None
            ),
            "epsilon_cap": options.epsilon_cap,
        }
        for site in sites
    ]
    return {
        "ok": True,
        "duration_s": round(time.monotonic() - started, 1),
        "data_dir": str(root),
        "sites": site_summaries,
        "study": {
            "study_id": study.study_id,
            "study_hash": study.study_hash,
            "rounds": options.rounds,
        },
        "run_id": run_id,
        "model": {"hash": model_hash, "accuracy": accuracy, "auc": auc},
        "inference": {
            "patients": len(scores),
            "agreement": agreement,
            "max_abs_error": max_abs_error,
        },
        "ledger": {
            "db_url": CoordinatorHome.load(coordinator_dir).db_url,
            "bundle": str(bundle),
            "root_public_key": str(root_pub),
            "entries": int(report["entries"]),
            "verified": True,
        },
        "provenance": _provenance_summary(provenance),
        "timings_s": steps.timings,
    }


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
