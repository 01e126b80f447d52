"""Explanations of signal (cnn1d) and image (cnn2d) models at a site.

A model is fitted (plain torch, no DP: only the explanation is under test) on synthetic
data where one channel in one time window (signals) or one pixel block (images) alone
decides the label; the site's noisy, clipped integrated gradients must have the model's
input shape, charge exactly the declared epsilon and rank that channel, window or block
first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from veracity.analytics.calibration import calibrate_noise_multiplier
from veracity.client.approvals import approve_study
from veracity.client.budget import Segment
from veracity.client.datasets import (
    ImagesDeclared,
    SignalsDeclared,
    check_registered,
    load_registered,
    register_dataset,
)
from veracity.client.explanation import ExplanationAgent, ExplanationAnswer, ExplanationRequest
from veracity.client.site import Site
from veracity.client.study_inputs import study_examples
from veracity.contracts.explanation import EXPLANATION_QUERY_ID
from veracity.tasks.study import Study, parse_study
from veracity.tasks.weights import weights_hash

SITE = "hospital-a"
CODE = "c0de" * 16
EPSILON = 2.0
RECORDS = 240


def _study(model: dict[str, Any], features: list[str], inputs: dict[str, Any]) -> Study:
    return parse_study(
        {
            "study_id": "explain-layout",
            "model": model,
            "features": features,
            "label": "y",
            "classes": ["0", "1"],
            "scaling": [[0.0, 1.0]] * len(features),
            "input": inputs,
            "dp": {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5},
            "training": {"batch_size": 16, "local_epochs": 1, "learning_rate": 0.1},
            "rounds": 1,
            "min_sites": 1,
            "epsilon_caps": {SITE: 50.0},
            "code_hash": CODE,
        }
    )


def _fit(study: Study, site: Site, dataset_id: str) -> dict[str, npt.NDArray[np.float32]]:
    """The study's model fitted to the site's examples by plain (non-private) Adam."""
    import torch

    from veracity.tasks.torch_models import build_model, model_weights

    dataset = site.store.get_dataset(dataset_id)
    assert dataset is not None
    x, y = study_examples(study, load_registered(dataset, check_registered(dataset)))
    model = build_model(study.model_spec, seed=0)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    inputs, targets = torch.as_tensor(x), torch.as_tensor(y, dtype=torch.float32)
    for _ in range(100):
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(inputs), targets)
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
    with torch.no_grad():
        accuracy = float(((model(inputs) > 0).float() == targets).float().mean())
    assert accuracy > 0.95  # the model did learn the deciding input
    return model_weights(model)


def _explain(site: Site, study: Study, weights: dict[str, Any]) -> ExplanationAnswer:
    terms = {
        "model_hash": weights_hash(weights),
        "study_hash": study.study_hash,
        "steps": 8,
        "clip_norm": 1.0,
        "epsilon": EPSILON,
        "delta": 1e-5,
    }
    request = ExplanationRequest(
        terms=terms, study=study.to_document(), code_hash=CODE, weights=weights
    )
    outcome = ExplanationAgent(site, seed=5).handle(request)
    assert isinstance(outcome, ExplanationAnswer)
    return outcome


def _assert_charged(site: Site, dataset_id: str, outcome: ExplanationAnswer) -> None:
    z = calibrate_noise_multiplier(EPSILON, 1e-5)
    receipt = outcome.receipt.to_json()
    assert receipt["query_id"] == EXPLANATION_QUERY_ID
    assert receipt["history"] == [[z, 1.0, 1]]
    assert receipt["epsilon_query"] == pytest.approx(EPSILON, abs=1e-3)
    assert site.store.dataset_history(dataset_id) == (Segment(z, 1.0, 1),)


@pytest.mark.slow
def test_a_cnn1d_explanation_ranks_the_deciding_channel_and_time_window_first(
    site: Site, tmp_path: Path
) -> None:
    channels, steps, window = 2, 32, slice(16, 24)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, RECORDS)
    x = rng.normal(0.0, 0.3, size=(RECORDS, channels, steps))
    x[:, 1, window] += np.where(y == 1, 1.5, -1.5)[:, None]  # channel "b", steps 16-23
    np.savez(tmp_path / "w.npz", x=x, y=y, channels=np.array(["a", "b"]), rate=64.0)
    register_dataset(
        site, dataset_id="sig", path=tmp_path / "w.npz", label="y", classes=("0", "1"),
        declared=SignalsDeclared(rate=64.0), min_rows=10, epsilon_budget=50.0,
    )  # fmt: skip
    study = _study(
        {"family": "cnn1d", "input_shape": [channels, steps], "kernel": 3},
        ["a", "b"],
        {"kind": "signals", "rate": 64.0, "channels": ["a", "b"], "window": steps, "hop": steps},
    )
    approve_study(site, study, dataset_id="sig", epsilon_cap=50.0)
    weights = _fit(study, site, "sig")

    outcome = _explain(site, study, weights)

    values = np.asarray(outcome.explanation.values)
    assert values.shape == (channels * steps,)
    assert outcome.explanation.records == RECORDS
    grid = values.reshape(channels, steps)
    assert int(np.argmax(grid.sum(axis=1))) == 1  # the deciding channel first
    per_window = grid[1].reshape(4, 8).sum(axis=1)  # four windows of 8 steps
    assert int(np.argmax(per_window)) == 2  # steps 16-23
    assert set(np.argsort(-grid[1])[:4].tolist()) <= set(range(16, 24))
    _assert_charged(site, "sig", outcome)


@pytest.mark.slow
def test_a_cnn2d_explanation_ranks_the_deciding_pixel_block_first(
    site: Site, tmp_path: Path
) -> None:
    size = 8
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, RECORDS)
    x = rng.normal(0.0, 0.3, size=(RECORDS, 1, size, size))
    x[:, 0, 2:4, 4:6] += np.where(y == 1, 1.5, -1.5)[:, None, None]  # rows 2-3, columns 4-5
    np.savez(tmp_path / "i.npz", x=x, y=y)
    register_dataset(
        site, dataset_id="img", path=tmp_path / "i.npz", label="y", classes=("0", "1"),
        declared=ImagesDeclared(height=size, width=size), min_rows=10, epsilon_budget=50.0,
    )  # fmt: skip
    study = _study(
        {"family": "cnn2d", "input_shape": [1, size, size], "kernel": 3},
        ["grey"],
        {"kind": "images", "height": size, "width": size, "intensity_max": 1},
    )
    approve_study(site, study, dataset_id="img", epsilon_cap=50.0)
    weights = _fit(study, site, "img")

    outcome = _explain(site, study, weights)

    values = np.asarray(outcome.explanation.values)
    assert values.shape == (size * size,)
    pixels = values.reshape(size, size)
    blocks = pixels.reshape(4, 2, 4, 2).sum(axis=(1, 3))  # 2x2 pixel blocks
    assert divmod(int(np.argmax(blocks)), 4) == (1, 2)
    top = {divmod(int(i), size) for i in np.argsort(-values)[:2]}
    assert top <= {(2, 4), (2, 5), (3, 4), (3, 5)}
    _assert_charged(site, "img", outcome)
