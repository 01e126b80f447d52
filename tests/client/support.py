"""Helpers for the site agent's tests: names, a deterministic clock, studies and requests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from veracity.client.service import TrainRequest
from veracity.tasks import breast_cancer
from veracity.tasks.study import Study
from veracity.tasks.torch_models import build_model, model_weights

SITE = "hospital-a"
CODE_HASH = "c0de" * 16


class TickingClock:
    """A clock that starts at a fixed instant and moves one millisecond per reading."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 9, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


def make_study(**changes: Any) -> Study:
    """A breast-cancer logistic study for SITE with small, fast terms."""
    terms: dict[str, Any] = {
        "study_id": "bc-test",
        "epsilon_caps": {SITE: 5.0, "hospital-b": 5.0},
        "noise_multiplier": 2.0,
        "code_hash": CODE_HASH,
        "rounds": 5,
        "min_sites": 1,
        "learning_rate": 0.5,
    }
    terms.update(changes)
    return breast_cancer.breast_cancer_study(**terms)


def initial_weights(study: Study) -> dict[str, np.ndarray]:
    return model_weights(build_model(study.model_spec, seed=study.model_seed))


def request_for(
    study: Study,
    *,
    round: int,
    run_id: str = "1001",
    weights: dict[str, np.ndarray] | None = None,
    document: dict[str, Any] | None = None,
    study_hash: str | None = None,
    code_hash: str | None = None,
) -> TrainRequest:
    return TrainRequest(
        study=document if document is not None else study.to_document(),
        study_hash=study_hash if study_hash is not None else study.study_hash,
        run_id=run_id,
        round=round,
        code_hash=code_hash if code_hash is not None else study.code_hash,
        weights=weights if weights is not None else initial_weights(study),
    )
