"""The inference rate limit (GCRA in the database): its promise holds for any arrivals."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hypothesis_examples import examples
from veracity.errors import ConfigError
from veracity.server.api.ratelimit import RateLimiter
from veracity.server.api.tokens import Role, TokenStore

from .conftest import make_coordinator


@pytest.fixture
def engine(tmp_path: Path, db_url: str) -> Iterator[Any]:
    with make_coordinator(tmp_path / "coordinator", db_url) as coordinator:
        yield coordinator.ledger.engine


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


arrivals = st.lists(st.floats(min_value=0, max_value=120, allow_nan=False), max_size=30).map(sorted)


@settings(
    max_examples=examples(25),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(times=arrivals, per_minute=st.sampled_from([6.0, 30.0, 120.0]), burst=st.integers(1, 5))
def test_no_window_admits_more_than_the_burst_plus_the_rate(
    engine: Any, times: list[float], per_minute: float, burst: int
) -> None:
    token_id = TokenStore(engine).create(role=Role.RESEARCHER, name="clinic").info.id
    clock = Clock()
    limiter = RateLimiter(engine, per_minute=per_minute, burst=burst, clock=clock)
    allowed = []
    for moment in times:
        clock.now = 1_000.0 + moment
        if limiter.acquire(token_id) is None:
            allowed.append(moment)
    for i, start in enumerate(allowed):
        for j in range(i, len(allowed)):
            span = allowed[j] - start
            assert j - i + 1 <= burst + span * per_minute / 60.0 + 1e-6


@settings(
    max_examples=examples(10),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(per_minute=st.sampled_from([6.0, 60.0]), burst=st.integers(1, 4), count=st.integers(1, 12))
def test_requests_at_the_sustained_rate_are_never_refused(
    engine: Any, per_minute: float, burst: int, count: int
) -> None:
    token_id = TokenStore(engine).create(role=Role.RESEARCHER, name="clinic").info.id
    clock = Clock()
    limiter = RateLimiter(engine, per_minute=per_minute, burst=burst, clock=clock)
    for i in range(count):
        clock.now = 1_000.0 + i * 60.0 / per_minute
        assert limiter.acquire(token_id) is None


def test_a_refusal_says_when_to_retry(engine: Any) -> None:
    token_id = TokenStore(engine).create(role=Role.RESEARCHER, name="clinic").info.id
    clock = Clock()
    limiter = RateLimiter(engine, per_minute=6, burst=1, clock=clock)
    assert limiter.acquire(token_id) is None
    clock.now = 4.0
    wait = limiter.acquire(token_id)
    assert wait == pytest.approx(6.0)
    clock.now += 6.0
    assert limiter.acquire(token_id) is None


def test_a_rate_limit_needs_a_positive_rate(engine: Any) -> None:
    with pytest.raises(ConfigError):
        RateLimiter(engine, per_minute=0, burst=1)
