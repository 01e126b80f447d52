"""Polling that is fast while a run is active and backs off while idle (#16)."""

from __future__ import annotations

import time

import pytest

from veracity.client import supernode_runner
from veracity.supervise import PollBackoff


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_polls_at_the_active_interval_while_hot_then_backs_off_to_idle() -> None:
    clock = Clock()
    backoff = PollBackoff(active=0.1, idle=1.0, hot=5.0, factor=2.0, clock=clock)

    assert [backoff.next_wait() for _ in range(3)] == [0.1, 0.1, 0.1]
    clock.now += 5.0
    assert [backoff.next_wait() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.activity()
    assert backoff.next_wait() == 0.1
    clock.now += 6.0
    assert [backoff.next_wait() for _ in range(2)] == [0.1, 0.2]


def test_an_idle_interval_below_the_active_one_is_used_throughout() -> None:
    backoff = PollBackoff(active=0.5, idle=0.2, hot=0.0, clock=Clock())

    assert {backoff.next_wait() for _ in range(5)} == {0.2}


@pytest.mark.parametrize("bad", [{"active": 0.0}, {"idle": -1.0}, {"hot": -1.0}, {"factor": 0.5}])
def test_nonsense_intervals_are_refused(bad: dict[str, float]) -> None:
    terms = {"active": 0.1, "idle": 1.0, "hot": 5.0, "factor": 1.5} | bad
    with pytest.raises(ValueError, match="poll intervals"):
        PollBackoff(
            active=terms["active"], idle=terms["idle"], hot=terms["hot"], factor=terms["factor"]
        )


def test_the_supernode_waits_replace_flowers_sleeps_and_a_reply_wait_is_activity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """flwr 1.42 sleeps 3 s between idle pulls: the shim asks the backoff instead."""
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)  # the shim sleeps through time.sleep
    clock = Clock()
    backoff = PollBackoff(active=0.1, idle=2.0, hot=5.0, factor=2.0, clock=clock)
    shim = supernode_runner._TimeShim(backoff, reply=0.05)
    clock.now += 10.0  # idle for a while

    shim.sleep(3)
    shim.sleep(3)
    shim.sleep(0.5)  # waiting for the ClientApp's reply: a round is running
    shim.sleep(3)
    shim.sleep(7)  # any other sleep is left alone

    assert slept == [0.1, 0.2, 0.05, 0.1, 7]
