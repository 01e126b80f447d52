"""Dataset fingerprints: a known-answer vector, binding and hiding properties."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hypothesis_examples import examples
from veracity.client.fingerprint import (
    commitment,
    content_digest,
    new_salt,
    schema_hash,
    verify_commitment,
)
from veracity.errors import InputError, VerificationError

VECTOR = Path(__file__).resolve().parents[1] / "vectors" / "dataset-commitment.json"


@pytest.fixture(scope="module")
def vector() -> dict[str, Any]:
    return dict(json.loads(VECTOR.read_text()))


def _arrays(vector: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    x = np.array([row["values"] for row in vector["rows"]], dtype=np.float64)
    y = np.array([row["label"] for row in vector["rows"]], dtype=np.int64)
    return x, y


def test_fingerprints_match_the_known_answer_vector(vector: dict[str, Any]) -> None:
    features, label = tuple(vector["features"]), vector["label"]
    x, y = _arrays(vector)
    digest = content_digest(features, label, x, y)
    assert digest == vector["content_digest"]
    assert commitment(bytes.fromhex(vector["salt_hex"]), digest) == vector["commitment"]
    assert schema_hash(features, label) == vector["schema_hash"]
    verify_commitment(vector["commitment"], bytes.fromhex(vector["salt_hex"]), digest)


def test_commitment_does_not_open_with_another_salt_or_other_data(vector: dict[str, Any]) -> None:
    features, label = tuple(vector["features"]), vector["label"]
    x, y = _arrays(vector)
    y_flipped = y.copy()
    y_flipped[0] = 1 - y_flipped[0]
    salt = bytes.fromhex(vector["salt_hex"])
    with pytest.raises(VerificationError):
        verify_commitment(vector["commitment"], salt[::-1], vector["content_digest"])
    with pytest.raises(VerificationError):
        verify_commitment(vector["commitment"], salt, content_digest(features, label, x, y_flipped))


cells = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(
    st.lists(st.tuples(cells, cells, st.integers(0, 1)), min_size=1, max_size=20),
    st.data(),
)
@settings(max_examples=examples(50), deadline=None)
def test_any_change_to_one_value_changes_the_digest(
    rows: list[tuple[float, float, int]], data: st.DataObject
) -> None:
    x = np.array([[a, b] for a, b, _ in rows], dtype=np.float64)
    y = np.array([label for _, _, label in rows], dtype=np.int64)
    original = content_digest(("a", "b"), "y", x, y)
    row = data.draw(st.integers(0, len(rows) - 1))
    column = data.draw(st.integers(0, 2))
    if column == 2:
        y = y.copy()
        y[row] = 1 - y[row]
    else:
        x = x.copy()
        replacement = data.draw(cells.filter(lambda v: v != x[row, column]))
        x[row, column] = replacement
    assert content_digest(("a", "b"), "y", x, y) != original


def test_column_names_and_label_are_part_of_the_digest() -> None:
    x = np.array([[1.0, 2.0]])
    y = np.array([1])
    digests = {
        content_digest(("a", "b"), "y", x, y),
        content_digest(("b", "a"), "y", x, y),
        content_digest(("a", "b"), "z", x, y),
    }
    assert len(digests) == 3


def test_fresh_salts_hide_equal_data() -> None:
    digest = "ab" * 32
    assert commitment(new_salt(), digest) != commitment(new_salt(), digest)
    assert len(new_salt()) == 32


@pytest.mark.parametrize(
    ("salt", "digest"), [(b"short", "ab" * 32), (bytes(32), "xyz"), (bytes(32), "ab")]
)
def test_malformed_commitment_inputs_are_refused(salt: bytes, digest: str) -> None:
    with pytest.raises(InputError):
        commitment(salt, digest)


def test_shapes_must_match_the_column_names() -> None:
    with pytest.raises(InputError):
        content_digest(("a",), "y", np.zeros((2, 2)), np.zeros(2, dtype=np.int64))
