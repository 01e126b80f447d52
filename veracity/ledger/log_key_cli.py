"""``veracity ledger rotate-log-key|retire-log-key|recover-log-key``: change the log key.

Each needs the offline identity key (``--identity-key``, the private half of the
``root.pub`` auditors trust); rotation and retirement need the current log key too, a
recovery (the log key was lost or stolen) does not. See :mod:`veracity.ledger.log_key`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from veracity.ledger.cli import DataDirOption, DbOption, KeyDirOption, _db_url, _key_dir
from veracity.output import FormatOption, OutputFormat, emit_json, emit_table

__all__ = ["register"]

IdentityKeyOption = Annotated[
    Path,
    typer.Option(
        "--identity-key",
        envvar="VERACITY_IDENTITY_KEY",
        exists=True,
        dir_okay=False,
        help="The log's offline identity key (the private half of root.pub).",
    ),
]
LogKeyOption = Annotated[
    Path | None,
    typer.Option(
        "--log-key",
        envvar="VERACITY_LOG_KEY",
        dir_okay=False,
        help="The current log key (default: KEY_DIR/log.pem, else KEY_DIR/root.pem).",
    ),
]


def _current_log_key(log_key: Path | None, key_dir: Path | None, data_dir: Path | None) -> Any:
    from veracity.crypto.keys import load_signing_key
    from veracity.ledger.cli import _log_key_path

    return load_signing_key(
        log_key if log_key is not None else _log_key_path(_key_dir(key_dir, data_dir))
    )


def _new_log_key(path: Path) -> tuple[Any, bool]:
    """The key at ``path`` or a new one written there, and whether it was made now.

    A new key's passphrase is asked of a person at a terminal (or taken from the variable).

    Raises
    ------
    typer.BadParameter
        If a new key's file name does not end in ``.pem``.
    """
    from veracity.crypto.keys import generate_signing_key, load_signing_key, write_key_pair

    if path.exists():
        return load_signing_key(path), False
    if path.suffix != ".pem":
        raise typer.BadParameter(
            "the new log key file must end in .pem", param_hint="--new-log-key"
        )
    key = generate_signing_key()
    write_key_pair(path.parent, path.stem, key, prompt=True)
    return key, True


def _emit(shown: dict[str, Any], output_format: OutputFormat) -> None:
    if output_format is OutputFormat.JSON:
        emit_json(shown)
    else:
        emit_table(None, ["field", "value"], list(shown.items()))


def rotate_log_key_command(
    identity_key: IdentityKeyOption,
    new_log_key: Annotated[
        Path,
        typer.Option(
            "--new-log-key",
            envvar="VERACITY_NEW_LOG_KEY",
            dir_okay=False,
            help="The new log key (NAME.pem); made, with NAME.pub beside it, if absent.",
        ),
    ],
    log_key: LogKeyOption = None,
    db: DbOption = None,
    key_dir: KeyDirOption = None,
    data_dir: DataDirOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Enrol a new log key, signed by the identity key and handed over by the current one.

    The current log key keeps co-signing checkpoint notes (the overlap) until
    `veracity ledger retire-log-key` retires it. A coordinator running on the old key must
    be restarted with the new one (`veracity server rotate-log-key` moves the files).
    """
    from veracity.crypto.keys import load_signing_key
    from veracity.ledger.ledger import Ledger
    from veracity.ledger.log_key import rotate_log_key

    identity = load_signing_key(identity_key)
    outgoing = _current_log_key(log_key, key_dir, data_dir)
    new, created = _new_log_key(new_log_key)
    with Ledger.open(_db_url(db, data_dir), root_key=outgoing, checkpoint_every=0) as ledger:
        entry = rotate_log_key(ledger, identity=identity, new_key=new, requested_by="operator")
    _emit(
        {
            "seq": entry.seq,
            "log_key_id": new.public.key_id,
            "previous_log_key_id": outgoing.public.key_id,
            "identity_key_id": identity.public.key_id,
            "created_log_key": created,
        },
        output_format,
    )


def retire_log_key_command(
    identity_key: IdentityKeyOption,
    key_id: Annotated[
        str | None,
        typer.Option(
            "--key-id",
            envvar="VERACITY_KEY_ID",
            help="The old log key to retire (default: the one log key in its overlap).",
        ),
    ] = None,
    reason: Annotated[
        str,
        typer.Option("--reason", envvar="VERACITY_REASON", help="Why (recorded)."),
    ] = "the overlap after a log key rotation ended",
    log_key: LogKeyOption = None,
    db: DbOption = None,
    key_dir: KeyDirOption = None,
    data_dir: DataDirOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """End a rotation's overlap: the identity retires the old log key, which signs nothing after."""
    from veracity.crypto.keys import load_signing_key
    from veracity.errors import InputError
    from veracity.ledger.ledger import Ledger
    from veracity.ledger.log_key import retire_log_key

    identity = load_signing_key(identity_key)
    current = _current_log_key(log_key, key_dir, data_dir)
    with Ledger.open(_db_url(db, data_dir), root_key=current, checkpoint_every=0) as ledger:
        if key_id is None:
            overlap = [k for k in ledger.log_keys_at(ledger.size()) if k != current.public]
            if len(overlap) != 1:
                raise InputError(
                    f"{len(overlap)} old log keys are in their overlap: name one with --key-id"
                )
            key_id = overlap[0].key_id
        entry = retire_log_key(
            ledger, identity=identity, key_id=key_id, reason=reason, requested_by="operator"
        )
    _emit({"seq": entry.seq, "retired_log_key_id": key_id}, output_format)


def recover_log_key_command(
    identity_key: IdentityKeyOption,
    new_log_key: Annotated[
        Path,
        typer.Option(
            "--new-log-key",
            envvar="VERACITY_NEW_LOG_KEY",
            dir_okay=False,
            help="The new log key (NAME.pem); made, with NAME.pub beside it, if absent.",
        ),
    ],
    reason: Annotated[
        str,
        typer.Option("--reason", envvar="VERACITY_REASON", help="Why (recorded, shown)."),
    ],
    db: DbOption = None,
    data_dir: DataDirOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Replace a lost or stolen log key: a visible key.recovered signed by the identity key.

    No hand-over by the old key; the old log key (and any still in a rotation overlap)
    signs nothing after this entry. Site witnesses log the recovery loudly.
    """
    from veracity.contracts.events import ROOT_ACTOR
    from veracity.crypto.keys import load_signing_key
    from veracity.ledger.ledger import Ledger
    from veracity.ledger.log_key import recover_log_key

    identity = load_signing_key(identity_key)
    new, created = _new_log_key(new_log_key)
    with Ledger.open(_db_url(db, data_dir), checkpoint_every=0) as ledger:
        lost = ledger.key_at(ROOT_ACTOR)
        entry = recover_log_key(
            ledger, identity=identity, new_key=new, reason=reason, requested_by="operator"
        )
    _emit(
        {
            "seq": entry.seq,
            "log_key_id": new.public.key_id,
            "replaced_log_key_id": None if lost is None else lost.key_id,
            "identity_key_id": identity.public.key_id,
            "created_log_key": created,
        },
        output_format,
    )


def register(app: typer.Typer) -> None:
    """Add these commands to the ``ledger`` command group."""
    app.command("rotate-log-key")(rotate_log_key_command)
    app.command("retire-log-key")(retire_log_key_command)
    app.command("recover-log-key")(recover_log_key_command)
