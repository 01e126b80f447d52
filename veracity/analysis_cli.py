"""``veracity analysis run``: answer an approved analysis study through the admin API.

Starts a run of the study (``POST /api/v1/analyses``), waits for it to end, and prints per
query the combined value, its standard error, the 95% interval and each site's epsilon
after answering (``--format json`` for one JSON document). ``--plot FILE.png`` draws the
first Kaplan-Meier curve (with its band) or, failing that, the first histogram
(matplotlib, imported only then).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from veracity.api_options import CaCertOption, ServerOption, TokenOption
from veracity.errors import InputError, VerificationError
from veracity.output import (
    FormatOption,
    OutputFormat,
    emit_json,
    emit_next,
    emit_table,
    stderr_console,
)

__all__ = ["PLOTTABLE", "app", "load_analysis", "summarise", "plot_answer"]

app = typer.Typer(
    help="Federated analytics under the sites' privacy budgets.", no_args_is_help=True
)


#: The kinds of answer ``--plot`` draws, in order of preference.
PLOTTABLE = ("kaplan_meier", "histogram")


def load_analysis(path: Path) -> dict[str, Any]:
    """Read an analysis study document (or a ``study.proposed`` payload holding one).

    Raises
    ------
    InputError
        If the file is unreadable, not JSON, or not an analysis study.
    """
    from veracity.contracts.analysis import AnalysisStudy

    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror or err}") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path} is not a JSON document: {err}") from err
    if isinstance(document, dict) and isinstance(document.get("study"), dict):
        document = document["study"]
    study = AnalysisStudy.parse(document, what="analysis study")
    return study.to_document()


def summarise(answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per answered query: figures, standard errors, intervals, epsilon per site."""
    out = []
    for payload in answers:
        answer = payload["answer"]
        out.append(
            {
                "query_id": payload["query_id"],
                "kind": answer["kind"],
                "labels": answer["labels"],
                "value": answer["value"],
                "se": answer["se"],
                "lower": answer["lower"],
                "upper": answer["upper"],
                "epsilon": {
                    s["receipt"]["site"]: s["receipt"]["epsilon"] for s in payload["receipts"]
                },
                "repeated": all(s["receipt"]["repeated"] for s in payload["receipts"]),
                "refused": payload.get("refused", []),
            }
        )
    return out


def plot_answer(queries: list[dict[str, Any]], path: Path) -> str:
    """Draw the first Kaplan-Meier curve, or else the first histogram, to ``path`` (PNG).

    Returns the query id drawn.

    Raises
    ------
    InputError
        If no query is a survival curve or a histogram.
    """
    chosen = next((q for kind in PLOTTABLE for q in queries if q["kind"] == kind), None)
    if chosen is None:
        raise InputError("--plot needs a kaplan_meier or histogram query in the results")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    if chosen["kind"] == "histogram":
        positions = range(len(chosen["value"]))
        errors = [1.959963984540054 * se for se in chosen["se"]]
        axes.bar(positions, chosen["value"], yerr=errors, capsize=4, color="#4878a8")
        axes.set_xticks(list(positions), chosen["labels"], rotation=30, ha="right")
        axes.set_ylabel("count (noisy, 95% interval)")
    else:
        strata: dict[str, list[int]] = {}
        for index, label in enumerate(chosen["labels"]):
            strata.setdefault(label.split("|")[0], []).append(index)
        for stratum, indices in strata.items():
            ends = [float(chosen["labels"][i].split("<")[-1].rstrip(")")) for i in indices]
            times = [0.0, *ends]
            values = [1.0, *(chosen["value"][i] for i in indices)]
            lower = [1.0, *(max(0.0, chosen["lower"][i]) for i in indices)]
            upper = [1.0, *(min(1.0, chosen["upper"][i]) for i in indices)]
            (line,) = axes.step(times, values, where="post", label=stratum)
            axes.fill_between(times, lower, upper, step="post", alpha=0.2, color=line.get_color())
        axes.set_ylim(0, 1.05)
        axes.set_xlabel("time")
        axes.set_ylabel("survival (95% band)")
        axes.legend()
    axes.set_title(f"{chosen['query_id']} (differentially private, combined)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return str(chosen["query_id"])


@app.command("run")
def run_command(
    study_file: Annotated[Path, typer.Argument(help="The analysis study (JSON).")],
    server: ServerOption,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot", envvar="VERACITY_PLOT", help="Write a survival curve or histogram (PNG)."
        ),
    ] = None,
    wait: Annotated[
        float,
        typer.Option("--wait", envvar="VERACITY_WAIT", help="Seconds to wait for the answers."),
    ] = 600.0,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Run an approved analysis study and print its combined, noisy answers.

    Exit status 1 if the run ends without answering every query, or (before any run
    starts) if ``--plot`` is asked of a study with no survival curve or histogram.
    """
    from veracity.api_client import ApiSession
    from veracity.core.canonical import canonical_hash
    from veracity.errors import TransportError

    document = load_analysis(study_file)
    if plot is not None and not any(q["kind"] in PLOTTABLE for q in document["queries"]):
        # Refused before the run: the sites would spend their budget for nothing shown.
        raise InputError("--plot needs a kaplan_meier or histogram query in the study")
    study_hash = canonical_hash(document)
    with ApiSession(server, token, ca_cert) as api:
        started = api.client.send(
            "POST", "/analyses", api.token, json={"study_hash": study_hash}
        ).json()
        run_id = str(started["run_id"])
        stderr_console().print(f"analysis run {run_id} started; waiting for the sites")
        deadline = time.monotonic() + wait
        path = f"/analyses/{study_hash}/runs/{run_id}"
        while True:
            results = api.client.send("GET", path, api.token).json()
            if results["finished"] is not None:
                break
            if time.monotonic() >= deadline:
                raise TransportError(f"analysis run {run_id} did not end within {wait:g} s")
            time.sleep(0.25)
    queries = summarise(results["answers"])
    finished = results["finished"]
    # A run that did not answer the plotted query still shows what it did answer, then
    # fails below with its reason.
    plotted = None
    if plot is not None and any(q["kind"] in PLOTTABLE for q in queries):
        plotted = plot_answer(queries, plot)
    if output_format is OutputFormat.JSON:
        emit_json(
            {
                "study_hash": study_hash,
                "run_id": run_id,
                "status": finished["status"],
                "reason": finished["reason"],
                "queries": queries,
                "plot": str(plot) if plotted is not None else None,
            }
        )
    else:
        rows = []
        for query in queries:
            epsilon = ", ".join(
                f"{site} {eps:.3f}" for site, eps in sorted(query["epsilon"].items())
            )
            for k, label in enumerate(query["labels"]):
                rows.append(
                    (
                        query["query_id"] if k == 0 else "",
                        label,
                        f"{query['value'][k]:.4g}",
                        f"{query['se'][k]:.3g}",
                        f"[{query['lower'][k]:.4g}, {query['upper'][k]:.4g}]",
                        epsilon if k == 0 else "",
                    )
                )
        emit_table(
            f"analysis {study_hash} run {run_id}: {finished['status']}",
            ["query", "figure", "value", "SE", "95% interval", "epsilon per site"],
            rows,
        )
    if finished["status"] != "completed" or len(queries) < len(document["queries"]):
        raise VerificationError(f"not every query was answered: {finished['reason']}")
    emit_next(
        "veracity admin ledger export --out ledger.jsonl   (the answers are analysis.answered)",
        "veracity ledger verify --bundle ledger.jsonl --trust root.pub   (for the auditor)",
    )
