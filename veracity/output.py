"""How commands talk to people: data on stdout, logs and progress on stderr.

``--format json`` prints exactly one JSON document on stdout. Colour follows rich's rules,
which honour ``NO_COLOR``.
"""

from __future__ import annotations

import enum
import json
import logging
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

__all__ = [
    "OutputFormat",
    "FormatOption",
    "stderr_console",
    "stdout_console",
    "emit_json",
    "emit_table",
    "emit_next",
    "configure_logging",
]


class OutputFormat(enum.StrEnum):
    """How a command prints its result on stdout."""

    TEXT = "text"
    JSON = "json"


FormatOption = Annotated[
    OutputFormat,
    typer.Option(
        "--format",
        envvar="VERACITY_FORMAT",
        case_sensitive=False,
        help="Output format on stdout: text for people, json for tools.",
    ),
]


def stderr_console() -> Console:
    """A console for progress, hints and errors (never data)."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


#: Width of stdout when it is not a terminal (a pipe, a file): wide enough that no hash or
#: path is ever cut or wrapped, so what is printed can be pasted into the next command.
_UNBOUNDED_WIDTH = 10_000


def stdout_console() -> Console:
    """A console for data shown to people (tables, summaries).

    On a terminal it is the terminal's width (long cells wrap, never cut); anywhere else
    it is unbounded, so a table keeps every value on one line.
    """
    width = None if sys.stdout.isatty() else _UNBOUNDED_WIDTH
    return Console(highlight=False, soft_wrap=True, width=width)


def emit_json(document: Any) -> None:
    """Write one JSON document (and a newline) to stdout."""
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=True, default=str))
    sys.stdout.write("\n")
    sys.stdout.flush()


def emit_next(*commands: str) -> None:
    """End a command's output with the commands to run next (on stderr, whole)."""
    if not commands:
        return
    lines = ["next:"] + [f"  {command}" for command in commands]
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()


def emit_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a table of data on stdout."""
    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")  # never an ellipsis: values are whole
    for row in rows:
        table.add_row(*("" if cell is None else str(cell) for cell in row))
    stdout_console().print(table)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record to whatever ``sys.stderr`` is when it is emitted.

    A handler holding the ``sys.stderr`` of the moment the CLI started writes into a
    closed stream once a caller that swapped it (a test's capture, an embedding program)
    has put it back.
    """

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_logging(*, verbose: bool) -> None:
    """Send log records to stderr: warnings by default, everything with ``-v``."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
