"""``veracity demo``: the whole study on loopback, then audited (see :mod:`veracity.demo`)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from veracity.output import FormatOption, OutputFormat, emit_json, emit_table, stderr_console

__all__ = ["demo"]


def demo(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            envvar="VERACITY_DATA_DIR",
            help="A fresh directory for the network (default: ./veracity-data/demo-TIMESTAMP).",
        ),
    ] = None,
    rounds: Annotated[
        int,
        typer.Option("--rounds", envvar="VERACITY_ROUNDS", help="Federated rounds.", min=1, max=50),
    ] = 3,
    keep_running: Annotated[
        bool,
        typer.Option(
            "--keep-running",
            envvar="VERACITY_KEEP_RUNNING",
            help="Keep the coordinator and its web console up after the audit (Ctrl-C stops).",
        ),
    ] = False,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Run a whole study on this machine: coordinator, three hospitals, a clinic, an auditor."""
    from veracity.demo import DemoOptions, run_demo

    if data_dir is None:
        data_dir = Path("veracity-data") / f"demo-{datetime.now():%Y%m%d-%H%M%S}"
    run_demo(
        DemoOptions(data_dir=data_dir, rounds=rounds, keep_running=keep_running),
        console=stderr_console(),
        on_summary=lambda summary: _emit(summary, output_format),
    )


def _emit(summary: dict[str, Any], output_format: OutputFormat) -> None:
    """Print the demo's summary (before ``--keep-running`` keeps the services up)."""
    if output_format is OutputFormat.JSON:
        emit_json(summary)
        return
    model, inference, ledger = summary["model"], summary["inference"], summary["ledger"]
    emit_table(
        "Sites",
        ["site", "patients", "epsilon spent (replace-one)", "add/remove figure", "epsilon cap"],
        [
            [s["name"], s["rows"], f"{s['epsilon']:.3f}" if s["epsilon"] is not None else "-",
             f"{s['epsilon_add_remove']:.3f}" if s["epsilon_add_remove"] is not None else "-",
             s["epsilon_cap"]]
            for s in summary["sites"]
        ],
    )  # fmt: skip
    emit_table(
        "Study, model and audit",
        ["item", "value"],
        [
            ["model", model["hash"]],
            ["accuracy (held-out patients, encrypted)", f"{model['accuracy']:.3f}"],
            ["AUC", f"{model['auc']:.3f}"],
            ["encrypted vs plaintext decisions agree", f"{inference['agreement']:.1%}"],
            ["max |encrypted - plaintext| probability", f"{inference['max_abs_error']:.2e}"],
            ["ledger entries, verified offline", f"{ledger['entries']} ({ledger['verified']})"],
            ["ledger bundle", ledger["bundle"]],
            ["data directory", summary["data_dir"]],
            ["web console", summary["console"]["url"]],
            ["console token (read-only, auditor)", summary["console"]["read_only_token"]],
            ["console CA certificate", summary["console"]["ca_cert"]],
            ["duration", f"{summary['duration_s']:.0f} s"],
        ],
    )
    emit_table(
        "The model's provenance (W3C PROV, derived from the verified ledger)",
        ["element", "count"],
        sorted(summary["provenance"].items()),
    )
