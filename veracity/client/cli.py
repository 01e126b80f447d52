"""``veracity site``: set up a site, register datasets, decide on studies, read the outbox.

Every option can also be set as ``VERACITY_<NAME>``; ``--format json`` prints one JSON
document on stdout. ``veracity site start`` (the Flower SuperNode) is attached by the
Flower adapter's own module.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from veracity.errors import ConfigError
from veracity.output import FormatOption, OutputFormat, emit_json, emit_table, stderr_console

__all__ = ["site_app"]

site_app = typer.Typer(
    name="site",
    help="The site agent: keys, datasets, study approvals, privacy budget, outbox.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="VERACITY_DATA_DIR",
        help="The site directory (default: ./veracity-site).",
    ),
]


#: A site's default directory; the coordinator's is ``./veracity-coordinator``.
DEFAULT_SITE_DIR = Path("veracity-site")


def _root(data_dir: Path | None) -> Path:
    return DEFAULT_SITE_DIR if data_dir is None else data_dir


def _split(values: list[str] | None) -> list[str] | None:
    """Features given as repeated options and/or comma-separated lists."""
    if not values:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _declared(
    kind: str,
    rate: float | None,
    timestamp: str,
    time_unit: str,
    image_size: str | None,
    image_channels: int,
    labels_file: str,
) -> Any:
    """The declaration of a signals or images dataset from the options (``None``: a table).

    Raises
    ------
    ConfigError
        If the kind is unknown or a required option is missing or malformed.
    """
    from veracity.client.datasets import ImagesDeclared, SignalsDeclared

    if kind == "table":
        return None
    if kind == "signals":
        if rate is None:
            raise ConfigError("signals need --rate (the sampling rate in Hz)")
        return SignalsDeclared(rate=rate, timestamp=timestamp, time_unit=time_unit)
    if kind == "images":
        parts = (image_size or "").lower().split("x")
        if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
            raise ConfigError("images need --image-size HEIGHTxWIDTH, e.g. 8x8")
        height, width = (int(part) for part in parts)
        return ImagesDeclared(
            height=height, width=width, channels=image_channels, labels_file=labels_file
        )
    raise ConfigError(f"--kind is table, signals or images, not {kind!r}")


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


@site_app.command("init")
def init_command(
    name: Annotated[
        str, typer.Option("--name", envvar="VERACITY_NAME", help="The site's enrolled name.")
    ],
    data_dir: DataDirOption = None,
    torch_threads: Annotated[
        int,
        typer.Option(
            "--torch-threads", envvar="VERACITY_TORCH_THREADS", help="Threads torch trains with."
        ),
    ] = 1,
    secure_mode: Annotated[
        bool,
        typer.Option(
            "--secure-mode/--no-secure-mode",
            envvar="VERACITY_SECURE_MODE",
            help="Refuse injected seeds (DP noise is ChaCha20 keyed from the OS either way).",
        ),
    ] = False,
    default_epsilon_budget: Annotated[
        float,
        typer.Option(
            "--default-epsilon-budget",
            envvar="VERACITY_DEFAULT_EPSILON_BUDGET",
            help="Budget of datasets registered without --epsilon-budget.",
        ),
    ] = 10.0,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Create a site: Ed25519 key, Flower SuperNode key, store and site.json."""
    from veracity.client.site import SitePaths, init_site
    from veracity.crypto.keys import load_verify_key

    root = _root(data_dir)
    config = init_site(
        root,
        name,
        torch_threads=torch_threads,
        secure_mode=secure_mode,
        default_epsilon_budget=default_epsilon_budget,
        prompt_passphrase=True,
    )
    paths = SitePaths(root, name)
    shown = {
        "site": name,
        "data_dir": str(root.resolve()),
        "signing_key": str(paths.signing_key.resolve()),
        "public_key": str(paths.public_key.resolve()),
        "key_id": load_verify_key(paths.public_key).key_id,
        "supernode_key": str(paths.supernode_key.resolve()),
        "supernode_public_key": str(paths.supernode_public_key.resolve()),
        "database": str(paths.database.resolve()),
        "config": config.model_dump(mode="json"),
    }
    if output_format is OutputFormat.JSON:
        emit_json(shown)
        return
    emit_table(
        f"Site {name}",
        ["item", "value"],
        [(key, value) for key, value in shown.items() if key != "config"],
    )
    stderr_console().print(
        "Give the coordinator public_key and supernode_public_key to enrol this site."
    )


@site_app.command("register-dataset")
def register_dataset_command(
    dataset_id: Annotated[
        str, typer.Option("--id", envvar="VERACITY_ID", help="The dataset's id.")
    ],
    path: Annotated[
        Path,
        typer.Option(
            "--path",
            envvar="VERACITY_PATH",
            help="A table (.csv, .parquet), signals (.csv, a folder of .csv, .npz) or images "
            "(a folder with labels.csv, .npz).",
        ),
    ],
    label: Annotated[
        str, typer.Option("--label", envvar="VERACITY_LABEL", help="The label column.")
    ],
    features: Annotated[
        list[str] | None,
        typer.Option(
            "--features",
            "--channels",
            envvar="VERACITY_FEATURES",
            help="Feature columns, or channels of signals (repeat, or comma-separated; "
            "default: all but the label and timestamp).",
        ),
    ] = None,
    kind: Annotated[
        str,
        typer.Option("--kind", envvar="VERACITY_KIND", help="table, signals or images."),
    ] = "table",
    rate: Annotated[
        float | None,
        typer.Option(
            "--rate", envvar="VERACITY_RATE", help="Signals: the sampling rate in Hz (required)."
        ),
    ] = None,
    timestamp: Annotated[
        str,
        typer.Option(
            "--timestamp", envvar="VERACITY_TIMESTAMP", help="Signals: the timestamp column."
        ),
    ] = "timestamp",
    time_unit: Annotated[
        str,
        typer.Option(
            "--time-unit",
            envvar="VERACITY_TIME_UNIT",
            help="Signals: the unit of numeric timestamps (s or ms).",
        ),
    ] = "s",
    image_size: Annotated[
        str | None,
        typer.Option(
            "--image-size",
            envvar="VERACITY_IMAGE_SIZE",
            help="Images: HEIGHTxWIDTH every image must have (required).",
        ),
    ] = None,
    image_channels: Annotated[
        int,
        typer.Option(
            "--image-channels",
            envvar="VERACITY_IMAGE_CHANNELS",
            help="Images: 1 (grey) or 3 (RGB).",
        ),
    ] = 1,
    labels_file: Annotated[
        str,
        typer.Option(
            "--labels-file",
            envvar="VERACITY_LABELS_FILE",
            help="Images: the labels CSV inside the folder (columns file and the label).",
        ),
    ] = "labels.csv",
    epsilon_budget: Annotated[
        float | None,
        typer.Option(
            "--epsilon-budget",
            envvar="VERACITY_EPSILON_BUDGET",
            help="The dataset's privacy budget (default: the site's).",
        ),
    ] = None,
    delta: Annotated[
        float | None,
        typer.Option("--delta", envvar="VERACITY_DELTA", help="The budget's delta."),
    ] = None,
    min_rows: Annotated[
        int | None,
        typer.Option("--min-rows", envvar="VERACITY_MIN_ROWS", help="Fewest rows accepted."),
    ] = None,
    classes: Annotated[
        list[str] | None,
        typer.Option(
            "--classes",
            envvar="VERACITY_CLASSES",
            help="The label's values in class order, comma-separated (default: 0,1).",
        ),
    ] = None,
    data_dir: DataDirOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Validate a data file and register it (the file stays where it is).

    A file that shares records with registered datasets (a shuffled copy, an extract, a
    refresh of the same cohort) draws from their budget: the output says which.
    """
    from veracity.client.budget import replace_one_epsilon
    from veracity.client.datasets import register_dataset
    from veracity.client.site import Site
    from veracity.tasks.study import BINARY_CLASSES

    declared = _declared(kind, rate, timestamp, time_unit, image_size, image_channels, labels_file)
    with Site.open(_root(data_dir)) as site:
        dataset, statement = register_dataset(
            site,
            dataset_id=dataset_id,
            path=path,
            label=label,
            features=_split(features),
            epsilon_budget=epsilon_budget,
            delta=delta,
            min_rows=min_rows,
            classes=_split(classes) or BINARY_CLASSES,
            declared=declared,
        )
        pool = site.store.pool(dataset.dataset_id)
        shared = site.store.shared_records(dataset.dataset_id)
        spent = replace_one_epsilon(site.store.dataset_history(dataset.dataset_id), pool.delta)
    budget_pool = {
        "pool_id": pool.pool_id,
        "datasets": list(pool.datasets),
        "shares_records_with": shared,
        "epsilon_budget": pool.epsilon_budget,
        "delta": pool.delta,
        "epsilon_spent": spent,
    }
    shown = {
        "dataset_id": dataset.dataset_id,
        "path": str(dataset.path),
        "rows": dataset.rows,
        "positives": dataset.positives,
        "kind": dataset.kind,
        "label": dataset.label,
        "classes": list(dataset.classes),
        "features": list(dataset.features),
        "commitment": dataset.commitment,
        "schema_hash": dataset.schema_hash,
        "epsilon_budget": dataset.epsilon_budget,
        "delta": dataset.delta,
        "budget_pool": budget_pool,
        "statement": statement.to_dict(),
    }
    if output_format is OutputFormat.JSON:
        emit_json(shown)
        return
    emit_table(
        f"Dataset {dataset.dataset_id} registered",
        ["item", "value"],
        [
            ("rows", dataset.rows),
            ("positives", dataset.positives),
            ("label", dataset.label),
            ("features", len(dataset.features)),
            ("commitment", dataset.commitment),
            ("schema hash", dataset.schema_hash),
            ("epsilon budget", f"{dataset.epsilon_budget:g} (delta {dataset.delta:g})"),
            ("budget pool", pool.pool_id),
        ],
    )
    if shared:
        stderr_console().print(
            f"Dataset {dataset.dataset_id} shares records with "
            + ", ".join(f"{name} ({count} records)" for name, count in shared.items())
            + f": it draws from their budget (pool {pool.pool_id}, epsilon spent "
            f"{spent:.4f} of {pool.epsilon_budget:g}), not a fresh one."
        )


@site_app.command("datasets")
def datasets_command(
    data_dir: DataDirOption = None, output_format: FormatOption = OutputFormat.TEXT
) -> None:
    """List datasets with the epsilon their budget pool has spent (replace-one, at its delta)."""
    from veracity.client.budget import replace_one_epsilon, total_steps
    from veracity.client.site import Site

    rows: list[dict[str, Any]] = []
    with Site.open(_root(data_dir)) as site:
        for dataset in site.store.list_datasets():
            history = site.store.dataset_history(dataset.dataset_id)
            pool = site.store.pool(dataset.dataset_id)
            rows.append(
                {
                    "dataset_id": dataset.dataset_id,
                    "rows": dataset.rows,
                    "budget_pool": pool.pool_id,
                    "epsilon_spent": replace_one_epsilon(history, pool.delta),
                    "epsilon_budget": pool.epsilon_budget,
                    "delta": pool.delta,
                    "steps": total_steps(history),
                    "path": str(dataset.path),
                }
            )
    if output_format is OutputFormat.JSON:
        emit_json({"datasets": rows})
        return
    emit_table(
        "Datasets",
        ["id", "rows", "epsilon spent", "budget", "steps", "path"],
        [
            (
                r["dataset_id"],
                r["rows"],
                _fmt(r["epsilon_spent"]),
                f"{r['epsilon_budget']:g}",
                r["steps"],
                r["path"],
            )
            for r in rows
        ],
    )


def _emit_decision(shown: dict[str, Any], output_format: OutputFormat) -> None:
    """Print a decision and its signed statement (JSON), or a table naming the statement."""
    if output_format is OutputFormat.JSON:
        emit_json(shown)
        return
    rows = [(k, v) for k, v in shown.items() if k != "statement"]
    emit_table(None, ["item", "value"], [*rows, ("statement", shown["statement"]["statement_id"])])


def _print_review(review: Any) -> None:
    summary = review.to_dict()
    console = stderr_console()
    console.print(f"Study {summary['study_id']}  ({summary['study_hash']})")
    if summary["title"]:
        console.print(f"  {summary['title']}")
    model = summary["model"]
    console.print(
        f"  model {model['family']} on {len(summary['features'])} features, "
        f"label {summary['label']!r}; code hash {summary['code_hash']}"
    )
    scaling = ", ".join(
        f"{name} (x - {mean:g}) / {std:g}"
        for name, (mean, std) in zip(summary["features"], summary["scaling"], strict=True)
    )
    console.print(f"  scaling (public, applied to your data before the model): {scaling}")
    console.print(
        f"  global weights accepted up to L2 norm {summary['max_weight_norm']:g} "
        "(larger weights are refused with a signed statement)"
    )
    dp, training = summary["dp"], summary["training"]
    console.print(
        f"  DP-SGD: noise multiplier {dp['noise_multiplier']:g}, clipping norm "
        f"{dp['max_grad_norm']:g}, delta {dp['delta']:g}, accountant {dp['accountant']}, "
        f"secure mode {'on' if dp['secure_mode'] else 'off'}"
    )
    console.print(
        f"  training: {summary['runs']} run(s) of {summary['rounds']} rounds x "
        f"{training['local_epochs']} local epoch(s), batch {training['batch_size']}, "
        f"learning rate {training['learning_rate']:g} (this site trains no other round)"
    )
    console.print(
        f"  epsilon cap: study asks {summary['study_epsilon_cap']}, you allow "
        f"{summary['approved_epsilon_cap']}, in force {summary['epsilon_cap_in_force']}"
    )
    if summary["dataset_id"] is not None:
        console.print(
            f"  dataset {summary['dataset_id']} ({summary['dataset_rows']} rows): sample rate "
            f"{_fmt(summary['sample_rate'])}, {summary['steps_per_round']} steps per round, "
            f"{summary['total_steps']} in all runs"
        )
        console.print(
            f"  the whole study would spend epsilon {_fmt(summary['projected_study_epsilon'])}; "
            f"the dataset would go from {_fmt(summary['dataset_epsilon_now'])} to "
            f"{_fmt(summary['projected_dataset_epsilon'])} of its budget "
            f"{summary['dataset_epsilon_budget']:g}"
        )
    for warning in summary["warnings"]:
        console.print(f"  warning: {warning}")
    for problem in summary["problems"]:
        console.print(f"  problem: {problem}")


def _print_analysis_review(review: dict[str, Any]) -> None:
    console = stderr_console()
    console.print(f"Analysis study {review['study_id']}  ({review['study_hash']})")
    threshold = review["min_cell_count"]
    cells = (
        f"cells under {threshold:g} suppressed after the noise (your min_cell_count)"
        if threshold > 0
        else "no small-cell suppression (min_cell_count in site.json)"
    )
    console.print(f"  code hash {review['code_hash']}; delta {review['delta']:g}; {cells}")
    console.print("  declared columns (every value clipped to its bounds):")
    for name, bounds in review["columns"].items():
        console.print(f"    {name}: [{bounds['lower']:g}, {bounds['upper']:g}]")
    console.print("  queries (each answered with its own Gaussian noise, charged to the dataset):")
    for query in review["queries"]:
        terms = [query["kind"]]
        for key in ("column", "by", "event"):
            if query.get(key) is not None:
                terms.append(f"{key} {query[key]}")
        for key in ("bins", "by_bins", "probabilities"):
            if query.get(key) is not None:
                terms.append(f"{key} {', '.join(f'{v:g}' for v in query[key])}")
        cohort = " and ".join(
            f"{c['column']} {c['op']} {c['value']:g}" for c in query.get("cohort") or []
        )
        terms.append(f"cohort {cohort}" if cohort else "every row")
        console.print(f"    {query['query_id']}: {'; '.join(terms)}; epsilon {query['epsilon']:g}")
    console.print(
        f"  epsilon cap: study asks {review['study_epsilon_cap']}, you allow "
        f"{review['approved_epsilon_cap']}, in force {review['epsilon_cap_in_force']}"
    )
    console.print(
        f"  the whole study would spend epsilon {_fmt(review['projected_study_epsilon'])}"
    )
    if review["dataset_id"] is not None and "dataset_epsilon_now" in review:
        console.print(
            f"  dataset {review['dataset_id']} would go from "
            f"{_fmt(review['dataset_epsilon_now'])} to "
            f"{_fmt(review['projected_dataset_epsilon'])} of its budget "
            f"{review['dataset_epsilon_budget']:g}"
        )
    for warning in review["warnings"]:
        console.print(f"  warning: {warning}")
    for problem in review["problems"]:
        console.print(f"  problem: {problem}")


@site_app.command("review")
def review_command(
    study_file: Annotated[
        Path, typer.Argument(help="The study JSON as the coordinator publishes it.")
    ],
    dataset: Annotated[
        str | None,
        typer.Option("--dataset", envvar="VERACITY_DATASET", help="Dataset it would train on."),
    ] = None,
    epsilon_cap: Annotated[
        float | None,
        typer.Option("--epsilon-cap", envvar="VERACITY_EPSILON_CAP", help="Cap you would allow."),
    ] = None,
    data_dir: DataDirOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Show what a study asks of this site and what it would spend, without deciding.

    For an analysis study: its declared columns and bounds, and each query with its
    columns, bins, epsilon share and cohort filter.
    """
    from veracity.client.analysis import review_analysis
    from veracity.client.approvals import load_any_study_file, review_study
    from veracity.client.site import Site
    from veracity.contracts.analysis import AnalysisStudy

    study = load_any_study_file(study_file)
    with Site.open(_root(data_dir)) as site:
        if isinstance(study, AnalysisStudy):
            analysis = review_analysis(site, study, dataset_id=dataset, epsilon_cap=epsilon_cap)
            if output_format is OutputFormat.JSON:
                emit_json(analysis)
            else:
                _print_analysis_review(analysis)
            return
        review = review_study(site, study, dataset_id=dataset, epsilon_cap=epsilon_cap)
    if output_format is OutputFormat.JSON:
        emit_json(review.to_dict())
    else:
        _print_review(review)


@site_app.command("approve")
def approve_command(
    study_file: Annotated[
        Path, typer.Argument(help="The study JSON as the coordinator publishes it.")
    ],
    dataset: Annotated[
        str, typer.Option("--dataset", envvar="VERACITY_DATASET", help="Dataset to train on.")
    ],
    epsilon_cap: Annotated[
        float,
        typer.Option(
            "--epsilon-cap",
            envvar="VERACITY_EPSILON_CAP",
            help="Most epsilon this study may spend.",
        ),
    ],
    yes: Annotated[
        bool, typer.Option("--yes", "-y", envvar="VERACITY_YES", help="Approve without asking.")
    ] = False,
    data_dir: DataDirOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Approve a study on a dataset with an epsilon cap, signed by the site key.

    The same for a training and an analysis study: the signed ``study.approved`` names the
    study's hash (its document, code hash included), the dataset and the cap.
    """
    from veracity.client.analysis import approve_analysis, review_analysis
    from veracity.client.approvals import approve_study, load_any_study_file, review_study
    from veracity.client.site import Site
    from veracity.contracts.analysis import AnalysisStudy

    study = load_any_study_file(study_file)
    with Site.open(_root(data_dir)) as site:
        if isinstance(study, AnalysisStudy):
            analysis = review_analysis(site, study, dataset_id=dataset, epsilon_cap=epsilon_cap)
            _print_analysis_review(analysis)
            problems = bool(analysis["problems"])
            cap_in_force = analysis["epsilon_cap_in_force"]
        else:
            review = review_study(site, study, dataset_id=dataset, epsilon_cap=epsilon_cap)
            _print_review(review)
            problems = bool(review.problems)
            cap_in_force = review.cap_in_force
        if not problems and not yes:
            if not sys.stdin.isatty():
                raise ConfigError("confirm with --yes to approve without a terminal")
            if not typer.confirm("Approve this study?", default=False, err=True):
                stderr_console().print("Not approved.")
                raise typer.Exit(1)
        if isinstance(study, AnalysisStudy):
            decision, statement = approve_analysis(
                site, study, dataset_id=dataset, epsilon_cap=epsilon_cap
            )
        else:
            decision, statement, _ = approve_study(
                site, study, dataset_id=dataset, epsilon_cap=epsilon_cap
            )
    shown = {
        "decision": decision.decision,
        "study_id": decision.study_id,
        "study_hash": decision.study_hash,
        "dataset_id": decision.dataset_id,
        "epsilon_cap": decision.epsilon_cap,
        "epsilon_cap_in_force": cap_in_force,
        "statement": statement.to_dict(),
    }
    _emit_decision(shown, output_format)


@site_app.command("refuse")
def refuse_command(
    study_file: Annotated[
        Path, typer.Argument(help="The study JSON as the coordinator publishes it.")
    ],
    reason: Annotated[
        str, typer.Option("--reason", envvar="VERACITY_REASON", help="Why, for the ledger.")
    ],
    data_dir: DataDirOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Refuse a training or analysis study (or withdraw an approval), signed by the site key."""
    from veracity.client.approvals import load_any_study_file, refuse_study
    from veracity.client.site import Site

    study = load_any_study_file(study_file)
    with Site.open(_root(data_dir)) as site:
        decision, statement = refuse_study(site, study, reason=reason)
    shown = {
        "decision": decision.decision,
        "study_id": decision.study_id,
        "study_hash": decision.study_hash,
        "reason": decision.reason,
        "statement": statement.to_dict(),
    }
    _emit_decision(shown, output_format)


@site_app.command("studies")
def studies_command(
    data_dir: DataDirOption = None, output_format: FormatOption = OutputFormat.TEXT
) -> None:
    """List the operator's decisions about studies, oldest first."""
    from veracity.client.site import Site

    with Site.open(_root(data_dir)) as site:
        decisions = site.store.list_decisions()
    rows = [
        {
            "study_id": d.study_id,
            "study_hash": d.study_hash,
            "decision": d.decision,
            "dataset_id": d.dataset_id,
            "epsilon_cap": d.epsilon_cap,
            "reason": d.reason,
            "decided_at": d.decided_at,
        }
        for d in decisions
    ]
    if output_format is OutputFormat.JSON:
        emit_json({"decisions": rows})
        return
    emit_table(
        "Decisions",
        ["study", "hash", "decision", "dataset", "cap", "when"],
        [
            (
                r["study_id"],
                str(r["study_hash"])[:16],
                r["decision"],
                r["dataset_id"] or "-",
                r["epsilon_cap"] if r["epsilon_cap"] is not None else "-",
                r["decided_at"],
            )
            for r in rows
        ],
    )


@site_app.command("outbox")
def outbox_command(
    include_delivered: Annotated[
        bool,
        typer.Option("--all", envvar="VERACITY_ALL", help="Include statements already delivered."),
    ] = False,
    data_dir: DataDirOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """List the signed statements waiting for the coordinator's ledger."""
    from veracity.client.site import Site

    with Site.open(_root(data_dir)) as site:
        entries = site.store.outbox(include_delivered=include_delivered)
    documents = [
        {
            **entry.statement.to_dict(),
            "created_at": entry.created_at,
            "delivered_at": entry.delivered_at,
        }
        for entry in entries
    ]
    if output_format is OutputFormat.JSON:
        emit_json({"statements": documents})
        return
    emit_table(
        "Outbox",
        ["statement", "kind", "created", "delivered"],
        [
            (d["statement_id"], d["kind"], d["created_at"], d["delivered_at"] or "-")
            for d in documents
        ],
    )


ServerOption = Annotated[
    str,
    typer.Option(
        "--server",
        envvar="VERACITY_SERVER",
        help="The coordinator's admin API, https://HOST:PORT (or its /api/v1).",
    ),
]
TokenOption = Annotated[
    str,
    typer.Option(
        "--token",
        envvar="VERACITY_TOKEN",
        help="This site's token (veracity admin tokens create --role site --site NAME).",
    ),
]
CaCertOption = Annotated[
    Path | None,
    typer.Option(
        "--ca-cert",
        envvar="VERACITY_CA_CERT",
        help="The coordinator's CA certificate (its DIR/tls/ca.crt).",
    ),
]


@site_app.command("sync")
def sync_command(
    server: ServerOption,
    token: TokenOption,
    ca_cert: CaCertOption = None,
    data_dir: DataDirOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Deliver the outbox now: every pending signed statement to the coordinator's ledger.

    Exit status 1 when the coordinator refused any statement (they stay pending).
    """
    from veracity.client.outbox_sync import deliver_outbox
    from veracity.client.site import Site
    from veracity.errors import InputError

    with Site.open(_root(data_dir)) as site:
        report = deliver_outbox(site.store, server=server, token=token, ca_cert=ca_cert)
    if output_format is OutputFormat.JSON:
        emit_json(report.to_json())
    else:
        console = stderr_console()
        for sid in report.delivered:
            console.print(f"delivered {sid}")
        for sid in report.already_recorded:
            console.print(f"already in the ledger {sid}")
        for sid, why in report.refused.items():
            console.print(f"refused {sid}: {why}")
        console.print(f"{report.pending} statement(s) still pending")
    if report.refused:
        raise InputError(f"the coordinator refused {len(report.refused)} statement(s)")


@site_app.command("outbox-ack")
def outbox_ack_command(
    statement_ids: Annotated[list[str], typer.Argument(help="Statement ids the ledger recorded.")],
    data_dir: DataDirOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Mark statements as recorded by the coordinator's ledger."""
    from veracity.client.site import Site

    with Site.open(_root(data_dir)) as site:
        changed = site.store.mark_delivered(statement_ids, now=site.now())
    if output_format is OutputFormat.JSON:
        emit_json({"delivered": changed})
    else:
        stderr_console().print(f"{changed} statement(s) marked delivered.")


@site_app.command("canary-audit")
def canary_audit_command(
    study_file: Annotated[Path, typer.Argument(help="The study whose DP-SGD noise to audit.")],
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            envvar="VERACITY_DATASET",
            help="Registered dataset whose row count (public) sets the sample rate.",
        ),
    ] = None,
    rows: Annotated[
        int | None,
        typer.Option("--rows", envvar="VERACITY_ROWS", help="Row count, instead of --dataset."),
    ] = None,
    false_alarm_rate: Annotated[
        float,
        typer.Option(
            "--false-alarm-rate",
            envvar="VERACITY_FALSE_ALARM_RATE",
            help="Probability of flagging correct noise.",
        ),
    ] = 1e-3,
    data_dir: DataDirOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Check that this site's DP noise is there at the accounted scale (exit 1 if not).

    Runs the study's own trainer, with this site's clipping method and noise source, for
    the study's rounds on synthetic rows as many as the dataset has; uses no registered
    data and spends no budget.
    """
    from veracity.client.approvals import load_study_file
    from veracity.client.canary import run_noise_audit, verify_noise_audit
    from veracity.client.site import Site
    from veracity.client.training import configure_threads
    from veracity.errors import InputError

    study = load_study_file(study_file)
    with Site.open(_root(data_dir)) as site:
        configure_threads(site.config.torch_threads)
        clipping = site.config.clipping
        registered = site.store.get_dataset(dataset) if dataset is not None else None
    if dataset is not None and rows is None:
        if registered is None:
            raise InputError(f"no dataset {dataset!r} is registered at this site")
        count = registered.rows
    elif dataset is None and rows is not None:
        count = rows
    else:
        raise InputError("give the dataset (--dataset) or its row count (--rows), not both")
    audit = run_noise_audit(study, rows=count, clipping=clipping, false_alarm_rate=false_alarm_rate)
    if output_format is OutputFormat.JSON:
        emit_json(audit.to_dict())
    else:
        emit_table(
            "Noise audit",
            ["item", "value"],
            [
                ("untouched weights measured", audit.coordinates),
                ("noise std, measured", f"{audit.measured_std:.5g}"),
                ("noise std, accounted", f"{audit.expected_std:.5g}"),
                ("variance ratio", f"{audit.variance_ratio:.3f}"),
                ("false-alarm rate", f"{audit.false_alarm_rate:g}"),
                ("flagged", "yes" if audit.flagged else "no"),
            ],
        )
    verify_noise_audit(audit)


@site_app.command("replay")
def replay_command(
    run: Annotated[
        str, typer.Option("--run", envvar="VERACITY_RUN", help="The run whose rounds to replay.")
    ],
    round_number: Annotated[
        int | None,
        typer.Option(
            "--round", envvar="VERACITY_ROUND", help="Replay only this round (default: all)."
        ),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            envvar="VERACITY_SERVER",
            help="The coordinator's admin API: fetch a global model this site no longer keeps.",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="VERACITY_TOKEN", help="This site's token (with --server)."),
    ] = None,
    ca_cert: CaCertOption = None,
    data_dir: DataDirOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Re-train this site's rounds of a run and check each update hash against its receipt.

    Each round starts from the global model the site kept and draws its samples and noise
    from the round's secret seed; the outcome is signed as replay.confirmed or
    replay.failed (naming the first round that differs) and queued in the outbox
    (veracity site sync delivers it). Spends no privacy budget. With --server and --token,
    a global model the site no longer keeps is fetched from the coordinator and must have
    the hash the site recorded. Exit 1 when a round differs, or when the data file no
    longer matches its commitment (nothing is signed).
    """
    from veracity.client.replay import coordinator_fetcher, replay_run
    from veracity.client.site import Site
    from veracity.errors import InputError, VerificationError

    if (server is None) != (token is None):
        raise InputError("--server and --token go together (to fetch missing global models)")
    fetch = None if server is None or token is None else coordinator_fetcher(server, token, ca_cert)
    with Site.open(_root(data_dir)) as site:
        outcome = replay_run(site, run, round=round_number, fetch=fetch)
    if output_format is OutputFormat.JSON:
        emit_json(outcome.to_json())
    else:
        emit_table(
            f"Replay of run {run}",
            ["round", "update hash (receipt)", "replayed", "replay s", "original s"],
            [
                (
                    item.round,
                    item.expected_update_hash[:16],
                    "same"
                    if item.replayed_update_hash == item.expected_update_hash
                    else (item.replayed_update_hash or "-")[:16],
                    f"{item.replay_seconds:.3f}",
                    f"{item.train_seconds:.3f}",
                )
                for item in outcome.rounds
            ],
        )
        stderr_console().print(
            f"{outcome.statement.kind} signed and queued in the outbox "
            f"({outcome.statement.statement_id})"
        )
    if not outcome.confirmed:
        raise VerificationError(
            f"replay failed at round {outcome.failed_round}: {outcome.statement.payload['reason']}"
        )


@site_app.command("enrolment-proof")
def enrolment_proof_command(
    log_id: Annotated[
        str,
        typer.Option(
            "--log-id",
            envvar="VERACITY_LOG_ID",
            help="The coordinator's log id (64 hex; the admin reads it from the ledger).",
        ),
    ],
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", envvar="VERACITY_DATA_DIR", help="The site's directory."),
    ] = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Print this site key's proof of possession, for the admin's `sites enrol --proof`.

    The site signs for this log from now on (kept in DIR/log_id): statements queued before
    are re-signed for it, and it refuses to sign for another log.
    """
    from veracity.client.site import Site
    from veracity.core.fields import is_hex64
    from veracity.errors import InputError

    if not is_hex64(log_id):
        raise InputError(f"--log-id must be 64 lowercase hex characters, not {log_id!r}")
    with Site.open(_root(data_dir)) as site:
        proof = site.enrolment_proof(log_id)
        name = site.name
    if output_format is OutputFormat.JSON:
        emit_json({"site": name, "log_id": log_id, "proof": proof})
    else:
        sys.stdout.write(proof + "\n")


@site_app.command("rotate-key")
def rotate_key_command(
    log_id: Annotated[
        str | None,
        typer.Option(
            "--log-id",
            envvar="VERACITY_LOG_ID",
            help="The coordinator's log id (64 hex; the admin reads it from the ledger).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", envvar="VERACITY_OUT", help="Write the hand-over here (default: stdout)."
        ),
    ] = None,
    complete: Annotated[
        bool,
        typer.Option(
            "--complete",
            envvar="VERACITY_COMPLETE",
            help="The admin recorded the rotation: sign with the new key from now on.",
        ),
    ] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", envvar="VERACITY_DATA_DIR", help="The site's directory."),
    ] = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Hand this site over to a new key: the hand-over (JSON) for `admin sites rotate`.

    The new key is made once and kept beside the current one, which signs until the
    admin has recorded key.rotated and you run this again with --complete. With
    `--format json`: `{"site", "handover", "out"}` (or `{"site", "key_id"}` on --complete).
    """
    import json

    from veracity.client.site import Site
    from veracity.core.fields import is_hex64
    from veracity.errors import InputError
    from veracity.output import emit_next

    with Site.open(_root(data_dir)) as site:
        if complete:
            if log_id is not None or out is not None:
                raise ConfigError("--complete takes neither --log-id nor --out")
            key_id = site.complete_rotation()
            if output_format is OutputFormat.JSON:
                emit_json({"site": site.name, "key_id": key_id})
            stderr_console().print(f"site {site.name} signs with its new key {key_id}")
            return
        if log_id is None:
            raise ConfigError("give --log-id (or --complete once the rotation is recorded)")
        if not is_hex64(log_id):
            raise InputError(f"--log-id must be 64 lowercase hex characters, not {log_id!r}")
        handover = site.rotation_handover(log_id)
        name = site.name
    text = json.dumps(handover.to_json(), indent=2, sort_keys=True) + "\n"
    if out is not None:
        out.write_text(text, encoding="utf-8")
    if output_format is OutputFormat.JSON:
        shown = None if out is None else str(out.absolute())
        emit_json({"site": name, "handover": handover.to_json(), "out": shown})
    elif out is None:
        sys.stdout.write(text)
    emit_next(
        f"veracity admin sites rotate {name} --handover {out or 'HANDOVER.json'}   (the admin)",
        "veracity site rotate-key --complete   (here, once the rotation is recorded)",
    )


@site_app.command("witness-key")
def witness_key_command(
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", envvar="VERACITY_DATA_DIR", help="The site's directory."),
    ] = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Print this site's witness verifier key (made on first use; not the statement key).

    With `--format json`: `{"name", "vkey"}`.
    """
    from veracity.client.witness import witness_verifier

    verifier = witness_verifier(_root(data_dir))
    if output_format is OutputFormat.JSON:
        emit_json({"name": verifier.name, "vkey": verifier.vkey()})
    else:
        sys.stdout.write(verifier.vkey() + "\n")
