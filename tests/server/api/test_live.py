"""``veracity server start`` for real: schemathesis against the live OpenAPI, encrypted
inference over TLS, and a clean stop on SIGTERM.

One server per database (SQLite, PostgreSQL): the command runs as its own process with the
SuperLink and uvicorn (TLS with the coordinator's certificate) as its children.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, given, settings
from sqlalchemy.engine import make_url

from veracity.cli import main as cli_main
from veracity.server.api.serve import issue_token
from veracity.server.api.tokens import Role
from veracity.supervise import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES_PER_OPERATION = 10


@dataclass
class LiveServer:
    base_url: str
    ca_cert: Path
    data_dir: Path
    tokens: dict[str, str]
    process: subprocess.Popen[bytes]

    def client(self, role: str) -> httpx.Client:
        import ssl

        return httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self.tokens[role]}"},
            verify=ssl.create_default_context(cafile=str(self.ca_cert)),
            timeout=30.0,
        )


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("live") / "coordinator"
    init = ["server", "init", "--data-dir", str(data_dir), "--superlink-port", str(free_port())]
    schema = None
    if request.param == "postgresql":
        database = request.getfixturevalue("pg_session_database")
        schema = f"live_{secrets.token_hex(4)}"
        engine = sa.create_engine(database, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(database).update_query_dict({"options": f"-csearch_path={schema}"})
        init += ["--db", url.render_as_string(hide_password=False)]
    assert cli_main(init) == 0
    # The identity key goes offline after init: the server runs on the log key alone.
    shutil.move(data_dir / "identity", data_dir.parent / "offline-identity")
    assert not list(data_dir.rglob("root.pem"))
    tokens = {
        "admin": issue_token(data_dir, role=Role.ADMIN, name="admin-user").token,
        "site": issue_token(data_dir, role=Role.SITE, name="north ops", site="north").token,
        "researcher": issue_token(data_dir, role=Role.RESEARCHER, name="clinic-7").token,
        "auditor": issue_token(data_dir, role=Role.AUDITOR, name="ethics board").token,
    }
    api_port = free_port()
    log = (data_dir / "server-start.log").open("wb")
    env = {**os.environ, "VERACITY_INFERENCE_RATE_PER_MINUTE": "6000"}
    process = subprocess.Popen(
        [sys.executable, "-m", "veracity", "server", "start", "--data-dir", str(data_dir),
         "--api-port", str(api_port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )  # fmt: skip
    server = LiveServer(
        f"https://127.0.0.1:{api_port}", data_dir / "tls" / "ca.crt", data_dir, tokens, process
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (data_dir / "server-start.log").read_text()
            try:
                with server.client("admin") as client:
                    if client.get("/health").status_code == 200:
                        break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.5)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()
        if schema is not None:
            with engine.connect() as connection:
                connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            engine.dispose()


def test_the_live_openapi_holds_under_schemathesis(live_server: LiveServer) -> None:
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.result import Err
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
    ]
    ca = str(live_server.ca_cert)
    schema = schemathesis.openapi.from_url(f"{live_server.base_url}/openapi.json", verify=ca)

    statuses: dict[int, int] = {}

    def exercise(operation: Any, headers: dict[str, str]) -> None:
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            response = case.call(
                base_url=live_server.base_url, headers=headers, verify=ca, timeout=60
            )
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            case.validate_response(response, checks=checks)

        run()

    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            failures.append(f"invalid schema: {result.err()}")
            continue
        operation = result.ok()
        operations += 1
        for role in ("admin", "site", None):
            token = live_server.tokens[role] if role is not None else None
            try:
                exercise(operation, {"Authorization": f"Bearer {token}"} if token else {})
            except Exception as err:  # noqa: BLE001 - collect every operation's failure
                failures.append(f"{operation.label} as {role}: {str(err)[:2000]}")
    assert operations >= 38
    assert not failures, "\n\n".join(failures)
    print(f"schemathesis: {sum(statuses.values())} calls, statuses {sorted(statuses.items())}")
    assert sum(statuses.values()) >= operations * 2
    assert {200, 201, 401, 403, 404, 422} <= set(statuses)


def test_encrypted_prediction_over_tls_is_served_and_recorded(
    live_server: LiveServer, trained_models: dict[str, Any], breast_cancer: Any
) -> None:
    from tests.server.api.conftest import release_through
    from veracity.client.predict import InferenceClient, predict_encrypted
    from veracity.server.coordinator import InMemoryFederation, open_coordinator

    spec, weights = trained_models["logistic"]
    # Only released models are served: release it in the live server's own data.
    with open_coordinator(live_server.data_dir, federation=InMemoryFederation()) as service:
        model_hash = release_through(
            service, spec, weights, list(breast_cancer.feature_names), "malignant"
        )
    patients = breast_cancer.test_x[:5]
    with InferenceClient(
        f"{live_server.base_url}/api/v1",
        token=live_server.tokens["researcher"],
        ca_cert=live_server.ca_cert,
    ) as client:
        prediction = predict_encrypted(client, client.describe(model_hash), patients)
    expected = patients @ weights["linear.weight"].reshape(-1) + weights["linear.bias"][0]
    np.testing.assert_allclose(prediction.logits, expected, atol=1e-2)
    with live_server.client("auditor") as auditor:
        served = auditor.get("/api/v1/ledger/entries", params={"kind": "inference.served"}).json()[
            "entries"
        ]
        assert [e["payload"]["requester"] for e in served] == ["clinic-7"]
        assert auditor.get("/api/v1/ledger/verify").json()["ok"] is True
        refused = auditor.get(f"/api/v1/models/{model_hash}/weights")
        assert refused.status_code == 403


def test_plain_http_is_not_served(live_server: LiveServer) -> None:
    plain = live_server.base_url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{plain}/health", timeout=5)


def test_the_server_stops_its_children_on_sigterm(live_server: LiveServer) -> None:
    process = live_server.process
    children = _descendants(process.pid)
    commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children]
    assert any(b"veracity.server.superlink_process" in c for c in commands), commands
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in children if _alive(pid)]
