"""A site's key hand-over: what ``veracity site rotate-key`` writes and the admin records.

A site rotates its statement key in two signatures made on its own machine
(:mod:`veracity.ledger.possession`): the *new* key proves possession for the log, the
site's name and its role (``proof``), and the *outgoing* key hands the name over to the new
key (``outgoing_signature``). The admin passes the document to ``POST
/api/v1/sites/{name}/rotations`` (``veracity admin sites rotate NAME --handover FILE``),
which records ``key.rotated`` with both signatures; the ledger checks them again on every
verification. ``key_id`` and ``new_key_id`` are there for people reading the file: the
coordinator checks them against the keys.
"""

from __future__ import annotations

from typing import Literal

from veracity.contracts.base import Contract
from veracity.contracts.events import PublicKeyPem
from veracity.contracts.receipts import Base64Signature
from veracity.core.fields import Hash, Name

__all__ = ["HANDOVER_FORMAT", "KeyHandover"]

HANDOVER_FORMAT = "veracity.key-handover.v1"


class KeyHandover(Contract):
    """A site's signed hand-over from its current key to a new one, for one log."""

    format: Literal["veracity.key-handover.v1"] = "veracity.key-handover.v1"
    #: The log the signatures bind (its genesis leaf hash, hex).
    log_id: Hash
    #: The site's enrolled name.
    name: Name
    #: The outgoing key's id (SHA-256 of the raw public key, hex).
    key_id: Hash
    #: The new key's id.
    new_key_id: Hash
    #: The new Ed25519 public key, PEM.
    public_key: PublicKeyPem
    #: The new key's proof of possession (``veracity.enrolment.v1``).
    proof: Base64Signature
    #: The outgoing key's signature of the hand-over (``veracity.rotation.v1``).
    outgoing_signature: Base64Signature
