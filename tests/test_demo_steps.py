"""The demo's structure without running it: its named steps, its state and its API client.

The demo itself runs in tests/test_demo.py (slow, real processes).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from veracity.api_client import ApiError, CoordinatorClient
from veracity.demo import DEMO_STEPS, DemoOptions, DemoState
from veracity.errors import ConfigError
from veracity.server.api.problems import PROBLEM_TYPES, problem_document


def test_the_steps_run_in_order_under_the_timing_keys_of_the_summary() -> None:
    assert [step.key for step in DEMO_STEPS] == [
        "coordinator", "sites", "enrol", "study", "warmup", "analytics", "training",
        "inference", "explanation", "audit", "replay",
    ]  # fmt: skip
    assert len({step.run for step in DEMO_STEPS}) == len(DEMO_STEPS)


def test_the_summary_of_an_unfinished_demo_names_what_is_missing(tmp_path: Path) -> None:
    state = DemoState(DemoOptions(data_dir=tmp_path), tmp_path)
    with pytest.raises(ConfigError, match="no study"):
        state.summary()
    with pytest.raises(ConfigError, match="no admin API"):
        _ = state.api
    state.close()  # nothing started, nothing to stop


def test_the_client_raises_the_problem_the_api_answers() -> None:
    problem = problem_document(
        PROBLEM_TYPES["approval_missing"], "1 site(s) approved", instance="/api/v1/runs"
    )

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer t0ken"
        return httpx.Response(
            409, json=problem, headers={"content-type": "application/problem+json"}
        )

    with (
        CoordinatorClient(
            "http://coordinator/api/v1", transport=httpx.MockTransport(answer)
        ) as client,
        pytest.raises(ApiError) as refused,
    ):
        client.start_run("t0ken", "a" * 64)
    assert (refused.value.status, refused.value.code) == (409, "approval_missing")
    assert "POST /runs answered 409 approval_missing: 1 site(s) approved" in str(refused.value)
