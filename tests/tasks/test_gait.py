"""The synthetic gait recordings follow the physiology they cite and pass the site's checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from veracity.client.records import read_source, window_recordings
from veracity.client.signals import parse_signals
from veracity.tasks import gait
from veracity.tasks.metrics import auc


def test_the_freeze_index_separates_freezes_from_walking() -> None:
    recordings = gait.patient_recordings("p", seed=3, recordings=2, seconds=120.0)
    windows, labels = window_recordings(
        tuple(r.values for r in recordings), tuple(r.labels for r in recordings),
        window=256, hop=128,
    )  # fmt: skip
    assert 0 < labels.mean() < 0.6
    index = np.array([gait.freeze_index(w[gait.CHANNELS.index("leg_vert")]) for w in windows])
    assert np.median(index[labels == 1]) > 2.0 > np.median(index[labels == 0])
    assert (auc(index, labels == 1) or 0.0) > 0.95


def test_a_patient_who_never_freezes_has_no_freeze_labels() -> None:
    (recording,) = gait.patient_recordings("p", seed=4, recordings=1, freezer=False)
    assert recording.labels.sum() == 0
    assert recording.values.shape[1] == len(gait.CHANNELS)


def test_written_recordings_pass_registration_checks_unchanged(tmp_path: Path) -> None:
    (recording,) = gait.patient_recordings("p", seed=5, recordings=1, seconds=60.0)
    path = gait.write_recording_csv(recording, tmp_path / "p.csv")
    records = parse_signals(read_source(path), label=gait.LABEL, classes=("0", "1"), rate=gait.RATE)
    assert records.channels == gait.CHANNELS
    np.testing.assert_array_equal(records.arrays[0], recording.values)
    np.testing.assert_array_equal(records.labels[0], recording.labels)
