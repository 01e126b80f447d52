"""Body size limits, and errors as problem details (RFC 9457) that never carry a trace."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from veracity.errors import ConfigError
from veracity.server.api.app import create_app
from veracity.server.api.limits import BodySizeLimit
from veracity.server.api.settings import ApiSettings

from .conftest import Api, TestClient

LIMIT = 64 * 1024


def _run_asgi(app: Any, headers: list[tuple[bytes, bytes]], chunks: Any) -> tuple[int, int, bytes]:
    """Send one POST through ``app``; return (status, receive calls, body)."""
    calls = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/studies",
        "raw_path": b"/api/v1/studies",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return int(start["status"]), calls, body


@pytest.fixture
def guarded(tmp_path: Path) -> Any:
    """The real app (no lifespan needed: bodies are read before anything else)."""
    app = create_app(ApiSettings(data_dir=tmp_path, max_body_bytes=LIMIT))
    return BodySizeLimit(app, limit_for=lambda _path: LIMIT)


def test_a_declared_oversized_body_is_refused_without_reading_it(guarded: Any) -> None:
    endless = iter(lambda: b"x" * 65536, None)
    status, calls, body = _run_asgi(guarded, [(b"content-length", b"104857600")], endless)
    assert status == 413
    assert calls == 0
    assert b'"too_large"' in body


def test_a_chunked_body_is_cut_off_at_the_limit(guarded: Any) -> None:
    endless = iter(lambda: b"x" * 4096, None)
    status, calls, body = _run_asgi(guarded, [], endless)
    assert status == 413
    assert calls <= LIMIT // 4096 + 1
    assert b'"too_large"' in body


def test_a_malformed_content_length_is_a_bad_request(guarded: Any) -> None:
    status, calls, _ = _run_asgi(guarded, [(b"content-length", b"12abc")], iter([]))
    assert (status, calls) == (400, 0)


def test_oversized_json_through_the_client_is_413(api: Api) -> None:
    response = api.call("POST", "/api/v1/studies", "admin", content=b"{" + b" " * (2 << 20) + b"}")
    assert response.status_code == 413
    assert response.json()["code"] == "too_large"


def test_malformed_json_is_422_invalid_request(api: Api) -> None:
    response = api.call(
        "POST",
        "/api/v1/sites",
        "admin",
        content=b'{"name": ',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"


def test_invalid_parameters_are_422_invalid_request(api: Api) -> None:
    for path in ["/api/v1/studies/not-a-hash", "/api/v1/ledger/entries?limit=0", "/api/v1/runs/x"]:
        response = api.call("GET", path, "admin")
        assert response.status_code == 422, path
        assert response.headers["content-type"] == "application/problem+json"
        assert set(response.json()) == {"type", "title", "status", "detail", "instance", "code"}


def test_unknown_routes_and_methods_answer_json(api: Api) -> None:
    missing = api.call("GET", "/api/v1/nothing", "admin")
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
    wrong = api.call("DELETE", "/api/v1/sites", "admin")
    assert (wrong.status_code, wrong.json()["code"]) == (405, "method_not_allowed")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (RuntimeError("secret path /etc/veracity/x in a crash"), "internal"),
        (ConfigError("cannot read /etc/veracity/root.pem"), "server_misconfigured"),
    ],
)
def test_server_errors_are_generic_json_without_a_trace(
    api: Api, monkeypatch: pytest.MonkeyPatch, error: Exception, code: str
) -> None:
    def crash() -> Any:
        raise error

    monkeypatch.setattr(api.service.reads, "sites", crash)
    # As under uvicorn: the client gets the answer, the exception goes on to the server log.
    client = TestClient(api.app, raise_server_exceptions=False)
    response = client.get("/api/v1/sites", headers=api.headers("admin"))
    assert response.status_code == 500
    body = response.json()
    assert set(body) == {"type", "title", "status", "detail", "instance", "code", "request_id"}
    assert body["code"] == code
    assert "/etc/veracity" not in response.text
    assert "Traceback" not in response.text
    assert f"request {body['request_id']}" in body["detail"]
