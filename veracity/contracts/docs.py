"""The contract tables of docs/architecture.md, generated from the models.

Each table sits in the page between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->``.
``python -m veracity.contracts.docs docs/architecture.md`` rewrites them from the models;
``tests/contracts/test_docs.py`` keeps the page equal to this output, so the documented
contract is the enforced one.
"""

from __future__ import annotations

import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel

from veracity.contracts.base import SitePayload
from veracity.contracts.events import PAYLOADS, ROOT_KINDS
from veracity.contracts.receipts import Receipt
from veracity.core.fields import (
    HEX64_PATTERN,
    NAME_PATTERN,
    SITE_NAME_PATTERN,
    check_number,
    check_timestamp,
)

__all__ = ["TABLES", "events_table", "receipt_table", "generated_blocks", "render", "main"]


def _constrained_label(base: Any, metadata: list[Any]) -> str | None:
    """A reader's name for a shared field type (:mod:`veracity.core.fields`), if it is one."""
    for item in metadata:
        pattern = getattr(item, "pattern", None)
        if pattern == HEX64_PATTERN:
            return "hex SHA-256"
        if pattern == NAME_PATTERN:
            return "name"
        if pattern == SITE_NAME_PATTERN:
            return "site name"
        validator = getattr(item, "func", None)
        if validator is check_timestamp:
            return "RFC 3339 time"
        if validator is check_number:
            return r"finite number, \|x\| < 2^53"
    return None


def _type_label(annotation: Any, metadata: list[Any] | None = None) -> str:
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        base, *extra = get_args(annotation)
        return _type_label(base, [*(metadata or []), *extra])
    if metadata:
        label = _constrained_label(annotation, metadata)
        if label is not None:
            return label
    if origin is Literal:
        return " \\| ".join(f"`{value}`" for value in get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        label = " \\| ".join(_type_label(a) for a in options)
        return f"{label} or null" if len(options) < len(get_args(annotation)) else label
    if origin is list:
        (item,) = get_args(annotation) or (Any,)
        return f"list of {_type_label(item)}"
    if origin is dict:
        _key, value = get_args(annotation) or (Any, Any)
        return f"object of {_type_label(value)}" if value is not Any else "object"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        inner = ", ".join(f"`{name}`" for name in annotation.model_fields)
        return f"{{{inner}}}"
    names = {str: "text", int: "integer", float: "number", bool: "boolean"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _fields(model: type[BaseModel]) -> str:
    described = []
    for name, info in model.model_fields.items():
        wire = info.alias or name
        optional = "" if info.is_required() else ", optional"
        described.append(f"`{wire}` ({_type_label(info.annotation, info.metadata)}{optional})")
    return "; ".join(described)


def _summary(model: type[BaseModel]) -> str:
    return (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")


def events_table() -> str:
    """The Markdown table of every ledger event kind: who records it, what it says."""
    lines = ["| kind | recorded by | what it says | payload fields |", "| --- | --- | --- | --- |"]
    for kind in sorted(PAYLOADS):
        model = PAYLOADS[kind]
        if kind in ROOT_KINDS:
            actor = "root"
        elif issubclass(model, SitePayload):
            actor = "site (`site` is the actor)"
        else:
            actor = "any enrolled actor"
        lines.append(f"| `{kind}` | {actor} | {_summary(model)} | {_fields(model)} |")
    return "\n".join(lines)


def receipt_table() -> str:
    """The Markdown table of a receipt's fields."""
    lines = ["| field | type |", "| --- | --- |"]
    for name, info in Receipt.model_fields.items():
        lines.append(f"| `{name}` | {_type_label(info.annotation, info.metadata)} |")
    return "\n".join(lines)


#: Every generated table, by the name its markers carry.
TABLES: dict[str, Callable[[], str]] = {
    "contracts.events": events_table,
    "contracts.receipt": receipt_table,
}


def _block(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- generated: {re.escape(name)} -->)(.*?)(<!-- end: {re.escape(name)} -->)",
        re.DOTALL,
    )


def generated_blocks(page: str) -> dict[str, str]:
    """The text between each table's markers in ``page``."""
    blocks = {}
    for name in TABLES:
        found = _block(name).search(page)
        if found is not None:
            blocks[name] = found.group(2).strip("\n")
    return blocks


def render(page: str) -> str:
    """``page`` with every generated table rewritten from the models."""
    for name, table in TABLES.items():
        text = table()

        def replace(found: re.Match[str], text: str = text) -> str:
            return f"{found.group(1)}\n{text}\n{found.group(3)}"

        page = _block(name).sub(replace, page)
    return page


def main(argv: list[str] | None = None) -> None:
    """Rewrite the tables in the pages named on the command line (print them without)."""
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        for name, table in TABLES.items():
            print(f"<!-- {name} -->\n{table()}\n")
    for path in map(Path, paths):
        path.write_text(render(path.read_text(encoding="utf-8")), encoding="utf-8")


if __name__ == "__main__":
    main()
