"""Freezing of gait in Parkinson's disease from wearable accelerometers, across three clinics.

Each clinic holds its own patients' recordings (synthetic, in the layout of the Daphnet
freezing-of-gait data set: 64 Hz, 3-axis accelerometers at ankle, thigh and trunk; see
``veracity.tasks.gait`` for the generator and the physiology it follows, with the freeze
index of Moore et al. 2008). Each clinic is a real site directory that registers its folder
of CSV recordings as ``signals`` (rate and channels checked). The study declares 4-second
windows every 2 seconds, cut at each site; a ``cnn1d`` is trained with DP-SGD at every
clinic (replace-one epsilon within the cap per clinic) and federated over Flower. The
coordinator holds out other patients to measure the released model (its card carries AUC
and per-class metrics), and the model then scores, window by window, the real Daphnet
recording of a Parkinson's patient walking that ``aeon`` ships (S06R02E0: no freezing in
it), to report the false-alarm rate. Install aeon's data with
``pip install --no-deps aeon==1.6.0``; without it that step is skipped.

    python examples/freezing_of_gait.py [DIR] [--rounds N] [--epsilon E] [--json OUT]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _network import (  # type: ignore[import-not-found]
    code_hash,
    emit,
    network,
    noise_for,
    run_study,
)

from veracity.client.datasets import SignalsDeclared
from veracity.client.records import read_source, window_recordings
from veracity.client.signals import parse_signals
from veracity.localnet import create_data_site
from veracity.tasks import gait
from veracity.tasks.metrics import classification_metrics
from veracity.tasks.spec import predict_probabilities
from veracity.tasks.study import parse_study

CLINICS = ("clinic-a", "clinic-b", "clinic-c")
WINDOW, HOP = 256, 128  # 4 s windows every 2 s at 64 Hz
BATCH, LEARNING_RATE, CLIP = 128, 4.0, 0.25  # chosen on held-out synthetic patients


def daphnet_path() -> Path | None:
    """aeon's copy of Daphnet S06R02E0, found without importing aeon (None if absent)."""
    spec = importlib.util.find_spec("aeon")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "datasets/data/Daphnet_S06R02E0/S06R02E0.csv"
    return path if path.is_file() else None


def _windows(recordings: list[gait.Recording]) -> tuple[np.ndarray, np.ndarray]:
    return window_recordings(
        tuple(r.values for r in recordings),
        tuple(r.labels for r in recordings),
        window=WINDOW,
        hop=HOP,
    )


def _scale(windows: np.ndarray, scaling: list[list[float]]) -> np.ndarray:
    means = np.array([m for m, _ in scaling])[None, :, None]
    stds = np.array([s for _, s in scaling])[None, :, None]
    scaled = ((windows - means) / stds).reshape(windows.shape[0], -1)
    return np.asarray(scaled, dtype=np.float32)


def cohort(seed: int, patients: int, seconds: float, first: int) -> list[gait.Recording]:
    """Recordings of ``patients`` patients; about one in four never freezes."""
    return [
        recording
        for number in range(first, first + patients)
        for recording in gait.patient_recordings(
            f"patient-{number}",
            seed=seed * 1000 + number,
            seconds=seconds,
            freezer=number % 4 != 3,
        )
    ]


def study_document(
    *, rounds: int, epsilon: float, noise: float, scaling: list[list[float]], code: str
) -> dict[str, Any]:
    return {
        "study_id": "freezing-of-gait",
        "title": "Freezing of gait from ankle, thigh and trunk accelerometers (4 s windows)",
        "model": {"family": "cnn1d", "input_shape": [len(gait.CHANNELS), WINDOW],
                  "filters": [16, 16], "kernel": 7},
        "features": list(gait.CHANNELS),
        "label": gait.LABEL,
        "classes": ["0", "1"],
        "input": {"kind": "signals", "rate": gait.RATE, "channels": list(gait.CHANNELS),
                  "window": WINDOW, "hop": HOP},
        "scaling": scaling,
        "dp": {"noise_multiplier": noise, "max_grad_norm": CLIP, "delta": 1e-5},
        "training": {"batch_size": BATCH, "local_epochs": 1, "learning_rate": LEARNING_RATE},
        "rounds": rounds,
        "min_sites": len(CLINICS),
        "epsilon_caps": dict.fromkeys(CLINICS, epsilon),
        "code_hash": code,
    }  # fmt: skip


def score_daphnet(model: Any, scaling: list[list[float]]) -> dict[str, Any] | None:
    """Score the real recording window by window; every window is walking, none a freeze."""
    path = daphnet_path()
    if path is None:
        print("aeon's Daphnet recording is not installed; skipping the real-data check",
              file=sys.stderr)  # fmt: skip
        return None
    # The platform's own validation: 64 Hz timestamps, the nine channels, labels 0/1.
    records = parse_signals(
        read_source(path), label="is_anomaly", classes=("0", "1"), rate=gait.RATE,
        channels=gait.CHANNELS,
    )  # fmt: skip
    windows, labels = window_recordings(records.arrays, records.labels, window=WINDOW, hop=HOP)
    probability = predict_probabilities(model.spec, model.weights, _scale(windows, scaling))[:, 1]
    alarms = probability > 0.5
    return {
        "recording": "Daphnet S06R02E0 (aeon): a Parkinson's patient walking, 64 Hz, 110 s",
        "windows": int(windows.shape[0]),
        "freeze_windows_annotated": int(labels.sum()),
        "false_alarms": int(alarms.sum()),
        "false_alarm_rate": float(alarms.mean()),
        "freeze_index_above_2": float(
            np.mean([gait.freeze_index(w[gait.CHANNELS.index("leg_vert")]) > 2 for w in windows])
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("directory", nargs="?", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--epsilon", type=float, default=3.0)
    parser.add_argument("--patients", type=int, default=4, help="patients per clinic")
    parser.add_argument("--seconds", type=float, default=240.0, help="per recording")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    root = args.directory or Path(tempfile.mkdtemp(prefix="veracity-gait-"))

    # A public reference cohort fixes the study's per-channel scaling (never a clinic's data).
    reference, _ = _windows(cohort(args.seed + 7919, 4, 120.0, first=0))
    scaling = [[float(reference[:, c].mean()), float(reference[:, c].std())]
               for c in range(len(gait.CHANNELS))]  # fmt: skip
    held_out, held_labels = _windows(cohort(args.seed + 104729, 6, args.seconds, first=0))

    clinics = []
    for index, name in enumerate(CLINICS):
        recordings = cohort(args.seed, args.patients, args.seconds, first=index * args.patients)
        folder = root / "sites" / name / "recordings"
        for recording in recordings:
            gait.write_recording_csv(recording, folder / f"{recording.patient}.csv")
        clinics.append((name, folder, _windows(recordings)[0].shape[0]))
    noise = noise_for(args.epsilon, rows=min(c[2] for c in clinics), batch=BATCH,
                      steps_per_round=1, rounds=args.rounds)  # fmt: skip
    study = parse_study(study_document(rounds=args.rounds, epsilon=args.epsilon, noise=noise,
                                       scaling=scaling, code=code_hash()))  # fmt: skip
    with network(root) as (coordinator, group):
        sites = [
            create_data_site(
                root / "sites" / name / "site", name, dataset_id="gait-recordings", path=folder,
                label=gait.LABEL, declared=SignalsDeclared(rate=gait.RATE),
                epsilon_budget=2 * args.epsilon,
            )
            for name, folder, _ in clinics
        ]  # fmt: skip
        outcome = run_study(
            coordinator, group, sites, study, evaluation=(_scale(held_out, scaling), held_labels)
        )
    if outcome.model is None:
        raise SystemExit(f"run {outcome.run_id} ended {outcome.status} without a model")
    card = dict(outcome.model.card)
    probabilities = predict_probabilities(
        outcome.model.spec, outcome.model.weights, _scale(held_out, scaling)
    )
    held = classification_metrics(probabilities, held_labels, ["walking or standing", "freeze"])
    summary = {
        "run": outcome.run_id,
        "status": outcome.status,
        "model_hash": outcome.model.model_hash,
        "windows_per_clinic": {name: rows for name, _, rows in clinics},
        "noise_multiplier": noise,
        "epsilon_replace_one": outcome.epsilons,
        "held_out": {"patients": 6, "windows": int(held_labels.shape[0]),
                     "auc": held["auc"], "accuracy": held["accuracy"],
                     "per_class": held["per_class"]},
        "card_evaluation_auc": (card.get("evaluation") or {}).get("auc"),
        "card_inputs": card["inputs"],
        "daphnet": score_daphnet(outcome.model, scaling),
        "ledger_entries_verified": outcome.ledger_entries,
        "directory": str(root),
    }  # fmt: skip
    emit(summary, args.json)


if __name__ == "__main__":
    main()
