"""Site-side replay: re-train a run's rounds from what the site kept, and sign the outcome.

For every round it trains, the site agent keeps (:class:`RoundKeeper`):

* the round's secret seed, 32 bytes from ``os.urandom``, in the site's store
  (:meth:`veracity.client.store.SiteStore.round_seed`); its Poisson samples and DP noise
  are derived from it (:meth:`veracity.client.training.PrivateTrainer.rekey`) and the
  signed receipt carries its commitment
  (:func:`veracity.contracts.replay.seed_commitment`);
* the global model it received, addressed by hash, under ``<site>/replay/globals/``;
* a record of the round (study, dataset and file hash, the global model's hash, the thread
  count and clipping it trained with, and the signed receipt) under
  ``<site>/replay/runs/<run key>/round-<R>.json``.

:func:`replay_run` (``veracity site replay --run RUN [--round R]``), in order:

1. refuses (:class:`~veracity.errors.InputError`, nothing signed) when no round of the run
   was kept, or when the dataset file no longer matches its registered hash or the
   commitment the receipts name: a replay on other data proves nothing;
2. for each kept round, in order: checks that the stored seed matches the receipt's
   commitment and the kept global model its recorded hash, re-trains the round on the
   recorded thread count with deterministic algorithms, and compares the update's hash
   with the receipt's ``update_hash``; stops at the first round that differs;
3. signs ``replay.confirmed`` (every round equal) or ``replay.failed`` (the first round
   that differs, and why) and queues it in the outbox for the ledger.

A site that no longer keeps a round's global model (a lost or pruned ``replay/globals/``)
may fetch it from the coordinator (``--server URL --token T``; :func:`coordinator_fetcher`,
``GET /api/v1/runs/{run}/models/{hash}``, which serves only the global models the ledger
names for that run): the fetched bytes must hold weights of exactly the hash the site
recorded when it received the model, else the round fails as a missing model would; a
good copy is kept again.

Nothing is reserved or recorded in the privacy budget: a replay releases nothing new (the
statement carries only hashes the receipts already hold), so it spends nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from veracity.client.site import Site
from veracity.client.store import SignedStatement
from veracity.contracts.receipts import Receipt
from veracity.contracts.replay import (
    ReplayConfirmed,
    ReplayedRound,
    ReplayFailed,
    seed_commitment,
)
from veracity.errors import ApprovalMissing, InputError
from veracity.tasks.study import parse_study
from veracity.tasks.weights import Weights, weights_from_bytes, weights_hash, weights_to_bytes

__all__ = [
    "KeptRound",
    "RoundKeeper",
    "ReplayedRoundTiming",
    "ReplayOutcome",
    "FetchGlobal",
    "coordinator_fetcher",
    "replay_run",
]

#: Fetches a run's global model by hash from the coordinator: ``(run_id, model_hash) -> bytes``.
FetchGlobal = Callable[[str, str], bytes]

_ROUND_FILE = re.compile(r"^round-([0-9]{1,7})\.json$")


@dataclass(frozen=True)
class KeptRound:
    """What a site kept of one trained round (see the module docstring)."""

    run_id: str
    round: int
    study: dict[str, Any]
    study_hash: str
    dataset_id: str
    dataset_commitment: str
    file_sha256: str
    global_model_hash: str
    torch_threads: int
    clipping: str
    receipt: dict[str, Any]
    receipt_signature: str
    #: Seconds the original round's training took (for the replay benchmark).
    train_seconds: float

    def to_json(self) -> dict[str, Any]:
        """JSON form, as kept on disk."""
        return {
            "format": "veracity.kept-round.v1",
            "run_id": self.run_id,
            "round": self.round,
            "study": self.study,
            "study_hash": self.study_hash,
            "dataset_id": self.dataset_id,
            "dataset_commitment": self.dataset_commitment,
            "file_sha256": self.file_sha256,
            "global_model_hash": self.global_model_hash,
            "torch_threads": self.torch_threads,
            "clipping": self.clipping,
            "receipt": self.receipt,
            "receipt_signature": self.receipt_signature,
            "train_seconds": self.train_seconds,
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> KeptRound:
        """Read a kept round back.

        Raises
        ------
        InputError
            If a field is missing or of the wrong type.
        """
        try:
            return cls(
                run_id=str(document["run_id"]),
                round=int(document["round"]),
                study=dict(document["study"]),
                study_hash=str(document["study_hash"]),
                dataset_id=str(document["dataset_id"]),
                dataset_commitment=str(document["dataset_commitment"]),
                file_sha256=str(document["file_sha256"]),
                global_model_hash=str(document["global_model_hash"]),
                torch_threads=int(document["torch_threads"]),
                clipping=str(document["clipping"]),
                receipt=dict(document["receipt"]),
                receipt_signature=str(document["receipt_signature"]),
                train_seconds=float(document["train_seconds"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"a kept round record is malformed ({err})") from err


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


class RoundKeeper:
    """The files a site keeps for replay, under ``<site>/replay/``."""

    def __init__(self, root: Path) -> None:
        self.root = root / "replay"

    def _run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / hashlib.sha256(run_id.encode()).hexdigest()[:32]

    def global_path(self, model_hash: str) -> Path:
        """Where the global model of hash ``model_hash`` is kept."""
        return self.root / "globals" / f"{model_hash}.npz"

    def keep_global(self, weights: Weights) -> str:
        """Keep a received global model (once per hash); returns its hash."""
        model_hash = weights_hash(weights)
        path = self.global_path(model_hash)
        if not path.exists():
            _write_atomically(path, weights_to_bytes(weights))
        return model_hash

    def load_global(self, model_hash: str) -> dict[str, npt.NDArray[np.floating]] | None:
        """The kept global model ``model_hash`` as stored, or ``None`` if it is gone.

        Raises
        ------
        InputError
            If the file is not a weights archive.
        """
        try:
            data = self.global_path(model_hash).read_bytes()
        except FileNotFoundError:
            return None
        return weights_from_bytes(data)

    def keep_round(self, kept: KeptRound) -> None:
        """Keep the record of one trained round."""
        path = self._run_dir(kept.run_id) / f"round-{kept.round}.json"
        _write_atomically(path, json.dumps(kept.to_json(), sort_keys=True).encode())

    def rounds(self, run_id: str) -> list[KeptRound]:
        """The kept rounds of ``run_id``, in round order.

        Raises
        ------
        InputError
            If a record is malformed or belongs to another run.
        """
        directory = self._run_dir(run_id)
        if not directory.is_dir():
            return []
        kept: list[KeptRound] = []
        for path in directory.iterdir():
            if _ROUND_FILE.match(path.name) is None:
                continue
            try:
                document = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise InputError(f"cannot read the kept round {path} ({err})") from err
            record = KeptRound.from_json(document)
            if record.run_id != run_id:
                raise InputError(f"the kept round {path} belongs to run {record.run_id!r}")
            kept.append(record)
        return sorted(kept, key=lambda record: record.round)


@dataclass(frozen=True)
class ReplayedRoundTiming:
    """One replayed round: its hashes and how long re-training took against the original."""

    round: int
    expected_update_hash: str
    replayed_update_hash: str | None
    replay_seconds: float
    train_seconds: float


@dataclass
class ReplayOutcome:
    """A replay's signed statement and the rounds it re-trained."""

    statement: SignedStatement
    rounds: list[ReplayedRoundTiming] = field(default_factory=list)

    @property
    def confirmed(self) -> bool:
        """Whether every replayed round re-trained to its receipt's update hash."""
        return self.statement.kind == ReplayConfirmed.KIND

    @property
    def failed_round(self) -> int | None:
        """The first round that differed (``None`` when confirmed)."""
        value = self.statement.payload.get("round") if not self.confirmed else None
        return int(value) if value is not None else None

    def to_json(self) -> dict[str, Any]:
        """JSON form for ``--format json``."""
        return {
            "kind": self.statement.kind,
            "statement_id": self.statement.statement_id,
            "payload": self.statement.payload,
            "rounds": [
                {
                    "round": item.round,
                    "expected_update_hash": item.expected_update_hash,
                    "replayed_update_hash": item.replayed_update_hash,
                    "replay_seconds": item.replay_seconds,
                    "train_seconds": item.train_seconds,
                }
                for item in self.rounds
            ],
        }


def _check_data(site: Site, kept: list[KeptRound]) -> Any:
    """The registered dataset of ``kept``, its file checked against every commitment.

    Raises
    ------
    InputError
        If the dataset is gone, its file changed, or it is not what the receipts name.
    """
    from veracity.client.datasets import check_registered

    first = kept[0]
    for record in kept:
        if (record.study_hash, record.dataset_id) != (first.study_hash, first.dataset_id):
            raise InputError(
                f"the kept rounds of run {first.run_id} name more than one study or dataset"
            )
    dataset = site.store.get_dataset(first.dataset_id)
    if dataset is None:
        raise InputError(f"dataset {first.dataset_id!r} is no longer registered; replay refused")
    for record in kept:
        if (
            dataset.commitment != record.dataset_commitment
            or dataset.file_sha256 != record.file_sha256
            or record.receipt.get("dataset_commitment") != dataset.commitment
        ):
            raise InputError(
                f"dataset {dataset.dataset_id!r} is not the one round {record.round} was "
                "trained on (another commitment); replay refused"
            )
    try:
        source = check_registered(dataset)
    except ApprovalMissing as err:
        raise InputError(
            f"the data file no longer matches its commitment: {err}; replay refused"
        ) from err
    return dataset, source


def coordinator_fetcher(
    server: str,
    token: str,
    ca_cert: Path | None,
    *,
    timeout: float = 60.0,
    transport: Any = None,
) -> FetchGlobal:
    """A :data:`FetchGlobal` over the coordinator's API with this site's token.

    The returned function raises :class:`~veracity.errors.NotFound` when the coordinator
    answers that it serves no such model of the run (404), and
    :class:`~veracity.errors.TransportError` when the API cannot be reached or refuses
    otherwise (the status and its detail in the message).
    """
    import ssl

    import httpx

    from veracity.api_options import api_base
    from veracity.errors import NotFound, TransportError

    verify: ssl.SSLContext | bool = True
    if ca_cert is not None:
        verify = ssl.create_default_context(cafile=str(ca_cert))

    def fetch(run_id: str, model_hash: str) -> bytes:
        try:
            with httpx.Client(
                base_url=api_base(server), verify=verify, timeout=timeout, transport=transport
            ) as http:
                response = http.get(
                    f"/runs/{run_id}/models/{model_hash}",
                    headers={"Authorization": f"Bearer {token}"},
                )
        except httpx.HTTPError as err:
            raise TransportError(f"cannot reach {server}: {err}") from err
        if response.status_code == 404:
            raise NotFound(f"the coordinator serves no such model: {response.text[:300]}")
        if response.status_code != 200:
            raise TransportError(
                f"the coordinator answered {response.status_code}: {response.text[:300]}"
            )
        return response.content

    return fetch


def _fetched_global(
    keeper: RoundKeeper, fetch: FetchGlobal, run_id: str, model_hash: str
) -> tuple[Weights | None, str]:
    """The global model fetched from the coordinator and kept again, or ``None`` and why.

    Raises
    ------
    TransportError
        If the coordinator could not be asked (unreachable, a refused token, a server
        error): that says nothing about the round, so nothing is signed; try again.
    """
    from veracity.errors import TransportError, VeracityError

    try:
        weights = weights_from_bytes(fetch(run_id, model_hash))
    except TransportError:
        raise
    except VeracityError as err:
        return None, f"the round's global model is missing and fetching it failed: {err}"
    if weights_hash(weights) != model_hash:
        return None, (
            "the global model fetched from the coordinator does not have the hash this site "
            "recorded when it received it"
        )
    keeper.keep_global(weights)
    return weights, ""


def replay_run(
    site: Site, run_id: str, *, round: int | None = None, fetch: FetchGlobal | None = None
) -> ReplayOutcome:
    """Re-train the kept rounds of ``run_id`` (or only ``round``) and sign the outcome.

    The signed ``replay.confirmed`` or ``replay.failed`` is queued in the site's outbox.
    See the module docstring for the steps. ``fetch``: where to get a global model this
    site no longer keeps (:func:`coordinator_fetcher`); without it a missing one fails.

    Raises
    ------
    InputError
        If nothing of the run (or that round) was kept, or the data file no longer matches
        its commitment (nothing is signed then).
    TransportError
        If a missing global model could not be asked of the coordinator (nothing is
        signed then).
    """
    from veracity.client.datasets import load_registered
    from veracity.client.study_inputs import study_examples
    from veracity.client.training import PrivateTrainer, configure_threads

    keeper = RoundKeeper(site.paths.root)
    kept = keeper.rounds(run_id)
    if round is not None:
        kept = [record for record in kept if record.round == round]
    if not kept:
        which = f"round {round} of run {run_id}" if round is not None else f"run {run_id}"
        raise InputError(f"this site kept nothing of {which}; nothing to replay")
    # 1. The data must be the data the receipts commit to.
    dataset, source = _check_data(site, kept)
    study = parse_study(kept[0].study)
    if study.study_hash != kept[0].study_hash:
        raise InputError(f"the kept study of run {run_id} does not have its recorded hash")
    x, y = study_examples(study, load_registered(dataset, source))
    trainer: PrivateTrainer | None = None
    confirmed: list[ReplayedRound] = []
    timings: list[ReplayedRoundTiming] = []

    def fail(record: KeptRound, expected: str, replayed: str | None, reason: str) -> ReplayOutcome:
        statement = site.sign(
            ReplayFailed(
                site=site.name,
                run_id=run_id,
                study_hash=record.study_hash,
                dataset_id=record.dataset_id,
                dataset_commitment=record.dataset_commitment,
                round=record.round,
                expected_update_hash=expected,
                replayed_update_hash=replayed,
                reason=reason,
                confirmed=confirmed,
                signed_at=site.now(),
            )
        )
        site.store.add_statement(statement, now=statement.payload["signed_at"])
        return ReplayOutcome(statement=statement, rounds=timings)

    # 2. Each round in order; the first that differs ends the replay.
    for record in kept:
        receipt = Receipt.parse(record.receipt, what="kept receipt")
        expected = receipt.update_hash
        if (receipt.run_id, receipt.round, receipt.site) != (run_id, record.round, site.name):
            return fail(record, expected, None, "the kept receipt is for another run or round")
        seed = site.store.stored_round_seed(run_id=run_id, round=record.round)
        if seed is None:
            return fail(record, expected, None, "the round's seed is missing from the store")
        commitment = seed_commitment(run_id=run_id, round=record.round, seed=seed)
        if receipt.seed_commitment != commitment:
            return fail(
                record, expected, None, "the stored seed does not match the receipt's commitment"
            )
        weights: Weights | None = keeper.load_global(record.global_model_hash)
        if weights is None and fetch is not None:
            weights, why = _fetched_global(keeper, fetch, run_id, record.global_model_hash)
            if weights is None:
                return fail(record, expected, None, why)
        if weights is None:
            return fail(record, expected, None, "the round's global model is missing")
        if weights_hash(weights) != record.global_model_hash:
            return fail(
                record, expected, None, "the kept global model no longer has its recorded hash"
            )
        configure_threads(record.torch_threads)
        if trainer is None:
            trainer = PrivateTrainer.for_study(
                study,
                x,
                y,
                clipping="opacus-hooks" if record.clipping == "opacus-hooks" else "linear-ghost",
                secure_mode=False,
                seed=None,
            )
        trainer.rekey(seed)
        started = time.perf_counter()
        result = trainer.train_round(weights, epochs=study.training.local_epochs)
        elapsed = time.perf_counter() - started
        replayed = weights_hash(result.weights)
        timings.append(
            ReplayedRoundTiming(
                round=record.round,
                expected_update_hash=expected,
                replayed_update_hash=replayed,
                replay_seconds=elapsed,
                train_seconds=record.train_seconds,
            )
        )
        if replayed != expected:
            return fail(
                record,
                expected,
                replayed,
                "re-training from the kept global model and seed gave another update",
            )
        confirmed.append(
            ReplayedRound(round=record.round, update_hash=expected, seed_commitment=commitment)
        )
    # 3. Every round re-trained to its receipt.
    first = kept[0]
    statement = site.sign(
        ReplayConfirmed(
            site=site.name,
            run_id=run_id,
            study_hash=first.study_hash,
            dataset_id=first.dataset_id,
            dataset_commitment=first.dataset_commitment,
            rounds=confirmed,
            signed_at=site.now(),
        )
    )
    site.store.add_statement(statement, now=statement.payload["signed_at"])
    return ReplayOutcome(statement=statement, rounds=timings)
