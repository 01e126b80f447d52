from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.analytics.conftest import study_document, synthetic_columns
from veracity.analysis_cli import load_analysis, plot_answer, summarise
from veracity.analytics.calibration import calibrate_noise_multiplier
from veracity.analytics.combine import combine
from veracity.analytics.mechanism import add_noise, exact_release
from veracity.contracts.analysis import AnalysisStudy
from veracity.errors import InputError


def _answers(study: AnalysisStudy) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    sites = {"hospital-a": synthetic_columns(1, 200), "hospital-b": synthetic_columns(2, 200)}
    out = []
    for query in study.queries:
        z = calibrate_noise_multiplier(query.epsilon, study.delta)
        noisy = {
            site: add_noise(
                exact_release(study, query, cols), noise_multiplier=z,
                unit_noise=rng.standard_normal,
            )
            for site, cols in sites.items()
        }  # fmt: skip
        combined = combine(study, query, {s: (n.values, n.stds) for s, n in noisy.items()})
        receipts = [{"receipt": {"site": s, "epsilon": 0.5, "repeated": False}} for s in sites]
        out.append(
            {
                "query_id": query.query_id,
                "answer": combined.to_contract(query, list(sites)).to_json(),
                "receipts": receipts,
            }
        )
    return out


@pytest.mark.integration  # matplotlib's font cache runs fc-list once
def test_the_results_plot_a_survival_curve_or_a_histogram(tmp_path: Path) -> None:
    study = AnalysisStudy.parse(study_document())
    queries = summarise(_answers(study))

    drawn = plot_answer(queries, tmp_path / "km.png")
    histogram = plot_answer([q for q in queries if q["kind"] != "kaplan_meier"], tmp_path / "h.png")

    assert drawn == "km-hormone"
    assert histogram == "hist-tsize"
    assert (tmp_path / "km.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert queries[0]["epsilon"] == {"hospital-a": 0.5, "hospital-b": 0.5}


def test_plotting_needs_a_curve_or_a_histogram(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--plot needs"):
        plot_answer([{"kind": "count"}], tmp_path / "x.png")


def test_a_study_file_is_read_as_an_analysis_study(tmp_path: Path) -> None:
    path = tmp_path / "study.json"
    path.write_text(json.dumps({"study": study_document()}), encoding="utf-8")

    assert load_analysis(path)["kind"] == "analysis"
    path.write_text(json.dumps({"study_id": "x"}), encoding="utf-8")
    with pytest.raises(InputError):
        load_analysis(path)
