"""The audited strategy: FedAvg wrapped so that every round is checked and recorded.

The outermost strategy object sees every ``configure_*`` and ``aggregate_*`` call of
Flower's ``Strategy.start`` loop. Each round it samples only the nodes of sites that
approved the study, verifies every reply's signed receipt (or signed refusal) against the
site's enrolled key, keeps unverifiable replies away from FedAvg, aggregates the rest, and
hands a :class:`RoundOutcome` to the recorder (which writes ``round.completed``). When
fewer than the study's minimum of sites return verified updates, the run stops: later
rounds send nothing and :attr:`AuditedStrategy.abort_reason` says why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from veracity.crypto.keys import VerifyKey
from veracity.errors import VeracityError
from veracity.flower_serde import weights_from_record
from veracity.server.polling_grid import PollingGrid
from veracity.server.rounds import AcceptedUpdate, check_receipt, check_refusal
from veracity.tasks.weights import weights_hash

__all__ = ["RoundOutcome", "AuditedStrategy", "round_metrics"]

log = logging.getLogger(__name__)


@dataclass
class RoundOutcome:
    """What happened in one round, as ``round.completed`` records it."""

    server_round: int
    accepted: list[AcceptedUpdate] = field(default_factory=list)
    dropped: list[dict[str, str]] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)
    aggregated_model_hash: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    #: Wall-clock marks of the round (seconds since the epoch), for timing reports.
    timing: dict[str, float] = field(default_factory=dict)

    @property
    def participants(self) -> list[str]:
        """Sites whose verified update went into the aggregate."""
        return sorted(update.site for update in self.accepted)

    def payload(self, *, run_id: str, study_hash: str) -> dict[str, Any]:
        """The ``round.completed`` payload."""
        return {
            "run_id": run_id,
            "study_hash": study_hash,
            "round": self.server_round,
            "participants": self.participants,
            "receipts": [
                {"receipt": update.receipt, "signature": update.signature}
                for update in sorted(self.accepted, key=lambda u: u.site)
            ],
            "dropped": sorted(self.dropped, key=lambda d: d["site"]),
            "refused": sorted(self.refused, key=lambda d: d["site"]),
            "aggregated_model_hash": self.aggregated_model_hash,
            "metrics": self.metrics,
        }


RefusalRecorder = Callable[[str, str, dict[str, Any], str], None]


def round_metrics(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """A round's metrics: examples, slowest site's training time, weighted training loss.

    Privacy figures are not averaged across sites: each site's epsilon is in its receipt.
    """
    metrics = [next(iter(record.metric_records.values())) for record in records]
    examples = [float(str(m[weighting_key])) for m in metrics]
    out: dict[str, int | float | list[int] | list[float]] = {
        "examples": sum(examples),
        "sites": float(len(metrics)),
    }
    seconds = [float(str(m["train-seconds"])) for m in metrics if "train-seconds" in m]
    if seconds:
        out["train-seconds-max"] = max(seconds)
    if metrics and all("train-loss" in m for m in metrics):
        losses = [float(str(m["train-loss"])) for m in metrics]
        out["train-loss"] = sum(w * v for w, v in zip(examples, losses, strict=True)) / sum(
            examples
        )
    return MetricRecord(out)


class AuditedStrategy(Strategy):
    """FedAvg with per-round receipt verification and a ledger record of every round."""

    def __init__(
        self,
        inner: FedAvg,
        *,
        study_hash: str,
        run_id: str,
        min_sites: int,
        sites_by_node: Mapping[int, str],
        site_key: Callable[[str], VerifyKey],
        record_round: Callable[[RoundOutcome], None],
        record_refusal: RefusalRecorder,
    ) -> None:
        self.inner = inner
        self.study_hash = study_hash
        self.run_id = run_id
        self.min_sites = min_sites
        self.sites_by_node = dict(sites_by_node)
        self.site_key = site_key
        self.record_round = record_round
        self.record_refusal = record_refusal
        self.abort_reason: str | None = None
        self.outcomes: list[RoundOutcome] = []
        self._sampled: dict[int, set[int]] = {}
        self._started: dict[int, float] = {}

    def summary(self) -> None:
        """Log the inner strategy's summary."""
        self.inner.summary()

    # ------------------------------------------------------------------ train
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample among approved sites' nodes only; nothing once the run has stopped."""
        if self.abort_reason is not None:
            return []
        self._started[server_round] = time.time()
        approved = frozenset(self.sites_by_node)
        view = grid.restricted_to(approved) if isinstance(grid, PollingGrid) else grid
        messages = list(self.inner.configure_train(server_round, arrays, config, view))
        messages = [m for m in messages if m.metadata.dst_node_id in approved]
        self._sampled[server_round] = {m.metadata.dst_node_id for m in messages}
        return messages

    def _check_reply(self, server_round: int, reply: Message, outcome: RoundOutcome) -> bool:
        node = reply.metadata.src_node_id
        site = self.sites_by_node.get(node)
        if site is None:
            outcome.dropped.append({"site": f"node:{node}", "reason": "not an approved site"})
            return False
        if reply.has_error():
            outcome.dropped.append({"site": site, "reason": f"failed: {reply.error.reason}"})
            return False
        content = reply.content
        try:
            if "refusal" in content.config_records:
                refusal = content.config_records["refusal"]
                kind, payload_json = str(refusal["kind"]), str(refusal["json"])
                signature = str(refusal["signature"])
                payload = check_refusal(
                    kind, payload_json, signature, site=site, site_key=self.site_key(site)
                )
                self.record_refusal(site, kind, payload, signature)
                reason = str(payload.get("reason", kind))
                outcome.refused.append({"site": site, "kind": kind, "reason": reason})
                return False
            if "arrays" not in content.array_records or "receipt" not in content.config_records:
                outcome.dropped.append({"site": site, "reason": "reply without update or receipt"})
                return False
            receipt = content.config_records["receipt"]
            update_hash = weights_hash(weights_from_record(content.array_records["arrays"]))
            accepted = check_receipt(
                str(receipt["json"]),
                str(receipt["signature"]),
                site=site,
                site_key=self.site_key(site),
                study_hash=self.study_hash,
                run_id=self.run_id,
                server_round=server_round,
                update_hash=update_hash,
            )
        except (VeracityError, KeyError) as err:
            log.warning("round %d: dropping %s's reply: %s", server_round, site, err)
            outcome.dropped.append({"site": site, "reason": str(err)})
            return False
        outcome.accepted.append(accepted)
        return True

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Verify every reply, aggregate the verified ones, record the round."""
        if self.abort_reason is not None:
            return None, None  # the run stopped in an earlier round; nothing was sent
        outcome = RoundOutcome(server_round)
        outcome.timing = {
            "start": self._started.get(server_round, time.time()),
            "replies": time.time(),
        }
        replies = list(replies)
        verified = [reply for reply in replies if self._check_reply(server_round, reply, outcome)]
        answered = {reply.metadata.src_node_id for reply in replies}
        for node in sorted(self._sampled.get(server_round, set()) - answered):
            site = self.sites_by_node.get(node, f"node:{node}")
            outcome.dropped.append({"site": site, "reason": "no reply before the round timeout"})
        arrays: ArrayRecord | None = None
        metrics: MetricRecord | None = None
        if len(verified) < self.min_sites:
            missing = [f"{d['site']} ({d['kind']})" for d in outcome.refused] + [
                f"{d['site']} ({d['reason']})" for d in outcome.dropped
            ]
            self.abort_reason = (
                f"round {server_round}: {len(verified)} verified update(s), the study needs "
                f"{self.min_sites}; without update: {', '.join(sorted(missing)) or 'none'}"
            )
        else:
            arrays, metrics = self.inner.aggregate_train(server_round, verified)
            if arrays is not None:
                outcome.aggregated_model_hash = weights_hash(weights_from_record(arrays))
            if metrics is not None:
                outcome.metrics = {
                    k: float(v)
                    for k, v in metrics.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)
                }
        outcome.timing["aggregated"] = time.time()
        self.outcomes.append(outcome)
        self.record_round(outcome)
        outcome.timing["recorded"] = time.time()
        return arrays, metrics

    # --------------------------------------------------------------- evaluate
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No federated evaluation: site metrics on patient data are not released."""
        return []

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Nothing to aggregate."""
        return None
