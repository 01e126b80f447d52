"""Pagination on every list: ``?offset=&limit=`` in, ``items`` and ``next_offset`` out.

Runs on SQLite and on PostgreSQL (``db_url``). Paging one item at a time through a list
gives every item exactly once, in the order of the whole list; the typed client reads
lists whole across pages; and every list route of the OpenAPI document takes both
parameters and answers ``next_offset``.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from veracity.api_client import ApiError, CoordinatorClient

from .conftest import Api, study_document, unique_site


@pytest.fixture
def filled(api: Api) -> Api:
    """Four sites, each with a dataset; three studies; the fixture's tokens."""
    sites = [api.site, api.other_site, unique_site("east"), unique_site("west")]
    for site in sites:
        api.enrol(site)
        api.register(site)
    for index in range(3):
        api.propose(study_document([api.site.name], f"paged-{index}"))
    return api


def _walk(api: Api, path: str, limit: int) -> list[Any]:
    items: list[Any] = []
    offset: int | None = 0
    while offset is not None:
        response = api.call("GET", path, "admin", params={"offset": offset, "limit": limit})
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= limit
        items.extend(page["items"])
        offset = page["next_offset"]
    return items


@pytest.mark.parametrize(
    ("path", "at_least"),
    [("/api/v1/sites", 4), ("/api/v1/datasets", 4), ("/api/v1/studies", 3), ("/api/v1/tokens", 5)],
)
def test_paging_one_at_a_time_gives_every_item_once_in_order(
    filled: Api, path: str, at_least: int
) -> None:
    whole = filled.call("GET", path, "admin").json()
    assert whole["next_offset"] is None
    assert len(whole["items"]) >= at_least

    assert _walk(filled, path, limit=1) == whole["items"]
    assert _walk(filled, path, limit=3) == whole["items"]


def test_a_page_past_the_end_is_empty_and_the_last(filled: Api) -> None:
    response = filled.call("GET", "/api/v1/sites", "admin", params={"offset": 1000})
    assert response.status_code == 200
    assert response.json() == {"items": [], "next_offset": None}


@pytest.mark.parametrize("params", [{"offset": -1}, {"limit": 0}, {"limit": "many"}])
def test_bad_paging_parameters_are_422(filled: Api, params: dict[str, Any]) -> None:
    response = filled.call("GET", "/api/v1/sites", "admin", params=params)
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"


def test_the_client_reads_a_list_whole_across_pages(filled: Api) -> None:
    def forward(request: httpx.Request) -> httpx.Response:
        answer = filled.client.request(
            request.method, str(request.url), headers=request.headers, content=request.content
        )
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    client = CoordinatorClient("http://testserver/api/v1", transport=httpx.MockTransport(forward))
    try:
        import veracity.api_client as module

        module.PAGE_SIZE, size = 1, module.PAGE_SIZE
        try:
            names = [site.name for site in client.sites(filled.tokens["admin"]).items]
        finally:
            module.PAGE_SIZE = size
    finally:
        client.close()
    whole = filled.call("GET", "/api/v1/sites", "admin").json()["items"]
    assert names == [site["name"] for site in whole]


def test_the_client_refuses_a_server_whose_next_offset_does_not_move_forward(
    filled: Api,
) -> None:
    calls = []

    def stuck(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.params.get("offset"))
        answer = filled.client.request(request.method, str(request.url), headers=request.headers)
        document = answer.json()
        # A broken or hostile server: always "there is more, at offset 1" (until 50 calls,
        # so that a client without the check ends instead of looping for ever).
        document["next_offset"] = 1 if len(calls) < 50 else None
        return httpx.Response(answer.status_code, json=document)

    client = CoordinatorClient("http://testserver/api/v1", transport=httpx.MockTransport(stuck))
    try:
        with pytest.raises(ApiError, match="next_offset 1 after offset 1"):
            client.sites(filled.tokens["admin"])
    finally:
        client.close()
    assert calls == [None, "1"]


def test_every_list_route_takes_a_cursor_and_a_limit_and_answers_the_next_cursor(api: Api) -> None:
    document = api.call("GET", "/openapi.json", None).json()
    schemas = document["components"]["schemas"]
    lists = []
    for path, methods in document["paths"].items():
        get = methods.get("get")
        if get is None:
            continue
        content = get["responses"].get("200", {}).get("content", {})
        ref = content.get("application/json", {}).get("schema", {}).get("$ref", "")
        schema = schemas.get(ref.rsplit("/", 1)[-1], {})
        if "items" not in schema.get("properties", {}):
            continue
        lists.append(path)
        params = {p["name"] for p in get.get("parameters", [])}
        cursors = {"offset", "since", "since_size"} & params
        assert len(cursors) == 1, path
        assert "limit" in params, path
        assert f"next_{cursors.pop()}" in schema["properties"], path
    assert len(lists) >= 8, lists
