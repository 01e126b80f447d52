"""``flower-supernode`` with configurable polling (flwr 1.42 hard-codes 3 s).

An idle SuperNode sleeps 3 s between pulls from the SuperLink, and 0.5 s while waiting for
its ClientApp's reply; neither has a flag in flwr 1.42. A site agent that wants rounds
shorter than a few seconds runs its SuperNode through this module, which replaces those two
sleeps (and the 1 s initial back-off for not-yet-uploaded message objects) and then calls
the stock ``flower-supernode`` entry point unchanged. The patch checks that the literals it
replaces are still in flwr's source and refuses to start otherwise.

The pull between messages waits ``--active-poll`` seconds for a few seconds after the node
last received a message or waited for its ClientApp (so the next round's message is picked
up at once), then backs off to ``--idle-poll`` (each pull costs the SuperLink a
node-signature check and a few SQLite transactions).

Usage: ``python -m veracity.client.supernode_runner --idle-poll 1 --active-poll 0.1 --
<flower-supernode args>``
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
from veracity.supervise import OBJECT_BACKOFF_CAP, OBJECT_PULL_TRIES, PollBackoff

__all__ = ["patch_supernode_polling", "main"]

_IDLE_SLEEP = "time.sleep(3)"
_REPLY_SLEEP = "time.sleep(0.5)"


class _TimeShim:
    """Stands in for the ``time`` module inside flwr's SuperNode loop only."""

    def __init__(self, backoff: PollBackoff, reply: float) -> None:
        self.backoff, self._reply = backoff, reply

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)

    def sleep(self, seconds: float) -> None:
        """Replace the two hard-coded waits; pass any other sleep through."""
        if seconds == 3:
            seconds = self.backoff.next_wait()
        elif seconds == 0.5:
            self.backoff.activity()  # a message is being handled: the next comes soon
            seconds = self._reply
        _time.sleep(seconds)


def patch_supernode_polling(
    *, idle_poll: float, reply_poll: float, object_backoff: float, active_poll: float | None = None
) -> None:
    """Replace flwr's hard-coded SuperNode sleeps in this process.

    Between messages the node waits ``active_poll`` (default: ``idle_poll``) seconds for a
    few seconds after its last message, then backs off to ``idle_poll``.

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
    backoff = PollBackoff(active=idle_poll if active_poll is None else active_poll, idle=idle_poll)
    pull_objects = functools.partial(
        internal.pull_objects,
        initial_backoff=object_backoff,
        backoff_cap=OBJECT_BACKOFF_CAP,
        max_tries_per_object=OBJECT_PULL_TRIES,
    )

    def patched_pull(*args: Any, **kwargs: Any) -> Any:
        backoff.activity()  # a message arrived
        return pull_objects(*args, **kwargs)

    # Patching flwr's module globals is the point of this function.
    setattr(internal, "time", _TimeShim(backoff, reply_poll))  # noqa: B010
    setattr(internal, "pull_objects", patched_pull)  # noqa: B010


def main(argv: Sequence[str] | None = None) -> int:
    """Patch the polling, then run the stock ``flower-supernode`` with the remaining args."""
    args = list(sys.argv[1:] if argv is None else argv)
    split = args.index("--") if "--" in args else len(args)
    parser = argparse.ArgumentParser(prog="veracity-supernode")
    parser.add_argument("--idle-poll", type=float, default=3.0)
    parser.add_argument("--active-poll", type=float, default=None)
    parser.add_argument("--reply-poll", type=float, default=0.5)
    parser.add_argument("--object-backoff", type=float, default=0.05)
    ours = parser.parse_args(args[:split])
    patch_supernode_polling(
        idle_poll=ours.idle_poll,
        reply_poll=ours.reply_poll,
        object_backoff=ours.object_backoff,
        active_poll=ours.active_poll,
    )
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = ["flower-supernode", *args[split + 1 :]]
    flower_supernode()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
