"""``veracity keys``: Ed25519 key pairs in a key directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from veracity.output import FormatOption, OutputFormat, emit_json, emit_table

__all__ = ["app"]

app = typer.Typer(
    name="keys",
    help="Create Ed25519 key pairs (NAME.pem 0600, NAME.pub).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)


@app.command("new")
def keys_new(
    name: Annotated[str, typer.Argument(help="Key name: letters, digits, '-', '_' or '.'.")],
    key_dir: Annotated[
        Path | None,
        typer.Option(
            "--key-dir", envvar="VERACITY_KEY_DIR", help="Key directory (default: DATA_DIR/keys)."
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", envvar="VERACITY_DATA_DIR", help="Data directory."),
    ] = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Create a new Ed25519 key pair NAME.pem (mode 0600) and NAME.pub in the key directory."""
    from veracity.config import load_settings
    from veracity.crypto.keys import generate_signing_key, write_key_pair

    directory = key_dir if key_dir is not None else load_settings(data_dir=data_dir).key_dir
    key = generate_signing_key()
    private_path, public_path = write_key_pair(directory, name, key, prompt=True)
    shown = {
        "name": name,
        "private_key": str(private_path),
        "public_key": str(public_path),
        "key_id": key.public.key_id,
    }
    if output_format is OutputFormat.JSON:
        emit_json(shown)
    else:
        emit_table(None, ["field", "value"], list(shown.items()))
