"""A study's public standardisation: ``(x - mean) / std`` per feature, on the data holder's side."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from veracity.errors import InputError

__all__ = ["standardise"]


def standardise(
    features: npt.NDArray[np.floating], scaling: Sequence[tuple[float, float]]
) -> npt.NDArray[np.float64]:
    """Scale each column of ``features`` (shape ``(n, columns)``) by its ``(mean, std)``.

    Raises
    ------
    InputError
        If ``scaling`` does not have one entry per column.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(scaling):
        raise InputError(f"scaling has {len(scaling)} entries for features of shape {x.shape}")
    means = np.array([mean for mean, _ in scaling], dtype=np.float64)
    stds = np.array([std for _, std in scaling], dtype=np.float64)
    return np.asarray((x - means) / stds, dtype=np.float64)
