"""The auditor's replay of a run's aggregation, from a ledger bundle and a run archive.

:func:`replay_aggregation` takes nothing on the coordinator's word. Its steps, numbered as
the code below labels them:

1. Verify the bundle against the trusted root key (every entry, signature, checkpoint).
2. Read the run's ``round.completed`` entries from the verified bundle, in round order.
   The run is the archive index's ``run_id``; a run the bundle does not record is refused.
3. For each round, read from the archive each update its receipts name, by the receipt's
   ``update_hash``; a missing file, or one whose weights hash to anything else, fails the
   round.
4. Recompute the aggregate with the strategy's own FedAvg (:func:`~veracity.server.strategy.
   fedavg`): updates in site order, each weighted by its receipt's ``num_examples``, and
   check that its hash is the round's ``aggregated_model_hash``.
5. Check that the model the run released (``model.released`` and ``run.finished``) is the
   last replayed round's aggregate.

4'. With client-level DP (``central_dp``) the aggregate carries noise whose seed stays
   the coordinator's: the clipped mean is recomputed exactly (:func:`~veracity.server.
   strategy.clipped_mean`, around the previous round's archived model or the study's
   initial model) and the recorded aggregate minus it must be noise of the accounted
   sigma (its mean and per-coordinate variance, :func:`_check_noise`). This is a
   statistical check: it catches a coordinator that adds no noise or too little or too
   much, or that moves the mean far, not a swap small against the noise.

The first round that differs raises :class:`~veracity.errors.ReplayMismatch` naming it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from veracity.crypto.keys import VerifyKey
from veracity.errors import InputError, NotFound, ReplayMismatch
from veracity.ledger.bundle_view import BundleLedger
from veracity.ledger.verify import verify_bundle_file
from veracity.server.round_archive import ARCHIVE_FORMAT, UpdateStore
from veracity.server.strategy import central_dp_stddev, clipped_mean, fedavg
from veracity.tasks.study import CentralDPConfig, Study, parse_study
from veracity.tasks.weights import Weights, weights_hash

__all__ = ["ReplayReport", "replay_aggregation"]


@dataclass(frozen=True)
class ReplayReport:
    """What a successful replay checked."""

    run_id: str
    study_hash: str
    rounds: int
    updates: int
    final_model_hash: str
    released_model_hash: str | None

    def to_json(self) -> dict[str, Any]:
        """The report as ``--format json`` prints it."""
        return {
            "ok": True,
            "run_id": self.run_id,
            "study_hash": self.study_hash,
            "rounds": self.rounds,
            "updates": self.updates,
            "final_model_hash": self.final_model_hash,
            "released_model_hash": self.released_model_hash,
        }


def _archive_run_id(archive: Path) -> str:
    try:
        index = json.loads((archive / "index.json").read_text(encoding="utf-8"))
    except OSError as err:
        raise InputError(f"{archive} is not a run archive: cannot read index.json") from err
    except ValueError as err:
        raise InputError(f"{archive}/index.json is not valid JSON: {err}") from err
    if not isinstance(index, dict) or index.get("format") != ARCHIVE_FORMAT:
        raise InputError(f"{archive}/index.json is not a {ARCHIVE_FORMAT} index")
    run_id = index.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise InputError(f"{archive}/index.json names no run_id")
    return run_id


#: The chance that the accounted noise fails an honest round's check, per test and tail.
NOISE_FALSE_ALARM = 1e-9


def _study(ledger: BundleLedger, study_hash: str) -> Any:
    for entry in ledger.iter_entries(kind="study.proposed"):
        if entry.payload["study_hash"] == study_hash:
            return parse_study(dict(entry.payload["study"]))
    raise NotFound(f"the bundle has no study.proposed for study {study_hash}")


def _archived(store: UpdateStore, digest: str, number: int) -> Weights:
    try:
        return store.get(digest)
    except InputError as err:
        raise ReplayMismatch(f"model {digest} is not in the archive: {err}", round=number) from err


def _check_noise(
    noised: Weights, mean: Weights, central: CentralDPConfig, sites: int, number: int
) -> None:
    """The recorded aggregate minus the clipped mean must look like the accounted noise.

    The residual's ``d`` coordinates should be independent N(0, sigma^2) draws: their mean
    times ``sqrt(d) / sigma`` standard normal, their sum of squares over sigma^2 chi-square
    with ``d`` degrees of freedom (so the norm is about ``sigma sqrt(d)``). Each is checked
    two-sided at :data:`NOISE_FALSE_ALARM` per tail.
    """
    from scipy.stats import chi2, norm

    sigma = central_dp_stddev(central, sites)
    if sorted(noised) != sorted(mean):
        raise ReplayMismatch("the aggregate does not have the global model's arrays", round=number)
    residual = np.concatenate(
        [
            (np.asarray(noised[n], np.float64) - np.asarray(mean[n], np.float64)).ravel()
            for n in mean
        ]
    )
    d = residual.size
    z = float(residual.mean()) * math.sqrt(d) / sigma
    squares = float(np.sum(residual**2)) / sigma**2
    low, high = chi2.ppf(NOISE_FALSE_ALARM, d), chi2.isf(NOISE_FALSE_ALARM, d)
    if abs(z) > norm.isf(NOISE_FALSE_ALARM) or not low <= squares <= high:
        raise ReplayMismatch(
            f"the aggregate minus the clipped mean of the receipted updates is not noise of "
            f"the accounted sigma {sigma:.6g}: over {d} coordinates its mean is {z:.3g} "
            f"standard errors from 0 and its variance {squares / d:.3g} sigma^2",
            round=number,
        )


def replay_aggregation(bundle: Path, archive: Path, *, trusted_root: VerifyKey) -> ReplayReport:
    """Recompute every round of the archived run and check it against the verified bundle.

    Raises
    ------
    VerificationError
        If the bundle does not verify against ``trusted_root``.
    ReplayMismatch
        Naming the first round whose updates are missing or changed, whose recomputed
        aggregate is not the recorded one, or whose model is not the one released.
    InputError
        If the archive is unreadable or names a run the bundle does not record.
    """
    # 1. The bundle checks out against the root the auditor trusts.
    verify_bundle_file(bundle, trusted_root=trusted_root)
    ledger = BundleLedger(bundle)
    run_id = _archive_run_id(archive)

    # 2. The run's rounds, as the verified ledger records them.
    rounds = sorted(
        (
            e.payload
            for e in ledger.iter_entries(kind="round.completed")
            if e.payload["run_id"] == run_id
        ),
        key=lambda payload: int(payload["round"]),
    )
    if not rounds:
        raise NotFound(f"the bundle records no completed round of run {run_id}")
    for expected, payload in enumerate(rounds, start=1):
        if int(payload["round"]) != expected:  # each round once, none left out
            raise ReplayMismatch(
                f"the bundle records round {payload['round']} of run {run_id} where round "
                f"{expected} should be (a round missing or recorded twice)",
                round=expected,
            )
    study_hash = str(rounds[0]["study_hash"])
    study = _study(ledger, study_hash)
    model_study = study if isinstance(study, Study) else None
    central = model_study.central_dp if model_study is not None else None
    store = UpdateStore(archive / "weights")
    updates = 0
    aggregate_hash = previous_hash = ""
    for payload in rounds:
        number = int(payload["round"])
        # 3. Each update the receipts name, by hash, re-hashed on reading.
        pairs = []
        for signed in sorted(payload["receipts"], key=lambda r: r["receipt"]["site"]):
            receipt = signed["receipt"]
            try:
                weights = store.get(receipt["update_hash"])
            except InputError as err:
                raise ReplayMismatch(
                    f"the update of {receipt['site']} ({receipt['update_hash']}) is not in the "
                    f"archive as its receipt names it: {err}",
                    round=number,
                ) from err
            pairs.append((weights, int(receipt["num_examples"])))
        updates += len(pairs)
        aggregate_hash = str(payload["aggregated_model_hash"])
        if central is None or model_study is None:
            # 4. The strategy's FedAvg over them gives the recorded aggregate.
            recomputed = weights_hash(fedavg(pairs))
            if recomputed != aggregate_hash:
                raise ReplayMismatch(
                    f"FedAvg of the receipted updates is {recomputed}, but round.completed "
                    f"records aggregated_model_hash {aggregate_hash}",
                    round=number,
                )
        else:
            # 4'. Client-level DP: the clipped mean exactly, the noise statistically.
            if number == 1:
                global_model: Weights = model_study.model_spec.initial_weights(
                    model_study.model_seed
                )
            else:
                global_model = _archived(store, previous_hash, number)
            mean = clipped_mean([w for w, _ in pairs], global_model, central.clipping_norm)
            noised = _archived(store, aggregate_hash, number)
            _check_noise(noised, mean, central, len(pairs), number)
        previous_hash = aggregate_hash

    # 5. The released model is the last round's aggregate.
    released = [
        str(e.payload["model_hash"])
        for e in ledger.iter_entries(kind="model.released")
        if e.payload["run_id"] == run_id
    ]
    released += [
        str(e.payload["model_hash"])
        for e in ledger.iter_entries(kind="run.finished")
        if e.payload["run_id"] == run_id and e.payload.get("model_hash")
    ]
    for model_hash in released:
        if model_hash != aggregate_hash:
            raise ReplayMismatch(
                f"the run released model {model_hash}, not this round's aggregate {aggregate_hash}",
                round=int(rounds[-1]["round"]),
            )
    return ReplayReport(
        run_id=run_id,
        study_hash=study_hash,
        rounds=len(rounds),
        updates=updates,
        final_model_hash=aggregate_hash,
        released_model_hash=released[0] if released else None,
    )
