"""An admin's request while a dozen ledger verifications run, against the same request idle.

The finding this answers: twelve parallel ``GET /ledger/verify`` pushed an admin's request
from 11 ms to 5.5 s (each verification held a request thread while it waited for the
verifier). One admin API (uvicorn, 1 worker, TLS on loopback) over a coordinator whose
ledger holds ``--entries`` entries; ``GET /api/v1/sites`` as an admin is timed

* idle (the baseline, same server, same run), then
* while ``--verifications`` clients each run ``GET /ledger/verify`` (and, in a second
  phase, start a ``POST /ledger/jobs`` verification and follow it to the end).

Run: ``python benchmarks/ledger_jobs_bench.py [--entries 20000] [--verifications 12]``.
"""

from __future__ import annotations

import argparse
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from harness import Figure, Report, percentile


def _timed(client: Any, path: str, count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.get(path)
        latencies.append(time.perf_counter() - started)
        response.raise_for_status()
    return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--verifications", type=int, default=12)
    parser.add_argument("--samples", type=int, default=40, help="admin requests per phase")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import httpx

    from veracity.ledger.ledger import EventRequest
    from veracity.server.api.serve import initialise, issue_token, start_api
    from veracity.server.api.settings import ApiSettings
    from veracity.server.api.tokens import Role
    from veracity.server.coordinator import InMemoryFederation, open_coordinator
    from veracity.supervise import ProcessGroup, free_port

    data_dir = Path(tempfile.mkdtemp(prefix="veracity-jobs-bench-")) / "coordinator"
    initialise(data_dir, superlink_port=free_port()).close()
    with open_coordinator(data_dir, federation=InMemoryFederation()) as coordinator:
        for start in range(0, args.entries, 1000):
            batch = [
                EventRequest(
                    "note.recorded", "coordinator", {"text": f"n{i}"}, signer=coordinator.root_key
                )
                for i in range(start, min(start + 1000, args.entries))
            ]
            coordinator.ledger.append_batch(batch)
        size = coordinator.ledger.size()
    admin = issue_token(data_dir, role=Role.ADMIN, name="bench admin").token
    auditor = issue_token(data_dir, role=Role.AUDITOR, name="bench auditor").token
    context = ssl.create_default_context(cafile=str(data_dir / "tls" / "ca.crt"))
    report = Report(
        f"admin request while {args.verifications} ledger verifications run "
        f"({size} entries, 1 uvicorn worker, TLS)"
    )
    with ProcessGroup() as group:
        settings = ApiSettings(data_dir=data_dir, api_port=free_port(), api_workers=1)
        _api, base = start_api(settings, group)
        headers = {"Authorization": f"Bearer {admin}"}
        with httpx.Client(base_url=base, verify=context, headers=headers, timeout=600) as client:
            _timed(client, "/api/v1/sites", 5)  # warm-up
            idle = _timed(client, "/api/v1/sites", args.samples)

            one = time.perf_counter()
            with httpx.Client(base_url=base, verify=context, timeout=600) as auditor_client:
                auditor_client.get(
                    "/api/v1/ledger/verify", headers={"Authorization": f"Bearer {auditor}"}
                ).raise_for_status()
            verify_seconds = time.perf_counter() - one

            def verifying(kind: str) -> list[float]:
                done = threading.Event()

                def load() -> None:
                    with httpx.Client(
                        base_url=base,
                        verify=context,
                        timeout=1200,
                        headers={"Authorization": f"Bearer {auditor}"},
                    ) as other:
                        if kind == "sync":
                            other.get("/api/v1/ledger/verify").raise_for_status()
                            return
                        job = other.post("/api/v1/ledger/jobs", json={"kind": "verify"}).json()
                        while not done.is_set():
                            state = other.get(f"/api/v1/ledger/jobs/{job['job_id']}").json()
                            if state["status"] in ("done", "failed"):
                                return
                            time.sleep(0.5)

                threads = [threading.Thread(target=load) for _ in range(args.verifications)]
                for thread in threads:
                    thread.start()
                time.sleep(0.5)  # all of them in flight
                measured = _timed(client, "/api/v1/sites", args.samples)
                for thread in threads:
                    thread.join(timeout=1800)
                done.set()
                return measured

            busy_sync = verifying("sync")
            busy_jobs = verifying("jobs")

    baseline = "the same request, idle"
    for label, values in (
        ("admin GET /sites p50 during GET /ledger/verify x N", busy_sync),
        ("admin GET /sites p50 during POST /ledger/jobs x N", busy_jobs),
    ):
        report.add(
            Figure(
                label,
                percentile(values, 50) * 1e3,
                "ms",
                percentile(idle, 50) * 1e3,
                baseline,
                higher_is_better=False,
            )
        )
        report.add(
            Figure(
                label.replace("p50", "p99"),
                percentile(values, 99) * 1e3,
                "ms",
                percentile(idle, 99) * 1e3,
                baseline,
                higher_is_better=False,
            )
        )
    report.add(Figure("one verification, alone", verify_seconds, "s", higher_is_better=False))
    report.notes.append(f"N = {args.verifications}; {args.samples} admin requests per phase")
    report.print()
    if args.json is not None:
        report.write_json(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
