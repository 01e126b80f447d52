"""The model card a released model carries: what answering predictions gives away."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from veracity.server.coordinator import InMemoryFederation, init_coordinator
from veracity.server.release import build_model_card
from veracity.tasks.study import parse_study


def _study(model: dict[str, Any]) -> dict[str, Any]:
    n = int(model["n_features"])
    return {
        "study_id": "bc-1",
        "title": "Breast cancer",
        "model": model,
        "features": [f"f{i}" for i in range(n)],
        "label": "y",
        "scaling": [[0.0, 1.0]] * n,
        "dp": {"noise_multiplier": 1.1, "max_grad_norm": 1.0, "delta": 1e-5},
        "training": {"batch_size": 32, "local_epochs": 1, "learning_rate": 0.1},
        "rounds": 1,
        "min_sites": 1,
        "epsilon_caps": {"north": 3.0},
        "code_hash": "0" * 64,
    }


@pytest.mark.parametrize(
    ("model", "answers"),
    [
        ({"family": "logistic", "n_features": 30}, "d + 1 = 31 exact predictions"),
        (
            {"family": "poly_mlp", "n_features": 30, "hidden": 16},
            "(d + 1)(d + 2) / 2 = 496 exact predictions",
        ),
    ],
)
def test_the_card_says_how_many_exact_answers_determine_the_model(
    model: dict[str, Any], answers: str, tmp_path: Path
) -> None:
    study = parse_study(_study(model))
    with init_coordinator(tmp_path / "coordinator", federation=InMemoryFederation()) as coordinator:
        card = build_model_card(coordinator, study, "1", {"w": np.zeros(1)}, [])
    assert any(answers in limitation for limitation in card["limitations"])
    assert any("query budget" in limitation for limitation in card["limitations"])
    # Issue 19: a linear model's card says that one contributions answer gives its weights.
    says = any("charged as d = 30 predictions" in limitation for limitation in card["limitations"])
    assert says == (model["family"] == "logistic")
