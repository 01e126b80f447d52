"""``veracity ledger replay``: an auditor recomputes a run's aggregation from its archive.

It lives with the server because the aggregation it repeats is the strategy's; the
``ledger`` command group gets it through :func:`register`. Exit 0 when every round
replays, 1 naming the first round that differs (or a bundle that does not verify).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from veracity.output import FormatOption, OutputFormat, emit_json, emit_table

__all__ = ["register", "replay"]


def replay(
    bundle: Annotated[
        Path, typer.Option("--bundle", envvar="VERACITY_BUNDLE", help="The exported ledger bundle.")
    ],
    archive: Annotated[
        Path,
        typer.Option(
            "--archive",
            envvar="VERACITY_ARCHIVE",
            help="The run archive (veracity admin runs archive RUN).",
        ),
    ],
    trust: Annotated[
        Path,
        typer.Option(
            "--trust", envvar="VERACITY_TRUST", help="The root public key you trust (root.pub)."
        ),
    ],
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Verify the bundle, recompute every round's aggregate from the archive, check the hashes."""
    from veracity.crypto.keys import load_verify_key
    from veracity.server.replay import replay_aggregation

    report = replay_aggregation(bundle, archive, trusted_root=load_verify_key(trust))
    if output_format is OutputFormat.JSON:
        emit_json(report.to_json())
        return
    emit_table(
        "aggregation replayed",
        ["run", "rounds", "updates", "final model"],
        [[report.run_id, report.rounds, report.updates, report.final_model_hash]],
    )


def register(app: typer.Typer) -> None:
    """Add ``replay`` to the ``ledger`` command group."""
    app.command("replay")(replay)
