"""The ``veracity`` command.

Data goes to stdout (``--format json`` everywhere), logs and progress to stderr. Exit
status: 0 ok, 1 verification failed or input refused, 2 usage or configuration error,
130 interrupted. Errors print one line; ``-v`` adds the traceback.
"""

from __future__ import annotations

import functools
import logging
import sys
import traceback
from pathlib import Path
from typing import Annotated

import click
import typer

from veracity import __version__
from veracity.errors import VeracityError
from veracity.output import FormatOption, OutputFormat, configure_logging, emit_json, emit_table

__all__ = ["app", "main"]

log = logging.getLogger("veracity.cli")

app = typer.Typer(
    name="veracity",
    help="Federated analytics that hospital research networks can audit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"verbose": False}


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"veracity {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _root(
    verbose: Annotated[
        bool,
        typer.Option(
            "-v",
            "--verbose",
            envvar="VERACITY_VERBOSE",
            help="Log everything, and show tracebacks.",
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    _state["verbose"] = verbose
    configure_logging(verbose=verbose)


@app.command("config")
def config_show(
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", envvar="VERACITY_DATA_DIR", help="Data directory."),
    ] = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Show the settings in effect (data directory, database, keys)."""
    from veracity.config import load_settings  # pydantic-settings: only when used

    settings = load_settings(data_dir=data_dir)
    shown = {
        "data_dir": str(settings.data_dir.resolve()),
        "database_url": settings.db_url,
        "key_dir": str(settings.key_dir.resolve()),
        "environment": settings.environment,
    }
    if output_format is OutputFormat.JSON:
        emit_json(shown)
    else:
        emit_table(None, ["setting", "value"], sorted(shown.items()))


def _register_subcommands() -> None:
    """Attach the command groups of the subpackages (each imports its heavy deps lazily)."""
    from veracity.admin_cli import admin_app
    from veracity.analysis_cli import app as analysis_app
    from veracity.client.cli import site_app
    from veracity.client.node_cli import start as site_start
    from veracity.client.predict_cli import register as register_predict
    from veracity.crypto.cli import app as keys_app
    from veracity.demo_cli import demo
    from veracity.ledger.cli import app as ledger_app
    from veracity.ledger.log_key_cli import register as register_log_key_commands
    from veracity.ledger.witness_cli import register as register_witness_commands
    from veracity.server.cli import app as server_app
    from veracity.server.replay_cli import register as register_replay

    app.command("demo")(demo)
    app.add_typer(keys_app, name="keys")
    register_witness_commands(ledger_app)
    register_log_key_commands(ledger_app)
    register_replay(ledger_app)
    app.add_typer(ledger_app, name="ledger")
    site_app.command("start")(site_start)
    app.add_typer(site_app, name="site")
    app.add_typer(server_app, name="server")
    app.add_typer(admin_app, name="admin")
    app.add_typer(analysis_app, name="analysis")
    register_predict(app)


def _fail(message: str, code: int, error: BaseException) -> int:
    sys.stderr.write(f"error: {message}\n")
    if _state["verbose"]:
        traceback.print_exception(error, file=sys.stderr)
    return code


@functools.cache
def _command() -> click.Command:
    """``app`` as a click command, built once per process.

    Typer builds the whole tree (some eighty commands) again on every call of ``app``;
    one process that runs several commands (the tests run hundreds) builds it once.
    """
    return typer.main.get_command(app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    _state["verbose"] = False
    args = list(sys.argv[1:] if argv is None else argv)
    if "-v" in args or "--verbose" in args:
        _state["verbose"] = True
    try:
        result = _command().main(args=args, prog_name="veracity", standalone_mode=False)
    except click.exceptions.Abort as err:
        return _fail("interrupted", 130, err)
    except KeyboardInterrupt as err:
        return _fail("interrupted", 130, err)
    except click.ClickException as err:
        err.show(file=sys.stderr)
        return err.exit_code
    except VeracityError as err:
        log.debug("command failed", exc_info=err)
        return _fail(str(err), err.exit_code, err)
    except Exception as err:  # noqa: BLE001 - the CLI top level turns anything into one line
        return _fail(f"unexpected {type(err).__name__}: {err} (run with -v for details)", 2, err)
    return result if isinstance(result, int) else 0


_register_subcommands()
