"""An analysis study over synthetic hospitals, shared by the analytics tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from veracity.contracts.analysis import AnalysisStudy

CODE_HASH = "c" * 64


def study_document(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "kind": "analysis",
        "study_id": "synthetic-analysis",
        "columns": {
            "age": {"lower": 20.0, "upper": 90.0},
            "tsize": {"lower": 0.0, "upper": 120.0},
            "grade": {"lower": 1.0, "upper": 3.0},
            "hormone": {"lower": 0.0, "upper": 1.0},
            "time": {"lower": 0.0, "upper": 2700.0},
            "event": {"lower": 0.0, "upper": 1.0},
        },
        "queries": [
            {
                "query_id": "n-grade-3",
                "kind": "count",
                "epsilon": 0.3,
                "cohort": [{"column": "grade", "op": "==", "value": 3.0}],
            },
            {"query_id": "sum-age", "kind": "sum", "column": "age", "epsilon": 0.5},
            {"query_id": "mean-age", "kind": "mean", "column": "age", "epsilon": 0.5},
            {"query_id": "var-age", "kind": "variance", "column": "age", "epsilon": 0.5},
            {
                "query_id": "hist-tsize",
                "kind": "histogram",
                "column": "tsize",
                "epsilon": 0.5,
                "bins": [0.0, 20.0, 40.0, 60.0, 120.0],
            },
            {
                "query_id": "q-age",
                "kind": "quantiles",
                "column": "age",
                "epsilon": 0.5,
                "bins": [20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0],
                "probabilities": [0.25, 0.5, 0.75],
            },
            {
                "query_id": "grade-by-event",
                "kind": "crosstab",
                "column": "grade",
                "bins": [0.5, 1.5, 2.5, 3.5],
                "by": "event",
                "by_bins": [-0.5, 0.5, 1.5],
                "epsilon": 0.5,
            },
            {
                "query_id": "km-hormone",
                "kind": "kaplan_meier",
                "column": "time",
                "event": "event",
                "bins": [0.0, 365.0, 730.0, 1095.0, 1460.0, 1825.0],
                "by": "hormone",
                "by_bins": [-0.5, 0.5, 1.5],
                "epsilon": 0.5,
            },
        ],
        "delta": 1e-5,
        "epsilon_caps": {"hospital-a": 6.0, "hospital-b": 6.0, "hospital-c": 6.0},
        "min_sites": 2,
        "code_hash": CODE_HASH,
    }
    document.update(overrides)
    return document


def synthetic_columns(seed: int, rows: int) -> dict[str, npt.NDArray[np.float64]]:
    rng = np.random.default_rng(seed)
    time = rng.exponential(1500.0, rows)
    return {
        "age": rng.normal(55.0, 12.0, rows).round(),
        "tsize": rng.gamma(3.0, 10.0, rows).round(),
        "grade": rng.choice([1.0, 2.0, 3.0], rows, p=[0.2, 0.5, 0.3]),
        "hormone": rng.choice([0.0, 1.0], rows, p=[0.6, 0.4]),
        "time": np.minimum(time, 2600.0).round(),
        "event": (rng.random(rows) < 0.6).astype(np.float64),
    }


@pytest.fixture
def study() -> AnalysisStudy:
    return AnalysisStudy.parse(study_document())


@pytest.fixture
def hospitals() -> dict[str, dict[str, npt.NDArray[np.float64]]]:
    return {
        "hospital-a": synthetic_columns(1, 260),
        "hospital-b": synthetic_columns(2, 220),
        "hospital-c": synthetic_columns(3, 206),
    }
