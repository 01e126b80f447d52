"""Activity recognition from a smartwatch: the signals path on real recordings (BasicMotions).

BasicMotions (Clements, UEA/UCR time-series archive) holds 80 recordings of 10 s from a
smartwatch worn by four students: 3-axis accelerometer and 3-axis gyroscope at 10 Hz while
standing, walking, running and playing badminton (4 classes, 6 channels). ``aeon`` ships it
(``aeon/datasets/data/BasicMotions``); install its data with
``pip install --no-deps aeon==1.6.0``. Its 40 training recordings are split between two
sites, each registering them as an NPZ of windows ``(recordings, 6, 100)`` (signals: rate and
channels checked); the 40 test recordings are the coordinator's held-out set. A ``cnn1d`` is
trained under DP and federated over Flower; the card reports accuracy and per-class
metrics. Twenty recordings a site are far too few for DP-SGD to learn much at a small
epsilon: the example shows the path on real data, and its accuracy says what DP costs on
so little data.

    python examples/basic_motions.py [DIR] [--rounds N] [--epsilon E] [--json OUT]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

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
from veracity.localnet import create_data_site
from veracity.tasks.study import parse_study

SITES = ("clinic-a", "clinic-b")
CLASSES = ["Standing", "Running", "Walking", "Badminton"]
CHANNELS = ["accel_x", "accel_y", "accel_z", "gyro_x", "gyro_y", "gyro_z"]
RATE, STEPS = 10.0, 100
BATCH, LEARNING_RATE, CLIP = 20, 2.0, 1.0


def read_ts(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A multivariate ``.ts`` file of the UEA archive: ``(cases, 6, 100)`` and class names."""
    cases: list[list[list[float]]] = []
    labels: list[str] = []
    in_data = False
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.lower() == "@data":
            in_data = True
            continue
        if in_data:
            *dimensions, label = line.split(":")
            cases.append([[float(v) for v in d.split(",")] for d in dimensions])
            labels.append(label)
    return np.asarray(cases, dtype=np.float64), np.asarray(labels)


def data_folder() -> Path | None:
    """aeon's BasicMotions folder, found without importing aeon (None if absent)."""
    spec = importlib.util.find_spec("aeon")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0]) / "datasets/data/BasicMotions"
    return folder if (folder / "BasicMotions_TRAIN.ts").is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("directory", nargs="?", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    folder = data_folder()
    if folder is None:
        raise SystemExit("BasicMotions is not installed: pip install --no-deps aeon==1.6.0")
    root = args.directory or Path(tempfile.mkdtemp(prefix="veracity-motions-"))
    x, y = read_ts(folder / "BasicMotions_TRAIN.ts")
    test_x, test_y = read_ts(folder / "BasicMotions_TEST.ts")
    stds = x.std(axis=(0, 2))  # published scaling: the training set's channel deviations
    scaling = [[0.0, float(s)] for s in stds]
    sites_data = []
    for index, name in enumerate(SITES):
        path = root / "sites" / name / "data" / "motions.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        mine = slice(index, None, len(SITES))
        np.savez(path, x=x[mine], y=y[mine], channels=np.array(CHANNELS), rate=RATE)
        sites_data.append((name, path, len(y[mine])))
    noise = noise_for(args.epsilon, rows=min(n for *_, n in sites_data), batch=BATCH,
                      steps_per_round=1, rounds=args.rounds)  # fmt: skip
    study = parse_study(
        {
            "study_id": "basic-motions",
            "title": "Activity from a smartwatch (BasicMotions, 10 s at 10 Hz)",
            "model": {
                "family": "cnn1d",
                "input_shape": [6, STEPS],
                "filters": [8, 8],
                "kernel": 5,
                "classes": 4,
            },
            "features": CHANNELS,
            "label": "activity",
            "classes": CLASSES,
            "input": {
                "kind": "signals",
                "rate": RATE,
                "channels": CHANNELS,
                "window": STEPS,
                "hop": STEPS,
            },
            "scaling": scaling,
            "dp": {"noise_multiplier": noise, "max_grad_norm": CLIP, "delta": 1e-5},
            "training": {"batch_size": BATCH, "local_epochs": 1, "learning_rate": LEARNING_RATE},
            "rounds": args.rounds,
            "min_sites": len(SITES),
            "epsilon_caps": dict.fromkeys(SITES, args.epsilon),
            "code_hash": code_hash(),
        }
    )
    held_x = (test_x / stds[None, :, None]).reshape(len(test_y), -1).astype(np.float32)
    held_y = np.array([CLASSES.index(label) for label in test_y])
    with network(root) as (coordinator, group):
        sites = [
            create_data_site(
                root / "sites" / name / "site", name, dataset_id="motions", path=path,
                label="activity", classes=CLASSES, declared=SignalsDeclared(rate=RATE),
                epsilon_budget=2 * args.epsilon,
                # 20 recordings per site: each operator lowers the site's minimum dataset
                # size (default 50) to what this data set has.
                min_rows=20,
            )
            for name, path, _ in sites_data
        ]  # fmt: skip
        outcome = run_study(coordinator, group, sites, study, evaluation=(held_x, held_y))
    if outcome.model is None:
        raise SystemExit(f"run {outcome.run_id} ended {outcome.status} without a model")
    evaluation = dict(outcome.model.card.get("evaluation") or {})
    emit(
        {
            "run": outcome.run_id,
            "status": outcome.status,
            "recordings_per_site": {name: n for name, _, n in sites_data},
            "noise_multiplier": noise,
            "epsilon_replace_one": outcome.epsilons,
            "held_out_recordings": len(held_y),
            "accuracy": evaluation.get("accuracy"),
            "per_class_recall": {
                name: m["recall"] for name, m in evaluation.get("per_class", {}).items()
            },
            "card_classes": outcome.model.card["classes"],
            "card_inputs": outcome.model.card["inputs"],
            "ledger_entries_verified": outcome.ledger_entries,
            "directory": str(root),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
