"""A Flower ``Grid`` that polls for replies at a chosen interval.

flwr 1.42's ``Grid.send_and_receive`` sleeps a hard-coded 3 s between pulls, so a phase
that needs half a second costs 3. ``push_messages`` and ``pull_messages`` are public Grid
methods, so this wrapper delegates everything to the Grid Flower hands the ServerApp and
only replaces the wait loop.

It also bounds each pull by the round's deadline. A reply's message can reach the SuperLink
before its objects (the update's arrays) do; when its site dies in between, Flower 1.42's
``pull_messages`` retries those objects with backoff until the SuperLink's object-push
session expires (180 s) or for up to two hours, whatever the round's timeout. Here the
retries stop at the deadline: the reply becomes Flower's own ``MESSAGE_UNAVAILABLE`` error
reply, the strategy drops that site, and the round goes on with the others. A pull that
ran past the deadline is followed by one last pull, so that replies which arrived while it
was blocked are not lost.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from veracity.errors import InputError
from veracity.supervise import OBJECT_BACKOFF_CAP

__all__ = ["PollingGrid", "replies_by_site", "reply_record"]

#: Seconds a pull may retry a reply's objects once the round's deadline has passed.
LAST_PULL_SECONDS = 1.0
#: First wait between retries of a reply's objects not yet uploaded (Flower's defaults, 1 s
#: and then up to 10 s, put up to a second on every round whose objects trail their
#: message); the longest is :data:`veracity.supervise.OBJECT_BACKOFF_CAP`.
OBJECT_BACKOFF = 0.05


@contextlib.contextmanager
def _object_pulls_bounded(seconds: float) -> Iterator[None]:
    """Within the block, Flower's HTTP grid retries a reply's objects for ``seconds`` at most.

    ``flwr.superlink.grid.http_grid`` calls its module-level ``pull_objects`` with the
    library's defaults (``PULL_MAX_TIME`` 7200 s); the ServerApp is single-threaded, so the
    bound is swapped in for the one call and restored after it.
    """
    from flwr.superlink.grid import http_grid

    unbounded = getattr(http_grid, "pull_objects")  # noqa: B009 - not re-exported
    bounded = functools.partial(
        unbounded,
        max_time=max(seconds, LAST_PULL_SECONDS),
        initial_backoff=OBJECT_BACKOFF,
        backoff_cap=OBJECT_BACKOFF_CAP,
        max_tries_per_object=None,  # the deadline bounds the retries, not a count
    )
    setattr(http_grid, "pull_objects", bounded)  # noqa: B010 - see above
    try:
        yield
    finally:
        setattr(http_grid, "pull_objects", unbounded)  # noqa: B010


class PollingGrid(Grid):
    """Delegates to ``inner``; ``send_and_receive`` pulls every ``poll_interval`` seconds."""

    def __init__(
        self, inner: Grid, *, poll_interval: float, only_nodes: frozenset[int] | None = None
    ) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self._inner = inner
        self.poll_interval = poll_interval
        self.only_nodes = only_nodes

    def restricted_to(self, node_ids: frozenset[int]) -> PollingGrid:
        """A view of this grid that sees only ``node_ids`` (strategies sample from it)."""
        return PollingGrid(self._inner, poll_interval=self.poll_interval, only_nodes=node_ids)

    def set_run(self, run: Run) -> None:
        """Delegate."""
        self._inner.set_run(run)

    @property
    def run(self) -> Run:
        """The run this grid operates in."""
        return self._inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Build a message (the same way Flower's Grid does)."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """Connected nodes (only those in ``only_nodes``, when set)."""
        ids = list(self._inner.get_node_ids())
        return ids if self.only_nodes is None else [n for n in ids if n in self.only_nodes]

    def get_nodes(self) -> Iterable[NodeInfo]:
        """Connected nodes with their registered names and public keys."""
        nodes = list(self._inner.get_nodes())
        if self.only_nodes is None:
            return nodes
        return [n for n in nodes if n.node_id in self.only_nodes]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Delegate."""
        return self._inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Delegate."""
        return self._inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push ``messages`` and pull replies until all arrived or ``timeout`` passed."""
        pending = {mid for mid in self._inner.push_messages(list(messages)) if mid}
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            last = deadline is not None and time.monotonic() >= deadline
            if deadline is None:
                got = list(self._inner.pull_messages(list(pending)))
            else:
                with _object_pulls_bounded(deadline - time.monotonic()):
                    got = list(self._inner.pull_messages(list(pending)))
            replies.extend(got)
            pending -= {reply.metadata.reply_to_message_id for reply in got}
            if not pending or last:
                break
            if deadline is not None and time.monotonic() >= deadline:
                continue  # one last pull: replies that arrived while this one was blocked
            time.sleep(self.poll_interval)
        return replies


def replies_by_site(
    grid: PollingGrid,
    messages: Iterable[Message],
    sites_by_node: Mapping[int, str],
    *,
    timeout: float,
) -> Iterator[tuple[str, Message]]:
    """Send ``messages``; yield each reply with the site its node was matched to.

    Replies that arrive within ``timeout`` come as they arrive; one from a node that is not
    in ``sites_by_node`` is left out.
    """
    for reply in grid.send_and_receive(messages, timeout=timeout):
        site = sites_by_node.get(int(reply.metadata.src_node_id))
        if site is not None:
            yield site, reply


def reply_record(reply: Message, name: str) -> dict[str, Any]:
    """The config record ``name`` of a site's reply.

    Raises
    ------
    InputError
        If the site's app answered with an error.
    KeyError
        If the reply holds no such record.
    """
    if reply.has_error():
        raise InputError(f"the site's app failed: {reply.error.reason}")
    return dict(reply.content.config_records[name])
