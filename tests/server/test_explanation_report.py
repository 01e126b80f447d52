"""The explanation report and its plot for signal and image models (and a table's check).

Known noisy sums from two sites are combined: the report's per-channel, per-time-step and
per-pixel figures must be the closed-form means and standard errors in the model's layout,
and the SVG must draw one bar per channel and one heat-map cell per figure, coloured by sign.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from veracity.contracts.explanation import ExplanationTerms, SiteExplanation, terms_hash
from veracity.errors import InputError
from veracity.server.explanation import explanation_report, report_hash, report_svg
from veracity.tasks.spec import ModelFamily, ModelSpec

TERMS = ExplanationTerms(
    model_hash="ab" * 32, study_hash="cd" * 32, clip_norm=1.0, epsilon=1.0, delta=1e-5
)


def _answer(values: np.ndarray, std: float, records: int) -> SiteExplanation:
    flat = [float(v) for v in values.reshape(-1)]
    return SiteExplanation(
        query_hash=terms_hash(TERMS), records=records, values=flat, stds=[std] * len(flat)
    )


def _cells(svg: bytes) -> list[tuple[str, str]]:
    """The (size, fill) of the heat map's cells (the square rects after the bars)."""
    text = svg.decode("utf-8")
    found: list[tuple[str, str]] = re.findall(
        r'<rect x="[\d.]+" y="[\d.]+" width="([\d.]+)" height="\1" fill="([^"]+)"', text
    )
    return found


def test_a_signal_report_has_per_channel_and_per_time_step_means_and_errors() -> None:
    spec = ModelSpec(ModelFamily.CNN1D, n_features=2 * 5, input_shape=(2, 5))
    a = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 0.0, -10.0, 0.0, 0.0]])
    b = np.array([[1.0, 0.0, 1.0, 0.0, 1.0], [0.0, 0.0, -20.0, 0.0, 0.0]])
    sums = {"site-b": _answer(b, 4.0, 30), "site-a": _answer(a, 3.0, 10)}

    report = explanation_report(spec=spec, features=["acc", "gyro"], terms=TERMS, sums=sums)

    mean = (a + b) / 40
    se = np.sqrt(3.0**2 + 4.0**2) / 40  # each figure's noise, over all records
    assert report["layout"] == "signals"
    assert report["records"] == 40
    assert report["sites"] == ["site-a", "site-b"]
    assert report["channels"]["labels"] == ["acc", "gyro"]
    np.testing.assert_allclose(report["channels"]["value"], mean.sum(axis=1))
    np.testing.assert_allclose(report["channels"]["se"], [se * np.sqrt(5)] * 2)
    heat = report["heatmap"]
    assert heat["rows"] == ["acc", "gyro"]
    assert heat["columns"] == ["t0", "t1", "t2", "t3", "t4"]
    np.testing.assert_allclose(heat["value"], mean)
    np.testing.assert_allclose(heat["se"], np.full((2, 5), se))
    assert report["top_features"] == ["gyro", "acc"]  # |-0.75| > |0.45|
    assert report_hash(report) == report_hash(dict(report))  # hashes the content

    svg = report_svg(report)
    text = svg.decode("utf-8")
    assert text.startswith("<svg")
    assert "channel x time step" in text
    assert ">acc</text>" in text
    assert ">gyro</text>" in text
    cells = _cells(svg)
    assert len(cells) == 2 * 5
    fills = [fill for _, fill in cells]
    assert fills[7] == "rgb(0,0,255)"  # gyro t2, the largest magnitude: full blue
    assert fills[4].startswith("rgb(255,")  # acc t4 positive: red side
    assert fills[5] == "rgb(255,255,255)"  # gyro t0 zero: white


def test_an_image_report_has_a_per_pixel_heat_map_with_the_channels_summed() -> None:
    spec = ModelSpec(ModelFamily.CNN2D, n_features=2 * 4 * 5, input_shape=(2, 4, 5))
    red = np.zeros((4, 5))
    red[1, 2] = 12.0
    green = np.zeros((4, 5))
    green[1, 2], green[0, 0] = 6.0, -3.0
    sums = {"site-a": _answer(np.stack([red, green]), 2.0, 6)}

    report = explanation_report(spec=spec, features=["r", "g"], terms=TERMS, sums=sums)

    assert report["layout"] == "images"
    heat = report["heatmap"]
    assert heat["rows"] == ["y0", "y1", "y2", "y3"]
    assert heat["columns"] == ["x0", "x1", "x2", "x3", "x4"]
    np.testing.assert_allclose(heat["value"], (red + green) / 6)
    np.testing.assert_allclose(heat["se"], np.full((4, 5), np.sqrt(2) * 2.0 / 6))
    np.testing.assert_allclose(report["channels"]["value"], [2.0, 0.5])
    np.testing.assert_allclose(report["channels"]["se"], [np.sqrt(20) * 2.0 / 6] * 2)
    assert report["top_features"] == ["r", "g"]

    text = report_svg(report).decode("utf-8")
    assert "Mean attribution per pixel" in text
    cells = _cells(report_svg(report))
    assert len(cells) == 4 * 5
    fills = [fill for _, fill in cells]
    assert fills[1 * 5 + 2] == "rgb(255,0,0)"  # the deciding pixel: full red
    assert fills[0] == "rgb(212,212,255)"  # -0.5 of a 3.0 scale: 255 * 5/6, light blue
    assert fills.count("rgb(255,255,255)") == 18


def test_figures_that_do_not_fit_the_layout_or_no_site_are_refused() -> None:
    spec = ModelSpec(ModelFamily.CNN1D, n_features=8, input_shape=(2, 4))
    with pytest.raises(InputError, match="sent 4 figures; the model has 8"):
        explanation_report(
            spec=spec, features=[], terms=TERMS, sums={"s": _answer(np.ones(4), 1.0, 3)}
        )
    with pytest.raises(InputError, match="at least one site"):
        explanation_report(spec=spec, features=[], terms=TERMS, sums={})


def test_unnamed_channels_get_indexed_labels() -> None:
    spec = ModelSpec(ModelFamily.CNN1D, n_features=12, input_shape=(3, 4))
    values = np.array([[0.0] * 4, [0.0, 5.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    report = explanation_report(
        spec=spec, features=["only-one"], terms=TERMS, sums={"s": _answer(values, 1.0, 5)}
    )
    assert report["channels"]["labels"] == ["c0", "c1", "c2"]
    assert report["top_features"] == ["c1", "c2", "c0"]
