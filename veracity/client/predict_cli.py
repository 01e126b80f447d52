"""``veracity predict``: encrypted predictions for a CSV of patients.

Heavy modules (TenSEAL, NumPy, httpx) are imported inside the command so that
``veracity --help`` stays fast.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from veracity.api_options import CaCertOption, ServerOption, TokenOption, check_credentials
from veracity.output import FormatOption, OutputFormat, emit_json, emit_table, stderr_console

if TYPE_CHECKING:
    from veracity.client.predict import Contributions, PatientTable, Prediction

__all__ = ["register", "predict_command"]

_OUTPUT_COLUMNS = ("logit", "probability", "decision")


def _columns(classes: tuple[str, ...]) -> tuple[str, ...]:
    """Score columns: logit, probability, decision for two classes; else one per class."""
    if len(classes) == 2:
        return _OUTPUT_COLUMNS
    return (*(f"probability_{name}" for name in classes), "decision")


def _rows(
    table: PatientTable, prediction: Prediction, classes: tuple[str, ...]
) -> list[dict[str, Any]]:
    if len(classes) != 2:
        return [
            {
                table.id_column: identifier,
                **{
                    f"probability_{name}": round(float(p), 6)
                    for name, p in zip(classes, probabilities, strict=True)
                },
                "decision": classes[int(decision)],
            }
            for identifier, probabilities, decision in zip(
                table.ids, prediction.probabilities, prediction.decisions, strict=True
            )
        ]
    return [
        {
            table.id_column: identifier,
            "logit": round(float(logit), 6),
            "probability": round(float(probability), 6),
            "decision": int(decision),
        }
        for identifier, logit, probability, decision in zip(
            table.ids,
            prediction.logits,
            prediction.probabilities,
            prediction.decisions,
            strict=True,
        )
    ]


def _contributions(
    contributions: Contributions, features: tuple[str, ...], classes: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Per patient, ``{feature: w*x}`` (two classes) or ``{class: {feature: w*x}}``."""

    def named(values: Any) -> dict[str, float]:
        return {f: round(float(v), 6) for f, v in zip(features, values, strict=True)}

    if len(classes) == 2:
        return [named(patient) for patient in contributions.values]
    return [
        {name: named(per_class) for name, per_class in zip(classes, patient, strict=True)}
        for patient in contributions.values
    ]


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """A CSV row: ``contributions`` spread into ``contribution_[class_]feature`` columns."""
    nested = row.get("contributions")
    if nested is None:
        return row
    flat = {k: v for k, v in row.items() if k != "contributions"}
    for name, value in nested.items():
        if isinstance(value, dict):
            flat.update({f"contribution_{name}_{f}": v for f, v in value.items()})
        else:
            flat[f"contribution_{name}"] = value
    return flat


def _csv_text(id_column: str, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> str:
    flat = [_flat(row) for row in rows]
    extra = [k for k in flat[0] if k != id_column and k not in columns] if flat else []
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[id_column, *columns, *extra], lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    return buffer.getvalue()


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half-written)."""
    directory = path.resolve().parent
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def predict_command(
    model: Annotated[
        str, typer.Option("--model", envvar="VERACITY_MODEL", help="Hash of the released model.")
    ],
    input_path: Annotated[
        Path,
        typer.Option(
            "--input",
            envvar="VERACITY_INPUT",
            help="CSV of patients with the model's features; for an image model a folder of "
            "PNG or DICOM images, or an .npz file with an array x.",
        ),
    ],
    server: ServerOption,
    token: TokenOption = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", envvar="VERACITY_OUT", help="Write scores to this CSV."),
    ] = None,
    ca_cert: CaCertOption = None,
    id_column: Annotated[
        str | None,
        typer.Option(
            "--id-column",
            envvar="VERACITY_ID_COLUMN",
            help="A CSV column copied to the output to identify patients (not a feature).",
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option("--timeout", envvar="VERACITY_TIMEOUT", help="Seconds per HTTP call."),
    ] = 300.0,
    contributions: Annotated[
        bool,
        typer.Option(
            "--contributions",
            envvar="VERACITY_CONTRIBUTIONS",
            help="Also ask for each feature's contribution w*x to each patient's logit "
            "(linear models only; charged as one prediction per feature and patient).",
        ),
    ] = False,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Score patients with a released model without revealing them.

    Checks the CSV against the model's features, standardises with the study's published
    scaling, encrypts locally under a fresh CKKS key that never leaves this process, sends
    only ciphertexts, and decrypts the scores. Writes probabilities and decisions
    (probability >= 0.5); for a model of more than two classes, one probability column per
    class (softmax, computed here) and the most probable class as the decision. With
    ``--contributions`` (linear models), each feature's contribution ``w*x`` to the logit
    as well (``contributions`` in JSON, ``contribution_*`` columns in CSV); one such answer
    reveals the model's weights, so each counts as d predictions against the budget.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from veracity.client.predict import (
        InferenceClient,
        contributions_encrypted,
        plan_batches,
        predict_encrypted,
        read_images,
        read_patients_csv,
        standardise,
        standardise_images,
    )

    token = check_credentials(token, ca_cert)
    with InferenceClient(server, token=token, ca_cert=ca_cert, timeout=timeout) as client:
        description = client.describe(model)
        if description.images:
            table = read_images(input_path, input_shape=description.input_shape)
            features = standardise_images(table.values, description, ids=table.ids)
        else:
            table = read_patients_csv(input_path, description.features, id_column=id_column)
            features = standardise(
                table.values,
                description.scaling,
                features=description.features,
                bound=description.parameter_set.input_bound,
                ids=table.ids,
            )
        batches = len(plan_batches(len(table.ids), description))
        progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=stderr_console(),
            disable=batches < 2,
        )
        with progress:
            task = progress.add_task("encrypted scoring", total=len(table.ids))
            prediction = predict_encrypted(
                client,
                description,
                features,
                on_batch=lambda done: progress.advance(task, done),
            )
            explained = None
            if contributions:
                task = progress.add_task("contributions", total=len(table.ids))
                explained = contributions_encrypted(
                    client,
                    description,
                    features,
                    on_batch=lambda done: progress.advance(task, done),
                )
    classes = description.classes
    columns = _columns(classes)
    rows = _rows(table, prediction, classes)
    if explained is not None:
        named = _contributions(explained, description.features, classes)
        rows = [{**row, "contributions": c} for row, c in zip(rows, named, strict=True)]
    positives = int(prediction.decisions.sum()) if len(classes) == 2 else None
    summary = {
        "model_hash": model,
        "patients": len(rows),
        **({"positive_decisions": positives} if positives is not None else {}),
        **(
            {}
            if positives is not None
            else {
                "decisions": {
                    name: int((prediction.decisions == index).sum())
                    for index, name in enumerate(classes)
                }
            }
        ),
        "requests": prediction.requests + (explained.requests if explained else 0),
        "bytes_sent": prediction.bytes_sent + (explained.bytes_sent if explained else 0),
        "out": str(out) if out is not None else None,
    }
    if out is not None:
        _write_atomically(out, _csv_text(table.id_column, columns, rows))
    if output_format is OutputFormat.JSON:
        emit_json(summary if out is not None else {**summary, "predictions": rows})
    elif out is not None:
        emit_table(None, ["", "value"], list(summary.items()))
    else:
        sys.stdout.write(_csv_text(table.id_column, columns, rows))
        outcome = f"{positives} positive" if positives is not None else f"{len(classes)} classes"
        stderr_console().print(
            f"{len(rows)} patients scored, {outcome}, {prediction.requests} requests"
        )


def register(app: typer.Typer) -> None:
    """Attach ``predict`` to the root ``veracity`` command."""
    app.command("predict")(predict_command)
