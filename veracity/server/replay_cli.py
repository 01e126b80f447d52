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

__all__ = ["check_card", "register", "replay"]


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


def check_card(
    card: Annotated[
        Path,
        typer.Option(
            "--card",
            envvar="VERACITY_CARD",
            help="The model's card as JSON (the card object, or GET /models/{hash}'s answer).",
        ),
    ],
    bundle: Annotated[
        Path, typer.Option("--bundle", envvar="VERACITY_BUNDLE", help="The exported ledger bundle.")
    ],
    trust: Annotated[
        Path,
        typer.Option(
            "--trust", envvar="VERACITY_TRUST", help="The root public key you trust (root.pub)."
        ),
    ],
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot", envvar="VERACITY_PLOT", help="The report's plot (explanation.svg), to check."
        ),
    ] = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Check a model card's explanation report against the verified bundle's entries.

    The card must be the one model.released hashes, its report must hash to the report
    hash a model.explained of the same model and run records, and the plot (if given) must
    have the SHA-256 the card names. Exit 1 naming what does not hold.
    """
    import json

    from veracity.crypto.keys import load_verify_key
    from veracity.errors import InputError, NotFound
    from veracity.ledger.bundle_view import BundleLedger
    from veracity.ledger.verify import verify_bundle_file
    from veracity.server.explanation import verify_card_explanation

    try:
        document = json.loads(card.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"{card}: not a readable JSON card ({err})") from err
    if isinstance(document, dict) and isinstance(document.get("card"), dict):
        document = document["card"]  # GET /models/{hash}'s answer
    if not isinstance(document, dict) or "model_hash" not in document:
        raise InputError(f"{card}: not a model card (no model_hash)")
    verify_bundle_file(bundle, trusted_root=load_verify_key(trust))
    ledger = BundleLedger(bundle)
    model_hash = document["model_hash"]
    released = next(
        (
            e.payload
            for e in ledger.iter_entries(kind="model.released")
            if e.payload["model_hash"] == model_hash
        ),
        None,
    )
    if released is None:
        raise NotFound(f"the bundle records no model.released of {model_hash}")
    hashed = verify_card_explanation(
        document,
        released,
        (e.payload for e in ledger.iter_entries(kind="model.explained")),
        plot=None if plot is None else plot.read_bytes(),
    )
    result = {
        "model_hash": model_hash,
        "card_hash": released["card_hash"],
        "report_hash": hashed,
        "plot_checked": plot is not None,
    }
    if output_format is OutputFormat.JSON:
        emit_json(result)
        return
    emit_table("card explanation verified", ["field", "value"], [[k, v] for k, v in result.items()])


def register(app: typer.Typer) -> None:
    """Add ``replay`` and ``check-card`` to the ``ledger`` command group."""
    app.command("replay")(replay)
    app.command("check-card")(check_card)
