"""The ServerApp's grid: replies pulled at its own interval, bounded by the round's deadline.

The inner grid here plays Flower's contract in one process (ids on push, replies once on
pull); its first pull blocks past the deadline, as Flower's pull does while it retries the
objects of a reply whose site died during its upload.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

import pytest
from flwr.app import Error, Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from veracity.server.polling_grid import PollingGrid

TIMEOUT = 0.5


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    # Flower stamps messages with the running task's identity; the test plays one task.
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


class _BlockingGrid(Grid):
    """Two sites asked; the first pull blocks past the deadline, the second reply is late."""

    def __init__(self) -> None:
        self.pushed: list[Message] = []
        self.late: list[Message] = []
        self.pulls = 0

    def set_run(self, run: Run) -> None:
        """Not needed in process."""

    @property
    def run(self) -> Run:
        return Run.create_empty(1)

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return [11, 12]

    def get_nodes(self) -> Iterable[NodeInfo]:
        return [NodeInfo(node_id=11), NodeInfo(node_id=12)]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            self.pushed.append(message)
        return [m.metadata.message_id for m in self.pushed]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.pulls += 1
        if self.pulls == 1:  # the dead site's objects, retried until the deadline
            time.sleep(TIMEOUT + 0.3)
            self.late.append(Message(RecordDict(), reply_to=self.pushed[1]))  # arrived meanwhile
            return [Message(Error(code=3, reason="objects unavailable"), reply_to=self.pushed[0])]
        ready, self.late = self.late, []
        return [m for m in ready if m.metadata.reply_to_message_id in set(message_ids)]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        raise AssertionError("PollingGrid runs its own loop")


def test_a_reply_that_arrived_while_a_pull_was_blocked_past_the_deadline_is_kept() -> None:
    inner = _BlockingGrid()
    grid = PollingGrid(inner, poll_interval=0.05)
    asked = [grid.create_message(RecordDict(), "train", node, "1") for node in (11, 12)]

    replies = list(grid.send_and_receive(asked, timeout=TIMEOUT))

    assert [r.has_error() for r in replies] == [True, False]
    assert {r.metadata.reply_to_message_id for r in replies} == {
        m.metadata.message_id for m in inner.pushed
    }
