"""Integrated gradients of a model, one attribution vector per record (the Captum adapter).

The only module that imports Captum (import-linter's ``captum-adapter`` contract). It
builds the study's torch model from the weights the coordinator sent and computes, for
each record ``x``, Captum's ``IntegratedGradients`` from the all-zero baseline (the centre
of the study's public scaling) along the straight path, with ``steps`` Gauss-Legendre
points: ``attr_i = (x_i - 0) * integral_0^1 dF(a x)/dx_i da``, where ``F`` is the logit of
the record's own class: for a model of more than two classes, that class's logit; for a
two-class model (one logit, for class 1) the logit for class 1 and its negative for class 0.
So a feature that pushes records towards their true class has a positive mean attribution
(with the signed logit alone, a centred feature's mean attribution would cancel to about 0
however much it decides). For a linear logit ``w . x + b`` this is exactly
``(2 y - 1) w_i x_i`` for two classes.

Models take flat input rows (``veracity.tasks.torch_models``), so the attributions are
flat too: one per feature, per (channel, time step) or per (channel, row, column).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from captum.attr import IntegratedGradients

from veracity.tasks.spec import ModelSpec
from veracity.tasks.torch_models import build_model, load_weights
from veracity.tasks.weights import Weights

__all__ = ["integrated_gradients", "forward_pass"]

#: Records per Captum call (each expands to ``steps`` model inputs).
BATCH = 256


def _model(spec: ModelSpec, weights: Weights) -> torch.nn.Module:
    model = build_model(spec, seed=0)
    load_weights(model, weights)
    model.eval()
    return model


def integrated_gradients(
    spec: ModelSpec,
    weights: Weights,
    x: npt.NDArray[np.floating],
    y: npt.NDArray[np.integer],
    *,
    steps: int,
) -> npt.NDArray[np.float64]:
    """Each record's attribution vector, shape ``(records, spec.n_features)``.

    ``x`` holds the study's flat float32 rows (as training reads them), ``y`` the class
    indices: each record is explained towards its own class.
    """
    model = _model(spec, weights)
    explainer = IntegratedGradients(model)
    out = np.empty((len(x), spec.n_features), dtype=np.float64)
    with torch.inference_mode(False):
        for start in range(0, len(x), BATCH):
            inputs = torch.as_tensor(np.asarray(x[start : start + BATCH], dtype=np.float32))
            target = (
                None
                if spec.outputs == 1
                else torch.as_tensor(np.asarray(y[start : start + BATCH], dtype=np.int64))
            )
            attributions = explainer.attribute(
                inputs,
                baselines=torch.zeros_like(inputs),
                target=target,
                n_steps=steps,
                method="gausslegendre",
            )
            block = attributions.detach().double().numpy()
            if spec.outputs == 1:  # the logit of class 1; towards class 0 it is its negative
                sign = 2.0 * np.asarray(y[start : start + BATCH], dtype=np.float64) - 1.0
                block = block * sign[:, None]
            out[start : start + len(inputs)] = block
    return out


def forward_pass(spec: ModelSpec, weights: Weights, x: npt.NDArray[np.floating]) -> int:
    """One plain forward pass over ``x`` (the benchmark's baseline); returns the rows seen."""
    model = _model(spec, weights)
    with torch.no_grad():
        for start in range(0, len(x), BATCH):
            model(torch.as_tensor(np.asarray(x[start : start + BATCH], dtype=np.float32)))
    return len(x)
