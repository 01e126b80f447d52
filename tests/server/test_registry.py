"""The content-addressed model registry: round trips, atomic writes, tamper detection."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hypothesis_examples import examples
from veracity.core.canonical import canonical_hash
from veracity.errors import InputError, LedgerIntegrityError
from veracity.server.registry import ModelRegistry
from veracity.tasks.spec import ModelFamily, ModelSpec
from veracity.tasks.torch_models import build_model, model_weights
from veracity.tasks.weights import weights_hash

SPEC = ModelSpec(ModelFamily.POLY_MLP, n_features=3, hidden=2)
FEATURES = ("age", "bmi", "glucose")
SCALING = ((50.0, 10.0), (27.0, 4.0), (5.5, 1.2))
CARD: dict[str, Any] = {"run_id": "42", "epsilon": {"site-a": 1.5}, "metrics": {"auc": 0.9}}


def _put(registry: ModelRegistry, seed: int = 0, **overrides: Any) -> str:
    arguments: dict[str, Any] = {
        "features": FEATURES,
        "label": "diabetic",
        "scaling": SCALING,
        "card": CARD,
    }
    arguments.update(overrides)
    return registry.put(SPEC, model_weights(build_model(SPEC, seed=seed)), **arguments)


def test_put_returns_the_weights_hash_and_get_returns_the_model(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    weights = model_weights(build_model(SPEC, seed=1))
    model_hash = registry.put(
        SPEC, weights, features=FEATURES, label="diabetic", scaling=SCALING, card=CARD
    )
    model = registry.get(model_hash)
    assert model_hash == weights_hash(weights)
    assert (model.spec, model.features, model.label, model.scaling) == (
        SPEC,
        FEATURES,
        "diabetic",
        SCALING,
    )
    assert dict(model.card) == CARD
    assert model.card_hash == canonical_hash(CARD)
    assert all(np.array_equal(model.weights[k], weights[k]) for k in weights)
    assert registry.list() == [model_hash]
    assert model_hash in registry


def test_registering_the_same_model_twice_is_a_no_op(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    assert _put(registry) == _put(registry)
    assert len(registry.list()) == 1


def test_same_weights_with_other_metadata_are_refused(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    _put(registry)
    with pytest.raises(InputError, match="other metadata"):
        _put(registry, card={**CARD, "metrics": {"auc": 0.99}})


def test_list_is_sorted_and_ignores_unrelated_entries(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    hashes = {_put(registry, seed=s) for s in range(3)}
    (tmp_path / "README").write_text("not a model")
    (tmp_path / ("0" * 64)).mkdir()  # no model.json: not a model
    assert registry.list() == sorted(hashes)


def test_modified_weights_are_detected_on_read(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    model_hash = _put(registry)
    other = model_weights(build_model(SPEC, seed=99))
    from veracity.tasks.weights import weights_to_bytes

    (tmp_path / model_hash / "weights.npz").write_bytes(weights_to_bytes(other))
    with pytest.raises(LedgerIntegrityError, match="weights file was modified"):
        registry.get(model_hash)


@pytest.mark.parametrize(
    ("field", "value"),
    [("scaling", [[0.0, 1.0], [27.0, 4.0], [5.5, 1.2]]), ("features", ["a", "bmi", "glucose"])],
)
def test_modified_metadata_is_detected_on_read(tmp_path: Path, field: str, value: Any) -> None:
    registry = ModelRegistry(tmp_path)
    model_hash = _put(registry)
    path = tmp_path / model_hash / "model.json"
    document = json.loads(path.read_text())
    document[field] = value
    path.write_text(json.dumps(document))
    with pytest.raises(LedgerIntegrityError, match="description hash"):
        registry.get(model_hash)


def test_a_corrupt_weights_file_is_an_integrity_error(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    model_hash = _put(registry)
    (tmp_path / model_hash / "weights.npz").write_bytes(b"not a zip")
    with pytest.raises(LedgerIntegrityError, match="unreadable"):
        registry.get(model_hash)


def test_malformed_and_unknown_hashes_are_input_errors(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    with pytest.raises(InputError, match="not a model hash"):
        registry.get("../../etc/passwd")
    with pytest.raises(InputError, match="no released model"):
        registry.get("a" * 64)
    assert "../x" not in registry


def test_a_failed_write_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = ModelRegistry(tmp_path)

    def broken_rename(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "rename", broken_rename)
    with pytest.raises(OSError, match="disk full"):
        _put(registry)
    assert list(tmp_path.iterdir()) == []


def test_inconsistent_schemas_are_refused(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    with pytest.raises(InputError, match="features"):
        _put(registry, features=("age", "bmi"))
    with pytest.raises(InputError, match="label"):
        _put(registry, label="age")
    with pytest.raises(InputError, match="std"):
        _put(registry, scaling=((50.0, 0.0), (27.0, 4.0), (5.5, 1.2)))
    with pytest.raises(InputError):
        registry.put(
            ModelSpec(ModelFamily.LOGISTIC, 3),
            model_weights(build_model(SPEC, seed=0)),
            features=FEATURES,
            label="y",
            scaling=SCALING,
            card={},
        )


@settings(
    max_examples=examples(10),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    seed=st.integers(0, 2**31 - 1),
    means=st.lists(st.floats(-1e6, 1e6), min_size=3, max_size=3),
    stds=st.lists(st.floats(1e-6, 1e6), min_size=3, max_size=3),
    note=st.text(max_size=40),
)
def test_any_valid_model_round_trips(
    tmp_path: Path, seed: int, means: list[float], stds: list[float], note: str
) -> None:
    with tempfile.TemporaryDirectory(dir=tmp_path) as directory:
        registry = ModelRegistry(Path(directory))
        scaling = tuple(zip(means, stds, strict=True))
        model_hash = _put(registry, seed=seed, scaling=scaling, card={"note": note})
        model = registry.get(model_hash)
        assert model.scaling == scaling
        assert model.card == {"note": note}
