"""One error contract: every 4xx and 5xx is RFC 9457 problem details, from one table.

Real requests to the real apps (the admin API with its inference routes, and the
inference-only app): refusals of the domain, of the guards, of the body limit and of
FastAPI/Starlette themselves all answer ``application/problem+json`` with the status the
table in docs/api.md gives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from veracity.errors import (
    ApprovalMissing,
    ConfigError,
    Conflict,
    CryptoError,
    InputError,
    LedgerIntegrityError,
    NotFound,
    PrivacyBudgetExceeded,
    ProofError,
    SignatureError,
    TransportError,
    VeracityError,
    VerificationError,
)
from veracity.he.wire import CONTENT_TYPE, WireLimits
from veracity.server.api.inference import create_inference_app
from veracity.server.coordinator import InMemoryFederation
from veracity.server.inference import InferenceService
from veracity.server.registry import ModelRegistry

from .conftest import Api, TestClient, open_api, study_document, unique_site

PROBLEM = "application/problem+json"
MEMBERS = {"type", "title", "status", "detail", "instance", "code"}
UNKNOWN_MODEL = "e" * 64


def _tenseal_secret_context() -> bytes:
    import tenseal as ts

    context = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    return bytes(context.serialize(save_secret_key=True))


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    """``response`` is a problem document of ``status`` and ``code``; return its members."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM, response.headers
    body: dict[str, Any] = response.json()
    assert set(body) >= MEMBERS, body
    assert body["status"] == status
    assert body["code"] == code, body
    assert body["type"] == f"urn:veracity:problem:{code}"
    assert body["title"]
    assert body["detail"]
    assert body["instance"] == response.request.url.path
    assert "Traceback" not in response.text
    return body


@dataclass(frozen=True)
class Case:
    """One request and the problem it must answer."""

    name: str
    method: str
    path: str
    role: str | None
    status: int
    code: str
    options: dict[str, Any] = field(default_factory=dict)
    header: str | None = None  # a header the answer must carry


@pytest.fixture
def api(tmp_path: Path, db_url: str) -> Iterator[Api]:
    """The admin API on each database, SuperLink calls timing out fast (none runs)."""
    yield from open_api(tmp_path / "coordinator", db_url, control_timeout=2.0)


def test_every_refusal_of_the_admin_api_is_a_problem_document(api: Api) -> None:
    api.enrol(api.site)
    dataset = api.site.signed("dataset.registered", api.site.dataset("cohort-2"))
    assert api.call("POST", "/api/v1/datasets", "site", json=dataset).status_code == 201
    fresh = api.site.dataset("cohort-3")
    impostor = api.other_site.signed("dataset.registered", fresh)["signature"]
    forged = {"payload": fresh, "signature": impostor}
    study = api.call("POST", "/api/v1/studies", "admin", json=study_document([api.site.name]))
    assert study.status_code == 201, study.text
    unapproved = {"study_hash": study.json()["study_hash"]}
    he = {"Content-Type": CONTENT_TYPE}
    cases = [
        Case("unknown route", "GET", "/api/v1/nothing", "admin", 404, "not_found"),
        Case("unknown route, no token", "GET", "/nowhere", None, 404, "not_found"),
        Case("wrong method", "DELETE", "/api/v1/sites", "admin", 405, "method_not_allowed",
             header="allow"),
        Case("no token", "GET", "/api/v1/sites", None, 401, "unauthenticated",
             header="www-authenticate"),
        Case("bad token", "GET", "/api/v1/sites", None, 401, "unauthenticated",
             {"headers": {"Authorization": "Bearer vrc_nope"}}),
        Case("role not allowed", "GET", "/api/v1/sites", "auditor", 403, "forbidden"),
        Case("schema (query)", "GET", "/api/v1/ledger/entries?limit=0", "admin", 422,
             "invalid_request"),
        Case("schema (path)", "GET", "/api/v1/studies/not-a-hash", "admin", 422,
             "invalid_request"),
        Case("malformed JSON", "POST", "/api/v1/sites", "admin", 422, "invalid_request",
             {"content": b'{"name": ', "headers": {"Content-Type": "application/json"}}),
        Case("body too large", "POST", "/api/v1/studies", "admin", 413, "too_large",
             {"content": b"{" + b" " * (2 << 20) + b"}"}),
        Case("NotFound", "GET", f"/api/v1/studies/{'e' * 64}", "admin", 404, "not_found"),
        Case("Conflict", "POST", "/api/v1/datasets", "site", 409, "conflict", {"json": dataset}),
        Case("SignatureError", "POST", "/api/v1/datasets", "site", 422, "signature_invalid",
             {"json": forged}),
        Case("InputError", "POST", "/api/v1/studies", "admin", 422, "input_refused",
             {"json": {**study_document([api.site.name]), "rounds": 0}}),
        Case("ApprovalMissing", "POST", "/api/v1/runs", "admin", 409, "approval_missing",
             {"json": unapproved}),
        Case("inference: InputError", "POST", "/api/v1/inference/contexts", "researcher", 422,
             "input_refused", {"content": b"\x00" * 1000, "headers": he}),
        Case("inference: CryptoError", "POST", "/api/v1/inference/contexts", "researcher", 422,
             "crypto_refused", {"content": _tenseal_secret_context(), "headers": he}),
        Case("inference: media type", "POST", "/api/v1/inference/contexts", "researcher", 415,
             "unsupported_media_type", {"content": b"{}", "headers": {"Content-Type": "a/b"}}),
        Case("inference: unknown model", "GET", f"/api/v1/inference/models/{UNKNOWN_MODEL}",
             "researcher", 404, "not_found"),
        Case("inference: role", "POST", "/api/v1/inference/contexts", "auditor", 403, "forbidden",
             {"content": b"\x00", "headers": he}),
    ]  # fmt: skip
    wrong: list[str] = []
    for case in cases:
        response = api.call(case.method, case.path, case.role, **case.options)
        try:
            body = assert_problem(response, case.status, case.code)
            assert case.header is None or case.header in response.headers
            assert ("request_id" in body) == (case.status >= 500)
        except AssertionError as err:
            wrong.append(f"{case.name}: {err}")
    assert not wrong, "\n".join(wrong)


def test_a_superlink_that_does_not_answer_is_503(api: Api) -> None:
    federation = api.service.federation
    assert isinstance(federation, InMemoryFederation)
    federation.reachable = False  # the SuperLink is down from here on
    response = api.call(
        "POST", "/api/v1/sites", "admin", json=unique_site("x").enrolment(api.service.ledger.log_id)
    )
    body = assert_problem(response, 503, "superlink_unavailable")
    assert "request_id" in body


def test_an_input_error_is_422_on_the_inference_routes_as_on_every_other_route(api: Api) -> None:
    # The same error class, InputError, once from a study and once from an envelope: the
    # inference routes used to answer 400 with their own error map.
    study = {**study_document([api.site.name]), "rounds": 0}
    refused_study = api.call("POST", "/api/v1/studies", "admin", json=study)
    refused_envelope = api.call(
        "POST",
        "/api/v1/inference/contexts",
        "researcher",
        content=b"not an envelope",
        headers={"Content-Type": CONTENT_TYPE},
    )
    assert refused_study.status_code == 422
    assert refused_envelope.status_code == refused_study.status_code
    assert refused_envelope.json()["code"] == refused_study.json()["code"] == "input_refused"


def test_the_rate_limit_is_a_problem_with_retry_after(tmp_path: Path, db_url: str) -> None:
    frozen = {"rate_clock": lambda: 1_000_000.0}
    for api in open_api(tmp_path / "coordinator", db_url, inference_burst=1, app_options=frozen):
        path = f"/api/v1/inference/models/{UNKNOWN_MODEL}"
        assert_problem(api.call("GET", path, "researcher"), 404, "not_found")
        limited = api.call("GET", path, "researcher")
        assert_problem(limited, 429, "rate_limited")
        assert int(limited.headers["retry-after"]) >= 1


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (NotFound("no such site"), 404, "not_found"),
        (Conflict("already enrolled"), 409, "conflict"),
        (ApprovalMissing("not approved"), 409, "approval_missing"),
        (PrivacyBudgetExceeded("over the cap"), 409, "budget_exceeded"),
        (LedgerIntegrityError("bad hash", seq=3), 409, "integrity_failure"),
        (InputError("malformed"), 422, "input_refused"),
        (CryptoError("a secret key"), 422, "crypto_refused"),
        (SignatureError("does not verify"), 422, "signature_invalid"),
        (ProofError("does not verify"), 422, "proof_invalid"),
        (VerificationError("wrong"), 422, "verification_failed"),
        (ConfigError("cannot read /etc/veracity/root.pem"), 500, "server_misconfigured"),
        (VeracityError("unclassified /etc/veracity"), 500, "internal"),
        (RuntimeError("crash in /etc/veracity"), 500, "internal"),
        (TransportError("SuperLink at /etc/veracity down"), 503, "superlink_unavailable"),
    ],
)
def test_each_error_class_maps_to_its_status_through_a_real_request(
    api: Api, monkeypatch: pytest.MonkeyPatch, error: Exception, status: int, code: str
) -> None:
    def fail() -> Any:
        raise error

    monkeypatch.setattr(api.service.reads, "sites", fail)
    # As under uvicorn: the client gets the answer, the exception goes on to the server log.
    client = TestClient(api.app, raise_server_exceptions=False)
    response = client.get("/api/v1/sites", headers=api.headers("admin"))
    body = assert_problem(response, status, code)
    if status >= 500:
        assert f"request {body['request_id']}" in body["detail"]
        assert "/etc/veracity" not in response.text  # details stay in the server log
    else:
        assert body["detail"] == str(error)


def test_the_openapi_document_declares_problem_details_for_every_error(api: Api) -> None:
    document = api.call("GET", "/openapi.json", None).json()
    assert "Problem" in document["components"]["schemas"]
    declared = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if int(status) >= 400:
                    assert list(answer["content"]) == [PROBLEM], (method, path, status)
                    declared += 1
    assert declared > 100


# ---- the inference-only app ---------------------------------------------------------

TOKEN = "inference-test-token"  # noqa: S105 - a throwaway token for the test app
SMALL = WireLimits(max_request_bytes=4096, max_context_bytes=8192)


@pytest.fixture
def inference_app(tmp_path: Path) -> Iterator[TestClient]:
    service = InferenceService(
        ModelRegistry(tmp_path / "models"), recorder=lambda _: None, limits=SMALL
    )
    with TestClient(create_inference_app(service, tokens={TOKEN: "clinic"})) as client:
        yield client


def test_the_inference_app_answers_with_the_same_contract(inference_app: TestClient) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": CONTENT_TYPE}
    predict = f"/api/v1/inference/models/{UNKNOWN_MODEL}/predict"
    cases: list[tuple[str, str, dict[str, Any], int, str]] = [
        ("GET", "/api/v1/nothing", {"headers": auth}, 404, "not_found"),
        ("GET", f"/api/v1/inference/models/{UNKNOWN_MODEL}", {}, 401, "unauthenticated"),
        ("GET", f"/api/v1/inference/models/{UNKNOWN_MODEL}", {"headers": auth}, 404, "not_found"),
        ("POST", predict, {"headers": auth, "content": b"x"}, 404, "not_found"),
        ("PUT", "/api/v1/inference/contexts", {"headers": auth}, 405, "method_not_allowed"),
        ("POST", "/api/v1/inference/contexts", {"headers": auth, "content": b"\x00" * 64},
         422, "input_refused"),
        ("POST", "/api/v1/inference/contexts", {"headers": auth, "content": b"\x00" * 8193},
         413, "too_large"),
        ("POST", "/api/v1/inference/contexts",
         {"headers": {**auth, "Content-Type": "text/plain"}, "content": b"x"},
         415, "unsupported_media_type"),
    ]  # fmt: skip
    for method, path, options, status, code in cases:
        response = inference_app.request(method, path, **options)
        assert_problem(response, status, code)
    unauthenticated = inference_app.get(f"/api/v1/inference/models/{UNKNOWN_MODEL}")
    assert unauthenticated.headers["www-authenticate"] == "Bearer"
    assert inference_app.get("/health").json() == {"status": "ok"}


def _send(app: Any, path: str, content_length: int) -> tuple[int, int, dict[str, Any]]:
    """POST ``path`` with a declared length through ``app``: (status, body reads, answer)."""
    import json

    reads = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"\x00" * 1024, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 80),
        "headers": [(b"host", b"test"), (b"content-type", CONTENT_TYPE.encode()),
                    (b"content-length", str(content_length).encode())],
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert headers["content-type"] == PROBLEM
    return int(start["status"]), reads, json.loads(body)


def test_each_inference_route_has_its_own_body_limit_checked_before_reading(
    inference_app: TestClient,
) -> None:
    app = inference_app.app
    contexts, predict = "/api/v1/inference/contexts", f"/api/v1/inference/models/{'a' * 64}/predict"
    status, reads, answer = _send(app, contexts, SMALL.max_context_bytes + 1)
    assert (status, reads, answer["code"]) == (413, 0, "too_large")
    status, reads, answer = _send(app, predict, SMALL.max_request_bytes + 1)
    assert (status, reads, answer["code"]) == (413, 0, "too_large")
    # A context-sized body is too large for a request, and fine for a context upload
    # (which then stops at the missing token, still without reading the body).
    status, reads, answer = _send(app, contexts, SMALL.max_request_bytes + 1)
    assert (status, reads, answer["code"]) == (401, 0, "unauthenticated")
