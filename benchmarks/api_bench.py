"""Admin API throughput and tail latency on PostgreSQL, against FastAPI's bare ``return {}``.

Starts, in one run and with the same uvicorn settings (2 workers, TLS on loopback):

* the admin API over a fresh coordinator in a throwaway PostgreSQL database, and
* a FastAPI app whose only route is ``GET /bare`` returning ``{}`` (the baseline).

Then a second process drives each with a bounded load loop (client processes, each a few
threads with keep-alive HTTPS connections, a fixed number of requests) and reports
requests per second and p99 latency for:

* ``GET /api/v1/ledger/entries?limit=10`` as an auditor (token lookup, one page of entries);
* ``POST /api/v1/statements`` as a site (a freshly signed ``note.recorded``: token lookup,
  signature check, ledger append under the write lock, the API's action row, one commit).

Run: ``python benchmarks/api_bench.py [--requests 2000] [--concurrency 8] [--json PATH]``.
PostgreSQL: ``VERACITY_TEST_PG_URL`` or ``postgresql://postgres@127.0.0.1:5432/test``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# Opacus installs a top-level package named `benchmarks` that shadows this folder, so the
# harness is imported from the script's own directory (first on sys.path when run).
from harness import Figure, Report, percentile

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def bare_app() -> Any:
    """The baseline: FastAPI with one route returning ``{}`` (uvicorn --factory)."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/bare")
    def bare() -> dict[str, str]:
        return {}

    return app


def _client_process(
    base: str,
    ca: str,
    scenario: str,
    token: str,
    site: tuple[str, bytes, str] | None,
    count: int,
    threads: int,
    start_line: Any,
    out: Any,
) -> None:
    import httpx

    from veracity.crypto.keys import SigningKey
    from veracity.ledger.statement import sign_statement

    context = ssl.create_default_context(cafile=ca)
    key = SigningKey.from_pem(site[1]) if site is not None else None
    latencies: list[float] = []
    failures = 0
    window: list[float] = []
    lock = threading.Lock()
    per_thread = [count // threads + (1 if i < count % threads else 0) for i in range(threads)]

    def run(n: int) -> None:
        nonlocal failures
        mine: list[float] = []
        bad = 0
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with httpx.Client(base_url=base, verify=context, headers=headers, timeout=60) as http:
            first = time.time()
            for _ in range(n):
                if scenario == "write":
                    assert site is not None
                    assert key is not None
                    payload = {"text": f"bench {secrets.token_hex(8)}"}
                    body = {
                        "kind": "note.recorded",
                        "payload": payload,
                        "signature": sign_statement(
                            key, "note.recorded", site[0], payload, log_id=site[2]
                        ),
                    }
                    start = time.perf_counter()
                    response = http.post("/api/v1/statements", json=body)
                    ok = response.status_code == 201
                elif scenario == "read":
                    start = time.perf_counter()
                    response = http.get("/api/v1/ledger/entries", params={"limit": 10})
                    ok = response.status_code == 200
                else:
                    start = time.perf_counter()
                    response = http.get("/bare")
                    ok = response.status_code == 200
                mine.append(time.perf_counter() - start)
                bad += 0 if ok else 1
            last = time.time()
        with lock:
            latencies.extend(mine)
            failures += bad
            window.extend((first, last))

    workers = [threading.Thread(target=run, args=(n,)) for n in per_thread]
    start_line.wait()  # every client process imported and ready: start together
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out.put((latencies, failures, min(window), max(window)))


def drive(
    base: str,
    ca: Path,
    scenario: str,
    *,
    token: str = "",
    site: tuple[str, bytes, str] | None = None,
    requests: int,
    concurrency: int,
) -> tuple[float, float, int]:
    """(requests/s, p99 seconds, failures) of ``requests`` calls at ``concurrency``."""
    processes = max(1, min(2, concurrency))
    threads = max(1, concurrency // processes)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    start_line = context.Barrier(processes)
    share = [
        requests // processes + (1 if i < requests % processes else 0) for i in range(processes)
    ]
    children = [
        context.Process(
            target=_client_process,
            args=(base, str(ca), scenario, token, site, n, threads, start_line, queue),
        )
        for n in share
    ]
    for child in children:
        child.start()
    latencies: list[float] = []
    failures = 0
    starts, ends = [], []
    for _ in children:
        got, bad, first, last = queue.get(timeout=1800)
        latencies.extend(got)
        failures += bad
        starts.append(first)
        ends.append(last)
    for child in children:
        child.join()
    # Throughput over the window in which requests were in flight (not process start-up).
    return len(latencies) / (max(ends) - min(starts)), percentile(latencies, 99), failures


def _pg_database() -> tuple[str, Any]:
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from veracity.config import normalise_database_url

    admin_url = normalise_database_url(os.environ.get("VERACITY_TEST_PG_URL", DEFAULT_PG_URL))
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"veracity_bench_{secrets.token_hex(4)}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), (
        admin,
        name,
    )


def _drop(handle: Any) -> None:
    import sqlalchemy as sa

    admin, name = handle
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per scenario")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers per server")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from veracity.crypto.keys import generate_signing_key
    from veracity.crypto.supernode import generate_supernode_key
    from veracity.ledger.possession import sign_enrolment
    from veracity.server.api.serve import initialise, issue_token, start_api
    from veracity.server.api.settings import ApiSettings
    from veracity.server.api.tokens import Role
    from veracity.server.coordinator import InMemoryFederation, open_coordinator, operator
    from veracity.supervise import ManagedProcess, ProcessGroup, free_port, wait_for

    url, handle = _pg_database()
    workdir = Path(tempfile.mkdtemp(prefix="veracity-api-bench-"))
    data_dir = workdir / "coordinator"
    report = Report(
        f"admin API on PostgreSQL, {args.workers} uvicorn workers, TLS, "
        f"{args.concurrency} clients, {args.requests} requests per scenario"
    )
    try:
        site_key = generate_signing_key()
        initialise(data_dir, db_url=url, superlink_port=free_port()).close()
        # The site is set up over a SuperLink kept in memory: the benchmark asks none.
        with open_coordinator(data_dir, federation=InMemoryFederation()) as coordinator:
            log_id = coordinator.ledger.log_id
            coordinator.enrol_site(
                operator("bench"),
                "bench-site",
                public_key_pem=site_key.public.pem(),
                proof=sign_enrolment(
                    site_key, log_id=coordinator.ledger.log_id, name="bench-site", role="site"
                ),
                supernode_public_key=generate_supernode_key()
                .public_key()
                .public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
                .decode(),
            )
            for i in range(200):  # something to page through
                coordinator.ledger.append(
                    "note.recorded",
                    "coordinator",
                    {"text": f"seed {i}"},
                    signer=coordinator.root_key,
                )
        auditor = issue_token(data_dir, role=Role.AUDITOR, name="bench auditor").token
        site_token = issue_token(
            data_dir, role=Role.SITE, name="bench site", site="bench-site"
        ).token
        ca = data_dir / "tls" / "ca.crt"
        tls = data_dir / "tls"
        with ProcessGroup() as group:
            settings = ApiSettings(
                data_dir=data_dir, api_port=free_port(), api_workers=args.workers
            )
            _api, api_base = start_api(settings, group)
            bare_port = free_port()
            # Same uvicorn settings as start_api gives the admin API (access log included).
            argv = [
                sys.executable, "-m", "uvicorn", "api_bench:bare_app", "--factory",
                "--app-dir", str(Path(__file__).resolve().parent),
                "--host", "127.0.0.1", "--port", str(bare_port),
                "--workers", str(args.workers), "--no-server-header",
                "--timeout-graceful-shutdown", "10",
                "--ssl-certfile", str(tls / "server.crt"),
                "--ssl-keyfile", str(tls / "server.key"),
            ]  # fmt: skip
            bare = group.start(
                ManagedProcess(name="bare", argv=argv, log_path=workdir / "bare.log")
            )
            import httpx

            context = ssl.create_default_context(cafile=str(ca))
            bare_base = f"https://127.0.0.1:{bare_port}"

            def bare_up() -> bool:
                try:
                    return httpx.get(f"{bare_base}/bare", verify=context).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(bare_up, timeout=60, what="the bare app", watch=[bare])

            common = {"requests": args.requests, "concurrency": args.concurrency}
            drive(bare_base, ca, "bare", requests=200, concurrency=args.concurrency)  # warm-up
            base_rps, base_p99, base_bad = drive(bare_base, ca, "bare", **common)
            drive(api_base, ca, "read", token=auditor, requests=200, concurrency=args.concurrency)
            read_rps, read_p99, read_bad = drive(api_base, ca, "read", token=auditor, **common)
            site = ("bench-site", site_key.pem(), log_id)
            write_rps, write_p99, write_bad = drive(
                api_base, ca, "write", token=site_token, site=site, **common
            )
        baseline = "bare FastAPI return {}"
        report.add(Figure("bare route", base_rps, "req/s"))
        report.add(Figure("bare route p99", base_p99 * 1e3, "ms", higher_is_better=False))
        report.add(
            Figure("ledger read (GET entries, 10/page)", read_rps, "req/s", base_rps, baseline)
        )
        report.add(
            Figure(
                "ledger read p99",
                read_p99 * 1e3,
                "ms",
                base_p99 * 1e3,
                baseline,
                higher_is_better=False,
            )
        )
        report.add(Figure("state change (POST statements)", write_rps, "req/s", base_rps, baseline))
        report.add(
            Figure(
                "state change p99",
                write_p99 * 1e3,
                "ms",
                base_p99 * 1e3,
                baseline,
                higher_is_better=False,
            )
        )
        with open_coordinator(data_dir) as coordinator:
            report_json = coordinator.ledger.verify(coordinator.ledger.identity_public_key)
        report.notes.append(
            f"failed requests: bare {base_bad}, read {read_bad}, write {write_bad}; "
            f"ledger verifies after the run: {report_json.entries} entries"
        )
        report.notes.append(f"machine: {os.cpu_count()} CPUs shared by servers and clients")
        report.print()
        if args.json is not None:
            report.write_json(args.json)
    finally:
        _drop(handle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
