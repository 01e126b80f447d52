"""``veracity admin``: the coordinator admin's commands, over the admin API.

Every command talks HTTPS to a running coordinator (``veracity server start``) with a bearer
token, so it runs on the admin's own machine as well as on the coordinator's. ``--server``,
``--token`` and ``--ca-cert`` come from options or ``VERACITY_SERVER``, ``VERACITY_TOKEN``
and ``VERACITY_CA_CERT``. Data goes to stdout (``--format json`` everywhere), progress and
the next commands to run to stderr. Exit status 1 when the coordinator refuses a request or
a run does not complete, 2 for usage or configuration errors.
"""

from __future__ import annotations

import csv
import json
import math
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol, TypeVar

import click
import typer

from veracity.api_options import CaCertOption, ServerOption, TokenOption
from veracity.errors import ConfigError, InputError, VerificationError
from veracity.output import (
    FormatOption,
    OutputFormat,
    emit_json,
    emit_next,
    emit_table,
    stderr_console,
)

__all__ = ["admin_app"]

admin_app = typer.Typer(
    name="admin",
    help="Operate a running coordinator over its admin API: sites, studies, runs, models, "
    "tokens, ledger.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
sites_app = typer.Typer(name="sites", help="Enrol, list, revoke, rotate and recover sites.")
studies_app = typer.Typer(name="studies", help="Write, propose and read studies.")
runs_app = typer.Typer(name="runs", help="Start, follow, stop and read runs.")
models_app = typer.Typer(name="models", help="Released models: list, read, download, explain.")
tokens_app = typer.Typer(name="tokens", help="Bearer tokens of the admin API.")
ledger_app = typer.Typer(name="ledger", help="The coordinator's ledger, over the API.")
for _group in (sites_app, studies_app, runs_app, models_app, tokens_app, ledger_app):
    _group.info.no_args_is_help = True
    admin_app.add_typer(_group)

DEFAULT_SERVER = "https://127.0.0.1:8443"

OutOption = Annotated[Path, typer.Option("--out", envvar="VERACITY_OUT", help="File to write.")]

if TYPE_CHECKING:
    from veracity.api_client import ApiSession


def _Api(server: str, token: str | None, ca_cert: Path | None) -> ApiSession:  # noqa: N802
    """The shared connection of veracity.api_client, opened for one command.

    Imported here, not at the top: ``veracity --help`` and every command that does not
    talk to the API then load neither httpx nor the API's schemas.

    Raises
    ------
    ConfigError
        If the credentials are missing or unreadable (see ``ApiSession``).
    """
    from veracity.api_client import ApiSession

    return ApiSession(server, token, ca_cert)


_Item = TypeVar("_Item", covariant=True)


class _Page(Protocol[_Item]):
    """A listing the admin API answers: its items, and the whole document for JSON."""

    @property
    def items(self) -> Sequence[_Item]: ...

    def model_dump(self) -> dict[str, Any]: ...


def _emit(
    output_format: OutputFormat,
    document: Any,
    title: str,
    columns: list[str],
    rows: Callable[[], list[list[Any]]],
) -> None:
    """Print the API's answer: the document as JSON, or a table of ``rows()``."""
    if output_format is OutputFormat.JSON:
        emit_json(document)
    else:
        emit_table(title, columns, rows())


def _show(output_format: OutputFormat, document: Any, title: str, rows: list[list[Any]]) -> None:
    """Print one thing: the document as JSON, or an item/value table of ``rows``."""
    _emit(output_format, document, title, ["item", "value"], lambda: rows)


def _list(
    output_format: OutputFormat,
    page: _Page[_Item],
    title: str,
    columns: list[str],
    row: Callable[[_Item], list[Any]],
) -> None:
    """Print a listing: the page as JSON, or a table of one ``row(item)`` per item."""
    _emit(output_format, page.model_dump(), title, columns, lambda: [row(i) for i in page.items])


def _q(value: object) -> str:
    return shlex.quote(str(value))


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror or err}") from err


# ----------------------------------------------------------------------------- sites
ProofOption = Annotated[
    str,
    typer.Option(
        "--proof",
        envvar="VERACITY_PROOF",
        help="The site key's proof of possession: at the site, `veracity site enrolment-proof "
        "--log-id LOG_ID` (the log id: `veracity ledger checkpoint --format json`).",
    ),
]


@sites_app.command("enrol")
def sites_enrol(
    name: Annotated[str, typer.Argument(help="The site's name (as in its site init).")],
    public_key: Annotated[
        Path,
        typer.Option(
            "--public-key", envvar="VERACITY_PUBLIC_KEY", help="The site's Ed25519 key (PEM)."
        ),
    ],
    supernode_public_key: Annotated[
        Path,
        typer.Option(
            "--supernode-public-key",
            envvar="VERACITY_SUPERNODE_PUBLIC_KEY",
            help="The site's SuperNode key (OpenSSH).",
        ),
    ],
    proof: ProofOption,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Enrol a site: key.enrolled in the ledger, its SuperNode registered on the SuperLink."""
    pem = _read_text(public_key, "public key")
    supernode = _read_text(supernode_public_key, "SuperNode public key")
    with _Api(server, token, ca_cert) as api:
        out = api.client.enrol_site(
            api.token, name=name, public_key=pem, supernode_public_key=supernode, proof=proof
        )
    _show(
        output_format,
        out.model_dump(),
        f"site {out.name} enrolled",
        [["site", out.name], ["key id", out.key_id], ["SuperNode id", out.node_id],
         ["ledger seq", out.seq]],
    )  # fmt: skip
    emit_next(
        f"veracity admin tokens create --role site --name {_q(name + ' operator')} "
        f"--site {_q(name)}   (give the site its token)",
        "veracity site start --superlink HOST:PORT --ca-cert ca.crt --server "
        f"{_q(server)} --token SITE_TOKEN   (at the site)",
    )


@sites_app.command("list")
def sites_list(
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Enrolled sites and their current key (none once revoked)."""
    with _Api(server, token, ca_cert) as api:
        out = api.client.sites(api.token)
    _list(
        output_format,
        out,
        "sites",
        ["site", "key id", "valid from", "enrolled seq"],
        lambda s: [s.name, s.key_id or "revoked", s.valid_from, s.enrolled_seq],
    )


@sites_app.command("show")
def sites_show(
    name: Annotated[str, typer.Argument(help="The site's name.")],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """One site's enrolment: keys and when."""
    with _Api(server, token, ca_cert) as api:
        out = api.client.site(api.token, name)
    _show(
        output_format,
        out.model_dump(),
        f"site {out.name}",
        [["key id", out.key_id or "revoked"], ["valid from", out.valid_from],
         ["enrolled seq", out.enrolled_seq], ["public key", out.public_key.strip()],
         ["SuperNode key", (out.supernode_public_key or "").strip()]],
    )  # fmt: skip


ReasonOption = Annotated[
    str, typer.Option("--reason", envvar="VERACITY_REASON", help="Why, for the ledger.")
]


@sites_app.command("revoke")
def sites_revoke(
    name: Annotated[str, typer.Argument(help="The site's name.")],
    reason: ReasonOption,
    withdraw_supernode: Annotated[
        bool,
        typer.Option(
            "--withdraw-supernode/--keep-supernode",
            envvar="VERACITY_WITHDRAW_SUPERNODE",
            help="Also withdraw its SuperNode (it can never connect again with that key).",
        ),
    ] = True,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Revoke a site's key (key.revoked); its signatures are refused from now on."""
    with _Api(server, token, ca_cert) as api:
        out = api.client.revoke_site(
            api.token, name, reason=reason, withdraw_supernode=withdraw_supernode
        )
    _show(
        output_format,
        out.model_dump(),
        f"site {name} revoked",
        [["key id", out.key_id], ["SuperNode withdrawn", out.supernode_withdrawn],
         ["ledger seq", out.seq]],
    )  # fmt: skip
    emit_next(
        f"veracity admin sites enrol {_q(name)} --public-key NEW.pub "
        "--supernode-public-key NEW_SUPERNODE.pub --proof PROOF   (to let it back with new "
        "keys: a visible key.recovered)"
    )


@sites_app.command("rotate")
def sites_rotate(
    name: Annotated[str, typer.Argument(help="The site's name.")],
    handover: Annotated[
        Path | None,
        typer.Option(
            "--handover",
            envvar="VERACITY_HANDOVER",
            help="The site's signed hand-over to its new key (`veracity site rotate-key "
            "--log-id LOG_ID` at the site): recorded as key.rotated.",
        ),
    ] = None,
    recover: Annotated[
        bool,
        typer.Option(
            "--recover",
            envvar="VERACITY_RECOVER",
            help="The site lost its key: revoke it and enrol the new one (a visible "
            "key.recovered; needs --reason, --public-key and --proof).",
        ),
    ] = False,
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            envvar="VERACITY_PUBLIC_KEY",
            help="With --recover: the site's new Ed25519 key.",
        ),
    ] = None,
    proof: Annotated[
        str | None,
        typer.Option(
            "--proof",
            envvar="VERACITY_PROOF",
            help="With --recover: the new key's proof of possession (`veracity site "
            "enrolment-proof --log-id LOG_ID` at the site, with the new key).",
        ),
    ] = None,
    supernode_public_key: Annotated[
        Path | None,
        typer.Option(
            "--supernode-public-key",
            envvar="VERACITY_SUPERNODE_PUBLIC_KEY",
            help="With --recover: a new SuperNode key (the old registration is withdrawn); "
            "without it the SuperNode keeps its key.",
        ),
    ] = None,
    reason: Annotated[
        str | None,
        typer.Option(
            "--reason", envvar="VERACITY_REASON", help="With --recover: why, for the ledger."
        ),
    ] = None,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Give a site a new key: key.rotated from its signed hand-over, or --recover a lost one.

    A rotation needs the site's current key, which signs the hand-over; a site that lost
    its key is recovered instead, visibly: key.revoked for the old key, then key.recovered.
    """
    if recover:
        if handover is not None:
            raise ConfigError("--recover replaces a lost key; a --handover is a rotation")
        if public_key is None or proof is None or not reason:
            raise ConfigError("--recover needs --reason, --public-key and --proof")
        _recover_site(
            name,
            public_key=public_key,
            proof=proof,
            supernode_public_key=supernode_public_key,
            reason=reason,
            server=server,
            token=token,
            ca_cert=ca_cert,
            output_format=output_format,
        )
        return
    if handover is None:
        raise ConfigError(
            "give --handover FILE (from `veracity site rotate-key` at the site), or "
            "--recover --reason ... for a lost key"
        )
    if public_key is not None or proof is not None or supernode_public_key is not None:
        raise ConfigError("--public-key, --proof and --supernode-public-key go with --recover")
    if reason is not None:
        raise ConfigError("--reason goes with --recover (a rotation is the site's own decision)")
    try:
        document = json.loads(_read_text(handover, "hand-over"))
    except json.JSONDecodeError as err:
        raise InputError(f"{handover} is not JSON: {err}") from err
    if not isinstance(document, dict):
        raise InputError(f"{handover} is not a JSON object")
    with _Api(server, token, ca_cert) as api:
        out = api.client.rotate_site(api.token, name, handover=document)
    _show(
        output_format,
        out.model_dump(),
        f"site {name} rotated",
        [["old key id", out.previous_key_id], ["new key id", out.key_id],
         ["ledger seq", out.seq]],
    )  # fmt: skip
    emit_next("veracity site rotate-key --complete   (at the site: sign with the new key)")


def _recover_site(
    name: str,
    *,
    public_key: Path,
    proof: str,
    supernode_public_key: Path | None,
    reason: str,
    server: str,
    token: str | None,
    ca_cert: Path | None,
    output_format: OutputFormat,
) -> None:
    pem = _read_text(public_key, "public key")
    new_supernode = (
        _read_text(supernode_public_key, "SuperNode public key") if supernode_public_key else None
    )
    with _Api(server, token, ca_cert) as api:
        current = api.client.site(api.token, name)
        supernode = new_supernode or current.supernode_public_key
        if not supernode:
            raise InputError(f"site {name} has no SuperNode key on record; pass one")
        revoked = None
        if current.key_id is not None:
            revoked = api.client.revoke_site(
                api.token, name, reason=reason, withdraw_supernode=new_supernode is not None
            )
        enrolled = api.client.enrol_site(
            api.token, name=name, public_key=pem, supernode_public_key=supernode, proof=proof
        )
    _show(
        output_format,
        {"revoked": None if revoked is None else revoked.model_dump(),
         "enrolled": enrolled.model_dump()},
        f"site {name} recovered (key.recovered)",
        [["old key id", current.key_id or "revoked before"], ["new key id", enrolled.key_id],
         ["SuperNode id", enrolled.node_id], ["ledger seq", enrolled.seq]],
    )  # fmt: skip


# --------------------------------------------------------------------------- studies
def _schema_from_csv(path: Path, label: str) -> tuple[list[str], list[list[float]]]:
    """Feature columns of a CSV (all but ``label``) and their mean and std."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from err
    if not rows or label not in rows[0]:
        raise InputError(f"{path}: no label column {label!r}")
    header = rows[0]
    features = [c for c in header if c != label]
    scaling: list[list[float]] = []
    for column in features:
        index = header.index(column)
        try:
            values = [float(row[index]) for row in rows[1:] if row[index] != ""]
        except ValueError as err:
            raise InputError(f"{path}: column {column!r} is not numeric ({err})") from err
        if len(values) < 2:
            scaling.append([0.0, 1.0])
            continue
        std = statistics.pstdev(values)
        scaling.append([statistics.fmean(values), std if std > 0 and math.isfinite(std) else 1.0])
    return features, scaling


@studies_app.command("new")
def studies_new(
    study_id: Annotated[
        str, typer.Option("--study-id", envvar="VERACITY_STUDY_ID", help="The study's id.")
    ],
    site: Annotated[
        list[str],
        typer.Option("--site", envvar="VERACITY_SITE", help="A site that takes part; repeat it."),
    ],
    out: OutOption,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            envvar="VERACITY_DATASET",
            help="SITE/DATASET_ID: take features and label from that registered dataset.",
        ),
    ] = None,
    schema: Annotated[
        Path | None,
        typer.Option(
            "--schema",
            envvar="VERACITY_SCHEMA",
            help="A CSV of public or synthetic reference data: its columns are the "
            "features (all but --label) and its means and stds the public scaling.",
        ),
    ] = None,
    label: Annotated[
        str | None,
        typer.Option("--label", envvar="VERACITY_LABEL", help="The label column (--schema)."),
    ] = None,
    title: Annotated[str, typer.Option("--title", envvar="VERACITY_TITLE")] = "",
    epsilon_cap: Annotated[
        float, typer.Option("--epsilon-cap", envvar="VERACITY_EPSILON_CAP", min=0.0)
    ] = 3.0,
    rounds: Annotated[int, typer.Option("--rounds", envvar="VERACITY_ROUNDS", min=1)] = 3,
    min_sites: Annotated[
        int | None,
        typer.Option("--min-sites", envvar="VERACITY_MIN_SITES", help="Default: every site."),
    ] = None,
    noise_multiplier: Annotated[
        float, typer.Option("--noise-multiplier", envvar="VERACITY_NOISE_MULTIPLIER")
    ] = 1.0,
    max_grad_norm: Annotated[
        float, typer.Option("--max-grad-norm", envvar="VERACITY_MAX_GRAD_NORM")
    ] = 1.0,
    delta: Annotated[float, typer.Option("--delta", envvar="VERACITY_DELTA")] = 1e-5,
    batch_size: Annotated[int, typer.Option("--batch-size", envvar="VERACITY_BATCH_SIZE")] = 32,
    learning_rate: Annotated[
        float, typer.Option("--learning-rate", envvar="VERACITY_LEARNING_RATE")
    ] = 0.5,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Write a study document for a person to edit: features, label, DP terms, code hash.

    The features and label come from a registered dataset (``--dataset SITE/ID``, over
    the API) or a reference CSV (``--schema FILE --label L``, offline). The code hash is
    that of the Flower app bundle of the Veracity installed here: sites approve exactly it.
    """
    from veracity.server.fab import build_fab
    from veracity.tasks.spec import ModelFamily, ModelSpec
    from veracity.tasks.study import parse_study

    if (dataset is None) == (schema is None):
        raise ConfigError("give one of --dataset SITE/ID or --schema FILE")
    if schema is not None:
        if label is None:
            raise ConfigError("--schema needs --label")
        features, scaling = _schema_from_csv(schema, label)
    elif dataset is not None:
        owner, _, dataset_id = dataset.partition("/")
        if not dataset_id:
            raise ConfigError("--dataset is SITE/DATASET_ID")
        with _Api(server, token, ca_cert) as api:
            listed = api.client.datasets(api.token)
        found = [d for d in listed.items if (d.site, d.dataset_id) == (owner, dataset_id)]
        if not found:
            raise InputError(f"no dataset {dataset_id!r} registered by site {owner!r}")
        features, label = list(found[0].features), found[0].label
        scaling = [[0.0, 1.0] for _ in features]
    document = {
        "study_id": study_id,
        "title": title or f"{study_id}: {label} from {len(features)} features",
        "model": ModelSpec(ModelFamily.LOGISTIC, len(features)).to_dict(),
        "features": features,
        "label": label,
        "scaling": scaling,
        "dp": {"noise_multiplier": noise_multiplier, "max_grad_norm": max_grad_norm,
               "delta": delta},
        "training": {"batch_size": batch_size, "local_epochs": 1,
                     "learning_rate": learning_rate},
        "rounds": rounds,
        "min_sites": len(site) if min_sites is None else min_sites,
        "epsilon_caps": dict.fromkeys(site, epsilon_cap),
        "code_hash": build_fab().fab_hash,
    }  # fmt: skip
    study = parse_study(document)  # refuses terms a site would refuse
    out.write_text(json.dumps(study.to_document(), indent=2) + "\n", encoding="utf-8")
    shown = {"study_file": str(out.absolute()), "study_hash": study.study_hash,
             "code_hash": study.code_hash, "features": len(features), "label": label}  # fmt: skip
    _show(output_format, shown, f"study {study_id} written", [[k, v] for k, v in shown.items()])
    emit_next(
        f"edit {out} (scaling, DP terms, caps), then: veracity admin studies propose {_q(out)}"
    )


@studies_app.command("propose")
def studies_propose(
    study_file: Annotated[Path, typer.Argument(help="The study document (JSON).")],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Propose a study (study.proposed); each site then reviews and approves it."""
    try:
        document = json.loads(_read_text(study_file, "study file"))
    except json.JSONDecodeError as err:
        raise InputError(f"{study_file} is not JSON: {err}") from err
    if not isinstance(document, dict):
        raise InputError(f"{study_file} does not hold a JSON object")
    with _Api(server, token, ca_cert) as api:
        out = api.client.propose_study(api.token, document)
    _show(
        output_format,
        out.model_dump(),
        f"study {out.study_id} proposed",
        [["study hash", out.study_hash], ["code hash", out.code_hash], ["ledger seq", out.seq]],
    )
    emit_next(
        f"at each site: veracity site review {_q(study_file)} --dataset ID, then "
        f"veracity site approve {_q(study_file)} --dataset ID --epsilon-cap X",
        f"veracity admin studies show {out.study_hash}   (who approved)",
        f"veracity admin runs start {out.study_hash} --watch",
    )


@studies_app.command("list")
def studies_list(
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Proposed studies."""
    with _Api(server, token, ca_cert) as api:
        out = api.client.studies(api.token)
    _list(
        output_format,
        out,
        "studies",
        ["study", "hash", "sites", "min sites", "rounds"],
        lambda s: [s.study_id, s.study_hash, " ".join(s.sites), s.min_sites, s.rounds],
    )


@studies_app.command("show")
def studies_show(
    study_hash: Annotated[str, typer.Argument(help="The study's hash.")],
    out_file: Annotated[
        Path | None,
        typer.Option("--out", envvar="VERACITY_OUT", help="Also write the study document."),
    ] = None,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """A study, its sites' decisions, and whether it is ready to run."""
    with _Api(server, token, ca_cert) as api:
        out = api.client.study(api.token, study_hash)
    if out_file is not None:
        out_file.write_text(json.dumps(out.study, indent=2) + "\n", encoding="utf-8")
    _show(
        output_format,
        out.model_dump(),
        f"study {out.study_id}",
        [["hash", out.study_hash], ["sites", " ".join(out.sites)],
         ["approved by", " ".join(out.approved_by) or "-"], ["ready", "yes" if out.ready else "no"],
         ["min sites", out.min_sites], ["rounds", out.rounds], ["code hash", out.code_hash]],
    )  # fmt: skip
    if out.ready:
        emit_next(f"veracity admin runs start {out.study_hash} --watch")


# ------------------------------------------------------------------------------ runs
def _watch(api: ApiSession, run_id: str, output_format: OutputFormat, *, interval: float) -> int:
    """Follow ``run_id`` until it finishes; print each round once; the exit status."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = stderr_console()
    run = api.client.run(api.token, run_id)
    study = api.client.study(api.token, run.study_hash)
    seen: set[int] = set()
    rounds: list[dict[str, Any]] = []
    with Progress(
        TextColumn("run {task.fields[run]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rounds {task.fields[state]}"),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("run", total=study.rounds, run=run_id, state="")
        while True:
            run = api.client.run(api.token, run_id)
            for item in api.client.rounds(api.token, run_id).items:
                number = int(item["round"])
                if number in seen:
                    continue
                seen.add(number)
                rounds.append(item)
                spent = ", ".join(
                    f"{r['receipt']['site']} eps {float(r['receipt']['epsilon']):.4f}"
                    for r in item.get("receipts", [])
                )
                metrics = ", ".join(f"{k} {v:.4g}" for k, v in sorted(item["metrics"].items()))
                progress.console.print(
                    f"round {number}: {len(item['participants'])} site(s) [{spent}] "
                    f"{metrics} model {item['aggregated_model_hash']}"
                )
            state = str(run.superlink.get("status", "")) if run.superlink else ""
            progress.update(task, completed=len(seen), state=state)
            if run.finished is not None:
                break
            time.sleep(interval)
    finished = run.finished
    status = str(finished.get("status"))
    document = {"run_id": run_id, "study_hash": run.study_hash, "rounds": rounds,
                "finished": finished}  # fmt: skip
    if output_format is OutputFormat.JSON:
        emit_json(document)
    else:
        emit_table(
            f"run {run_id} {status}",
            ["item", "value"],
            [["status", status], ["reason", finished.get("reason", "")],
             ["rounds completed", finished.get("rounds_completed")],
             ["model", finished.get("model_hash") or "-"]],
        )  # fmt: skip
    model = finished.get("model_hash")
    if model:
        emit_next(
            f"veracity admin models show {model}",
            f"veracity predict --model {model} --input CLINIC.csv --server {_q(api.server)} "
            "--token RESEARCHER_TOKEN --ca-cert ca.crt",
            "veracity admin ledger export --out ledger.jsonl   (for the auditor)",
        )
    return 0 if status == "completed" else 1


IntervalOption = Annotated[
    float,
    typer.Option("--interval", envvar="VERACITY_INTERVAL", min=0.1, help="Seconds between polls."),
]


@runs_app.command("start")
def runs_start(
    study_hash: Annotated[str, typer.Argument(help="The approved study's hash.")],
    watch: Annotated[
        bool, typer.Option("--watch", envvar="VERACITY_WATCH", help="Follow it to the end.")
    ] = False,
    explain_epsilon: Annotated[
        float | None,
        typer.Option(
            "--explain-epsilon",
            envvar="VERACITY_EXPLAIN_EPSILON",
            min=0.0,
            help="Explain the final model before release at this cost per site (card report).",
        ),
    ] = None,
    explain_clip_norm: Annotated[
        float,
        typer.Option(
            "--explain-clip-norm",
            envvar="VERACITY_EXPLAIN_CLIP_NORM",
            min=0.0,
            help="L2 bound of one record's attribution vector (with --explain-epsilon).",
        ),
    ] = 1.0,
    explain_steps: Annotated[
        int,
        typer.Option(
            "--explain-steps",
            envvar="VERACITY_EXPLAIN_STEPS",
            min=2,
            max=1024,
            help="Integration points (with --explain-epsilon).",
        ),
    ] = 32,
    interval: IntervalOption = 1.0,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Start a run of an approved study (run.started); ``--watch`` follows it.

    ``--explain-epsilon E`` asks the sites to explain the final model before its release
    (charged to their budgets): the model card then holds the explanation report.
    """
    asked = (
        None
        if explain_epsilon is None
        else {"epsilon": explain_epsilon, "clip_norm": explain_clip_norm, "steps": explain_steps}
    )
    with _Api(server, token, ca_cert) as api:
        out = api.client.start_run(api.token, study_hash, explain_at_release=asked)
        if watch:
            stderr_console().print(f"run {out.run_id} started (ledger seq {out.seq})")
            code = _watch(api, out.run_id, output_format, interval=interval)
            if code:
                raise typer.Exit(code)
            return
    _show(
        output_format,
        out.model_dump(),
        f"run {out.run_id} started",
        [["run", out.run_id], ["study hash", out.study_hash], ["ledger seq", out.seq]],
    )
    emit_next(f"veracity admin runs watch {out.run_id}")


@runs_app.command("watch")
def runs_watch(
    run_id: Annotated[str, typer.Argument(help="The run's id.")],
    interval: IntervalOption = 1.0,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Follow a run live, round by round; exit status 0 if it completed, 1 otherwise."""
    with _Api(server, token, ca_cert) as api:
        code = _watch(api, run_id, output_format, interval=interval)
    if code:
        raise typer.Exit(code)


@runs_app.command("stop")
def runs_stop(
    run_id: Annotated[str, typer.Argument(help="The run's id.")],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Stop a run: run.finished (stopped) is recorded first, then the SuperLink stops it."""
    with _Api(server, token, ca_cert) as api:
        out = api.client.stop_run(api.token, run_id)
    _show(output_format, out.model_dump(), f"run {run_id} stopped", [["ledger seq", out.seq]])


@runs_app.command("list")
def runs_list(
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Runs started here, and how each ended."""
    with _Api(server, token, ca_cert) as api:
        out = api.client.runs(api.token)
    _list(
        output_format,
        out,
        "runs",
        ["run", "study hash", "started", "status", "model"],
        lambda r: [r.run_id, r.study_hash, r.started_at,
                   (r.finished or {}).get("status", "running"),
                   (r.finished or {}).get("model_hash") or "-"],
    )  # fmt: skip


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(help="The run's id.")],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """A run: the SuperLink's status, rounds recorded, how it ended."""
    with _Api(server, token, ca_cert) as api:
        out = api.client.run(api.token, run_id)
    finished = out.finished or {}
    _show(
        output_format,
        out.model_dump(),
        f"run {run_id}",
        [["study hash", out.study_hash], ["started", out.started_at],
         ["rounds completed", out.rounds_completed],
         ["SuperLink", json.dumps(out.superlink, sort_keys=True)],
         ["status", finished.get("status", "running")], ["reason", finished.get("reason", "")],
         ["model", finished.get("model_hash") or "-"]],
    )  # fmt: skip


@runs_app.command("archive")
def runs_archive(
    run_id: Annotated[str, typer.Argument(help="The run's id.")],
    out: Annotated[
        Path,
        typer.Option("--out", envvar="VERACITY_OUT", help="New directory for the archive."),
    ],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Download a run's archive (every round's updates and model, by hash) for a replay."""
    import tempfile

    from veracity.server.round_archive import extract_archive

    # Downloaded to a temporary file and unpacked from it: never the whole archive in memory.
    with _Api(server, token, ca_cert) as api, tempfile.TemporaryFile() as spool:
        api.client.download_run_archive(api.token, run_id, spool)
        spool.seek(0)
        index = extract_archive(spool, out)
    shown = {"archive": str(out.absolute()), "run_id": run_id, "rounds": len(index["rounds"])}
    _show(output_format, shown, "run archived", [[k, v] for k, v in shown.items()])
    emit_next(f"veracity ledger replay --bundle ledger.jsonl --archive {_q(out)} --trust root.pub")


@runs_app.command("prune")
def runs_prune(
    older_than: Annotated[
        int,
        typer.Option(
            "--older-than",
            envvar="VERACITY_OLDER_THAN",
            min=0,
            max=36_500,
            help="Days since a run finished before its archived updates may go.",
        ),
    ],
    include_released: Annotated[
        bool,
        typer.Option(
            "--include-released",
            envvar="VERACITY_INCLUDE_RELEASED",
            help="Also delete the archive of runs whose model was released (no replay after).",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", envvar="VERACITY_DRY_RUN", help="Only say what would go."),
    ] = False,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Delete old runs' archived updates (retention); recorded as updates.pruned.

    A run whose model was released keeps its archive (its replay needs it) unless
    --include-released.
    """
    with _Api(server, token, ca_cert) as api:
        out = api.client.prune_runs(
            api.token,
            older_than_days=older_than,
            include_released=include_released,
            dry_run=dry_run,
        )
    title = "would prune" if dry_run else "pruned"
    _show(output_format, out.model_dump(), title, [[k, v] for k, v in out.model_dump().items()])


# ---------------------------------------------------------------------------- models
@models_app.command("list")
def models_list(
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Released models."""
    with _Api(server, token, ca_cert) as api:
        out = api.client.models(api.token)
    _list(
        output_format,
        out,
        "models",
        ["model", "name", "family", "features", "label", "released seq"],
        lambda m: [m.model_hash, m.name, m.family, m.n_features, m.label, m.released_seq],
    )


@models_app.command("show")
def models_show(
    model_hash: Annotated[str, typer.Argument(help="The model's hash.")],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """A released model's card: features, label, metrics, epsilon per site."""
    with _Api(server, token, ca_cert) as api:
        out = api.client.model(api.token, model_hash)
    rows: list[list[Any]] = [["model", out.model_hash], ["features", " ".join(out.features)],
            ["label", out.label], ["card hash", out.card_hash],
            ["released seq", out.released_seq]]  # fmt: skip
    rows += [[f"card {k}", json.dumps(v, sort_keys=True)] for k, v in sorted(out.card.items())]
    for e in out.explanations:
        top = ", ".join(e["top_features"][:3])
        rows.append([f"explanation {e['seq']}", f"{e['report_hash']} top {top}"])
    _show(output_format, out.model_dump(), f"model {out.model_hash}", rows)


@models_app.command("download")
def models_download(
    model_hash: Annotated[str, typer.Argument(help="The model's hash.")],
    out: OutOption,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Download a released model's weights, checking that they hash to MODEL_HASH."""
    from veracity.tasks.weights import weights_from_bytes, weights_hash

    with _Api(server, token, ca_cert) as api:
        weights = api.client.weights(api.token, model_hash)
    digest = weights_hash(weights_from_bytes(weights))  # the model hash is the weights'
    if digest != model_hash:
        raise VerificationError(f"the weights hash to {digest}, not to {model_hash}")
    out.write_bytes(weights)
    shown = {"model_hash": model_hash, "file": str(out.absolute()), "bytes": len(weights)}
    _show(output_format, shown, "weights downloaded", [[k, v] for k, v in shown.items()])


# ----------------------------------------------------------- explanations (#19)
def _explanation_rows(item: Any) -> list[list[Any]]:
    report = item.report
    block = report.get("features") or report.get("channels") or {}
    rows: list[list[Any]] = [
        ["report hash", item.report_hash],
        ["ledger seq", item.seq],
        ["run", item.run_id],
        ["sites", " ".join(item.sites)],
        ["records", item.records],
        ["epsilon per site", item.terms["epsilon"]],
        ["clip norm", item.terms["clip_norm"]],
    ]
    values = dict(zip(block.get("labels", []), block.get("value", []), strict=True))
    errors = dict(zip(block.get("labels", []), block.get("se", []), strict=True))
    for name in item.top_features:
        if name in values:
            rows.append([f"top {name}", f"{values[name]:+.4g} (se {errors[name]:.2g})"])
    return rows


def _write_explanation(item: Any, out: Path) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    report_file, plot_file = out / "explanation.json", out / "explanation.svg"
    report_file.write_text(json.dumps(item.report, indent=2, sort_keys=True), encoding="utf-8")
    plot_file.write_text(item.plot_svg, encoding="utf-8")
    return {"report": str(report_file.absolute()), "plot": str(plot_file.absolute())}


def _latest_explanation(api: ApiSession, model_hash: str) -> Any:
    items = api.client.explanations(api.token, model_hash).items
    if not items:
        raise InputError(
            f"model {model_hash} has no recorded explanation; "
            f"veracity admin models explain {model_hash} --epsilon E --clip-norm C --watch"
        )
    return items[-1]


OutDirOption = Annotated[
    Path | None,
    typer.Option(
        "--out",
        envvar="VERACITY_OUT",
        help="Folder to write explanation.json and explanation.svg into.",
    ),
]


@models_app.command("explain")
def models_explain(
    model_hash: Annotated[str, typer.Argument(help="The released model's hash.")],
    epsilon: Annotated[
        float,
        typer.Option(
            "--epsilon", envvar="VERACITY_EPSILON", min=0.0, help="Each site's cost (its budget)."
        ),
    ],
    clip_norm: Annotated[
        float,
        typer.Option(
            "--clip-norm",
            envvar="VERACITY_CLIP_NORM",
            min=0.0,
            help="L2 bound of one record's attribution vector.",
        ),
    ],
    steps: Annotated[
        int,
        typer.Option(
            "--steps", envvar="VERACITY_STEPS", min=2, max=1024, help="Integration points."
        ),
    ] = 32,
    delta: Annotated[
        float | None,
        typer.Option("--delta", envvar="VERACITY_DELTA", help="Default: the study's delta."),
    ] = None,
    watch: Annotated[
        bool,
        typer.Option("--watch", envvar="VERACITY_WATCH", help="Wait for the report and show it."),
    ] = False,
    out: OutDirOption = None,
    interval: IntervalOption = 1.0,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Ask the model's sites for an explanation (integrated gradients, under their budgets)."""
    with _Api(server, token, ca_cert) as api:
        started = api.client.explain_model(
            api.token, model_hash, epsilon=epsilon, clip_norm=clip_norm, steps=steps, delta=delta
        )
        if not watch:
            _show(
                output_format,
                started.model_dump(),
                f"explanation run {started.run_id} started",
                [[k, v] for k, v in started.model_dump().items()],
            )
            emit_next(
                f"veracity admin runs watch {started.run_id}",
                f"veracity admin models explanation {model_hash} --out explanation",
            )
            return
        stderr_console().print(f"explanation run {started.run_id} started (seq {started.seq})")
        while (run := api.client.run(api.token, started.run_id)).finished is None:
            time.sleep(interval)
        if run.finished.get("status") != "completed":
            raise VerificationError(
                f"explanation run {started.run_id} ended {run.finished.get('status')}: "
                f"{run.finished.get('reason', '')}"
            )
        item = _latest_explanation(api, model_hash)
    _emit_explanation(item, model_hash, out, output_format)


def _emit_explanation(
    item: Any, model_hash: str, out: Path | None, output_format: OutputFormat
) -> None:
    """Print an explanation report (JSON or a table); ``out`` also writes it and its plot."""
    document = item.model_dump()
    if out is not None:
        document["files"] = _write_explanation(item, out)
    _show(output_format, document, f"explanation of {model_hash}", _explanation_rows(item))


@models_app.command("explanation")
def models_explanation(
    model_hash: Annotated[str, typer.Argument(help="The released model's hash.")],
    out: OutDirOption = None,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """A model's latest explanation report; ``--out`` writes it and its SVG plot."""
    with _Api(server, token, ca_cert) as api:
        item = _latest_explanation(api, model_hash)
    _emit_explanation(item, model_hash, out, output_format)


# ---------------------------------------------------------------------------- tokens
@tokens_app.command("create")
def tokens_create(
    role: Annotated[
        str,
        typer.Option(
            "--role",
            envvar="VERACITY_ROLE",
            click_type=click.Choice(["admin", "site", "researcher", "auditor"]),
            help="admin, site, researcher or auditor.",
        ),
    ],
    name: Annotated[str, typer.Option("--name", envvar="VERACITY_NAME", help="Who holds it.")],
    site: Annotated[
        str | None,
        typer.Option("--site", envvar="VERACITY_SITE", help="The site of a site token."),
    ] = None,
    expires_in: Annotated[
        int,
        typer.Option("--expires-in", envvar="VERACITY_EXPIRES_IN", min=1, max=3650, help="Days."),
    ] = 90,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Issue a token and print it alone on stdout (shown once)."""
    with _Api(server, token, ca_cert) as api:
        out = api.client.create_token(
            api.token, role=role, name=name, site=site, expires_in_days=expires_in
        )
    if output_format is OutputFormat.JSON:
        emit_json(out.model_dump())
        return
    sys.stdout.write(out.token + "\n")
    stderr_console().print(
        f"token {out.info.id} ({out.info.role} {out.info.name}) expires {out.info.expires_at}; "
        "it is not shown again"
    )


@tokens_app.command("list")
def tokens_list(
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Issued tokens (never the tokens themselves)."""
    with _Api(server, token, ca_cert) as api:
        out = api.client.tokens(api.token)
    _list(
        output_format,
        out,
        "tokens",
        ["id", "role", "name", "site", "expires", "revoked", "created by"],
        lambda t: [t.id, t.role, t.name, t.site or "", t.expires_at, t.revoked_at or "",
                   t.created_by],
    )  # fmt: skip


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (from tokens list).")],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Revoke a token at once."""
    with _Api(server, token, ca_cert) as api:
        out = api.client.revoke_token(api.token, token_id)
    _show(
        output_format,
        out.model_dump(),
        f"token {out.id} revoked",
        [["name", out.name], ["revoked at", out.revoked_at]],
    )


# ---------------------------------------------------------------------------- ledger
@ledger_app.command("export")
def ledger_export(
    out: OutOption,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    ca_cert: CaCertOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Download the ledger bundle (JSON lines) that an auditor verifies offline."""
    import hashlib

    console = stderr_console()
    with _Api(server, token, ca_cert) as api, console.status("exporting the ledger"):
        bundle = api.client.export_ledger(api.token)
    out.write_bytes(bundle)
    shown = {"bundle": str(out.absolute()), "sha256": hashlib.sha256(bundle).hexdigest(),
             "entries": bundle.count(b"\n")}  # fmt: skip
    _show(output_format, shown, "ledger exported", [[k, v] for k, v in shown.items()])
    emit_next(
        f"veracity ledger verify --bundle {_q(out)} --trust root.pub",
        f"veracity ledger provenance MODEL_HASH --bundle {_q(out)} --trust root.pub",
    )
