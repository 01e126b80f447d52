"""Ledger event kinds, who may record each, and a strict payload schema per kind.

The kinds and fields are the contract in ``docs/architecture.md`` ("Ledger events"), whose
table is generated from these models (:func:`veracity.contracts.docs.events_table`; a test
keeps the page equal to it). Schemas are strict (no type coercion) and closed (an unknown
field is refused): a payload is recorded exactly as given, so what is validated is what is
hashed. Producers build payloads from these models (``KeyEnrolled(...).to_json()``);
:func:`validate_payload` checks any payload against its kind's model and raises
:class:`~veracity.errors.InputError` naming the first bad field.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, StringConstraints, model_validator

from veracity.contracts.analysis import ANALYSIS_RECEIPT_DOMAIN, AnalysisAnswered
from veracity.contracts.base import Contract, Payload, SitePayload, SiteStatement
from veracity.contracts.explanation import ModelExplained  # model.explained (#19)
from veracity.contracts.receipts import RECEIPT_DOMAIN, Base64Signature, SignedReceipt
from veracity.contracts.refusals import ApprovalMissingStatement, BudgetRefused
from veracity.contracts.replay import ReplayConfirmed, ReplayFailed  # site-side replay (#19)
from veracity.core.canonical import canonical_hash
from veracity.core.fields import (
    NAME_PATTERN,
    Count,
    Hash,
    Ident,
    JsonObject,
    Name,
    Number,
    Round,
    Text,
    Timestamp,
    check_name,
)
from veracity.crypto.keys import VerifyKey
from veracity.errors import CryptoError, InputError

__all__ = [
    "ROOT_ACTOR",
    "RequestedPayload",
    "TokenIssued",
    "TokenRevoked",
    "ModelDownloaded",
    "InferenceBudgetSet",
    "Role",
    "KINDS",
    "ROOT_KINDS",
    "SITE_KINDS",
    "ANY_ACTOR_KINDS",
    "NAME_PATTERN",
    "Payload",
    "KeyEnrolled",
    "KeyRevoked",
    "KeyRotated",
    "KeyRecovered",
    "KEY_KINDS",
    "DatasetRegistered",
    "StudyProposed",
    "StudyApproved",
    "StudyRefused",
    "RunStarted",
    "RunStatus",
    "RunFinished",
    "Dropped",
    "Refused",
    "RoundCompleted",
    "BudgetRefused",
    "ApprovalMissingStatement",
    "ReleasedDataset",
    "ModelReleased",
    "UpdatesPruned",
    "InferenceServed",
    "AnalysisAnswered",
    "ModelExplained",
    "RECEIPT_DOMAINS",
    "CheckpointRecorded",
    "CheckpointCosigned",
    "NoteRecorded",
    # Site-side replay (#19).
    "ReplayConfirmed",
    "ReplayFailed",
    "PAYLOADS",
    "payload_model",
    "validate_payload",
    "validate_actor_name",
    "allowed_roles",
]

#: The enrolled name of the coordinator's root key (its key files are ``root.pem``/``root.pub``).
ROOT_ACTOR = "coordinator"


class Role(enum.StrEnum):
    """What an enrolled key is for."""

    ROOT = "root"
    SITE = "site"
    COORDINATOR = "coordinator"
    AUDITOR = "auditor"
    CLINIC = "clinic"


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


PublicKeyPem = Annotated[str, StringConstraints(max_length=4096), AfterValidator(_check_public_key)]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=2000)]
TreeSize = Annotated[int, Field(ge=1, le=2**53 - 1)]


class RequestedPayload(Payload):
    """A root event a person asked for: ``requested_by`` names them inside what the root signs.

    It is the API token's holder (or the operator at the coordinator's command line), so an
    auditor can tell who did what from the signed ledger alone. Absent on events the
    coordinator records on its own (and on entries written before the field existed).
    """

    requested_by: Ident | None = None


class KeyEnrolled(RequestedPayload):
    """The root enrols a new name's first key, with its role (genesis enrols the root itself).

    ``proof`` is the new key's proof of possession (required after genesis): its signature
    under ``veracity.enrolment.v1`` over ``{log_id, name, role, key_id}``. A name is
    enrolled once; its later keys come by ``key.rotated`` or ``key.recovered``.
    """

    KIND: ClassVar[str] = "key.enrolled"

    name: Name
    role: Literal["root", "site", "coordinator", "auditor", "clinic"]
    public_key: PublicKeyPem
    valid_from: Timestamp
    supernode_public_key: (
        Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None
    ) = None
    proof: Base64Signature | None = None
    # --- identity / log key split (#18, logkey) ---
    #: Genesis only: the offline identity key (the auditors' trust anchor) that enrols the
    #: online log key, and its signature under ``veracity.log-key.v1``. A genesis without
    #: them (written before the split) is its own identity: one key is both.
    identity_key: PublicKeyPem | None = None
    identity_signature: Base64Signature | None = None
    # --- end identity / log key split ---


class KeyRotated(RequestedPayload):
    """A name hands over from its current key to a new one, signed by the outgoing key.

    ``proof`` is the new key's proof of possession (as in ``key.enrolled``, for the name's
    unchanged role); ``outgoing_signature`` is the current key's signature under
    ``veracity.rotation.v1`` over ``{log_id, name, key_id, new_key_id}``.
    """

    KIND: ClassVar[str] = "key.rotated"

    name: Name
    public_key: PublicKeyPem
    valid_from: Timestamp
    proof: Base64Signature
    outgoing_signature: Base64Signature
    # --- identity / log key split (#18, logkey) ---
    #: The identity key's signature enrolling the new log key (``coordinator`` only).
    identity_signature: Base64Signature | None = None
    # --- end identity / log key split ---


class KeyRecovered(RequestedPayload):
    """The root gives a name whose key was lost (or revoked) a new key: visible, with why.

    The name keeps its role; the key it held, if any, stops signing here. ``proof`` is the
    new key's proof of possession, as in ``key.enrolled``.
    """

    KIND: ClassVar[str] = "key.recovered"

    name: Name
    public_key: PublicKeyPem
    valid_from: Timestamp
    proof: Base64Signature
    reason: Reason
    supernode_public_key: (
        Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None
    ) = None
    #: A lost *log key* (``coordinator`` only): the identity key's signature enrolling the
    #: new log key in its place; the entry is signed by the new log key, and every older
    #: log key signs nothing after it.
    identity_signature: Base64Signature | None = None


class KeyRevoked(RequestedPayload):
    """The root revokes a name's key."""

    KIND: ClassVar[str] = "key.revoked"

    name: Name
    key_id: Hash
    reason: Reason
    # --- identity / log key split (#18, logkey) ---
    #: The identity key's signature retiring a log key it rotated away (``coordinator`` only).
    identity_signature: Base64Signature | None = None
    # --- end identity / log key split ---


class DatasetRegistered(SiteStatement):
    """A site registers a dataset: its salted commitment and public schema, never its rows."""

    KIND: ClassVar[str] = "dataset.registered"

    dataset_id: Ident
    commitment: Hash
    schema_hash: Hash
    rows: Count
    label: Ident
    features: Annotated[list[Ident], Field(min_length=1, max_length=10_000)]
    #: What the rows are: table rows, signal windows or images (left out for a table).
    kind: Literal["table", "signals", "images"] = "table"


class StudyProposed(RequestedPayload):
    """The coordinator proposes a study document (``study_hash`` is its canonical hash)."""

    KIND: ClassVar[str] = "study.proposed"

    study_id: Ident
    study_hash: Hash
    study: JsonObject
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


class StudyApproved(SiteStatement):
    """A site's operator approves a study for one dataset, up to an epsilon cap."""

    KIND: ClassVar[str] = "study.approved"

    study_hash: Hash
    dataset_id: Ident
    epsilon_cap: Annotated[Number, Field(gt=0)]


class StudyRefused(SiteStatement):
    """A site's operator refuses a study."""

    KIND: ClassVar[str] = "study.refused"

    study_hash: Hash
    reason: Text


class RunStarted(RequestedPayload):
    """The coordinator submitted a run of a study to the SuperLink."""

    KIND: ClassVar[str] = "run.started"

    run_id: Ident
    study_hash: Hash
    fab_hash: Hash
    config_hash: Hash
    package_versions: dict[Ident, Ident]
    seed_commitment: Hash


#: How a run ended.
RunStatus = Literal["completed", "failed", "stopped", "insufficient_sites"]


class RunFinished(RequestedPayload):
    """A run ended; ``model_hash`` names the released model, if any."""

    KIND: ClassVar[str] = "run.finished"

    run_id: Ident
    study_hash: Hash
    status: RunStatus
    reason: Text
    rounds_completed: Count
    model_hash: Hash | None


class Dropped(Contract):
    """A site whose reply was not aggregated, and why."""

    site: Name
    reason: Text


class Refused(Contract):
    """A site that answered with a signed refusal, its kind and reason."""

    site: Name
    kind: Ident
    reason: Text


class RoundCompleted(Payload):
    """One round: each participant's signed receipt, who was dropped or refused, the result."""

    KIND: ClassVar[str] = "round.completed"

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


class ReleasedDataset(Contract):
    """A dataset a released model was trained on."""

    site: Name
    dataset_id: Ident
    commitment: Hash


class ModelReleased(Payload):
    """The coordinator released a model to the registry, with its card's hash."""

    KIND: ClassVar[str] = "model.released"

    model_hash: Hash
    run_id: Ident
    study_hash: Hash
    model: JsonObject
    datasets: list[ReleasedDataset]
    epsilon: dict[Name, Annotated[Number, Field(ge=0)]]
    metrics: dict[Ident, Number]
    card_hash: Hash


class InferenceServed(Payload):
    """The coordinator answered one encrypted inference request."""

    KIND: ClassVar[str] = "inference.served"

    model_hash: Hash
    requester: Ident
    he_params_hash: Hash
    #: Patients the request's ciphertexts can carry (what is charged), not the declared batch.
    batch_size: Annotated[int, Field(ge=1, le=2**31)]
    request_hash: Hash
    #: Predictions charged to this requester for this model so far, this request included
    #: (a contributions request counts ``batch_size * contributions``).
    served_total: Annotated[int, Field(ge=1, le=2**53 - 1)]
    #: Per-feature contributions were asked for: outputs per patient (the model's
    #: features); absent for a prediction.
    contributions: Annotated[int, Field(ge=1, le=2**20)] | None = None


class TokenIssued(RequestedPayload):
    """An admin API token was issued (its public id and holder; never the token)."""

    KIND: ClassVar[str] = "token.issued"

    token_id: Ident
    name: Ident
    role: Literal["admin", "site", "researcher", "auditor"]
    site: Name | None = None
    expires_at: Timestamp


class TokenRevoked(RequestedPayload):
    """An admin API token was revoked: from this entry on it answers 401."""

    KIND: ClassVar[str] = "token.revoked"

    token_id: Ident
    name: Ident


class ModelDownloaded(RequestedPayload):
    """An administrator downloaded a released model's plaintext weights."""

    KIND: ClassVar[str] = "model.downloaded"

    model_hash: Hash


class InferenceBudgetSet(RequestedPayload):
    """An administrator set how many predictions ``requester`` may get from a model in all."""

    KIND: ClassVar[str] = "inference.budget_set"

    model_hash: Hash
    requester: Ident
    budget: Annotated[int, Field(ge=0, le=2**53 - 1)]


class CheckpointFields(Contract):
    """What a checkpoint and a cosignature of it both carry: the tree signed, and the signature."""

    tree_size: TreeSize
    root_hash: Hash
    log_id: Hash
    signature: Base64Signature


class CheckpointRecorded(CheckpointFields, RequestedPayload):
    """A root-signed checkpoint of the first ``tree_size`` entries."""

    KIND: ClassVar[str] = "checkpoint"

    #: The checkpoint's signed time, when entries appended between signing and recording
    #: made the entry's own ``ts`` later (absent: the entry's ``ts`` is the signed time).
    timestamp: Timestamp | None = None


class CheckpointCosigned(CheckpointFields, SitePayload):
    """A site's cosignature of a checkpoint it checked."""

    KIND: ClassVar[str] = "checkpoint.cosigned"


class NoteRecorded(Payload):
    """Free text from any enrolled actor (an ethics approval reference, an agreement)."""

    KIND: ClassVar[str] = "note.recorded"

    text: Annotated[str, StringConstraints(min_length=1, max_length=10_000)]


class UpdatesPruned(RequestedPayload):
    """The coordinator deleted archived round files (its updates/ folder), by its retention policy.

    ``runs`` lost their archive (``removed``: the weights hashes deleted, ``removed_bytes``
    their size); ``kept_released``: runs as old whose model was released, kept because a
    replay of that model needs them (``include_released`` false). ``before``: runs that
    finished before this moment were eligible (``older_than_days`` before the prune).
    """

    KIND: ClassVar[str] = "updates.pruned"

    older_than_days: Annotated[int, Field(ge=0, le=36_500)]
    before: Timestamp
    include_released: bool
    runs: Annotated[list[Ident], Field(min_length=1, max_length=100_000)]
    kept_released: Annotated[list[Ident], Field(max_length=100_000)]
    removed: Annotated[list[Hash], Field(max_length=1_000_000)]
    removed_bytes: Count


#: Every ledger event kind and its payload model.
PAYLOADS: dict[str, type[Payload]] = {
    model.KIND: model
    for model in (
        KeyEnrolled,
        KeyRotated,
        KeyRecovered,
        KeyRevoked,
        DatasetRegistered,
        StudyProposed,
        StudyApproved,
        StudyRefused,
        RunStarted,
        RunFinished,
        RoundCompleted,
        BudgetRefused,
        ApprovalMissingStatement,
        ModelReleased,
        InferenceServed,
        AnalysisAnswered,
        CheckpointRecorded,
        CheckpointCosigned,
        NoteRecorded,
        TokenIssued,
        TokenRevoked,
        # --- downloads and query budgets (#16)
        ModelDownloaded,
        InferenceBudgetSet,
        # Site-side replay (#19): site statements, recorded by SiteCommands.record_statement.
        ReplayConfirmed,
        ReplayFailed,
        # --- explanations (#19)
        ModelExplained,
        # --- retention of the round archive (#19)
        UpdatesPruned,
    )
}

#: Kinds whose payload lists sites' signed receipts (``receipts: [{receipt, signature}]``),
#: and the domain each receipt is signed under.
RECEIPT_DOMAINS: dict[str, str] = {
    "round.completed": RECEIPT_DOMAIN,
    "analysis.answered": ANALYSIS_RECEIPT_DOMAIN,
    # --- explanations (#19): each site's explanation is an analysis receipt
    "model.explained": ANALYSIS_RECEIPT_DOMAIN,
}

#: The kinds that change which key a name holds (the key history replays exactly these).
KEY_KINDS: tuple[str, ...] = ("key.enrolled", "key.rotated", "key.recovered", "key.revoked")
#: Every kind the ledger accepts.
KINDS: frozenset[str] = frozenset(PAYLOADS)
#: Kinds only the root (the coordinator) records.
ROOT_KINDS: frozenset[str] = frozenset(
    {
        "key.enrolled",
        "key.rotated",
        "key.recovered",
        "key.revoked",
        "study.proposed",
        "run.started",
        "run.finished",
        "round.completed",
        "model.released",
        "inference.served",
        "analysis.answered",
        "checkpoint",
        "token.issued",
        "token.revoked",
        "model.downloaded",
        "inference.budget_set",
        # --- explanations (#19)
        "model.explained",
        "updates.pruned",
    }
)
#: Kinds a site records about itself (the payload's ``site`` must be the actor).
SITE_KINDS: frozenset[str] = frozenset(
    kind for kind, model in PAYLOADS.items() if issubclass(model, SitePayload)
)
#: Kinds any enrolled actor may record.
ANY_ACTOR_KINDS: frozenset[str] = KINDS - ROOT_KINDS - SITE_KINDS


def payload_model(kind: str) -> type[Payload]:
    """The payload model of ``kind``.

    Raises
    ------
    InputError
        If the ledger knows no such kind.
    """
    model = PAYLOADS.get(kind)
    if model is None:
        raise InputError(f"unknown event kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}")
    return model


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
    return check_name(actor, what="actor")


def validate_payload(kind: str, payload: Any, *, actor: str | None = None) -> Payload:
    """Check ``payload`` against the schema of ``kind`` (and, for site kinds, the actor).

    Returns the validated model.

    Raises
    ------
    InputError
        If the kind is unknown, the payload is not an object, a field is missing, extra,
        of the wrong type or out of range, or a site event names another site.
    """
    model = payload_model(kind).parse(payload, what=f"{kind} payload")
    if actor is not None and isinstance(model, SitePayload) and model.site != actor:
        raise InputError(f"invalid {kind} payload: field 'site' must be the actor {actor!r}")
    return model
