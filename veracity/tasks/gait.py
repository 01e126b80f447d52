"""Synthetic freezing-of-gait recordings in the layout of the Daphnet data set.

The Daphnet freezing-of-gait data set (Bächlin et al., "Wearable assistant for Parkinson's
disease patients with the freezing of gait symptom", IEEE Trans. Inf. Technol. Biomed.
14(2), 2010; UCI ML repository, CC BY 4.0) holds 3-axis accelerometer recordings at 64 Hz
from sensors at the ankle (shank), the thigh ("leg") and the lower back ("trunk") of
Parkinson's patients walking, in milli-g. The column names below are those of the
recording that the ``aeon`` package ships (``Daphnet_S06R02E0``).

This generator writes recordings of the same layout for synthetic patients, so the
examples, tests and benchmarks need no download and hold no patient's data. Its physiology:

* **Walking**: a periodic locomotor signal at the step frequency (1.6-2.1 Hz, cadence
  96-126 steps a minute) with its harmonics, strongest at the ankle; its power lies mostly
  in the *locomotor band*, 0.5-3 Hz.
* **Freezing of gait** (FoG): the feet stop progressing and the legs tremble ("trembling
  in place") at 3-8 Hz, the *freeze band*; Moore, MacDougall and Ondo, "Ambulatory
  monitoring of freezing of gait in Parkinson's disease", J. Neurosci. Methods 167(2),
  2008, detect it with the **freeze index**: the power in 3-8 Hz over the power in
  0.5-3 Hz of the vertical leg acceleration (:func:`freeze_index`). Trembling is strongest
  at the ankle and thigh and faint at the trunk; a little locomotor signal remains.
* **Standing**: gravity, postural sway (0.1-0.5 Hz) and sensor noise.

Every sensor also sees gravity (about 1000 mg) projected on its axes by its orientation,
which differs per patient. Each patient has a step frequency, a tremor frequency (4-6.5 Hz,
inside the freeze band), amplitudes and orientations of their own; episodes alternate
walking, standing and (for patients who freeze) freezes of 3-20 s, mostly after walking.
Samples are rounded to whole milli-g as in Daphnet. Labels are per sample: 1 during a
freeze, 0 otherwise.

Plain NumPy (no torch): the coordinator, the sites and the benchmarks all use it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = [
    "CHANNELS",
    "FREEZE_BAND",
    "LABEL",
    "LOCOMOTOR_BAND",
    "RATE",
    "Recording",
    "freeze_index",
    "patient_recordings",
    "write_recording_csv",
]

#: Daphnet's sampling rate (Hz).
RATE = 64.0
#: Daphnet's channels (milli-g), as in aeon's ``Daphnet_S06R02E0``.
CHANNELS = (
    "ankle_horiz_fwd",
    "ankle_vert",
    "ankle_horiz_lateral",
    "leg_horiz_fwd",
    "leg_vert",
    "leg_horiz_lateral",
    "trunk_horiz_fwd",
    "trunk_vert",
    "trunk_horiz_lateral",
)
#: The per-sample label column: 1 during a freeze.
LABEL = "freeze"
#: Moore et al. (2008): the locomotor band and the freeze band (Hz).
LOCOMOTOR_BAND = (0.5, 3.0)
FREEZE_BAND = (3.0, 8.0)

_GRAVITY = 1000.0
# Dynamic amplitude (mg) of walking and of trembling at ankle, thigh ("leg") and trunk.
_WALK_AMPLITUDE = {"ankle": 450.0, "leg": 250.0, "trunk": 120.0}
_TREMBLE_AMPLITUDE = {"ankle": 260.0, "leg": 150.0, "trunk": 35.0}
_HARMONICS = (1.0, 0.45, 0.25, 0.12)
_NOISE = 12.0


@dataclass(frozen=True)
class Recording:
    """One synthetic recording: ``(samples, 9)`` milli-g at 64 Hz and a label per sample."""

    patient: str
    values: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int64]

    @property
    def seconds(self) -> float:
        """Duration in seconds."""
        return float(self.values.shape[0]) / RATE


def freeze_index(signal: npt.NDArray[np.floating], rate: float = RATE) -> float:
    """Moore et al.'s (2008) freeze index of one window of one channel.

    The power spectrum of the mean-removed window (Hann-tapered periodogram); the index is
    the power in the freeze band (3-8 Hz) over the power in the locomotor band (0.5-3 Hz).
    Above about 2 the leg trembles more than it steps.
    """
    x = np.asarray(signal, dtype=np.float64)
    x = (x - x.mean()) * np.hanning(x.shape[0])
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(x.shape[0], 1.0 / rate)
    locomotor = power[(freqs >= LOCOMOTOR_BAND[0]) & (freqs < LOCOMOTOR_BAND[1])].sum()
    freeze = power[(freqs >= FREEZE_BAND[0]) & (freqs < FREEZE_BAND[1])].sum()
    return float(freeze / max(locomotor, 1e-12))


def _orientation(rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """A sensor's gravity on (forward, vertical, lateral): mostly vertical, tilted."""
    tilt_fwd, tilt_lat = rng.normal(0.0, 0.3, size=2)
    g = np.array([np.sin(tilt_fwd), np.cos(tilt_fwd) * np.cos(tilt_lat), np.sin(tilt_lat)])
    return np.asarray(_GRAVITY * g, dtype=np.float64)


def _envelope(kind: npt.NDArray[np.str_], name: str) -> npt.NDArray[np.float64]:
    """Where ``kind`` is ``name``, smoothed so episodes blend over about half a second."""
    kernel = np.hanning(33) / np.hanning(33).sum()
    return np.asarray(
        np.convolve((kind == name).astype(np.float64), kernel, mode="same"), dtype=np.float64
    )


def _segments(rng: np.random.Generator, seconds: float, freezer: bool) -> list[tuple[str, float]]:
    plan: list[tuple[str, float]] = []
    total = 0.0
    while total < seconds:
        walk = float(rng.uniform(8, 30))
        plan.append(("walk", walk))
        total += walk
        roll = rng.random()
        if freezer and roll < 0.55:
            episode = ("freeze", float(rng.uniform(3, 20)))
        elif roll < 0.8:
            episode = ("stand", float(rng.uniform(3, 12)))
        else:
            continue
        plan.append(episode)
        total += episode[1]
    return plan


def patient_recordings(
    patient: str, *, seed: int, recordings: int = 2, seconds: float = 150.0, freezer: bool = True
) -> list[Recording]:
    """Synthetic recordings of one patient (see the module docstring); deterministic in ``seed``.

    ``freezer=False`` gives a patient who walks and stands but never freezes.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    step = float(rng.uniform(1.6, 2.1))
    tremor = float(rng.uniform(4.0, 6.5))
    scale = float(rng.uniform(0.7, 1.3))
    sensors = ("ankle", "leg", "trunk")
    gravity = {s: _orientation(rng) for s in sensors}
    # Per axis: how much of the sensor's dynamic signal it sees, and at which phase.
    axis_gain = {s: rng.uniform(0.4, 1.0, size=3) for s in sensors}
    axis_phase = {s: rng.uniform(0, 2 * np.pi, size=(3, len(_HARMONICS))) for s in sensors}
    out: list[Recording] = []
    for index in range(recordings):
        columns: list[npt.NDArray[np.float64]] = []
        labels_parts: list[npt.NDArray[np.int64]] = []
        plan = _segments(rng, seconds, freezer)
        lengths = [round(d * RATE) for _, d in plan]
        samples = sum(lengths)
        t = np.arange(samples) / RATE
        # Slow wander of the step and tremor frequencies (phase noise), per recording.
        wander = np.cumsum(rng.normal(0.0, 0.002, size=samples))
        kind = np.concatenate([np.full(n, k) for (k, _), n in zip(plan, lengths, strict=True)])
        walking, freezing, standing = (
            _envelope(kind, name) for name in ("walk", "freeze", "stand")
        )
        sway = np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t + rng.uniform(0, 2 * np.pi))
        for sensor in sensors:
            for axis in range(3):
                gain = axis_gain[sensor][axis] * scale
                locomotor = sum(
                    weight
                    * np.sin(
                        2 * np.pi * (h + 1) * step * (t + wander) + axis_phase[sensor][axis, h]
                    )
                    for h, weight in enumerate(_HARMONICS)
                )
                tremble = np.sin(
                    2 * np.pi * tremor * (t + 0.5 * wander) + axis_phase[sensor][axis, 0]
                ) * (1.0 + 0.3 * np.sin(2 * np.pi * 0.4 * t))
                dynamic = gain * (
                    _WALK_AMPLITUDE[sensor] * locomotor * (walking + 0.15 * freezing)
                    + _TREMBLE_AMPLITUDE[sensor] * tremble * freezing
                    + 15.0 * sway * standing
                )
                noise = rng.normal(0.0, _NOISE, size=samples)
                columns.append(np.round(gravity[sensor][axis] + dynamic + noise))
        labels_parts.append((kind == "freeze").astype(np.int64))
        out.append(
            Recording(
                patient=f"{patient}-r{index + 1}",
                values=np.column_stack(columns),
                labels=np.concatenate(labels_parts),
            )
        )
    return out


def write_recording_csv(recording: Recording, path: Path) -> Path:
    """Write a recording as Daphnet-style CSV: ISO timestamps (ms), 9 channels, ``freeze``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["timestamp", *CHANNELS, LABEL])
    for index, (row, label) in enumerate(zip(recording.values, recording.labels, strict=True)):
        millis = round(index * 1000 / RATE)
        stamp = f"1970-01-01 {millis // 3_600_000:02d}:{millis // 60_000 % 60:02d}:"
        stamp += f"{millis // 1000 % 60:02d}.{millis % 1000:03d}"
        writer.writerow([stamp, *(f"{v:.0f}" for v in row), int(label)])
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path
