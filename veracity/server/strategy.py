"""The audited strategy: FedAvg wrapped so that every round is checked and recorded.

The outermost strategy object sees every ``configure_*`` and ``aggregate_*`` call of
Flower's ``Strategy.start`` loop. Each round it samples only the nodes of sites that
approved the study, verifies every reply's signed receipt (or signed refusal) against the
site's enrolled key, keeps unverifiable replies away from FedAvg, aggregates the rest, and
hands a :class:`RoundOutcome` to the recorder (which writes ``round.completed``). When
fewer than the study's minimum of sites return verified updates, the run stops: later
rounds send nothing and :attr:`AuditedStrategy.abort_reason` says why.

With the study's optional client-level DP (:class:`~veracity.tasks.study.CentralDPConfig`)
the inner strategy is Flower's ``DifferentialPrivacyServerSideFixedClipping`` around FedAvg
with an RDP accountant (:func:`aggregation_strategy`), and the audited strategy stays
outermost, so clipping and noise see verified updates only. Flower's accounted mode needs
equal client weights: FedAvg is weighted by :data:`UNIFORM_WEIGHT_KEY`, which this strategy
sets to 1 on every verified reply (whatever a site sent under that name). The noise is
calibrated to the number of sites asked, so a round in which any of them is refused,
dropped or silent releases nothing and stops the run (:attr:`AuditedStrategy.abort_reason`).
Before a round that would take the client-level epsilon past ``max_epsilon``, Flower raises
``PrivacyBudgetExhausted``; the strategy then sends nothing more and
:attr:`AuditedStrategy.budget_exhausted` says why (the rounds before it are complete
releases within the budget). Each completed round's metrics carry the accountant's
``client-level-epsilon`` and ``client-level-delta``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, PrivacyAccountant
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    Strategy,
)
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from flwr.supercore.differential_privacy import compute_clip_model_update, compute_stdv

from veracity.contracts.base import SiteStatement
from veracity.contracts.events import Dropped, Refused, RoundCompleted
from veracity.contracts.messages import (
    ARRAYS_RECORD,
    METRICS_RECORD,
    ReceiptRecord,
    RefusalRecord,
)
from veracity.crypto.keys import VerifyKey
from veracity.errors import ConfigError, InputError, VeracityError
from veracity.flower_serde import weights_from_record, weights_to_record
from veracity.server.polling_grid import PollingGrid
from veracity.server.rounds import AcceptedUpdate, check_receipt, check_refusal
from veracity.tasks.study import CentralDPConfig
from veracity.tasks.weights import Weights, weights_hash

__all__ = [
    "CLIENT_EPSILON_METRIC",
    "CLIENT_DELTA_METRIC",
    "CLIENT_EPSILON_REPLACE_ONE_METRIC",
    "client_level_replace_one_epsilon",
    "UNIFORM_WEIGHT_KEY",
    "RoundOutcome",
    "AuditedStrategy",
    "aggregation_strategy",
    "central_dp_stddev",
    "clipped_mean",
    "fedavg",
    "round_metrics",
]

#: The metric every site reply carries with its row count (FedAvg's weight without central DP).
EXAMPLES_KEY = "num-examples"
#: The metric FedAvg is weighted by under central DP; the audited strategy sets it to 1.
UNIFORM_WEIGHT_KEY = "uniform-weight"
#: Round metrics with the accountant's cumulative client-level (epsilon, delta).
CLIENT_EPSILON_METRIC = "client-level-epsilon"
CLIENT_DELTA_METRIC = "client-level-delta"
#: ... and the epsilon for replace-one neighbouring sites (one site's update replaced).
CLIENT_EPSILON_REPLACE_ONE_METRIC = "client-level-epsilon-replace-one"

Aggregator = FedAvg | DifferentialPrivacyServerSideFixedClipping

log = logging.getLogger(__name__)


@dataclass
class RoundOutcome:
    """What happened in one round, as ``round.completed`` records it."""

    server_round: int
    accepted: list[AcceptedUpdate] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    aggregated_model_hash: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    #: Wall-clock marks of the round (seconds since the epoch), for timing reports.
    timing: dict[str, float] = field(default_factory=dict)
    #: The verified updates by site, as aggregated (kept for the run archive; not recorded).
    updates: dict[str, Weights] = field(default_factory=dict, repr=False)
    #: The aggregated model, when the round released one.
    aggregated: Weights | None = field(default=None, repr=False)

    @property
    def participants(self) -> list[str]:
        """Sites whose verified update went into the aggregate."""
        return sorted(update.site for update in self.accepted)

    def drop(self, site: str, reason: str) -> None:
        """Record that ``site``'s reply was not aggregated, and why."""
        self.dropped.append(Dropped(site=site, reason=reason))

    def payload(self, *, run_id: str, study_hash: str) -> RoundCompleted:
        """The ``round.completed`` payload.

        Raises
        ------
        InputError
            If the round has no aggregated model (nothing to record as completed).
        """
        if self.aggregated_model_hash is None:
            raise InputError(f"round {self.server_round} released no model to record")
        return RoundCompleted(
            run_id=run_id,
            study_hash=study_hash,
            round=self.server_round,
            participants=self.participants,
            receipts=[update.signed() for update in sorted(self.accepted, key=lambda u: u.site)],
            dropped=sorted(self.dropped, key=lambda d: d.site),
            refused=sorted(self.refused, key=lambda d: d.site),
            aggregated_model_hash=self.aggregated_model_hash,
            metrics=self.metrics,
        )


RefusalRecorder = Callable[[str, SiteStatement, str], None]


def round_metrics(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """A round's metrics: examples, slowest site's training time, weighted training loss.

    Privacy figures are not averaged across sites: each site's epsilon is in its receipt.
    ``weighting_key`` (what FedAvg weighted the model by) is not used: examples and the
    loss's weights are always the sites' ``num-examples``.
    """
    metrics = [next(iter(record.metric_records.values())) for record in records]
    examples = [float(str(m[EXAMPLES_KEY])) for m in metrics]
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


def _fedavg_record(weights: Weights, examples: int) -> RecordDict:
    """A verified reply's content as FedAvg reads it: the update and its weight."""
    return RecordDict(
        {
            ARRAYS_RECORD: weights_to_record(weights),
            METRICS_RECORD: MetricRecord({EXAMPLES_KEY: examples}),
        }
    )


def fedavg(updates: Sequence[tuple[Weights, int]]) -> Weights:
    """FedAvg of ``(update, num_examples)`` pairs, in the order given, as the strategy does it.

    The audited strategy (without central DP) hands FedAvg its verified replies sorted by
    site, each weighted by its receipt's ``num_examples``; Flower's FedAvg reduces them with
    ``aggregate_arrayrecords``. This calls the same function on the same records, so an
    auditor's replay (:mod:`veracity.server.replay`) repeats the coordinator's float
    arithmetic operation for operation and gets the same bytes.

    Raises
    ------
    InputError
        If there is no update or the weights do not sum to a positive number.
    """
    if not updates or sum(examples for _, examples in updates) <= 0:
        raise InputError("FedAvg needs at least one update with a positive weight")
    records = [_fedavg_record(weights, examples) for weights, examples in updates]
    return weights_from_record(aggregate_arrayrecords(records, EXAMPLES_KEY))


def clipped_mean(
    updates: Sequence[Weights], global_model: Weights, clipping_norm: float
) -> Weights:
    """The mean of ``updates`` clipped around ``global_model``, before central DP's noise.

    What Flower's ``DifferentialPrivacyServerSideFixedClipping`` computes from the audited
    strategy's replies (each update's difference from the global model clipped to
    ``clipping_norm`` in L2, array by array in the global model's order, with Flower's own
    ``compute_clip_model_update``; then FedAvg with equal weights), before it adds noise.
    """
    names = list(global_model)
    current = [np.asarray(global_model[name]) for name in names]
    clipped = []
    for update in updates:
        arrays = [np.array(update[name]) for name in names]
        compute_clip_model_update(param1=arrays, param2=current, clipping_norm=clipping_norm)
        clipped.append((dict(zip(names, arrays, strict=True)), 1))
    return fedavg(clipped)


def central_dp_stddev(central_dp: CentralDPConfig, sites: int) -> float:
    """The standard deviation of the noise central DP adds to each coordinate of the mean."""
    return compute_stdv(central_dp.noise_multiplier, central_dp.clipping_norm, sites)


def client_level_replace_one_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """Client-level epsilon of ``releases`` rounds for replace-one neighbouring sites.

    Replacing one site's clipped update moves the equal-weight mean of ``n`` updates by at
    most ``2 C / n`` against noise of standard deviation ``z C / n``: a Gaussian mechanism
    of noise multiplier ``z / 2``, composed without amplification (Google dp-accounting's
    RDP accountant, ``GaussianDpEvent(z / 2)`` composed ``releases`` times). 0 for none.
    """
    if releases <= 0:
        return 0.0
    from dp_accounting import dp_event
    from dp_accounting.rdp import rdp_privacy_accountant

    accountant = rdp_privacy_accountant.RdpAccountant()
    accountant.compose(dp_event.GaussianDpEvent(noise_multiplier / 2), releases)
    return float(accountant.get_epsilon(delta))


def aggregation_strategy(
    *,
    sites: int,
    central_dp: CentralDPConfig | None,
    population: int,
    released_before: Sequence[int] = (),
) -> Aggregator:
    """The strategy the audited strategy wraps.

    FedAvg over ``sites`` nodes weighted by examples or, with ``central_dp``, Flower's
    server-side fixed clipping around FedAvg with equal weights and an RDP accountant (no
    sampling amplification, add-or-remove-one neighbours). ``population`` is the number
    of sites the study names (the accountant's population; without amplification it only
    bounds the sample size). ``released_before`` holds, for every round earlier runs of
    the study released, how many sites took part: the accountant starts from those
    releases, so the study's client-level budget is spent across its runs, not per run.

    Raises
    ------
    ConfigError
        If Google's ``dp-accounting`` (``flwr[dp]``) is missing or Flower refuses the terms.
    """
    fedavg = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=sites,
        min_available_nodes=sites,
        weighted_by_key=EXAMPLES_KEY if central_dp is None else UNIFORM_WEIGHT_KEY,
        train_metrics_aggr_fn=round_metrics,
    )
    if central_dp is None:
        return fedavg
    from flwr.serverapp import (
        GaussianPrivacyEvent,
        NeighboringRelation,
        PrivacyConfig,
        SamplingMethod,
    )

    try:
        from flwr.serverapp import RdpAccountant

        accountant = RdpAccountant(
            PrivacyConfig(
                target_delta=central_dp.delta,
                population_size=population,
                neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                sampling_method=SamplingMethod.NO_AMPLIFICATION,
                max_epsilon=central_dp.max_epsilon,
            )
        )
        for sample_size in released_before:
            accountant.compose(
                GaussianPrivacyEvent(
                    noise_multiplier=central_dp.noise_multiplier,
                    sample_size=min(sample_size, population),
                    population_size=population,
                )
            )
        return DifferentialPrivacyServerSideFixedClipping(
            fedavg,
            noise_multiplier=central_dp.noise_multiplier,
            clipping_norm=central_dp.clipping_norm,
            num_sampled_clients=sites,
            accountant=accountant,
        )
    except (ImportError, ValueError) as err:
        raise ConfigError(f"cannot set up central DP: {err}") from err


def _update_problem(
    record: ArrayRecord, expected: Mapping[str, tuple[tuple[int, ...], np.dtype[Any]]] | None
) -> str | None:
    """Why an update cannot be aggregated with the global model, or None if it can."""
    if expected is None:
        return None
    names = list(record.keys())
    if sorted(names) != sorted(expected):
        return "update does not have the global model's arrays"
    for name in names:
        array = record[name].numpy()
        if (array.shape, array.dtype) != expected[name]:
            return f"update array {name!r} does not have the global model's shape and type"
        if not np.all(np.isfinite(array)):
            return f"update array {name!r} has non-finite values"
    return None


class AuditedStrategy(Strategy):
    """FedAvg, optionally with central DP, checked and recorded round by round."""

    def __init__(
        self,
        inner: Aggregator,
        *,
        study_hash: str,
        run_id: str,
        min_sites: int,
        sites_by_node: Mapping[int, str],
        site_key: Callable[[str], VerifyKey],
        log_id: bytes,
        record_round: Callable[[RoundOutcome], None],
        record_refusal: RefusalRecorder,
        node_wait: float = 60.0,
    ) -> None:
        self.inner = inner
        self.node_wait = node_wait
        self.study_hash = study_hash
        self.run_id = run_id
        self.min_sites = min_sites
        self.sites_by_node = dict(sites_by_node)
        self.site_key = site_key
        #: The log every site signature must be bound to (the ledger's log id).
        self.log_id = log_id
        self.record_round = record_round
        self.record_refusal = record_refusal
        self.central_dp: DifferentialPrivacyServerSideFixedClipping | None = None
        self._accountant: PrivacyAccountant | None = None
        if isinstance(inner, DifferentialPrivacyServerSideFixedClipping):
            weighted = inner.strategy
            if inner.accountant is None or not (
                isinstance(weighted, FedAvg) and weighted.weighted_by_key == UNIFORM_WEIGHT_KEY
            ):
                raise ConfigError(
                    "central DP needs an accountant and FedAvg weighted by "
                    f"{UNIFORM_WEIGHT_KEY!r} (use aggregation_strategy)"
                )
            self.central_dp, self._accountant = inner, inner.accountant
        self.abort_reason: str | None = None
        #: Why no further round was run under central DP (None while within budget).
        self.budget_exhausted: str | None = None
        self.outcomes: list[RoundOutcome] = []
        self._sampled: dict[int, set[int]] = {}
        self._started: dict[int, float] = {}
        self._expected: dict[int, dict[str, tuple[tuple[int, ...], np.dtype[Any]]]] = {}

    def summary(self) -> None:
        """Log the inner strategy's summary."""
        self.inner.summary()

    # ------------------------------------------------------------------ train
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample among approved sites' nodes only; nothing once the run has stopped."""
        if self.abort_reason is not None or self.budget_exhausted is not None:
            return []
        self._started[server_round] = time.time()
        approved = frozenset(self.sites_by_node)
        view = grid.restricted_to(approved) if isinstance(grid, PollingGrid) else grid
        connected = self._wait_for_sites(view)
        if len(connected) < self.min_sites:
            self.abort_reason = (
                f"round {server_round}: {len(connected)} approving site(s) connected after "
                f"{self.node_wait:.0f} s; the study needs {self.min_sites}"
            )
            return []
        # Sample every connected approving site, never block on one that went away:
        # Flower's FedAvg would otherwise wait for min_available_nodes without a timeout.
        if self.central_dp is not None and len(connected) != self.central_dp.num_sampled_clients:
            asked = self.central_dp.num_sampled_clients
            self.abort_reason = (
                f"round {server_round}: central DP needs every one of the {asked} site(s) its "
                f"noise is calibrated to; {len(connected)} connected after "
                f"{self.node_wait:.0f} s"
            )
            return []
        fedavg = self.central_dp.strategy if self.central_dp is not None else self.inner
        if isinstance(fedavg, FedAvg):
            fedavg.min_train_nodes = fedavg.min_available_nodes = len(connected)
        try:
            messages = list(self.inner.configure_train(server_round, arrays, config, view))
        except PrivacyBudgetExhausted as err:
            self.budget_exhausted = (
                self._exhausted_reason(server_round, self._accountant)
                if self._accountant is not None
                else f"round {server_round}: {err}"
            )
            log.warning("central DP: %s", self.budget_exhausted)
            return []
        messages = [m for m in messages if m.metadata.dst_node_id in approved]
        self._sampled[server_round] = {m.metadata.dst_node_id for m in messages}
        global_model = weights_from_record(arrays)
        self._expected[server_round] = {
            name: (array.shape, array.dtype) for name, array in global_model.items()
        }
        return messages

    def _wait_for_sites(self, view: Grid) -> set[int]:
        """The approving sites' connected nodes, waiting up to ``node_wait`` for all of them.

        Under central DP every site the noise was calibrated for must take part, so the wait
        is for all of them; otherwise for the study's minimum.
        """
        wanted = len(self.sites_by_node) if self.central_dp is not None else self.min_sites
        deadline = time.monotonic() + self.node_wait
        while True:
            connected = set(view.get_node_ids()) & set(self.sites_by_node)
            if len(connected) >= wanted or time.monotonic() >= deadline:
                return connected
            time.sleep(0.5)

    @staticmethod
    def _exhausted_reason(server_round: int, accountant: PrivacyAccountant) -> str:
        spent = accountant.get_privacy_spent()
        return (
            f"client-level privacy budget: round {server_round} would take epsilon past "
            f"max_epsilon {accountant.config.max_epsilon} at delta {spent.delta:g} "
            f"(spent {spent.epsilon:.6f} over {spent.num_releases} round(s))"
        )

    def _check_reply(self, server_round: int, reply: Message, outcome: RoundOutcome) -> bool:
        node = reply.metadata.src_node_id
        site = self.sites_by_node.get(node)
        if site is None:
            # Not a site's reply: the SuperLink's own error for a reply whose update never
            # arrived (its site died during the upload), or a node that was not asked. The
            # site asked is recorded below as sampled without a reply; no site name is made
            # up for the ledger.
            why = reply.error.reason if reply.has_error() else "not an approved site's node"
            log.warning("round %d: a reply from node %s ignored: %s", server_round, node, why)
            return False
        if reply.has_error():
            outcome.drop(site, f"failed: {reply.error.reason}")
            return False
        content = reply.content
        try:
            if RefusalRecord.RECORD in content.config_records:
                refusal = RefusalRecord.from_record(
                    dict(content.config_records[RefusalRecord.RECORD])
                )
                statement = check_refusal(
                    refusal, site=site, site_key=self.site_key(site), log_id=self.log_id
                )
                self.record_refusal(site, statement, refusal.signature)
                reason = str(getattr(statement, "reason", refusal.reason))
                outcome.refused.append(Refused(site=site, kind=refusal.kind, reason=reason))
                return False
            if (
                ARRAYS_RECORD not in content.array_records
                or ReceiptRecord.RECORD not in content.config_records
            ):
                outcome.drop(site, "reply without update or receipt")
                return False
            if len(content.array_records) != 1 or list(content.metric_records) != [METRICS_RECORD]:
                outcome.drop(site, "reply must carry one update and one metric record")
                return False
            problem = _update_problem(
                content.array_records[ARRAYS_RECORD], self._expected.get(server_round)
            )
            if problem is not None:
                outcome.drop(site, problem)
                return False
            receipt = ReceiptRecord.from_record(dict(content.config_records[ReceiptRecord.RECORD]))
            update_hash = weights_hash(weights_from_record(content.array_records[ARRAYS_RECORD]))
            accepted = check_receipt(
                receipt,
                site=site,
                site_key=self.site_key(site),
                log_id=self.log_id,
                study_hash=self.study_hash,
                run_id=self.run_id,
                server_round=server_round,
                update_hash=update_hash,
            )
        except VeracityError as err:
            log.warning("round %d: dropping %s's reply: %s", server_round, site, err)
            outcome.drop(site, str(err)[:2000])
            return False
        outcome.accepted.append(accepted)
        return True

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Verify every reply, aggregate the verified ones, record the round."""
        if self.abort_reason is not None or self.budget_exhausted is not None:
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
            outcome.drop(site, "no complete reply before the round timeout")
        arrays: ArrayRecord | None = None
        metrics: MetricRecord | None = None
        missing = [f"{d.site} ({d.kind})" for d in outcome.refused] + [
            f"{d.site} ({d.reason})" for d in outcome.dropped
        ]
        without = ", ".join(sorted(missing)) or "none"
        if len(verified) < self.min_sites:
            self.abort_reason = (
                f"round {server_round}: {len(verified)} verified update(s), the study needs "
                f"{self.min_sites}; without update: {without}"
            )
        elif self.central_dp is not None and len(verified) != self.central_dp.num_sampled_clients:
            asked = self.central_dp.num_sampled_clients
            self.abort_reason = (
                f"round {server_round}: central DP needs a verified update from each of the "
                f"{asked} site(s) asked (its noise is calibrated to {asked}); "
                f"{len(verified)} arrived; without update: {without}"
            )
        else:
            # One order, by site, whatever order the replies arrived in: the float sum is
            # then what an auditor's replay computes from round.completed's receipts.
            site_of = self.sites_by_node
            verified.sort(key=lambda reply: site_of[reply.metadata.src_node_id])
            receipts = {update.site: update.receipt for update in outcome.accepted}
            if self.central_dp is None:
                for reply in verified:
                    # FedAvg weighs by the row count the site signed, not an unsigned metric.
                    site = site_of[reply.metadata.src_node_id]
                    metrics_record = reply.content.metric_records[METRICS_RECORD]
                    metrics_record[EXAMPLES_KEY] = receipts[site].num_examples
            outcome.updates = {
                site_of[reply.metadata.src_node_id]: weights_from_record(
                    reply.content.array_records[ARRAYS_RECORD]
                )
                for reply in verified
            }
            if self.central_dp is not None:
                order = list(self._expected.get(server_round, {}))
                for reply in verified:
                    # Flower's accounted mode needs equal weights, and it clips each update
                    # against the global model array by array in order.
                    reply.content.metric_records["metrics"][UNIFORM_WEIGHT_KEY] = 1.0
                    update = reply.content.array_records["arrays"]
                    if order and list(update.keys()) != order:
                        reply.content["arrays"] = ArrayRecord({n: update[n] for n in order})
            arrays, metrics = self.inner.aggregate_train(server_round, verified)
            if arrays is None:
                self.abort_reason = f"round {server_round}: the aggregation released no model"
            else:
                outcome.aggregated = weights_from_record(arrays)
                outcome.aggregated_model_hash = weights_hash(outcome.aggregated)
            if metrics is not None:
                outcome.metrics = {
                    k: float(v)
                    for k, v in metrics.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)
                }
            central = self.central_dp
            if arrays is not None and self._accountant is not None and central is not None:
                spent = self._accountant.get_privacy_spent()
                outcome.metrics[CLIENT_EPSILON_METRIC] = spent.epsilon
                outcome.metrics[CLIENT_DELTA_METRIC] = spent.delta
                outcome.metrics[CLIENT_EPSILON_REPLACE_ONE_METRIC] = (
                    client_level_replace_one_epsilon(
                        central.noise_multiplier, spent.num_releases, spent.delta
                    )
                )
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
