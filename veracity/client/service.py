"""The site agent's service: one call per training request, answered by a reply or a refusal.

The Flower ClientApp adapter only converts between Flower records and these types::

    agent = SiteAgent.open(site_dir)
    outcome = agent.handle_train(TrainRequest(study=..., study_hash=..., run_id=...,
                                              round=..., code_hash=..., weights=...))
    if isinstance(outcome, TrainReply): ...   # weights, signed receipt, metrics
    else: ...                                 # Refusal: kind and signed statement

For every request the agent, in order:

1. validates the request (malformed input raises :class:`~veracity.errors.InputError`);
2. checks the approval (:func:`veracity.client.approvals.approved_terms`), that the
   approved dataset's file is unchanged, that the round is one of the study's and that
   the global weights are within the study's bound; if not, answers a signed
   ``approval.missing`` :class:`Refusal` (queued in the outbox) and trains nothing;
3. in one transaction: refuses (``approval.missing``) a round of a run already trained
   or a run beyond the study's ``runs``; computes what the round would bring the dataset
   pool's and the study's epsilon to and reserves the round's steps; if a cap would be
   crossed it answers a signed ``budget.refused`` :class:`Refusal` (also queued in the
   outbox) and trains nothing;
4. trains one round of DP-SGD on the reused :class:`~veracity.client.training.PrivateTrainer`
   of this run, checks that the accountant grew by exactly the reserved steps, marks the
   spend completed and answers a :class:`TrainReply` with a receipt signed under
   ``veracity.receipt.v2`` for the coordinator's log. If training fails, the spend is
   marked failed; its steps still count.

The round's Poisson samples and DP noise come from a secret per-round seed (32 bytes from
``os.urandom``, kept in the site's store); the receipt carries its ``seed_commitment``, and
the site keeps the global model it received and the round's record, so that
``veracity site replay`` can re-train the round later (:mod:`veracity.client.replay`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from veracity.client.approvals import approved_terms, refuse_approval, refuse_budget
from veracity.client.budget import (
    ACCOUNTANT,
    NEIGHBOURING,
    RoundBudget,
    Segment,
    evaluate_round,
    history_to_json,
    poisson_sampling,
)
from veracity.client.datasets import check_registered, load_registered
from veracity.client.replay import KeptRound, RoundKeeper
from veracity.client.site import Clock, Site, utc_now
from veracity.client.store import Dataset, Pool, SignedStatement
from veracity.client.study_inputs import study_examples
from veracity.contracts.receipts import RECEIPT_DOMAIN, RECEIPT_FIELDS, Receipt
from veracity.contracts.replay import SEED_BYTES, seed_commitment
from veracity.core.fields import is_hex64
from veracity.errors import ApprovalMissing, InputError, VerificationError
from veracity.tasks.spec import check_weights
from veracity.tasks.study import Study, parse_any_study, parse_study
from veracity.tasks.weights import weights_hash

if TYPE_CHECKING:
    from veracity.client.training import PrivateTrainer

__all__ = [
    "TrainRequest",
    "TrainReply",
    "Refusal",
    "TrainOutcome",
    "RECEIPT_FIELDS",
    "SiteAgent",
]

log = logging.getLogger(__name__)


_RUN_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
_MAX_ROUND = 1_000_000
_CACHED_TRAINERS = 4


@dataclass(frozen=True)
class TrainRequest:
    """A coordinator's request to train one round.

    ``study`` is the study document (the JSON object the coordinator proposed);
    ``study_hash`` its hash as the coordinator states it; ``run_id`` the Flower run id as a
    decimal string; ``round`` the round number; ``code_hash`` the hash of the app bundle
    that sent the request; ``weights`` the global model, keyed like the model's
    ``state_dict`` (``linear.weight`` ...).
    """

    study: Mapping[str, Any]
    study_hash: str
    run_id: str
    round: int
    code_hash: str
    weights: Mapping[str, npt.NDArray[np.floating]]


@dataclass(frozen=True)
class TrainReply:
    """A trained round: the update, its signed receipt, and metrics.

    ``metrics`` holds ``num-examples`` (rows of the dataset), ``epsilon`` (the receipt's
    cumulative dataset epsilon, PRV), ``epsilon-rdp`` (the same history by RDP, the
    cross-check), ``study-epsilon`` (this study's own spend on the dataset, against its
    cap), ``secure-mode`` (1.0 or 0.0) and, only where the operator shares it,
    ``train-loss``. ``noise_generator`` names where the DP noise came from.
    """

    weights: dict[str, npt.NDArray[np.float32]]
    receipt: dict[str, Any]
    receipt_signature: str
    metrics: dict[str, float]
    noise_generator: str


@dataclass(frozen=True)
class Refusal:
    """A signed refusal: ``budget.refused`` or ``approval.missing``.

    ``statement`` is the site-signed statement (kind, actor, payload, signature); its
    payload is, for ``budget.refused``, the ledger event's fields (``site``,
    ``study_hash``, ``dataset_id``, ``run_id``, ``round``, ``epsilon_requested``,
    ``epsilon_left``, ``signed_at``) and, for ``approval.missing``, ``site``,
    ``study_hash``, ``run_id``, ``round``, ``reason`` and ``signed_at``. ``reason`` says
    why in words.
    """

    kind: Literal["budget.refused", "approval.missing"]
    statement: SignedStatement
    reason: str

    @property
    def payload(self) -> dict[str, Any]:
        """The signed payload."""
        return self.statement.payload

    @property
    def signature(self) -> str:
        """The site's signature over the statement."""
        return self.statement.signature


TrainOutcome = TrainReply | Refusal


def _first_round_segment(study: Study, dataset: Dataset) -> Segment:
    """The segment a first round of ``study`` on ``dataset`` plans, as its trainer counts it.

    Raises
    ------
    ApprovalMissing
        If the dataset file changed since registration (the round will refuse too).
    InputError
        If the dataset does not hold the study's examples.
    """
    x, _y = study_examples(study, load_registered(dataset))
    return poisson_sampling(int(x.shape[0]), study.training.batch_size).segment(
        study.dp.noise_multiplier, study.training.local_epochs
    )


def _check_request(request: TrainRequest) -> Study:
    # The adapter builds requests from wire data: check the types the annotations promise.
    run_id: object = request.run_id
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise InputError("run_id must be 1-128 printable characters without spaces")
    round_number: object = request.round
    if isinstance(round_number, bool) or not isinstance(round_number, int):
        raise InputError("round must be an integer")
    if not 0 <= round_number <= _MAX_ROUND:
        raise InputError(f"round {round_number} is out of range")
    for name, value in (("study_hash", request.study_hash), ("code_hash", request.code_hash)):
        text: object = value
        if not is_hex64(text):
            raise InputError(f"{name} must be 64 lowercase hex characters")
    document: object = request.study
    if not isinstance(document, Mapping):
        raise InputError("the study must be a JSON object")
    study = parse_study(dict(document))
    check_weights(study.model_spec, request.weights, what="global weights")
    return study


def _check_weight_bound(study: Study, weights: Mapping[str, Any]) -> None:
    """Refuse global weights whose L2 norm (all arrays together) exceeds the study's bound.

    Raises
    ------
    ApprovalMissing
        If the norm is above ``study.max_weight_norm``: the approved study does not cover
        training from such weights.
    """
    squared = sum(
        float(np.sum(np.square(np.asarray(array, dtype=np.float64)))) for array in weights.values()
    )
    norm = math.sqrt(squared)
    if not norm <= study.max_weight_norm:
        raise ApprovalMissing(
            f"the global weights have L2 norm {norm:.6g}, above the study's bound "
            f"max_weight_norm {study.max_weight_norm:g}"
        )


class SiteAgent:
    """The site's training service (see the module docstring).

    Parameters
    ----------
    site
        The opened site.
    seed
        Seeds each run's sampling and noise generators deterministically (tests only);
        ``None`` (production) draws them from the OS.
    account_ahead
        After each round that is not its study's last, compute in a background thread
        what the accountants will be asked before the next one (the same planned segment
        on the history just recorded), so that the next round finds it in their caches
        (:mod:`veracity.client.budget` caches by exact history and delta). Nothing is
        decided from it: the next round computes its own figures, from the store, and a
        wrong guess only costs the CPU it used. The ClientApp worker's agents do this, and
        also warm the caches for the first round of each study the site approves
        (:meth:`prepare_approved`).
    """

    def __init__(self, site: Site, *, seed: int | None = None, account_ahead: bool = False) -> None:
        from veracity.client.training import configure_threads

        self.site = site
        self._seed = seed
        self._account_ahead = account_ahead
        self._ahead: threading.Thread | None = None
        self._decisions_seen = 0
        self._keeper = RoundKeeper(site.paths.root)
        # One trainer per (run, study, dataset, file hash); torch is imported lazily.
        self._trainers: OrderedDict[tuple[str, str, str, str], PrivateTrainer] = OrderedDict()
        configure_threads(site.config.torch_threads)

    @classmethod
    def open(
        cls,
        site_dir: Path | str,
        *,
        clock: Clock = utc_now,
        seed: int | None = None,
        database_url: str | None = None,
        account_ahead: bool = False,
    ) -> SiteAgent:
        """Open the site in ``site_dir`` and start its agent.

        Raises
        ------
        ConfigError
            If the directory is not an initialised site or its store cannot be opened.
        """
        site = Site.open(Path(site_dir), clock=clock, database_url=database_url)
        return cls(site, seed=seed, account_ahead=account_ahead)

    def close(self) -> None:
        """Drop cached trainers and close the store."""
        self._wait_ahead()
        self._trainers.clear()
        self.site.close()

    def __enter__(self) -> SiteAgent:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ training

    def handle_train(self, request: TrainRequest) -> TrainOutcome:
        """Train one round for ``request``, or refuse it with a signed statement.

        Raises
        ------
        InputError
            If the request is malformed (bad hashes, run id, round, study document, or
            weights that do not fit the study's model).
        VerificationError
            If the PRV and RDP accountants disagree, or the accountant did not record
            exactly the reserved steps (the spend is then marked failed).
        ConfigError
            If the site cannot provide what the study needs (e.g. secure mode).
        """
        self._wait_ahead()  # one accountant computation at a time, never the same one twice
        study = _check_request(request)
        try:
            _decision, dataset, cap = approved_terms(
                self.site, study=study, study_hash=request.study_hash, code_hash=request.code_hash
            )
            if not 1 <= request.round <= study.rounds:
                raise ApprovalMissing(
                    f"study {study.study_id!r} has {study.rounds} round(s); round "
                    f"{request.round} is not part of it"
                )
            trainer = self._trainer(request.run_id, study, dataset)
            _check_weight_bound(study, request.weights)
        except ApprovalMissing as err:
            return self._refuse_approval(request, str(err))
        planned = trainer.planned_segment(study.training.local_epochs)

        def evaluate(
            dataset_history: tuple[Segment, ...], study_history: tuple[Segment, ...], pool: Pool
        ) -> RoundBudget:
            if study.dp.delta > pool.delta:
                # A dataset registered later lowered the pool's delta below the study's.
                raise ApprovalMissing(
                    f"the study's delta {study.dp.delta:g} is weaker than the delta "
                    f"{pool.delta:g} of dataset {dataset.dataset_id!r}'s budget pool"
                )
            return evaluate_round(
                dataset_history=dataset_history,
                study_history=study_history,
                planned=planned,
                delta=study.dp.delta,
                dataset_budget=pool.epsilon_budget,
                study_cap=cap,
            )

        try:
            budget, dataset_before, study_before, spend_id = self.site.store.reserve_round(
                dataset_id=dataset.dataset_id,
                study_hash=study.study_hash,
                run_id=request.run_id,
                round=request.round,
                planned=planned,
                evaluate=evaluate,
                now=self.site.now(),
                runs=study.runs,
            )
        except ApprovalMissing as err:
            return self._refuse_approval(request, str(err))
        if spend_id is None:
            return self._refuse_budget(
                request, study, dataset, budget, dataset_before, study_before, cap
            )
        secure = study.dp.secure_mode or self.site.config.secure_mode
        try:
            # Site-side replay (#19): the round's randomness comes from its secret seed,
            # and the global model it starts from is kept.
            seed = self.site.store.round_seed(
                run_id=request.run_id,
                round=request.round,
                fresh=self._fresh_round_seed(request, dataset, secure=secure),
            )
            trainer.rekey(seed, injected=self._seed is not None and not secure)
            global_hash = self._keeper.keep_global(request.weights)
            trainer.load_history(dataset_before)
            started = time.perf_counter()
            result = trainer.train_round(request.weights, epochs=study.training.local_epochs)
            train_seconds = time.perf_counter() - started
            recorded = trainer.accountant_history()
            if not all(np.all(np.isfinite(array)) for array in result.weights.values()):
                # Cannot happen: clipping bounds every sample's contribution and the weights
                # were bounded. A second line of defence only (withholding is a signal too).
                raise VerificationError("the trained update is not finite; it is withheld")
            if result.steps != planned.steps or recorded != budget.dataset.history:
                raise VerificationError(
                    f"the accountant recorded {history_to_json(recorded)} after "
                    f"{result.steps} steps, but the round reserved {planned.as_list()} "
                    f"on {history_to_json(dataset_before)}; the update is withheld"
                )
        except BaseException as err:
            self.site.store.finish_spend(
                spend_id, status="failed", now=self.site.now(), note=f"{type(err).__name__}: {err}"
            )
            raise
        update_hash = weights_hash(result.weights)
        receipt = Receipt(
            site=self.site.name,
            study=study.study_hash,
            round=request.round,
            run_id=request.run_id,
            dataset_id=dataset.dataset_id,
            dataset_commitment=dataset.commitment,
            update_hash=update_hash,
            accountant=ACCOUNTANT,
            neighbouring=NEIGHBOURING,
            delta=study.dp.delta,
            epsilon=budget.dataset.epsilon,
            epsilon_add_remove=budget.dataset.add_remove,
            history=history_to_json(budget.dataset.history),
            max_grad_norm=study.dp.max_grad_norm,
            num_examples=dataset.rows,
            noise_generator=trainer.noise_generator,
            seed_commitment=seed_commitment(run_id=request.run_id, round=request.round, seed=seed),
        )
        document = receipt.to_json()
        signature = self.site.sign_receipt(RECEIPT_DOMAIN, document)
        try:
            self._keeper.keep_round(
                KeptRound(
                    run_id=request.run_id,
                    round=request.round,
                    study=dict(request.study),
                    study_hash=study.study_hash,
                    dataset_id=dataset.dataset_id,
                    dataset_commitment=dataset.commitment,
                    file_sha256=dataset.file_sha256,
                    global_model_hash=global_hash,
                    torch_threads=self.site.config.torch_threads,
                    clipping=trainer.clipping,
                    receipt=document,
                    receipt_signature=signature,
                    train_seconds=train_seconds,
                )
            )
        except BaseException as err:
            self.site.store.finish_spend(
                spend_id, status="failed", now=self.site.now(), note=f"{type(err).__name__}: {err}"
            )
            raise
        self.site.store.finish_spend(
            spend_id, status="completed", now=self.site.now(), update_hash=update_hash
        )
        metrics: dict[str, float] = {
            "num-examples": float(dataset.rows),
            "epsilon": budget.dataset.epsilon,
            "epsilon-add-remove": budget.dataset.add_remove,
            "epsilon-rdp": budget.dataset.rdp,
            "study-epsilon": budget.study.epsilon,
            "secure-mode": 1.0 if trainer.secure_mode else 0.0,
        }
        if self.site.config.share_train_loss and math.isfinite(result.mean_loss):
            metrics["train-loss"] = result.mean_loss
        log.info(
            "site %s trained round %s of run %s: epsilon %.4f (study %.4f)",
            self.site.name,
            request.round,
            request.run_id,
            budget.dataset.epsilon,
            budget.study.epsilon,
        )
        if self._account_ahead and request.round < study.rounds:
            self._start_ahead(budget, study.dp.delta)
        return TrainReply(
            weights=result.weights,
            receipt=document,
            receipt_signature=signature,
            metrics=metrics,
            noise_generator=trainer.noise_generator,
        )

    def prepare_approved(self) -> int:
        """Warm the accountants for round 1 of each study approved since the last call.

        For an agent made with ``account_ahead``, and for studies whose approval is still
        the decision in force and that have not trained on their dataset yet: the first
        round of a study otherwise computes its privacy figures (seconds of CPU) while the
        coordinator waits. The background thread reads the dataset and counts its examples
        as training does (a recording gives windows, not rows), so that it plans the
        segment round 1 will. Nothing is decided from the warm-up (see the class doc).
        Cheap when no decision is new. Returns the number of studies it started warming
        (at most one at a time: the others wait for the next call).
        """
        if not self._account_ahead or (self._ahead is not None and self._ahead.is_alive()):
            return 0
        for decision in self.site.store.decisions_after(self._decisions_seen):
            self._decisions_seen = decision.id
            if decision.decision != "approved" or decision.dataset_id is None:
                continue
            try:
                study = parse_any_study(dict(decision.study_document))
            except InputError:
                continue
            if not isinstance(study, Study):
                continue  # an analysis study: its queries are accounted as they come
            latest = self.site.store.latest_decision(study.study_hash)
            if latest is None or latest.id != decision.id:
                continue  # refused or approved again since: that decision is in force
            dataset = self.site.store.get_dataset(decision.dataset_id)
            if dataset is None:
                continue
            study_history = self.site.store.study_history(dataset.dataset_id, study.study_hash)
            if study_history:
                continue  # it trained here already (the worker restarted): nothing is waiting
            dataset_history = self.site.store.dataset_history(dataset.dataset_id)
            self._start_ahead_on(
                dataset_history,
                study_history,
                functools.partial(_first_round_segment, study, dataset),
                study.dp.delta,
            )
            return 1
        return 0

    def _start_ahead(self, budget: RoundBudget, delta: float) -> None:
        """Warm the accountants' caches for the next round of the same study (see class doc)."""
        planned = budget.planned
        self._start_ahead_on(budget.dataset.history, budget.study.history, lambda: planned, delta)

    def _start_ahead_on(
        self,
        dataset_history: tuple[Segment, ...],
        study_history: tuple[Segment, ...],
        plan: Callable[[], Segment],
        delta: float,
    ) -> None:
        self._wait_ahead()

        def compute() -> None:
            try:
                ahead = evaluate_round(
                    dataset_history=dataset_history,
                    study_history=study_history,
                    planned=plan(),
                    delta=delta,
                    dataset_budget=math.inf,
                    study_cap=math.inf,
                )
                _ = ahead.dataset.add_remove  # the receipt's figure
            except Exception as err:  # noqa: BLE001 - a cache warm-up; the round recomputes
                log.debug("accounting ahead failed: %s", err)

        self._ahead = threading.Thread(target=compute, name="account-ahead", daemon=True)
        self._ahead.start()

    def _wait_ahead(self) -> None:
        if self._ahead is not None:
            self._ahead.join()
            self._ahead = None

    def _trainer(self, run_id: str, study: Study, dataset: Dataset) -> PrivateTrainer:
        """The trainer of a run, built on first use and reused while the file is unchanged.

        Raises
        ------
        ApprovalMissing
            If the dataset file changed since registration.
        """
        from veracity.client.training import PrivateTrainer

        key = (run_id, study.study_hash, dataset.dataset_id, dataset.file_sha256)
        source = check_registered(dataset)  # re-hashes the file every round
        cached = self._trainers.get(key)
        if cached is not None:
            self._trainers.move_to_end(key)
            return cached
        x, y = study_examples(study, load_registered(dataset, source))
        secure = study.dp.secure_mode or self.site.config.secure_mode
        trainer = PrivateTrainer.for_study(
            study,
            x,
            y,
            clipping=self.site.config.clipping,
            secure_mode=secure,
            seed=None if secure else self._run_seed(key),
        )
        self._trainers[key] = trainer
        while len(self._trainers) > _CACHED_TRAINERS:
            self._trainers.popitem(last=False)
        return trainer

    def _fresh_round_seed(self, request: TrainRequest, dataset: Dataset, *, secure: bool) -> bytes:
        """A new round seed: 32 bytes from the OS, or derived from the injected test seed."""
        if self._seed is None or secure:
            return os.urandom(SEED_BYTES)
        material = "\x00".join(
            ("round-seed", str(self._seed), request.run_id, str(request.round), dataset.dataset_id)
        )
        return hashlib.sha256(material.encode()).digest()

    def _run_seed(self, key: tuple[str, ...]) -> int | None:
        if self._seed is None:
            return None
        digest = hashlib.sha256("\x00".join((str(self._seed), *key)).encode()).digest()
        return int.from_bytes(digest[:8], "big") >> 1

    # ------------------------------------------------------------------ refusals

    def _refuse_approval(self, request: TrainRequest, reason: str) -> Refusal:
        # Stored and queued for the ledger like budget.refused, once per refused request.
        statement = refuse_approval(
            self.site,
            study_hash=request.study_hash,
            run_id=request.run_id,
            round_number=request.round,
            reason=reason,
        )
        log.warning("site %s refused round %s: %s", self.site.name, request.round, reason)
        return Refusal(kind="approval.missing", statement=statement, reason=reason)

    def _refuse_budget(
        self,
        request: TrainRequest,
        study: Study,
        dataset: Dataset,
        budget: RoundBudget,
        dataset_before: tuple[Segment, ...],
        study_before: tuple[Segment, ...],
        cap: float,
    ) -> Refusal:
        statement, reason = refuse_budget(
            self.site,
            what=f"round {request.round}",
            study_hash=study.study_hash,
            study_id=study.study_id,
            dataset=dataset,
            run_id=request.run_id,
            round_number=request.round,
            budget=budget,
            cap=cap,
            study_before=study_before,
            dataset_before=dataset_before,
            delta=study.dp.delta,
        )
        log.warning("site %s refused round %s: %s", self.site.name, request.round, reason)
        return Refusal(kind="budget.refused", statement=statement, reason=reason)
