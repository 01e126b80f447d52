"""Releasing a trained model: its card, the registry, and ``model.released``.

The model card says what the model is, where its data came from (each site's dataset
commitment), what privacy each site spent (record-level DP-SGD, cumulative epsilon per
dataset from the sites' signed receipts, which an auditor can recompute), how it was
trained, and what it is for. A study with client-level DP at the coordinator adds that
guarantee under ``privacy.client_level``, apart from the sites' record-level one: its
unit is a site's whole contribution, its epsilon is the coordinator's RDP accountant's.
"""

from __future__ import annotations

import io
import zipfile
from typing import Any

import numpy as np

from veracity import __version__
from veracity.contracts.events import ROOT_ACTOR, ModelReleased, ReleasedDataset
from veracity.core.canonical import canonical_hash, sha256_hex
from veracity.core.fields import format_timestamp
from veracity.errors import InputError
from veracity.server.coordinator.service import CoordinatorService, package_versions
from veracity.server.coordinator.unit_of_work import SERVER_APP
from veracity.server.explanation import GatheredExplanation, card_explanation
from veracity.server.strategy import (
    CLIENT_DELTA_METRIC,
    CLIENT_EPSILON_METRIC,
    CLIENT_EPSILON_REPLACE_ONE_METRIC,
    RoundOutcome,
)
from veracity.tasks.metrics import classification_metrics
from veracity.tasks.spec import predict_probabilities
from veracity.tasks.study import SignalsInput, Study
from veracity.tasks.weights import Weights, weights_hash

__all__ = [
    "EVALUATION_DIR",
    "build_model_card",
    "client_level_privacy",
    "describe_inputs",
    "privacy_unit",
    "held_out_evaluation",
    "release_model",
]


def client_level_privacy(study: Study, completed: list[RoundOutcome]) -> dict[str, Any] | None:
    """The card's client-level DP section (None when the study has no central DP).

    ``completed`` are the rounds whose aggregate was released, in order; the epsilon is
    the accountant's after the last of them, as its ``round.completed`` records it.
    """
    central = study.central_dp
    if central is None:
        return None
    last = completed[-1].metrics if completed else {}
    sites = int(last.get("sites", 0))
    return {
        "unit": "one site's whole contribution to a round's model update",
        "mechanism": (
            "Gaussian mechanism on the equally weighted FedAvg of updates clipped at the "
            "coordinator (Flower DifferentialPrivacyServerSideFixedClipping)"
        ),
        "noise_multiplier": central.noise_multiplier,
        "clipping_norm": central.clipping_norm,
        "sites_per_round": sites,
        "noise_stddev": central.noise_multiplier * central.clipping_norm / sites if sites else None,
        "noise_generator": (
            "NumPy's global Mersenne Twister in the ServerApp (Flower draws np.random.normal; "
            "seeded from OS entropy, not a CSPRNG)"
        ),
        "epsilon": last.get(CLIENT_EPSILON_METRIC),
        "epsilon_replace_one": last.get(CLIENT_EPSILON_REPLACE_ONE_METRIC),
        "delta": last.get(CLIENT_DELTA_METRIC, central.delta),
        "max_epsilon": central.max_epsilon,
        "rounds": len(completed),
        "accountant": (
            "RDP (Flower RdpAccountant over Google dp-accounting), no sampling "
            "amplification, composed over every run of the study; epsilon: add-or-remove-one "
            "site with the denominator fixed (a site's update replaced by zero); "
            "epsilon_replace_one: one site's update replaced by another (noise multiplier "
            "halved, Google dp-accounting RDP)"
        ),
        "covers": "the model updates only; round metrics are not covered",
        "trust": (
            "the coordinator receives every site's update before clipping and noise: "
            "client-level DP protects against those who see the released model, not "
            "against the coordinator"
        ),
    }


def describe_inputs(study: Study) -> dict[str, Any]:
    """What one input of the model is: a table row, a signal window, or an image."""
    inputs = study.input
    scaling = [list(pair) for pair in study.scaling]
    if inputs is None:
        return {
            "kind": "table",
            "features": list(study.features),
            "scaling": "(x - mean) / std per feature, with the published scaling",
        }
    if isinstance(inputs, SignalsInput):
        return {
            "kind": "signals",
            "channels": list(inputs.channels),
            "sampling_rate_hz": inputs.rate,
            "window_samples": inputs.window,
            "window_seconds": inputs.window / inputs.rate,
            "hop_samples": inputs.hop,
            "windowing": (
                "each recording cut into windows of window_samples every hop_samples at the "
                "site, never across recordings; a window's label is its most frequent sample "
                "label, ties to the higher class"
            ),
            "scaling": "(x - mean) / std per channel",
            "channel_scaling": scaling,
        }
    return {
        "kind": "images",
        "height": inputs.height,
        "width": inputs.width,
        "channels": inputs.channels,
        "channel_names": list(study.features),
        "intensity": f"pixel values divided by {inputs.intensity_max:g}, then (x - mean) / std",
        "intensity_max": inputs.intensity_max,
        "channel_scaling": scaling,
    }


def privacy_unit(study: Study) -> str:
    """What one DP-SGD example is for ``study``, and what that means for a patient."""
    group = (
        "a patient with several {what}, or at several sites, is protected at the group or "
        "composed level, which no per-site epsilon shows"
    )
    inputs = study.input
    if inputs is None:
        return "one record (row) in one site's dataset; " + group.format(what="rows")
    if isinstance(inputs, SignalsInput):
        unit = (
            f"one window ({inputs.window} samples) of one recording in one site's dataset, "
            "not a recording or a patient; "
        )
        if inputs.hop < inputs.window:
            overlap = -(-inputs.window // inputs.hop)
            unit += (
                f"windows overlap (a new one every {inputs.hop} samples), so each sample lies "
                f"in up to {overlap} windows and changing one stretch of a recording changes "
                f"up to {overlap} examples; "
            )
        return unit + group.format(what="windows")
    return "one image in one site's dataset; " + group.format(what="images")


def _output(study: Study) -> str:
    if len(study.classes) == 2:
        return (
            f"one logit for class {study.classes[1]!r} (against {study.classes[0]!r}); "
            "probability = sigmoid(logit), decision at 0.5"
        )
    return (
        f"{len(study.classes)} logits, one per class in the order of 'classes'; "
        "probabilities = softmax(logits), decision = the most probable class"
    )


def _extraction_limitation(study: Study) -> str:
    """What answering predictions reveals about the model itself (model extraction)."""
    d = study.model_spec.n_features
    linear = study.model_spec.family.value == "logistic"
    contributions = (
        f" Per-feature contributions (w_j * x_j for each of the d = {d} features of a "
        "requester's own patient) give every weight from one answer with a nonzero feature "
        f"vector: each is charged as d = {d} predictions per patient a request can carry."
        if linear
        else ""
    )
    if study.model_spec.family.convolutional or len(study.classes) != 2:
        return (
            "Anyone given enough predictions, encrypted or not, can fit a copy of this "
            "model; every prediction served is charged to the requester's query budget."
            + contributions
        )
    if linear:
        return (
            f"A logistic model is determined by d + 1 = {d + 1} exact predictions (d = {d} "
            "features): anyone given that many predictions, encrypted or not, can reconstruct "
            "its weights. Encrypted inference charges every prediction a request can carry to "
            "the requester's query budget for this model." + contributions
        )
    return (
        f"This quadratic network is a quadratic form in its {d} features, determined by "
        f"(d + 1)(d + 2) / 2 = {(d + 1) * (d + 2) // 2} exact predictions: anyone given that "
        "many, encrypted or not, can reproduce its outputs. Encrypted inference charges every "
        "prediction a request can carry to the requester's query budget for this model."
    )


def build_model_card(
    coordinator: CoordinatorService,
    study: Study,
    run_id: str,
    weights: Weights,
    outcomes: list[RoundOutcome],
    evaluation: dict[str, Any] | None = None,
    explanation: GatheredExplanation | None = None,
) -> dict[str, Any]:
    """The model card of a run's final model.

    ``evaluation`` is what the coordinator measured on a held-out set of its own
    (:func:`veracity.tasks.metrics.classification_metrics`: accuracy, AUC and per-class
    precision, recall, specificity, F1 and AUC, with the set's description); ``None``
    when the run had none. ``explanation``: the sites' explanation asked for at release;
    the card then has an ``explanation`` section
    (:func:`veracity.server.explanation.card_explanation`), absent otherwise.
    """
    completed = [o for o in outcomes if o.aggregated_model_hash is not None]
    last_receipt: dict[str, dict[str, Any]] = {}
    for outcome in completed:
        for update in outcome.accepted:
            last_receipt[update.site] = update.receipt.to_json()
    lineage = []
    privacy: dict[str, Any] = {}
    for site, receipt in sorted(last_receipt.items()):
        registered = coordinator.reads.dataset(site, receipt["dataset_id"])
        lineage.append(
            {
                "site": site,
                "dataset_id": receipt["dataset_id"],
                "commitment": receipt["dataset_commitment"],
                "rows": None if registered is None else registered.statement.rows,
                "schema_hash": None if registered is None else registered.statement.schema_hash,
            }
        )
        privacy[site] = {
            "epsilon": receipt["epsilon"],
            "neighbouring": receipt["neighbouring"],
            "epsilon_add_remove": receipt["epsilon_add_remove"],
            "epsilon_cap": study.epsilon_caps.get(site),
            "delta": receipt["delta"],
            "accountant": receipt["accountant"],
            "history": receipt["history"],
            "max_grad_norm": receipt["max_grad_norm"],
            "noise_generator": receipt["noise_generator"],
        }
    card: dict[str, Any] = {
        "model_hash": weights_hash(weights),
        "name": study.study_id,
        "title": study.title,
        "model": study.model_spec.to_dict(),
        "features": list(study.features),
        "label": study.label,
        "classes": list(study.classes),
        "inputs": describe_inputs(study),
        "scaling": [list(pair) for pair in study.scaling],
        "output": _output(study),
        "evaluation": evaluation,
        "intended_use": (study.title or study.study_id)
        + ". Research use within the approving network; not validated for clinical decisions.",
        "limitations": [
            "Trained on the approving sites' cohorts only; performance elsewhere is unknown.",
            _extraction_limitation(study),
            "Differential privacy protects individual records, not site-level statistics."
            if study.central_dp is None
            else "Record-level DP protects individual records; client-level DP bounds what "
            "the model reveals about any one site's contribution (not the round metrics).",
        ],
        "training": {
            "study_hash": study.study_hash,
            "run_id": run_id,
            "code_hash": study.code_hash,
            "rounds": len(completed),
            "aggregation": (
                "FedAvg weighted by examples"
                if study.central_dp is None
                else "FedAvg with equal site weights of updates clipped at the coordinator, "
                "plus Gaussian noise (client-level DP)"
            ),
            "round_model_hashes": [o.aggregated_model_hash for o in completed],
            "train_loss_by_round": [o.metrics.get("train-loss") for o in completed],
            "packages": package_versions(),
        },
        "data_lineage": lineage,
        "privacy": {
            "unit": privacy_unit(study),
            "neighbouring": (
                "replace-one: datasets of the same (public) row count that differ in one "
                "record; epsilon_add_remove is the add/remove-one figure of the same history, "
                "for comparison with the literature"
            ),
            "public": (
                "each dataset's row count and schema, the study's terms, who took part in "
                "which round and when; the coordinator sees each site's noised update"
            ),
            "mechanism": "DP-SGD (Opacus) with Poisson sampling at every site",
            "noise_multiplier": study.dp.noise_multiplier,
            "per_site": privacy,
            "client_level": client_level_privacy(study, completed),
        },
        "released_at": format_timestamp(),
        "veracity_version": __version__,
        "coordinator": ROOT_ACTOR,
    }
    if explanation is not None:
        card["explanation"] = card_explanation(explanation, run_id)
    return card


#: Where a coordinator keeps held-out evaluation sets, one NPZ per study id.
EVALUATION_DIR = "evaluation"


def held_out_evaluation(
    coordinator: CoordinatorService, study: Study, weights: Weights
) -> dict[str, Any] | None:
    """Metrics of ``weights`` on the coordinator's held-out set for ``study``, if it has one.

    The set is ``DATA_DIR/evaluation/STUDY_ID.npz`` with ``x`` (model-ready rows: scaled as
    the study's inputs are, shape ``(n, n_features)``) and ``y`` (class indices). It is the
    coordinator's own data, never the sites'; the card names its SHA-256 and size.

    Raises
    ------
    InputError
        If the file is malformed or does not fit the model.
    """
    path = coordinator.home.data_dir / EVALUATION_DIR / f"{study.study_id}.npz"
    if not path.is_file():
        return None
    data = path.read_bytes()
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            x, y = np.asarray(archive["x"], np.float64), np.asarray(archive["y"], np.int64)
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as err:
        raise InputError(f"{path}: not an evaluation set with arrays x and y ({err})") from err
    spec = study.model_spec
    metrics = classification_metrics(
        predict_probabilities(spec, weights, x), y, [str(c) for c in study.classes]
    )
    return {
        "set": "held out at the coordinator (never seen by the sites)",
        "sha256": sha256_hex(data),
        **metrics,
    }


def release_model(
    coordinator: CoordinatorService,
    study: Study,
    run_id: str,
    weights: Weights,
    outcomes: list[RoundOutcome],
    evaluation: dict[str, Any] | None = None,
    explanation: GatheredExplanation | None = None,
) -> str:
    """Store the model with its card and record ``model.released``; returns its hash.

    ``evaluation``: see :func:`build_model_card`; by default, the metrics on the
    coordinator's held-out set for the study (:func:`held_out_evaluation`), if it has one.
    ``explanation``: the sites' explanation of these weights, asked for before release; its
    report goes into the card (so ``model.released``'s ``card_hash`` covers it), the report
    and plot into the registry, and its ``model.explained`` is recorded in the same ledger
    change as ``model.released``.

    Raises
    ------
    InputError
        If ``explanation`` explains other weights, or the ledger refuses an entry.
    """
    if explanation is not None and explanation.terms.model_hash != weights_hash(weights):
        raise InputError("the explanation is of another model than the one released")
    if evaluation is None:
        evaluation = held_out_evaluation(coordinator, study, weights)
    card = build_model_card(coordinator, study, run_id, weights, outcomes, evaluation, explanation)
    model_hash: str = coordinator.registry.put(
        study.model_spec,
        weights,
        features=list(study.features),
        label=study.label,
        scaling=[(float(m), float(s)) for m, s in study.scaling],
        card=card,
    )
    privacy = card["privacy"]["per_site"]
    last_metrics = next(
        (o.metrics for o in reversed(outcomes) if o.aggregated_model_hash is not None), {}
    )
    released = ModelReleased(
        model_hash=model_hash,
        run_id=run_id,
        study_hash=study.study_hash,
        model=study.model_spec.to_dict(),
        datasets=[
            ReleasedDataset(site=d["site"], dataset_id=d["dataset_id"], commitment=d["commitment"])
            for d in card["data_lineage"]
        ],
        epsilon={site: float(p["epsilon"]) for site, p in privacy.items()},
        metrics={k: float(v) for k, v in last_metrics.items()},
        card_hash=canonical_hash(card),
    )
    explained = None
    if explanation is not None and explanation.report is not None:
        coordinator.registry.put_explanation(model_hash, explanation.report, explanation.plot)
        explained = explanation.entry(run_id)
    coordinator.release(SERVER_APP, released, explained=explained)
    return model_hash
