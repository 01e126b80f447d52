"""``flower-supernode`` with a configurable idle poll (flwr 1.42 hard-codes 3 s).

An idle SuperNode sleeps 3 s between pulls from the SuperLink, and 0.5 s while waiting for
its ClientApp's reply; neither has a flag in flwr 1.42. A site agent that wants rounds
shorter than a few seconds runs its SuperNode through this module, which replaces those two
sleeps (and the 1 s initial back-off for not-yet-uploaded message objects) and then calls
the stock ``flower-supernode`` entry point unchanged. The patch checks that the literals it
replaces are still in flwr's source and refuses to start otherwise.

Usage: ``python -m veracity.client.supernode_runner --idle-poll 0.2 -- <flower-supernode args>``
"""

from __future__ import annotations

import argparse
import functools
import inspect
import sys
import time as _time
from collections.abc import Sequence
from typing import Any

from veracity.errors import ConfigError

__all__ = ["patch_supernode_polling", "main"]

_IDLE_SLEEP = "time.sleep(3)"
_REPLY_SLEEP = "time.sleep(0.5)"


class _TimeShim:
    """Stands in for the ``time`` module inside flwr's SuperNode loop only."""

    def __init__(self, idle: float, reply: float) -> None:
        self._idle, self._reply = idle, reply

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)

    def sleep(self, seconds: float) -> None:
        """Shorten the two hard-coded waits; pass any other sleep through."""
        if seconds == 3:
            seconds = self._idle
        elif seconds == 0.5:
            seconds = self._reply
        _time.sleep(seconds)


def patch_supernode_polling(*, idle_poll: float, reply_poll: float, object_backoff: float) -> None:
    """Replace flwr's hard-coded SuperNode sleeps in this process.

    Raises
    ------
    ConfigError
        If the installed flwr no longer has the code this patch expects.
    """
    import flwr.supernode.start_client_internal as internal

    source = inspect.getsource(internal)
    if (
        _IDLE_SLEEP not in source
        or _REPLY_SLEEP not in source
        or not hasattr(internal, "pull_objects")
    ):
        raise ConfigError(
            "this flwr version's SuperNode loop differs from 1.42.0; run without --idle-poll"
        )
    patched_pull = functools.partial(
        internal.pull_objects, initial_backoff=object_backoff, backoff_cap=1.0
    )
    # Patching flwr's module globals is the point of this function.
    setattr(internal, "time", _TimeShim(idle_poll, reply_poll))  # noqa: B010
    setattr(internal, "pull_objects", patched_pull)  # noqa: B010


def main(argv: Sequence[str] | None = None) -> int:
    """Patch the polling, then run the stock ``flower-supernode`` with the remaining args."""
    args = list(sys.argv[1:] if argv is None else argv)
    split = args.index("--") if "--" in args else len(args)
    parser = argparse.ArgumentParser(prog="veracity-supernode")
    parser.add_argument("--idle-poll", type=float, default=3.0)
    parser.add_argument("--reply-poll", type=float, default=0.5)
    parser.add_argument("--object-backoff", type=float, default=1.0)
    ours = parser.parse_args(args[:split])
    patch_supernode_polling(
        idle_poll=ours.idle_poll, reply_poll=ours.reply_poll, object_backoff=ours.object_backoff
    )
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = ["flower-supernode", *args[split + 1 :]]
    flower_supernode()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
