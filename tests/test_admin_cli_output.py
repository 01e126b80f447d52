"""``veracity admin ... list/show``: the API's answer as JSON, or as a table of its items."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from veracity import admin_cli
from veracity.server.api.schemas import SiteListOut, SiteOut, SiteSummaryOut

SITES = SiteListOut(
    items=[
        SiteSummaryOut(name="hospital-a", enrolled_seq=3, valid_from="2026-01-01T00:00:00Z",
                       key_id="ab" * 8),
        SiteSummaryOut(name="hospital-b", enrolled_seq=5, valid_from="2026-01-02T00:00:00Z",
                       key_id=None),
    ]
)  # fmt: skip
SITE = SiteOut(
    name="hospital-a", key_id="ab" * 8, public_key="PEM", supernode_public_key=None,
    valid_from="2026-01-01T00:00:00Z", enrolled_seq=3,
)  # fmt: skip


class _FakeClient:
    def sites(self, token: str) -> SiteListOut:
        return SITES

    def site(self, token: str, name: str) -> SiteOut:
        assert name == "hospital-a"
        return SITE


class _FakeApi:
    def __init__(self, *args: Any) -> None:
        self.token = "not-a-token"  # noqa: S105 - a fake session's placeholder
        self.client = _FakeClient()

    def __enter__(self) -> _FakeApi:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(admin_cli, "_Api", _FakeApi)
    monkeypatch.setenv("COLUMNS", "200")

    def invoke(*args: str) -> str:
        result = CliRunner().invoke(admin_cli.admin_app, list(args))
        assert result.exit_code == 0, result.output
        return result.stdout

    return invoke


def test_a_listing_prints_the_whole_document_as_json(run: Any) -> None:
    assert json.loads(run("sites", "list", "--format", "json")) == SITES.model_dump()


def test_a_listing_prints_one_table_row_per_item(run: Any) -> None:
    text = run("sites", "list")
    assert "site" in text
    assert "enrolled seq" in text
    (row_a,) = [line for line in text.splitlines() if "hospital-a" in line]
    assert "ab" * 8 in row_a
    assert "3" in row_a
    (row_b,) = [line for line in text.splitlines() if "hospital-b" in line]
    assert "revoked" in row_b


def test_a_show_prints_the_document_as_json_or_item_value_rows(run: Any) -> None:
    assert json.loads(run("sites", "show", "hospital-a", "--format", "json")) == SITE.model_dump()
    text = run("sites", "show", "hospital-a")
    assert "item" in text
    assert "value" in text
    (row,) = [line for line in text.splitlines() if "enrolled seq" in line]
    assert "3" in row
