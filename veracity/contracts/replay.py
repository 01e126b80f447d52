"""What a site signs after replaying its own rounds: ``replay.confirmed``, ``replay.failed``.

A site keeps, for each round it trained, the global model it received, the receipt it
signed and the secret per-round seed its sampling and DP noise came from (the receipt's
``seed_commitment`` commits to it: :func:`seed_commitment`). ``veracity site replay``
re-trains each round from those and compares the update's hash with the receipt's; the
site signs the outcome as one of these statements and its outbox delivers it to the
ledger, where the coordinator records it only if every round it names carries a receipt of
that site with the same hashes (docs/architecture.md, "Site-side replay").
"""

from __future__ import annotations

import hashlib
from typing import Annotated, ClassVar

from pydantic import Field, model_validator

from veracity.contracts.base import Contract, SiteStatement
from veracity.core.fields import Hash, Ident, Round, Text

__all__ = [
    "SEED_COMMITMENT_DOMAIN",
    "SEED_BYTES",
    "seed_commitment",
    "ReplayedRound",
    "ReplayConfirmed",
    "ReplayFailed",
    "REPLAY_KINDS",
]

#: The domain tag of a round seed's commitment.
SEED_COMMITMENT_DOMAIN = b"veracity.round-seed.v1\x00"
#: A round seed's length (256 bits).
SEED_BYTES = 32


def seed_commitment(*, run_id: str, round: int, seed: bytes) -> str:
    """``SHA-256(domain || len(run_id) || run_id || round || seed)`` in hex.

    The run id is length-prefixed (4 bytes, big-endian) and the round is 8 bytes
    big-endian, so no two (run, round, seed) triples share an input. The seed is 256
    random bits the site keeps secret, so the commitment hides it (nobody can search the
    seeds) and binds it (finding another seed with the same hash is a SHA-256 collision).

    Raises
    ------
    ValueError
        If the seed is not :data:`SEED_BYTES` bytes.
    """
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a round seed is {SEED_BYTES} bytes")
    run = run_id.encode("utf-8")
    material = (
        SEED_COMMITMENT_DOMAIN + len(run).to_bytes(4, "big") + run + round.to_bytes(8, "big") + seed
    )
    return hashlib.sha256(material).hexdigest()


class ReplayedRound(Contract):
    """One round a site re-trained and found equal to its receipt."""

    round: Round
    update_hash: Hash
    seed_commitment: Hash


def _check_rounds(rounds: list[ReplayedRound]) -> None:
    numbers = [item.round for item in rounds]
    if numbers != sorted(set(numbers)):
        raise ValueError("rounds must be distinct and in increasing order")


class ReplayConfirmed(SiteStatement):
    """Every replayed round of a run re-trained to its receipt's update hash."""

    KIND: ClassVar[str] = "replay.confirmed"

    run_id: Ident
    study_hash: Hash
    dataset_id: Ident
    dataset_commitment: Hash
    rounds: Annotated[list[ReplayedRound], Field(min_length=1, max_length=1_000_000)]

    @model_validator(mode="after")
    def _ordered(self) -> ReplayConfirmed:
        _check_rounds(self.rounds)
        return self


class ReplayFailed(SiteStatement):
    """A replay whose round ``round`` (the first that differs) did not re-train to its receipt.

    ``confirmed`` lists the rounds before it that did; ``replayed_update_hash`` is what
    re-training gave (absent when the round could not be re-trained at all, ``reason``
    then says why: its global model or seed is missing or changed).
    """

    KIND: ClassVar[str] = "replay.failed"

    run_id: Ident
    study_hash: Hash
    dataset_id: Ident
    dataset_commitment: Hash
    round: Round
    expected_update_hash: Hash
    replayed_update_hash: Hash | None = None
    reason: Annotated[Text, Field(min_length=1)]
    confirmed: list[ReplayedRound]

    @model_validator(mode="after")
    def _ordered(self) -> ReplayFailed:
        _check_rounds(self.confirmed)
        if self.confirmed and self.confirmed[-1].round >= self.round:
            raise ValueError("confirmed rounds come before the round that failed")
        return self


#: The replay statements, by kind.
REPLAY_KINDS: dict[str, type[SiteStatement]] = {
    ReplayConfirmed.KIND: ReplayConfirmed,
    ReplayFailed.KIND: ReplayFailed,
}
