from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from tests.analytics.conftest import study_document, synthetic_columns
from veracity.analysis_cli import load_analysis, plot_answer, summarise
from veracity.analytics.calibration import calibrate_noise_multiplier
from veracity.analytics.combine import combine
from veracity.analytics.mechanism import add_noise, exact_release
from veracity.cli import main
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


class _Coordinator(http.server.BaseHTTPRequestHandler):
    """An admin API that starts run r1 and reports it stopped with no answers."""

    paths: ClassVar[list[str]] = []

    def _answer(self, document: dict[str, Any]) -> None:
        self.paths.append(self.path)
        body = json.dumps(document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self._answer({"run_id": "r1"})

    def do_GET(self) -> None:
        self._answer({"finished": {"status": "stopped", "reason": "test"}, "answers": []})

    def log_message(self, *args: Any) -> None:
        """Quiet."""


def test_a_bare_server_url_reaches_the_analyses_under_api_v1(tmp_path: Path) -> None:
    # The admin commands' rule (--server https://HOST:PORT means its /api/v1) holds here too.
    path = tmp_path / "study.json"
    path.write_text(json.dumps(study_document()), encoding="utf-8")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Coordinator)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        status = main(["analysis", "run", str(path), "--server", url, "--token", "t"])
    finally:
        server.shutdown()
        server.server_close()

    assert status == 1  # the run stopped without answers
    assert _Coordinator.paths[0] == "/api/v1/analyses"
    assert _Coordinator.paths[1].startswith("/api/v1/analyses/")


def test_an_analysis_run_without_a_token_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VERACITY_TOKEN", raising=False)
    path = tmp_path / "study.json"
    path.write_text(json.dumps(study_document()), encoding="utf-8")

    status = main(["analysis", "run", str(path), "--server", "https://127.0.0.1:9"])

    assert status == 2
    assert "no API token" in capsys.readouterr().err


def test_a_plot_the_study_cannot_draw_is_refused_before_the_run_spends_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    counts_only = [q for q in study_document()["queries"] if q["kind"] == "count"]
    path = tmp_path / "study.json"
    path.write_text(json.dumps(study_document(queries=counts_only)), encoding="utf-8")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Coordinator)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Coordinator.paths.clear()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        status = main(
            ["analysis", "run", str(path), "--server", url, "--token", "t",
             "--plot", str(tmp_path / "x.png")]
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()

    assert status == 1
    assert "--plot needs" in capsys.readouterr().err
    assert _Coordinator.paths == []  # no run started: the sites spent nothing


def test_a_run_that_answered_nothing_says_so_when_a_plot_was_asked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "study.json"
    path.write_text(json.dumps(study_document()), encoding="utf-8")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Coordinator)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        status = main(
            ["analysis", "run", str(path), "--server", url, "--token", "t",
             "--plot", str(tmp_path / "km.png"), "--format", "json"]
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()

    captured = capsys.readouterr()
    assert status == 1
    assert "not every query was answered: test" in captured.err
    assert json.loads(captured.out)["status"] == "stopped"  # what the run did, still shown
    assert not (tmp_path / "km.png").exists()
