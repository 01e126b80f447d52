from __future__ import annotations

import numpy as np
import numpy.typing
import pytest

from veracity.errors import InputError
from veracity.tasks.weights import weights_from_bytes, weights_hash, weights_to_bytes


def test_hash_is_independent_of_insertion_order_and_survives_round_trip() -> None:
    rng = np.random.default_rng(0)
    a = {"w": rng.normal(size=(2, 3)).astype(np.float32), "b": np.zeros(2, dtype=np.float32)}
    b = {"b": a["b"].copy(), "w": a["w"].copy()}
    assert weights_hash(a) == weights_hash(b)
    assert weights_hash(weights_from_bytes(weights_to_bytes(a))) == weights_hash(a)


def test_any_change_of_value_shape_dtype_or_name_changes_the_hash() -> None:
    base = {"w": np.ones((2, 2), dtype=np.float32)}
    changed_value = {"w": np.ones((2, 2), dtype=np.float32)}
    changed_value["w"][1, 1] = np.nextafter(np.float32(1), np.float32(2))
    variants: list[dict[str, np.typing.NDArray[np.floating]]] = [
        changed_value,
        {"w": np.ones((4,), dtype=np.float32)},
        {"w": np.ones((2, 2), dtype=np.float64)},
        {"v": np.ones((2, 2), dtype=np.float32)},
    ]
    hashes = {weights_hash(base)} | {weights_hash(v) for v in variants}
    assert len(hashes) == 5


def test_non_archive_bytes_are_refused() -> None:
    with pytest.raises(InputError):
        weights_from_bytes(b"definitely not npz")
