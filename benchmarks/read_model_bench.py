"""The coordinator's read model against the ledger scans it replaced, at 10^4 and 10^5 entries.

For each size, one coordinator's ledger is filled the way a busy network fills it: 20
sites, a study per 2,000 entries that every site decides on, a run per 500 entries (5
rounds of 3 signed receipts each, then its ``run.finished``), and encrypted-inference
batches (``inference.served``) for the rest, with the coordinator's automatic checkpoints.
Then, in the same process and on the same database, every lookup the admin API and the
ServerApp make is timed both ways:

* **read model**: ``CoordinatorService.reads`` (key lookups and index ranges in the
  ``coord_*`` tables, after its check that nothing is left to fold in);
* **baseline, ledger scans**: the removed ``Coordinator`` methods (``veracity/server/
  coordinator.py`` at c24b812), copied below as :class:`LegacyScans`: each walks every entry
  of the kinds it needs (``iter_entries(kind=...)``, parsing each body), ``runs()`` once per
  run over every ``run.finished``.

Both answers are checked equal before anything is timed. Also printed: the rebuild of the
read model (``veracity server reindex``) against one plain read of the whole log, and the
cost the projection adds to a change (a site statement through the service) against the
bare ledger append.

Run: ``python benchmarks/read_model_bench.py [--entries 10000 100000] [--postgres]``
(PostgreSQL: a throwaway database on ``VERACITY_TEST_PG_URL`` or
``postgresql://postgres@127.0.0.1:5432/test``).
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from harness import Figure, Report, time_calls

from veracity.contracts.events import ROOT_ACTOR
from veracity.contracts.receipts import RECEIPT_DOMAIN, Receipt
from veracity.core.canonical import canonical_hash
from veracity.core.fields import format_timestamp
from veracity.crypto.keys import SigningKey, generate_signing_key
from veracity.crypto.supernode import generate_supernode_key
from veracity.ledger.ledger import EventRequest, Ledger
from veracity.ledger.possession import sign_enrolment
from veracity.ledger.statement import sign_bound, sign_statement
from veracity.server.coordinator import (
    CoordinatorService,
    InMemoryFederation,
    init_coordinator,
    operator,
)
from veracity.tasks.study import Study, parse_study

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
SITES = 20
CODE_HASH = "c0" * 32
ME = operator("bench")


# ----------------------------------------------------------------- the baseline
class LegacyScans:
    """The reads of the removed ``Coordinator`` (c24b812), unchanged but for the receiver."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def sites(self) -> list[dict[str, Any]]:
        names: dict[str, dict[str, Any]] = {}
        for entry in self.ledger.iter_entries(kind="key.enrolled"):
            payload = entry.payload
            if payload.get("role") != "site":
                continue
            names[payload["name"]] = {
                "name": payload["name"],
                "enrolled_seq": entry.seq,
                "valid_from": payload["valid_from"],
            }
        for item in names.values():
            record = self.ledger.key_at(item["name"])
            item["key_id"] = record.key_id if record is not None else None
        return [names[name] for name in sorted(names)]

    def find_study(self, study_hash: str) -> Study | None:
        for entry in self.ledger.iter_entries(kind="study.proposed"):
            if entry.payload.get("study_hash") == study_hash:
                return parse_study(entry.payload["study"])
        return None

    def decisions(self, study_hash: str) -> dict[str, dict[str, Any]]:
        latest: dict[str, dict[str, Any]] = {}
        for kind in ("study.approved", "study.refused"):
            for entry in self.ledger.iter_entries(kind=kind):
                if entry.payload.get("study_hash") != study_hash:
                    continue
                known = latest.get(entry.actor)
                if known is None or known["seq"] < entry.seq:
                    latest[entry.actor] = {**entry.payload, "kind": kind, "seq": entry.seq}
        return latest

    def approvals(self, study_hash: str) -> dict[str, dict[str, Any]]:
        return {
            site: decision
            for site, decision in self.decisions(study_hash).items()
            if decision["kind"] == "study.approved" and self.ledger.key_at(site) is not None
        }

    def run_started(self, run_id: str) -> dict[str, Any] | None:
        for entry in self.ledger.iter_entries(kind="run.started"):
            if entry.payload.get("run_id") == run_id:
                return {**entry.payload, "seq": entry.seq, "ts": entry.ts}
        return None

    def run_finished(self, run_id: str) -> dict[str, Any] | None:
        for entry in self.ledger.iter_entries(kind="run.finished"):
            if entry.payload.get("run_id") == run_id:
                return {**entry.payload, "seq": entry.seq, "ts": entry.ts}
        return None

    def rounds(self, run_id: str) -> list[dict[str, Any]]:
        return [
            {**e.payload, "seq": e.seq}
            for e in self.ledger.iter_entries(kind="round.completed")
            if e.payload.get("run_id") == run_id
        ]

    def runs(self) -> list[dict[str, Any]]:
        out = []
        for entry in self.ledger.iter_entries(kind="run.started"):
            run_id = entry.payload["run_id"]
            out.append(
                {
                    "run_id": run_id,
                    "study_hash": entry.payload["study_hash"],
                    "started_seq": entry.seq,
                    "started_at": entry.ts,
                    "finished": self.run_finished(run_id),
                }
            )
        return out

    def run(self, run_id: str) -> dict[str, Any] | None:
        """``GET /runs/{id}`` without the SuperLink: started, finished, rounds so far."""
        started = self.run_started(run_id)
        if started is None:
            return None
        return {
            **started,
            "finished": self.run_finished(run_id),
            "rounds_completed": len(self.rounds(run_id)),
        }


# ---------------------------------------------------------------- the workload
def _study(index: int, sites: list[str]) -> dict[str, Any]:
    return {
        "study_id": f"study-{index}",
        "title": "Breast cancer, logistic",
        "model": {"family": "logistic", "n_features": 2},
        "features": ["a", "b"],
        "label": "y",
        "scaling": [[0.0, 1.0], [10.0, 2.0]],
        "dp": {"noise_multiplier": 1.1, "max_grad_norm": 1.0, "delta": 1e-5},
        "training": {"batch_size": 32, "local_epochs": 1, "learning_rate": 0.1},
        "rounds": 5,
        "min_sites": 3,
        "epsilon_caps": dict.fromkeys(sites, 3.0),
        "code_hash": CODE_HASH,
    }


def _signed(
    key: SigningKey, kind: str, site: str, payload: dict[str, Any], log_id: str
) -> EventRequest:
    signature = sign_statement(key, kind, site, payload, log_id=log_id)
    return EventRequest(kind, site, payload, signature=signature)


def _fill(service: CoordinatorService, entries: int) -> dict[str, Any]:
    """Append the workload to the ledger directly (as a busy coordinator's log holds it)."""
    ledger, root = service.ledger, service.root_key
    keys = {f"site-{i:02d}": generate_signing_key() for i in range(SITES)}
    names = sorted(keys)
    for name, key in keys.items():
        supernode = generate_supernode_key().public_key()
        service.enrol_site(
            ME,
            name,
            public_key_pem=key.public.pem(),
            proof=sign_enrolment(key, log_id=service.ledger.log_id, name=name, role="site"),
            supernode_public_key=supernode.public_bytes(
                Encoding.OpenSSH, PublicFormat.OpenSSH
            ).decode(),
        )
    now = format_timestamp()
    batch: list[EventRequest] = []

    def flush() -> None:
        ledger.append_batch(batch)
        batch.clear()

    for name, key in keys.items():
        batch.append(
            _signed(key, "dataset.registered", name, {
                "site": name, "dataset_id": "cohort-1", "commitment": "11" * 32,
                "schema_hash": "22" * 32, "rows": 500, "label": "y", "features": ["a", "b"],
                "signed_at": now,
            }, ledger.log_id)
        )  # fmt: skip
    studies: list[str] = []
    for index in range(max(5, entries // 2000)):
        document = parse_study(_study(index, names)).to_document()
        study_hash = canonical_hash(document)
        studies.append(study_hash)
        batch.append(
            EventRequest("study.proposed", ROOT_ACTOR, {
                "study_id": document["study_id"], "study_hash": study_hash, "study": document,
                "code_hash": CODE_HASH,
            }, signer=root)
        )  # fmt: skip
        for name, key in keys.items():
            batch.append(
                _signed(key, "study.approved", name, {
                    "site": name, "signed_at": now, "study_hash": study_hash,
                    "dataset_id": "cohort-1", "epsilon_cap": 2.0,
                }, ledger.log_id)
            )  # fmt: skip
    flush()
    runs: list[str] = []
    for index in range(max(10, entries // 500)):
        run_id = str(10_000 + index)
        study_hash = studies[index % len(studies)]
        runs.append(run_id)
        batch.append(
            EventRequest("run.started", ROOT_ACTOR, {
                "run_id": run_id, "study_hash": study_hash, "fab_hash": CODE_HASH,
                "config_hash": "33" * 32, "package_versions": {"veracity": "0"},
                "seed_commitment": "44" * 32,
            }, signer=root)
        )  # fmt: skip
        for number in range(1, 6):
            receipts = []
            for name in names[:3]:
                receipt = Receipt(
                    site=name, study=study_hash, round=number, run_id=run_id,
                    dataset_id="cohort-1", dataset_commitment="11" * 32,
                    update_hash="55" * 32, accountant="pld", neighbouring="replace-one",
                    delta=1e-5, epsilon=0.1 * number, epsilon_add_remove=0.05 * number,
                    history=[[1.1, 0.1, 10 * number]], max_grad_norm=1.0, num_examples=500,
                    noise_generator="ChaCha20",
                ).to_json()  # fmt: skip
                signature = sign_bound(keys[name], RECEIPT_DOMAIN, ledger.log_id, receipt)
                receipts.append({"receipt": receipt, "signature": signature})
            batch.append(
                EventRequest("round.completed", ROOT_ACTOR, {
                    "run_id": run_id, "study_hash": study_hash, "round": number,
                    "participants": names[:3], "receipts": receipts, "dropped": [],
                    "refused": [], "aggregated_model_hash": "66" * 32,
                    "metrics": {"train-loss": 0.5},
                }, signer=root)
            )  # fmt: skip
        batch.append(
            EventRequest("run.finished", ROOT_ACTOR, {
                "run_id": run_id, "study_hash": study_hash, "status": "completed",
                "reason": "5 round(s) completed", "rounds_completed": 5, "model_hash": None,
            }, signer=root)
        )  # fmt: skip
        if len(batch) > 500:
            flush()
    flush()
    while ledger.size() < entries:
        for _ in range(min(1000, entries - ledger.size())):
            batch.append(
                EventRequest("inference.served", ROOT_ACTOR, {
                    "model_hash": "77" * 32, "requester": "clinic", "he_params_hash": "88" * 32,
                    "batch_size": 8, "request_hash": secrets.token_hex(32),
                }, signer=root)
            )  # fmt: skip
        flush()
    return {"studies": studies, "runs": runs, "keys": keys}


# ------------------------------------------------------------------ measuring
def _median(fn: Callable[[], object], *, budget: float, most: int = 200) -> float:
    """Median seconds of ``fn``, called until about ``budget`` seconds are spent."""
    first = time_calls(fn, 1)
    repeat = max(3, min(most, int(budget / max(first[0], 1e-6))))
    return statistics.median(first + time_calls(fn, repeat))


def measure(report: Report, service: CoordinatorService, entries: int, budget: float) -> None:
    workload = _fill(service, entries)
    size = service.ledger.size()
    legacy = LegacyScans(service.ledger)
    reads = service.reads

    started = time.perf_counter()
    service.reindex()
    rebuild = time.perf_counter() - started
    started = time.perf_counter()
    for _entry in service.ledger.iter_entries():
        pass
    one_pass = time.perf_counter() - started
    report.add(
        Figure(f"[{size:,}] rebuild the read model (reindex)", rebuild, "s", one_pass,
               "one read of the whole log", higher_is_better=False)
    )  # fmt: skip

    study = workload["studies"][-1]
    run_id = workload["runs"][len(workload["runs"]) // 2]

    def check(name: str, scanned: object, kept: object) -> None:
        if scanned != kept:
            raise SystemExit(f"{name}: the read model answers differently from the scans")

    check("runs", [r["run_id"] for r in legacy.runs()], [r.run_id for r in reads.runs()])
    check("approvals", sorted(legacy.approvals(study)), sorted(reads.approvals(study)))
    check(
        "rounds", [r["seq"] for r in legacy.rounds(run_id)], [r.seq for r in reads.rounds(run_id)]
    )
    check("sites", [s["name"] for s in legacy.sites()], [s.name for s in reads.sites()])
    found = legacy.find_study(study)
    check("study", found.study_hash if found else None, reads.study(study).study_hash)
    old_run = legacy.run(run_id) or {}
    check("run", old_run.get("rounds_completed"), reads.run(run_id).rounds_recorded)

    lookups: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
        ("runs() (GET /runs)", reads.runs, legacy.runs),
        (
            "run(id) with its rounds count (GET /runs/{id})",
            lambda: reads.run(run_id),
            lambda: legacy.run(run_id),
        ),
        (
            "approvals(study) (start_run, GET /studies/{h})",
            lambda: reads.approvals(study),
            lambda: legacy.approvals(study),
        ),
        ("decisions(study)", lambda: reads.decisions(study), lambda: legacy.decisions(study)),
        ("study(hash)", lambda: reads.study(study), lambda: legacy.find_study(study)),
        (
            "rounds(run) (GET /runs/{id}/rounds)",
            lambda: reads.rounds(run_id),
            lambda: legacy.rounds(run_id),
        ),
        ("sites() (GET /sites)", reads.sites, legacy.sites),
    ]
    for name, kept, scanned in lookups:
        new = _median(kept, budget=budget)
        old = _median(scanned, budget=budget)
        report.add(
            Figure(f"[{size:,}] {name} p50", new * 1e3, "ms", old * 1e3, "ledger scans",
                   higher_is_better=False)
        )  # fmt: skip

    # What the projection adds to a change: a site's note through the service (one unit of
    # work: catch-up check, append, projection, watermark) against the bare ledger append.
    name, key = next(iter(workload["keys"].items()))
    counter = iter(range(10**9))

    def note() -> dict[str, Any]:
        return {"text": f"note {next(counter)}"}

    def through_service() -> None:
        payload = note()
        signature = sign_statement(
            key, "note.recorded", name, payload, log_id=service.ledger.log_id
        )
        service.record_statement(ME, "note.recorded", name, payload, signature)

    def bare_append() -> None:
        payload = note()
        signature = sign_statement(
            key, "note.recorded", name, payload, log_id=service.ledger.log_id
        )
        service.ledger.append("note.recorded", name, payload, signature=signature)

    service.reads.sites()  # fold in the notes appended bare before timing the service again
    bare = _median(bare_append, budget=budget, most=100)
    service.reads.sites()
    change = _median(through_service, budget=budget, most=100)
    report.add(
        Figure(f"[{size:,}] a change through the service p50", change * 1e3, "ms", bare * 1e3,
               "bare ledger append", higher_is_better=False)
    )  # fmt: skip


def _databases(postgres: bool) -> Generator[str | None, None, None]:
    """Fresh databases: None (SQLite under each coordinator's directory) or PostgreSQL."""
    if not postgres:
        while True:
            yield None
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from veracity.config import normalise_database_url

    admin_url = normalise_database_url(os.environ.get("VERACITY_TEST_PG_URL", DEFAULT_PG_URL))
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    made: list[str] = []
    try:
        while True:
            name = f"veracity_bench_{secrets.token_hex(4)}"
            with admin.connect() as connection:
                connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
            made.append(name)
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            for name in made:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--entries", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds per timed lookup")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    backend = "PostgreSQL" if args.postgres else "SQLite"
    report = Report(f"coordinator read model vs ledger scans ({backend})")
    with tempfile.TemporaryDirectory(prefix="veracity-read-model-") as tmp:
        databases = _databases(args.postgres)
        for index, entries in enumerate(args.entries):
            url = next(databases)
            with init_coordinator(
                Path(tmp) / f"coordinator-{index}", db_url=url, federation=InMemoryFederation()
            ) as service:
                measure(report, service, entries, args.budget)
        databases.close()
    report.notes.append(f"load average {os.getloadavg()[0]:.1f} at the end, {os.cpu_count()} CPUs")
    report.print()
    if args.json is not None:
        report.write_json(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
