from __future__ import annotations

from typing import Any

import pytest

from veracity.errors import InputError
from veracity.tasks.study import parse_study


def _document(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "study_id": "bc-mlp-1",
        "model": {
            "family": "poly_mlp",
            "n_features": 2,
            "hidden": 4,
            "activation": [0.125, 0.5, 0.0],
        },
        "features": ["a", "b"],
        "label": "y",
        "scaling": [[0.0, 1.0], [10.0, 2.0]],
        "dp": {"noise_multiplier": 1.1, "max_grad_norm": 1.0, "delta": 1e-5},
        "training": {"batch_size": 32, "local_epochs": 1, "learning_rate": 0.1},
        "rounds": 3,
        "min_sites": 2,
        "epsilon_caps": {"hospital-a": 3.0, "hospital-b": 3.0},
        "code_hash": "ab" * 32,
    }
    document.update(changes)
    return document


def test_study_hash_is_stable_and_changes_with_any_term() -> None:
    study = parse_study(_document())
    assert study.study_hash == parse_study(_document()).study_hash
    assert study.study_hash != parse_study(_document(rounds=4)).study_hash
    caps = {"hospital-a": 3.0, "hospital-b": 2.5}
    assert study.study_hash != parse_study(_document(epsilon_caps=caps)).study_hash


def test_study_round_trips_through_its_document() -> None:
    study = parse_study(_document())
    assert parse_study(study.to_document()) == study


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"features": ["a"]}, "inputs"),
        ({"label": "a"}, "label"),
        ({"scaling": [[0.0, 1.0], [0.0, 0.0]]}, "std"),
        ({"min_sites": 3}, "min_sites"),
        ({"code_hash": "xyz"}, "code_hash"),
        ({"dp": {"noise_multiplier": -1, "max_grad_norm": 1.0, "delta": 1e-5}}, "noise_multiplier"),
        ({"model": {"family": "transformer", "n_features": 2}}, "model"),
        ({"extra": 1}, "extra"),
    ],
)
def test_invalid_studies_are_refused_naming_the_problem(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        parse_study(_document(**changes))
