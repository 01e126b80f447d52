"""What a study trains on at a site: its examples, built from a registered dataset.

``table``
    The study's feature columns, standardised with its published scaling.
``signals``
    The study's channels of every recording, cut into its windows
    (:func:`veracity.client.records.window_recordings`) or, for data registered as
    windows, used as they are; each channel standardised with the study's scaling.
``images``
    Pixel values divided by the study's ``intensity_max``, each channel standardised.

Examples travel as flat float32 rows (a window or an image in C order), labels as class
indices. Plain NumPy: the site's torch code only receives the arrays.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from veracity.client.datasets import Loaded, Table
from veracity.client.records import window_recordings
from veracity.errors import ApprovalMissing
from veracity.tasks.scaling import standardise
from veracity.tasks.study import ImagesInput, SignalsInput, Study

__all__ = ["dataset_mismatch", "study_examples"]


def dataset_mismatch(
    study: Study, *, kind: str, features: tuple[str, ...], layout: dict[str, object]
) -> str | None:
    """Why a registered dataset cannot serve ``study`` (``None`` when it can).

    Checks that the kinds agree, and for signals the sampling rate and (for data registered
    as windows) the window length; for images the geometry.
    """
    inputs = study.input
    wanted = "table" if inputs is None else inputs.kind
    if kind != wanted:
        return f"the study trains on {wanted}; the dataset holds {kind}"
    if isinstance(inputs, SignalsInput):
        rate = float(str(layout.get("rate", "nan")))
        if abs(rate / inputs.rate - 1.0) > 1e-9:
            return f"the study's sampling rate is {inputs.rate:g} Hz; the dataset's is {rate:g} Hz"
        steps = layout.get("steps")
        if layout.get("layout") == "windows" and steps != inputs.window:
            return f"the study's windows have {inputs.window} steps; the dataset's have {steps}"
    if isinstance(inputs, ImagesInput):
        found = (len(features), layout.get("height"), layout.get("width"))
        wanted_geometry = (inputs.channels, inputs.height, inputs.width)
        if found != wanted_geometry:
            return (
                f"the study's images are {inputs.width}x{inputs.height} with {inputs.channels} "
                f"channel(s); the dataset's are {found[2]}x{found[1]} with {found[0]}"
            )
    return None


def _per_channel(
    x: npt.NDArray[np.float64], scaling: tuple[tuple[float, float], ...]
) -> npt.NDArray[np.float32]:
    means = np.array([m for m, _ in scaling], dtype=np.float64)
    stds = np.array([s for _, s in scaling], dtype=np.float64)
    shape = (1, len(scaling)) + (1,) * (x.ndim - 2)
    scaled = (x - means.reshape(shape)) / stds.reshape(shape)
    return np.ascontiguousarray(scaled.reshape(x.shape[0], -1), dtype=np.float32)


def study_examples(
    study: Study, loaded: Loaded
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The study's examples (flat float32 rows) and class indices from a loaded dataset.

    Raises
    ------
    ApprovalMissing
        If the dataset does not suit the study (another kind, rate, geometry or channels).
    """
    if isinstance(loaded, Table):
        if study.input is not None:
            raise ApprovalMissing(f"the study trains on {study.input.kind}; the dataset is a table")
        column = {name: index for index, name in enumerate(loaded.features)}
        x = loaded.x[:, [column[name] for name in study.features]]
        return np.asarray(standardise(x, study.scaling), dtype=np.float32), loaded.y
    problem = dataset_mismatch(
        study, kind=loaded.kind, features=loaded.channels, layout=loaded.geometry
    )
    if problem is not None:
        raise ApprovalMissing(problem)
    inputs = study.input
    if isinstance(inputs, SignalsInput):
        missing = [c for c in inputs.channels if c not in loaded.channels]
        if missing:
            raise ApprovalMissing(f"the dataset has no channel {missing[0]!r}")
        index = [loaded.channels.index(c) for c in inputs.channels]
        if loaded.geometry.get("layout") == "windows":
            windows, labels = loaded.arrays[0][:, index, :], loaded.labels[0]
        else:
            recordings = tuple(recording[:, index] for recording in loaded.arrays)
            windows, labels = window_recordings(
                recordings, loaded.labels, window=inputs.window, hop=inputs.hop
            )
        return _per_channel(windows, study.scaling), labels
    if isinstance(inputs, ImagesInput):
        return _per_channel(loaded.arrays[0] / inputs.intensity_max, study.scaling), loaded.labels[
            0
        ]
    raise ApprovalMissing("the study trains on a table; the dataset holds signals or images")
