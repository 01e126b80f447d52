"""Ledger event kinds, who may record each, and a strict payload schema per kind.

The kinds and fields are the contract in ``docs/architecture.md`` ("Ledger events").
Schemas are strict (no type coercion) and closed (``extra="forbid"``): a payload is recorded
exactly as given, so what is validated is what is hashed. :func:`validate_payload` raises
:class:`~veracity.errors.InputError` naming the first bad field.
"""

from __future__ import annotations

import enum
import math
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from veracity.crypto.keys import VerifyKey
from veracity.errors import CryptoError, InputError
from veracity.ledger.canonical import canonical_hash

__all__ = [
    "ROOT_ACTOR",
    "Role",
    "KINDS",
    "ROOT_KINDS",
    "SITE_KINDS",
    "ANY_ACTOR_KINDS",
    "NAME_PATTERN",
    "Receipt",
    "RECEIPT_FIELDS",
    "validate_payload",
    "validate_actor_name",
    "allowed_roles",
    "check_timestamp",
]

#: The enrolled name of the coordinator's root key (its key files are ``root.pem``/``root.pub``).
ROOT_ACTOR = "coordinator"

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_NAME_RE = re.compile(NAME_PATTERN)
_TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")


class Role(enum.StrEnum):
    """What an enrolled key is for."""

    ROOT = "root"
    SITE = "site"
    COORDINATOR = "coordinator"
    AUDITOR = "auditor"
    CLINIC = "clinic"


def check_timestamp(value: str) -> str:
    """Return ``value`` if it is an RFC 3339 timestamp of a real date and time.

    Raises
    ------
    ValueError
        If it is not.
    """
    if not _TIMESTAMP_RE.match(value):
        raise ValueError("must be an RFC 3339 timestamp such as 2026-11-27T15:47:52.123456Z")
    try:
        datetime.fromisoformat(value)
    except ValueError as err:
        raise ValueError(f"is not a valid date and time: {err}") from err
    return value


def _check_public_key(value: str) -> str:
    from nacl.bindings import crypto_core_ed25519_is_valid_point

    try:
        key = VerifyKey.from_pem(value)
    except CryptoError as err:
        raise ValueError(f"must be an Ed25519 public key in PEM form ({err})") from err
    # A small-order or non-canonical point verifies forged signatures under OpenSSL's rules:
    # such a key is never enrolled.
    if not crypto_core_ed25519_is_valid_point(key.raw):
        raise ValueError("is a weak Ed25519 key (small order or not canonical); generate a new one")
    return value


def _check_finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Hash = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Ident = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Text = Annotated[str, StringConstraints(max_length=10_000)]
Timestamp = Annotated[str, AfterValidator(check_timestamp)]
PublicKeyPem = Annotated[str, StringConstraints(max_length=4096), AfterValidator(_check_public_key)]
Base64Signature = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]{86}==$")]
Number = Annotated[float, AfterValidator(_check_finite)]
Count = Annotated[int, Field(ge=0, le=2**53 - 1)]
Round = Annotated[int, Field(ge=1, le=1_000_000)]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class KeyEnrolled(_Payload):
    name: Name
    role: Literal["root", "site", "coordinator", "auditor", "clinic"]
    public_key: PublicKeyPem
    valid_from: Timestamp
    supernode_public_key: (
        Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None
    ) = None


class KeyRevoked(_Payload):
    name: Name
    key_id: Hash
    reason: Annotated[str, StringConstraints(min_length=1, max_length=2000)]


class DatasetRegistered(_Payload):
    site: Name
    dataset_id: Ident
    commitment: Hash
    schema_hash: Hash
    rows: Count
    label: Ident
    features: Annotated[list[Ident], Field(min_length=1, max_length=10_000)]
    signed_at: Timestamp


class StudyProposed(_Payload):
    study_id: Ident
    study_hash: Hash
    study: dict[str, Any]
    code_hash: Hash

    @model_validator(mode="after")
    def _consistent(self) -> StudyProposed:
        try:
            actual = canonical_hash(self.study)
        except InputError as err:
            raise ValueError(f"study is not canonical JSON: {err}") from err
        if actual != self.study_hash:
            raise ValueError("study_hash is not the SHA-256 of the study's canonical JSON")
        if self.study.get("study_id", self.study_id) != self.study_id:
            raise ValueError("study_id differs from the study document's study_id")
        if self.study.get("code_hash", self.code_hash) != self.code_hash:
            raise ValueError("code_hash differs from the study document's code_hash")
        return self


class StudyApproved(_Payload):
    study_hash: Hash
    site: Name
    dataset_id: Ident
    epsilon_cap: Annotated[Number, Field(gt=0)]
    signed_at: Timestamp


class StudyRefused(_Payload):
    study_hash: Hash
    site: Name
    reason: Text
    signed_at: Timestamp


class RunStarted(_Payload):
    run_id: Ident
    study_hash: Hash
    fab_hash: Hash
    config_hash: Hash
    package_versions: dict[Ident, Ident]
    seed_commitment: Hash


class RunFinished(_Payload):
    run_id: Ident
    study_hash: Hash
    status: Literal["completed", "failed", "stopped", "insufficient_sites"]
    reason: Text
    rounds_completed: Count
    model_hash: Hash | None


def _check_history(value: list[list[int | float]]) -> list[list[int | float]]:
    for step in value:
        if len(step) != 3:
            raise ValueError("each history item is [noise_multiplier, sample_rate, steps]")
        noise, rate, steps = step
        if not (math.isfinite(noise) and noise >= 0 and math.isfinite(rate) and 0 < rate <= 1):
            raise ValueError("noise_multiplier must be >= 0 and sample_rate in (0, 1]")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ValueError("steps must be a non-negative integer")
    return value


class Receipt(_Payload):
    """A site's signed account of one round of training (see docs/architecture.md)."""

    site: Name
    study: Hash
    round: Round
    run_id: Ident
    dataset_id: Ident
    dataset_commitment: Hash
    update_hash: Hash
    #: Google dp-accounting's PLD accountant (``epsilon``); see docs/architecture.md.
    accountant: Literal["pld"]
    #: What ``epsilon`` is for: datasets of the same (public) size differing in one record.
    neighbouring: Literal["replace-one"]
    delta: Annotated[Number, Field(gt=0, lt=1)]
    epsilon: Annotated[Number, Field(ge=0)]
    #: The add/remove-one figure of the same history (Opacus PRV), for comparison only.
    epsilon_add_remove: Annotated[Number, Field(ge=0)]
    history: Annotated[list[list[int | float]], AfterValidator(_check_history)]
    max_grad_norm: Annotated[Number, Field(gt=0)]
    num_examples: Count
    #: Where the site drew the DP noise (and Poisson samples) from.
    noise_generator: Annotated[str, StringConstraints(min_length=1, max_length=200)]


#: Exactly the fields of a receipt, in declaration order (docs/architecture.md).
RECEIPT_FIELDS: tuple[str, ...] = tuple(Receipt.model_fields)


class SignedReceipt(_Payload):
    receipt: Receipt
    signature: Base64Signature


class Dropped(_Payload):
    site: Name
    reason: Text


class Refused(_Payload):
    site: Name
    kind: Ident
    reason: Text


class RoundCompleted(_Payload):
    run_id: Ident
    study_hash: Hash
    round: Round
    participants: list[Name]
    receipts: list[SignedReceipt]
    dropped: list[Dropped]
    refused: list[Refused]
    aggregated_model_hash: Hash
    metrics: dict[Ident, Number]

    @model_validator(mode="after")
    def _consistent(self) -> RoundCompleted:
        if len(set(self.participants)) != len(self.participants):
            raise ValueError("participants must be distinct")
        sites = [signed.receipt.site for signed in self.receipts]
        if sorted(sites) != sorted(self.participants):
            raise ValueError("receipts must be exactly one per participant")
        for signed in self.receipts:
            receipt = signed.receipt
            if (receipt.run_id, receipt.study, receipt.round) != (
                self.run_id,
                self.study_hash,
                self.round,
            ):
                raise ValueError(f"receipt of {receipt.site} is for another run, study or round")
        return self


class BudgetRefused(_Payload):
    site: Name
    study_hash: Hash
    dataset_id: Ident
    run_id: Ident
    round: Round
    epsilon_requested: Annotated[Number, Field(ge=0)]
    epsilon_left: Number
    signed_at: Timestamp


class ApprovalMissingStatement(_Payload):
    """A site's signed refusal of a request its operator's approval does not cover."""

    site: Name
    study_hash: Hash
    run_id: Ident
    round: Annotated[int, Field(ge=0, le=1_000_000)]
    reason: Text
    signed_at: Timestamp


class ReleasedDataset(_Payload):
    site: Name
    dataset_id: Ident
    commitment: Hash


class ModelReleased(_Payload):
    model_hash: Hash
    run_id: Ident
    study_hash: Hash
    model: dict[str, Any]
    datasets: list[ReleasedDataset]
    epsilon: dict[Name, Annotated[Number, Field(ge=0)]]
    metrics: dict[Ident, Number]
    card_hash: Hash


class InferenceServed(_Payload):
    model_hash: Hash
    requester: Ident
    he_params_hash: Hash
    batch_size: Annotated[int, Field(ge=1, le=2**31)]
    request_hash: Hash


class CheckpointRecorded(_Payload):
    tree_size: Annotated[int, Field(ge=1, le=2**53 - 1)]
    root_hash: Hash
    log_id: Hash
    signature: Base64Signature


class CheckpointCosigned(_Payload):
    site: Name
    tree_size: Annotated[int, Field(ge=1, le=2**53 - 1)]
    root_hash: Hash
    log_id: Hash
    signature: Base64Signature


class NoteRecorded(_Payload):
    text: Annotated[str, StringConstraints(min_length=1, max_length=10_000)]


_SCHEMAS: dict[str, type[_Payload]] = {
    "key.enrolled": KeyEnrolled,
    "key.revoked": KeyRevoked,
    "dataset.registered": DatasetRegistered,
    "study.proposed": StudyProposed,
    "study.approved": StudyApproved,
    "study.refused": StudyRefused,
    "run.started": RunStarted,
    "run.finished": RunFinished,
    "round.completed": RoundCompleted,
    "budget.refused": BudgetRefused,
    "approval.missing": ApprovalMissingStatement,
    "model.released": ModelReleased,
    "inference.served": InferenceServed,
    "checkpoint": CheckpointRecorded,
    "checkpoint.cosigned": CheckpointCosigned,
    "note.recorded": NoteRecorded,
}

#: Every kind the ledger accepts.
KINDS: frozenset[str] = frozenset(_SCHEMAS)
#: Kinds only the root (the coordinator) records.
ROOT_KINDS: frozenset[str] = frozenset(
    {
        "key.enrolled",
        "key.revoked",
        "study.proposed",
        "run.started",
        "run.finished",
        "round.completed",
        "model.released",
        "inference.served",
        "checkpoint",
    }
)
#: Kinds a site records about itself (the payload's ``site`` must be the actor).
SITE_KINDS: frozenset[str] = frozenset(
    {
        "dataset.registered",
        "study.approved",
        "study.refused",
        "budget.refused",
        "approval.missing",
        "checkpoint.cosigned",
    }
)
#: Kinds any enrolled actor may record.
ANY_ACTOR_KINDS: frozenset[str] = frozenset({"note.recorded"})


def allowed_roles(kind: str) -> frozenset[Role] | None:
    """The roles that may record ``kind``; ``None`` means any enrolled role."""
    if kind in ROOT_KINDS:
        return frozenset({Role.ROOT})
    if kind in SITE_KINDS:
        return frozenset({Role.SITE})
    return None


def validate_actor_name(actor: object) -> str:
    """Return ``actor`` if it is a usable enrolled name.

    Raises
    ------
    InputError
        If it is not a string of letters, digits, ``.``, ``_`` or ``-`` (at most 128).
    """
    if not isinstance(actor, str) or not _NAME_RE.match(actor):
        raise InputError(f"actor {actor!r} must be letters, digits, '.', '_' or '-' (max 128)")
    return actor


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "payload"
    message = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        message = "is not a field of this kind"
    return f"field '{where}' {message[0].lower() + message[1:] if message else 'is invalid'}"


def validate_payload(kind: str, payload: Any, *, actor: str | None = None) -> None:
    """Check ``payload`` against the schema of ``kind`` (and, for site kinds, the actor).

    Raises
    ------
    InputError
        If the kind is unknown, the payload is not an object, a field is missing, extra,
        of the wrong type or out of range, or a site event names another site.
    """
    schema = _SCHEMAS.get(kind)
    if schema is None:
        raise InputError(f"unknown event kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}")
    if not isinstance(payload, dict):
        raise InputError(f"{kind} payload must be a JSON object")
    try:
        schema.model_validate(payload)
    except ValidationError as err:
        raise InputError(f"invalid {kind} payload: {_describe(err)}") from err
    if actor is not None and kind in SITE_KINDS and payload["site"] != actor:
        raise InputError(f"invalid {kind} payload: field 'site' must be the actor {actor!r}")
