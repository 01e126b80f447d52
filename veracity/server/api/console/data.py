"""What the console's screens show, read from the coordinator's read model and ledger.

Plain reads with no web framework: the last entry each actor signed (a site's last contact
with the coordinator), each checkpoint's cosignatures (site statements in the ledger and the
sites' witnesses' C2SP ``cosignature/v1`` lines), the epsilon each site's dataset has
spent after every round (from the sites' signed receipts) against the cap its operator
allowed, and the patients each requester has had scored per model.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from veracity.ledger import store
from veracity.ledger.witnessed import WitnessedLog, policy_witness_name
from veracity.server.coordinator.records import RunRecord
from veracity.server.coordinator.service import CoordinatorService
from veracity.server.coordinator.site_software import SiteSoftware, read_site_software

__all__ = [
    "Contact",
    "BudgetPoint",
    "BudgetSeries",
    "last_contacts",
    "cosignatures",
    "site_software",
    "WitnessCosignature",
    "witness_cosignatures",
    "budget_series",
    "round_rows",
    "inference_counts",
    "runs_in_progress",
]


@dataclass(frozen=True)
class Contact:
    """The newest entry an actor signed: its seq, time and kind."""

    seq: int
    ts: str
    kind: str


def last_contacts(service: CoordinatorService) -> dict[str, Contact]:
    """Each actor's newest ledger entry (one grouped query over the log's index)."""
    newest = (
        select(store.EntryRow.actor, func.max(store.EntryRow.seq).label("seq"))
        .group_by(store.EntryRow.actor)
        .subquery()
    )
    query = select(store.EntryRow.actor, store.EntryRow.seq, store.EntryRow.ts, store.EntryRow.kind)
    query = query.join(newest, newest.c.seq == store.EntryRow.seq)
    with Session(service.ledger.engine) as session:
        rows = session.execute(query).all()
    return {actor: Contact(seq=seq, ts=ts, kind=kind) for actor, seq, ts, kind in rows}


def cosignatures(service: CoordinatorService, *, limit: int = 10_000) -> dict[int, list[Any]]:
    """``{tree_size: [cosigning entries' JSON]}`` from the ``checkpoint.cosigned`` entries."""
    found: dict[int, list[Any]] = defaultdict(list)
    for entry in service.ledger.entries(kind="checkpoint.cosigned", limit=limit):
        found[int(entry.payload["tree_size"])].append(entry.to_json())
    return dict(found)


def site_software(service: CoordinatorService) -> dict[str, SiteSoftware]:
    """What each site's node said it runs at the start of the newest run it joined."""
    return read_site_software(service.home.data_dir)


@dataclass(frozen=True)
class WitnessCosignature:
    """A site witness's ``cosignature/v1`` of a checkpoint note, as the coordinator stored it.

    The coordinator checked the line against the witness key the site posted with it; an
    auditor checks it again against the key its own policy pins.
    """

    site: str
    key_id: str
    #: When the witness cosigned (the cosignature's own timestamp), RFC 3339.
    cosigned_at: str


def witness_cosignatures(service: CoordinatorService) -> dict[int, list[WitnessCosignature]]:
    """``{tree_size: [witness cosignatures]}``, by site name; the log's own signature left out."""
    origin = WitnessedLog(service.ledger).origin
    found: dict[int, list[WitnessCosignature]] = defaultdict(list)
    query = select(store.CosignatureRow).order_by(
        store.CosignatureRow.tree_size, store.CosignatureRow.witness
    )
    with Session(service.ledger.engine) as session:
        for row in session.execute(query).scalars():
            if row.witness == origin:
                continue
            moment = datetime.fromtimestamp(row.timestamp, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            found[row.tree_size].append(
                WitnessCosignature(
                    site=policy_witness_name(row.witness),
                    key_id=bytes(row.key_id).hex(),
                    cosigned_at=moment,
                )
            )
    return dict(found)


@dataclass(frozen=True)
class BudgetPoint:
    """A dataset's cumulative epsilon after a round or an analysis query (a signed receipt)."""

    seq: int
    ts: str
    epsilon: float
    study_hash: str
    #: What spent it: ``run R, round N`` or ``analysis query Q``.
    spent_by: str
    #: A short label for the chart's axis (``r2``, ``q:mean-age``).
    label: str


@dataclass
class BudgetSeries:
    """One site's dataset: epsilon over time, the cap its operator allowed, what spent it."""

    site: str
    dataset_id: str
    points: list[BudgetPoint] = field(default_factory=list)
    cap: float | None = None
    studies: set[str] = field(default_factory=set)
    refusals: list[dict[str, Any]] = field(default_factory=list)

    @property
    def spent(self) -> float:
        """The newest cumulative epsilon (0 before any round)."""
        return self.points[-1].epsilon if self.points else 0.0


def budget_series(service: CoordinatorService, *, site: str | None = None) -> list[BudgetSeries]:
    """Every dataset's epsilon after each round and query, with its cap (one site's if given).

    Points come from the training receipts in ``round.completed`` and the analysis receipts
    in ``analysis.answered`` (both carry the dataset's cumulative epsilon), in ledger order.
    The cap is the largest ``epsilon_cap`` the site signed in its approvals of studies on
    that dataset (a site's own ledger of its pool is the authority; this is what the
    coordinator was told). Budget refusals recorded in rounds are listed with the series.
    """
    series: dict[tuple[str, str], BudgetSeries] = {}

    def of(name: str, dataset_id: str) -> BudgetSeries:
        key = (name, dataset_id)
        if key not in series:
            series[key] = BudgetSeries(site=name, dataset_id=dataset_id)
        return series[key]

    for entry in service.ledger.entries(kind="round.completed"):
        payload = entry.payload
        for signed in payload["receipts"]:
            receipt = signed["receipt"]
            if site is not None and receipt["site"] != site:
                continue
            item = of(receipt["site"], receipt["dataset_id"])
            item.points.append(
                BudgetPoint(
                    seq=entry.seq,
                    ts=entry.ts,
                    epsilon=float(receipt["epsilon"]),
                    study_hash=payload["study_hash"],
                    spent_by=f"run {payload['run_id']}, round {payload['round']}",
                    label=f"r{payload['round']}",
                )
            )
            item.studies.add(payload["study_hash"])
        for refused in payload.get("refused", []):
            if site is not None and refused["site"] != site:
                continue
            for item in series.values():
                if item.site == refused["site"]:
                    item.refusals.append({**refused, "seq": entry.seq, "ts": entry.ts})
    for entry in service.ledger.entries(kind="analysis.answered"):
        payload = entry.payload
        for signed in payload["receipts"]:
            receipt = signed["receipt"]
            if site is not None and receipt["site"] != site:
                continue
            item = of(receipt["site"], receipt["dataset_id"])
            item.points.append(
                BudgetPoint(
                    seq=entry.seq,
                    ts=entry.ts,
                    epsilon=float(receipt["epsilon"]),
                    study_hash=payload["study_hash"],
                    spent_by=f"analysis query {payload['query_id']}",
                    label=f"q:{payload['query_id']}",
                )
            )
            item.studies.add(payload["study_hash"])
    for entry in service.ledger.entries(kind="study.approved"):
        payload = entry.payload
        if site is not None and payload["site"] != site:
            continue
        item = of(payload["site"], payload["dataset_id"])
        cap = float(payload["epsilon_cap"])
        item.cap = cap if item.cap is None else max(item.cap, cap)
    for item in series.values():
        item.points.sort(key=lambda point: point.seq)
    return sorted(series.values(), key=lambda s: (s.site, s.dataset_id))


def round_rows(service: CoordinatorService, run_id: str) -> list[dict[str, Any]]:
    """Each recorded round of a run: participants, refusals, drops and per-site epsilon."""
    rows = []
    for record in service.reads.rounds(run_id):
        completed = record.completed
        rows.append(
            {
                "seq": record.seq,
                "round": completed.round,
                "participants": list(completed.participants),
                "refused": [r.to_json() for r in completed.refused],
                "dropped": [d.to_json() for d in completed.dropped],
                "epsilon": {s.receipt.site: s.receipt.epsilon for s in completed.receipts},
                "metrics": dict(completed.metrics),
            }
        )
    return rows


def inference_counts(service: CoordinatorService) -> dict[str, dict[str, dict[str, int]]]:
    """``{model_hash: {requester: {"requests", "patients"}}}`` from ``inference.served``."""
    counts: dict[str, dict[str, dict[str, int]]] = defaultdict(dict)
    for entry in service.ledger.entries(kind="inference.served"):
        payload = entry.payload
        per = counts[payload["model_hash"]].setdefault(
            payload["requester"], {"requests": 0, "patients": 0}
        )
        per["requests"] += 1
        per["patients"] = max(per["patients"], int(payload["served_total"]))
    return dict(counts)


def runs_in_progress(service: CoordinatorService) -> list[RunRecord]:
    """Runs with no ``run.finished`` yet, oldest first."""
    return [run for run in service.reads.runs() if run.finished is None]


def decoded(body: bytes) -> Any:
    """An entry's exact bytes, decoded as JSON for display."""
    return json.loads(body)
