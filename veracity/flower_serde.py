"""The one place where Veracity's values become Flower records and back.

Weights are ``dict[str, numpy.ndarray]`` everywhere in Veracity; on the wire they are a
Flower ``ArrayRecord`` under the key ``"arrays"``.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord

from veracity.tasks.weights import Weights

__all__ = ["weights_to_record", "weights_from_record"]


def weights_to_record(weights: Weights) -> ArrayRecord:
    """An ``ArrayRecord`` holding ``weights`` in name order."""
    return ArrayRecord(
        array_dict=OrderedDict(
            (name, Array(np.ascontiguousarray(weights[name]))) for name in sorted(weights)
        )
    )


def weights_from_record(record: ArrayRecord) -> dict[str, npt.NDArray[np.floating]]:
    """The NumPy arrays of an ``ArrayRecord``."""
    return {name: np.asarray(array.numpy()) for name, array in record.items()}
