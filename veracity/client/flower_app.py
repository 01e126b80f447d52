"""The site's Flower ClientApp: unpack the message, call the site agent, pack the reply.

Runs inside :mod:`veracity.client.worker`, which sets the run's code hash (the SHA-256 of
the FAB the SuperNode received) for the duration of each task.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from collections.abc import Iterator
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from veracity import __version__

__all__ = ["app", "run_code_hash", "current_code_hash"]

app = ClientApp()

_CODE_HASH: contextvars.ContextVar[str | None] = contextvars.ContextVar("code_hash", default=None)


@contextlib.contextmanager
def run_code_hash(code_hash: str) -> Iterator[None]:
    """Make ``code_hash`` the current run's code hash while the block runs."""
    token = _CODE_HASH.set(code_hash)
    try:
        yield
    finally:
        _CODE_HASH.reset(token)


def current_code_hash() -> str | None:
    """The code hash the worker computed for the running task, if any."""
    return _CODE_HASH.get()


def _site_dir(context: Context) -> Path:
    return Path(str(context.node_config["site-dir"]))


@app.query("hello")
def hello(msg: Message, context: Context) -> Message:
    """Tell the coordinator which site this node is (no data, no statistics)."""
    site = json.loads((_site_dir(context) / "site.json").read_text(encoding="utf-8"))
    record = ConfigRecord(
        {"site": str(site["name"]), "version": __version__, "code-hash": current_code_hash() or ""}
    )
    return Message(RecordDict({"site": record}), reply_to=msg)
