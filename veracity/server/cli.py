"""``veracity server``: initialise and run the coordinator, and manage API tokens.

``init`` creates the data directory (root key, TLS, ledger, read model, API tables);
``start`` runs the SuperLink and the admin API until Ctrl-C or SIGTERM, then stops both;
``reindex`` rebuilds the coordinator's read model from the ledger; ``token create`` prints a
new bearer token alone on stdout (it is stored only as a hash). Every command goes through
the one coordinator service (:mod:`veracity.server.coordinator`).
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import click
import typer

from veracity.output import (
    FormatOption,
    OutputFormat,
    emit_json,
    emit_next,
    emit_table,
    stderr_console,
)

__all__ = ["app"]

log = logging.getLogger(__name__)

app = typer.Typer(
    name="server",
    help="Run the coordinator: SuperLink plus the admin web API.",
    no_args_is_help=True,
    add_completion=False,
)
token_app = typer.Typer(name="token", help="Bearer tokens of the admin API.", no_args_is_help=True)
app.add_typer(token_app, name="token")

#: The coordinator's default directory; a site's is ``./veracity-site``, so the two never meet.
DEFAULT_DATA_DIR = Path("veracity-coordinator")

DataDirOption = Annotated[
    Path,
    typer.Option("--data-dir", envvar="VERACITY_DATA_DIR", help="The coordinator's data dir."),
]


def _masked(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@app.command("init")
def init(
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            "--database-url",
            envvar="VERACITY_DATABASE_URL",
            help="SQLAlchemy URL (default: SQLite under the data dir; postgresql:// for "
            "production).",
        ),
    ] = None,
    superlink_port: Annotated[
        int,
        typer.Option("--superlink-port", envvar="VERACITY_SUPERLINK_PORT", min=1, max=65535),
    ] = 9093,
    hostname: Annotated[
        list[str] | None,
        typer.Option(
            "--hostname",
            envvar="VERACITY_HOSTNAME",
            help="A DNS name or IP address sites and clinics reach this coordinator by; "
            "repeat it. The certificate covers these plus localhost.",
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            "--tls-cert",
            envvar="VERACITY_TLS_CERT",
            exists=True,
            dir_okay=False,
            help="Serve your own certificate (PEM) instead of one from the coordinator's CA.",
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(
            "--tls-key",
            envvar="VERACITY_TLS_KEY",
            exists=True,
            dir_okay=False,
            help="The private key of --tls-cert (PEM, unencrypted).",
        ),
    ] = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option(
            "--tls-ca",
            envvar="VERACITY_TLS_CA",
            exists=True,
            dir_okay=False,
            help="The certificate that issued --tls-cert: what sites and clinics pin.",
        ),
    ] = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Create the coordinator's keys, TLS material, ledger and API tables (idempotent)."""
    from veracity.config import normalise_database_url
    from veracity.crypto.tls import certificate_hosts
    from veracity.errors import ConfigError
    from veracity.server.api.serve import initialise

    own = (tls_cert, tls_key, tls_ca)
    if any(own) and not all(own):
        raise ConfigError("--tls-cert, --tls-key and --tls-ca go together")
    own_tls = (tls_cert, tls_key, tls_ca) if tls_cert and tls_key and tls_ca else None
    url = normalise_database_url(db) if db else None
    with initialise(
        data_dir,
        db_url=url,
        superlink_port=superlink_port,
        tls_hosts=tuple(hostname or ()),
        own_tls=own_tls,
    ) as service:
        home = service.home
        shown = {
            "data_dir": str(home.data_dir),
            "database": _masked(home.db_url),
            "superlink": home.superlink_address,
            "root_key_id": service.ledger.identity_public_key.key_id,
            "root_public_key": str(home.key_dir / "root.pub"),
            "log_key_id": service.root_key.public.key_id,
            "identity_private_key": str(home.identity_key_path)
            if home.identity_key_path.exists()
            else None,
            "log_id": service.ledger.log_id,
            "ca_cert": str(home.tls.ca_cert),
            "certificate_hosts": " ".join(certificate_hosts(home.tls.server_cert)),
        }
    if output_format is OutputFormat.JSON:
        emit_json(shown)
        return
    emit_table("coordinator initialised", ["setting", "value"], list(shown.items()))
    where = shlex.quote(str(data_dir))
    emit_next(
        f"veracity server start --data-dir {where}",
        f"veracity server token create --role admin --name NAME --data-dir {where}",
        f"give sites and clinics {home.tls.ca_cert} (the CA they pin) and "
        f"{home.key_dir / 'root.pub'} (the key auditors trust)",
        *(
            [
                f"move {home.identity_dir} offline (the identity key: the coordinator never "
                "needs it; only `veracity server rotate-log-key` does)"
            ]
            if home.identity_key_path.exists()
            else []
        ),
    )


@app.command("start")
def start(
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    host: Annotated[
        str, typer.Option("--host", envvar="VERACITY_HOST", help="Address the API binds.")
    ] = "127.0.0.1",
    api_port: Annotated[
        int, typer.Option("--api-port", envvar="VERACITY_API_PORT", min=1, max=65535)
    ] = 8443,
    superlink_port: Annotated[
        int | None,
        typer.Option(
            "--superlink-port",
            envvar="VERACITY_SUPERLINK_PORT",
            min=1,
            max=65535,
            help="SuperLink port (default: the one `server init` recorded).",
        ),
    ] = None,
    superlink_host: Annotated[
        str,
        typer.Option(
            "--superlink-host",
            envvar="VERACITY_SUPERLINK_HOST",
            help="Address the SuperLink binds (its Control API has no authentication).",
        ),
    ] = "127.0.0.1",
    workers: Annotated[
        int, typer.Option("--workers", envvar="VERACITY_WORKERS", min=1, max=64)
    ] = 1,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Run the SuperLink and the admin API (HTTPS) until Ctrl-C or SIGTERM."""
    from veracity.server.api.serve import start_services
    from veracity.server.api.settings import load_api_settings
    from veracity.supervise import ProcessGroup, stopping_on_signals

    settings = load_api_settings(
        data_dir=data_dir,
        host=host,
        api_port=api_port,
        superlink_port=superlink_port,
        api_workers=workers,
    )
    console = stderr_console()
    group = ProcessGroup()
    try:
        with stopping_on_signals(group):
            services = start_services(settings, group, superlink_host=superlink_host)
            if output_format is OutputFormat.JSON:
                emit_json(services.to_json())
            console.print(
                f"API {services.api_url} (docs {services.docs_url}), SuperLink "
                f"{services.superlink_address}; logs in {data_dir / 'logs'}. Ctrl-C stops."
            )
            next_check = time.monotonic()
            while True:
                group.check_alive()
                if time.monotonic() >= next_check:
                    _record_ended_runs(data_dir, int(services.superlink_address.rsplit(":", 1)[1]))
                    next_check = time.monotonic() + ENDED_RUNS_EVERY
                time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("stopped")


#: Seconds between two looks for runs whose ServerApp died without recording their end.
ENDED_RUNS_EVERY = 10.0


def _record_ended_runs(data_dir: Path, superlink_port: int) -> None:
    """Record ``run.finished`` for runs that ended unrecorded (a crash); retried later."""
    from veracity.errors import VeracityError
    from veracity.server.coordinator import open_coordinator
    from veracity.server.coordinator.home import CoordinatorHome
    from veracity.server.coordinator.unit_of_work import SUPERVISOR

    try:
        home = CoordinatorHome.load(data_dir).with_superlink_port(superlink_port)
        with open_coordinator(home) as service:
            for run_id in service.record_ended_runs(SUPERVISOR):
                stderr_console().print(
                    f"run {run_id} ended without its ServerApp recording it; "
                    "recorded run.finished (failed)"
                )
    except VeracityError as err:
        logging.getLogger("veracity.server").warning("looking for ended runs: %s", err)


_IdentityKeyOption = Annotated[
    Path,
    typer.Option(
        "--identity-key",
        envvar="VERACITY_IDENTITY_KEY",
        exists=True,
        dir_okay=False,
        help="The log's offline identity key (the private half of keys/root.pub).",
    ),
]


@app.command("rotate-log-key")
def rotate_log_key(
    identity_key: _IdentityKeyOption,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Give the coordinator a new log key, enrolled by the identity key (stop it first).

    The old log key moves to keys/log.previous.pem and co-signs checkpoint notes until
    `veracity server retire-log-key`, so witnesses and policies that know it keep working.
    """
    from veracity.crypto.keys import load_signing_key
    from veracity.server.coordinator.bootstrap import rotate_coordinator_log_key

    shown = rotate_coordinator_log_key(data_dir, identity=load_signing_key(identity_key))
    if output_format is OutputFormat.JSON:
        emit_json(shown)
        return
    emit_table("log key rotated", ["field", "value"], list(shown.items()))
    where = shlex.quote(str(data_dir))
    emit_next(
        f"veracity server start --data-dir {where}",
        f"veracity ledger policy --data-dir {where} ... (a policy naming the new log key)",
        f"veracity server retire-log-key --data-dir {where} --identity-key FILE "
        "(once witnesses and auditors know the new key)",
    )


@app.command("retire-log-key")
def retire_log_key(
    identity_key: _IdentityKeyOption,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """End a log key rotation's overlap: the identity retires the old log key."""
    from veracity.crypto.keys import load_signing_key
    from veracity.server.coordinator.bootstrap import retire_coordinator_log_key

    shown = retire_coordinator_log_key(data_dir, identity=load_signing_key(identity_key))
    if output_format is OutputFormat.JSON:
        emit_json(shown)
        return
    emit_table("log key retired", ["field", "value"], list(shown.items()))


@app.command("reindex")
def reindex(
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Rebuild the coordinator's read model (sites, studies, runs ...) from the ledger."""
    from veracity.server.coordinator import open_coordinator

    with open_coordinator(data_dir) as service:
        report = service.reindex()
    if output_format is OutputFormat.JSON:
        emit_json(report.to_json())
    else:
        emit_table(
            f"read model rebuilt from {report.entries} ledger entries",
            ["table", "rows"],
            sorted(report.rows.items()),
        )


@token_app.command("create")
def token_create(
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
        typer.Option(
            "--expires-in",
            envvar="VERACITY_EXPIRES_IN",
            min=1,
            max=3650,
            help="Days until it expires.",
        ),
    ] = 90,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Issue a token and print it alone on stdout (shown once; stored only as a hash)."""
    from veracity.server.api.serve import issue_token

    issued = issue_token(
        data_dir, role=role, name=name, site=site, expires_in=timedelta(days=expires_in)
    )
    if output_format is OutputFormat.JSON:
        emit_json({"token": issued.token, "info": issued.info.to_json()})
    else:
        sys.stdout.write(issued.token + "\n")
        stderr_console().print(
            f"token {issued.info.id} ({issued.info.role.value} {issued.info.name}) expires "
            f"{issued.info.expires_at}; it is not shown again"
        )


@token_app.command("list")
def token_list(
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """List tokens (never the tokens themselves)."""
    from veracity.server.api import db
    from veracity.server.api.tokens import TokenStore
    from veracity.server.coordinator import open_coordinator

    with open_coordinator(data_dir) as service:
        db.check_schema(service.ledger.engine)
        infos = TokenStore(service.ledger.engine).list()
    if output_format is OutputFormat.JSON:
        emit_json([info.to_json() for info in infos])
        return
    emit_table(
        "tokens",
        ["id", "role", "name", "site", "expires", "revoked"],
        [[i.id, i.role.value, i.name, i.site, i.expires_at, i.revoked_at or ""] for i in infos],
    )


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (from token list).")],
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Revoke a token at once."""
    from veracity.server.api import db
    from veracity.server.api.tokens import TokenStore, operator_principal, revoke_token_recorded
    from veracity.server.coordinator import open_coordinator

    with open_coordinator(data_dir) as service:
        db.check_schema(service.ledger.engine)
        info = revoke_token_recorded(
            service, TokenStore(service.ledger.engine), operator_principal(), token_id
        )
    if output_format is OutputFormat.JSON:
        emit_json(info.to_json())
    else:
        stderr_console().print(f"token {info.id} ({info.name}) revoked at {info.revoked_at}")


budget_app = typer.Typer(
    name="budget",
    help="Query budgets: how many predictions a requester may get from a model.",
    no_args_is_help=True,
)
app.add_typer(budget_app, name="budget")
ModelOption = Annotated[
    str, typer.Option("--model", envvar="VERACITY_MODEL", help="The released model's hash.")
]


@budget_app.command("set")
def budget_set(
    model: ModelOption,
    requester: Annotated[
        str,
        typer.Option(
            "--requester",
            envvar="VERACITY_REQUESTER",
            help="Who asks: the name of the requester's token.",
        ),
    ],
    predictions: Annotated[
        int,
        typer.Option(
            "--predictions",
            envvar="VERACITY_PREDICTIONS",
            min=0,
            help="Predictions allowed in all (what requests carry).",
        ),
    ],
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Allow REQUESTER PREDICTIONS predictions from MODEL in all (a ledger event).

    A logistic model is determined by d + 1 exact predictions (d features).
    """
    from veracity.server.api import db
    from veracity.server.api.budget import BudgetStore, set_budget_recorded
    from veracity.server.api.settings import load_api_settings
    from veracity.server.api.tokens import Principal, Role
    from veracity.server.coordinator import open_coordinator, operator
    from veracity.server.registry import ModelRegistry

    settings = load_api_settings()
    with open_coordinator(data_dir) as coordinator:
        db.check_schema(coordinator.ledger.engine)
        ModelRegistry(coordinator.home.models).get(model)  # refuses an unknown model
        store = BudgetStore(
            coordinator.ledger.engine,
            default_budget=settings.inference_default_budget,
            patients_per_minute=settings.inference_patients_per_minute,
            patient_burst=settings.inference_patient_burst,
        )
        by = Principal(None, operator().name, Role.ADMIN)
        budget = set_budget_recorded(coordinator, store, by, requester, model, predictions)
    if output_format is OutputFormat.JSON:
        emit_json(budget.to_json())
    else:
        stderr_console().print(
            f"{requester} may get {predictions} predictions from {model} ({budget.used} had so far)"
        )


@budget_app.command("list")
def budget_list(
    model: ModelOption,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Every requester's budget for MODEL: set, effective, used."""
    from veracity.server.api import db
    from veracity.server.api.budget import BudgetStore
    from veracity.server.api.settings import load_api_settings
    from veracity.server.coordinator import open_coordinator

    settings = load_api_settings()
    with open_coordinator(data_dir) as coordinator:
        db.check_schema(coordinator.ledger.engine)
        budgets = BudgetStore(
            coordinator.ledger.engine,
            default_budget=settings.inference_default_budget,
            patients_per_minute=settings.inference_patients_per_minute,
            patient_burst=settings.inference_patient_burst,
        ).list(model)
    if output_format is OutputFormat.JSON:
        emit_json([b.to_json() for b in budgets])
        return
    emit_table(
        "query budgets",
        ["requester", "budget", "effective", "used"],
        [
            [b.requester, "default" if b.budget is None else b.budget, b.effective, b.used]
            for b in budgets
        ],
    )
