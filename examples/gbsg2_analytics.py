"""Federated analytics on the German Breast Cancer Study Group 2 data, three hospitals.

The 686 patients that ``lifelines`` ships (``lifelines/datasets/gbsg2.csv``) are split at
random across three hospitals. Each hospital is a real site (its own keys, store and
privacy budget), registers its share, and approves one analysis study: patients by tumour
grade, mean age, a histogram of tumour size, and recurrence-free survival by hormonal
therapy. Each site answers every query with its own Gaussian noise, charged to its
dataset's budget; the answers are combined with their standard errors and compared with
the non-private pooled answers (and, for survival, with lifelines' Kaplan-Meier fit).

    python examples/gbsg2_analytics.py DIR [--format json]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from veracity.analytics.combine import combine, read_figures
from veracity.analytics.mechanism import exact_release
from veracity.client.analysis import AnalysisAgent, QueryReply, QueryRequest, approve_analysis
from veracity.client.datasets import register_dataset
from veracity.client.site import Site, init_site
from veracity.contracts.analysis import AnalysisStudy

HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")
COLUMNS = ("horTh", "age", "menostat", "tsize", "tgrade", "pnodes", "progrec", "estrec", "time")
LABEL = "cens"
_CODES = {
    "horTh": {"no": 0, "yes": 1},
    "menostat": {"Pre": 0, "Post": 1},
    "tgrade": {"I": 1, "II": 2, "III": 3},
}


def gbsg2_rows() -> list[dict[str, float]]:
    """The 686 patients, categorical columns coded as numbers."""
    text = resources.files("lifelines").joinpath("datasets/gbsg2.csv").read_text("utf-8")
    rows = []
    for raw in csv.DictReader(text.splitlines()):
        rows.append(
            {name: float(_CODES[name][value]) if name in _CODES else float(value)
             for name, value in raw.items()}
        )  # fmt: skip
    return rows


def study_document(code_hash: str) -> dict[str, Any]:
    """The analysis study the three hospitals approve."""
    return {
        "kind": "analysis",
        "study_id": "gbsg2-analytics",
        "title": "GBSG2: grade, age, tumour size, recurrence-free survival by hormonal therapy",
        "columns": {
            "tgrade": {"lower": 1.0, "upper": 3.0},
            "age": {"lower": 20.0, "upper": 85.0},
            "tsize": {"lower": 0.0, "upper": 120.0},
            "horTh": {"lower": 0.0, "upper": 1.0},
            "time": {"lower": 0.0, "upper": 2700.0},
            LABEL: {"lower": 0.0, "upper": 1.0},
        },
        "queries": [
            {"query_id": "patients-by-grade", "kind": "histogram", "column": "tgrade",
             "bins": [0.5, 1.5, 2.5, 3.5], "epsilon": 0.5},
            {"query_id": "mean-age", "kind": "mean", "column": "age", "epsilon": 0.5},
            {"query_id": "tumour-size", "kind": "histogram", "column": "tsize",
             "bins": [0.0, 10.0, 20.0, 30.0, 40.0, 60.0, 120.0], "epsilon": 0.5},
            {"query_id": "rfs-by-hormonal-therapy", "kind": "kaplan_meier", "column": "time",
             "event": LABEL, "bins": [0.0, 365.0, 730.0, 1095.0, 1460.0, 1825.0, 2190.0],
             "by": "horTh", "by_bins": [-0.5, 0.5, 1.5], "epsilon": 1.0},
        ],
        "delta": 1e-5,
        "epsilon_caps": dict.fromkeys(HOSPITALS, 5.0),
        "min_sites": 3,
        "code_hash": code_hash,
    }  # fmt: skip


def _write_csv(rows: list[dict[str, float]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*COLUMNS, LABEL])
        for row in rows:
            writer.writerow([f"{row[name]:g}" for name in (*COLUMNS, LABEL)])
    return path


def _lifelines_survival(
    rows: list[dict[str, float]], therapy: float, times: list[float]
) -> list[float]:
    from lifelines import KaplanMeierFitter

    chosen = [r for r in rows if r["horTh"] == therapy]
    fitter = KaplanMeierFitter().fit([r["time"] for r in chosen], [r[LABEL] for r in chosen])
    return [float(fitter.predict(t)) for t in times]


def run(directory: Path, *, seed: int = 0) -> dict[str, Any]:
    """Set the hospitals up in ``directory``, answer the study, compare; the summary."""
    rows = gbsg2_rows()
    order = np.random.default_rng(seed).permutation(len(rows))
    shares = np.array_split(order, len(HOSPITALS))
    study = AnalysisStudy.parse(study_document("0" * 64))
    answers: dict[str, dict[str, tuple[list[float], list[float]]]] = {
        q.query_id: {} for q in study.queries
    }
    epsilon: dict[str, float] = {}
    for name, share in zip(HOSPITALS, shares, strict=True):
        root = directory / name
        init_site(root, name)
        data = _write_csv([rows[i] for i in share], root / "data" / "gbsg2.csv")
        with Site.open(root) as site:
            register_dataset(site, dataset_id="gbsg2", path=data, label=LABEL)
            approve_analysis(site, study, dataset_id="gbsg2", epsilon_cap=5.0)
            agent = AnalysisAgent(site)
            for query in study.queries:
                request = QueryRequest(
                    study=study.to_document(), study_hash=study.study_hash,
                    code_hash=study.code_hash, query_id=query.query_id,
                )  # fmt: skip
                reply = agent.handle_query(request)
                if not isinstance(reply, QueryReply):
                    raise SystemExit(f"{name} refused {query.query_id}: {reply.reason}")
                answers[query.query_id][name] = (reply.answer.values, reply.answer.stds)
                epsilon[name] = reply.receipt.epsilon
    pooled = {name: np.array([r[name] for r in rows]) for name in (*COLUMNS, LABEL)}
    queries = []
    worst = 0.0
    for query in study.queries:
        combined = combine(study, query, answers[query.query_id])
        exact = exact_release(study, query, pooled).values
        truth = read_figures(study, query, exact, np.zeros(len(exact))).value
        errors = [abs(a - b) for a, b in zip(combined.value, truth, strict=True)]
        scale = max(1.0, *(abs(t) for t in truth)) if query.kind != "kaplan_meier" else 1.0
        worst = max(worst, max(errors) / scale)
        entry: dict[str, Any] = {
            "query_id": query.query_id,
            "labels": list(combined.labels),
            "private": [round(v, 4) for v in combined.value],
            "se": [round(v, 4) for v in combined.se],
            "non_private": [round(v, 4) for v in truth],
            "covered": sum(
                lo <= t <= hi
                for lo, t, hi in zip(combined.lower, truth, combined.upper, strict=True)
            ),
        }
        if query.kind == "kaplan_meier" and query.bins is not None:
            ends = [b - 1e-9 for b in query.bins[1:]]
            entry["lifelines_km"] = [
                round(v, 4) for t in (0.0, 1.0) for v in _lifelines_survival(rows, t, ends)
            ]
        queries.append(entry)
    return {
        "patients": len(rows),
        "hospitals": {name: len(share) for name, share in zip(HOSPITALS, shares, strict=True)},
        "queries": queries,
        "epsilon_spent": epsilon,
        "max_relative_error": round(worst, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args(argv)
    summary = run(args.directory)
    if args.format == "json":
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"{summary['patients']} patients across {summary['hospitals']}")
    for query in summary["queries"]:
        print(f"\n{query['query_id']} ({query['covered']}/{len(query['labels'])} in 95% interval)")
        for k, label in enumerate(query["labels"]):
            line = (
                f"  {label:40s} private {query['private'][k]:10.4g} +- "
                f"{1.96 * query['se'][k]:8.3g}   non-private {query['non_private'][k]:10.4g}"
            )
            if "lifelines_km" in query:
                line += f"   lifelines KM {query['lifelines_km'][k]:.4f}"
            print(line)
    print(f"\nepsilon spent per hospital: {summary['epsilon_spent']}")
    print(f"largest error (relative to the answer's scale): {summary['max_relative_error']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
