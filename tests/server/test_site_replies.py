"""Replies from the sites' nodes, by site: what site_hello and analysis_run both read."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from veracity.errors import InputError
from veracity.server import site_hello
from veracity.server.polling_grid import PollingGrid, replies_by_site, reply_record
from veracity.server.site_hello import ask_site_software


class _Reply:
    def __init__(
        self, node: int, records: dict[str, dict[str, Any]] | None = None, error: str | None = None
    ) -> None:
        self.metadata = SimpleNamespace(src_node_id=node)
        self.content = SimpleNamespace(config_records=records or {})
        self.error = SimpleNamespace(reason=error)

    def has_error(self) -> bool:
        return self.error.reason is not None


class _Grid:
    def __init__(self, replies: list[_Reply]) -> None:
        self.replies = replies
        self.sent: list[Any] = []

    def send_and_receive(self, messages: Any, *, timeout: float) -> Any:
        self.sent = list(messages)
        return iter(self.replies)


def _grid(*replies: _Reply) -> PollingGrid:
    return cast(PollingGrid, _Grid(list(replies)))


def test_replies_come_with_their_site_and_unknown_nodes_are_left_out() -> None:
    grid = _grid(_Reply(1), _Reply(99), _Reply(2))
    got = list(replies_by_site(grid, [], {1: "hospital-a", 2: "hospital-b"}, timeout=1.0))
    assert [site for site, _ in got] == ["hospital-a", "hospital-b"]


def test_a_reply_record_is_read_or_refused() -> None:
    ok = cast(Any, _Reply(1, {"site": {"site": "hospital-a"}}))
    assert reply_record(ok, "site") == {"site": "hospital-a"}
    with pytest.raises(KeyError):
        reply_record(ok, "answers")
    failed = cast(Any, _Reply(1, error="boom"))
    with pytest.raises(InputError, match="the site's app failed: boom"):
        reply_record(failed, "site")


def test_hello_keeps_only_the_reports_of_the_matched_sites(monkeypatch: pytest.MonkeyPatch) -> None:
    # A Flower Message needs a run's context; the grid here only counts what is sent.
    monkeypatch.setattr(site_hello, "Message", lambda *args, **kwargs: (args, kwargs))
    hello = {"site": "hospital-a", "version": "1.0", "code-hash": ""}
    grid = _grid(
        _Reply(1, {"site": hello}),
        _Reply(2, error="crashed"),  # app failed: dropped
        _Reply(3, {"site": {**hello, "site": "hospital-a"}}),  # claims another site: dropped
        _Reply(4, {}),  # no record: dropped
        _Reply(99, {"site": hello}),  # not matched: left out
    )
    sites = {1: "hospital-a", 2: "hospital-b", 3: "hospital-c", 4: "hospital-d"}
    reports = ask_site_software(grid, sites, run_id="run-1", timeout=1.0)
    assert [(r.site, r.version, r.run_id) for r in reports] == [("hospital-a", "1.0", "run-1")]
    assert len(cast(_Grid, grid).sent) == 4
