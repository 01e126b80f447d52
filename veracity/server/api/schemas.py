"""Request and response bodies of the admin API (Pydantic; separate from the ORM rows).

Flower run ids and node ids exceed 2**53, so they travel as decimal strings. Hashes are
64 lowercase hex digits. Site-signed statements carry the payload exactly as the site
signed it and the base64 Ed25519 statement signature.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from veracity.core.fields import HEX64_PATTERN, SITE_NAME_PATTERN, Hash, SiteName

__all__ = [
    "HASH_PATTERN",
    "RUN_ID_PATTERN",
    "SITE_PATTERN",
    "Hash",
    "SiteEnrolIn",
    "QueryBudgetIn",
    "QueryBudgetOut",
    "QueryBudgetListOut",
    "SiteEnrolledOut",
    "SiteSummaryOut",
    "SiteListOut",
    "SiteOut",
    "SignedStatementIn",
    "DecisionIn",
    "StatementIn",
    "RecordedOut",
    "DatasetOut",
    "DatasetListOut",
    "StudySummaryOut",
    "StudyListOut",
    "StudyOut",
    "StudyProposedOut",
    "RunStartIn",
    "RunStartedOut",
    "RunSummaryOut",
    "RunListOut",
    "RunOut",
    "RunLogsOut",
    "RunStoppedOut",
    "RoundListOut",
    "ModelSummaryOut",
    "ModelListOut",
    "ModelOut",
    "LedgerInfoOut",
    "EntryOut",
    "EntryPageOut",
    "KeyRecoveryOut",
    "VerifyOut",
    "CheckpointOut",
    "CheckpointListOut",
    "InclusionOut",
    "ConsistencyOut",
    "TokenCreateIn",
    "TokenOut",
    "TokenCreatedOut",
    "TokenListOut",
    "PrincipalOut",
    "ActionOut",
    "ActionListOut",
    "ReadyOut",
    "LedgerJobIn",
    "LedgerJobOut",
    "HealthOut",
]

HASH_PATTERN = HEX64_PATTERN
RUN_ID_PATTERN = r"^[0-9]{1,20}$"
SITE_PATTERN = SITE_NAME_PATTERN
Base64Signature = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- sites, statements
class SiteEnrolIn(_In):
    """A site to enrol: its name, Ed25519 signing key and SuperNode key."""

    name: SiteName
    public_key: Annotated[str, StringConstraints(min_length=1, max_length=4096)] = Field(
        description="The site's Ed25519 public key, PEM (SubjectPublicKeyInfo)."
    )
    supernode_public_key: Annotated[str, StringConstraints(min_length=1, max_length=4096)] = Field(
        description="The SuperNode's ECDSA public key, OpenSSH text (P-384)."
    )
    proof: Base64Signature = Field(
        description="The site key's proof of possession for this log, name and role site "
        "(`veracity site enrolment-proof --log-id LOG_ID`)."
    )


class SiteEnrolledOut(BaseModel):
    """An enrolment: the ``key.enrolled`` entry and the SuperLink's node id."""

    name: str
    key_id: str
    node_id: str | None
    seq: int
    action_id: int


class SiteSummaryOut(BaseModel):
    """An enrolled site at a glance (key id null once revoked)."""

    name: str
    enrolled_seq: int
    valid_from: str
    key_id: str | None


class SiteListOut(BaseModel):
    """Every enrolled site."""

    items: list[SiteSummaryOut]
    #: ``offset`` of the next page (null on the last page).
    next_offset: int | None = None


class SiteOut(BaseModel):
    """One enrolled site with its keys."""

    name: str
    key_id: str | None
    public_key: str
    supernode_public_key: str | None
    valid_from: str
    enrolled_seq: int | None


class SiteRevokeIn(_In):
    """Why a site's key is revoked, and whether its SuperNode goes with it."""

    reason: Annotated[
        str, StringConstraints(min_length=1, max_length=500, pattern=r"^[^\x00-\x1f\x7f]+$")
    ]
    withdraw_supernode: bool = Field(
        default=False,
        description="Also withdraw the SuperNode's registration (it can never connect again).",
    )


class SiteRevokedOut(BaseModel):
    """The revoked key and the ledger entry that records it."""

    name: str
    key_id: str
    supernode_withdrawn: bool
    seq: int
    action_id: int


class SiteRotateIn(_In):
    """A site's key hand-over, as ``veracity site rotate-key`` writes it."""

    format: Literal["veracity.key-handover.v1"] = "veracity.key-handover.v1"
    log_id: Hash = Field(description="The log the signatures bind (this ledger's log id).")
    name: SiteName = Field(description="The site handed over (the path's name).")
    key_id: Hash = Field(description="The outgoing key's id: the key the site holds now.")
    new_key_id: Hash = Field(description="The new key's id.")
    public_key: Annotated[str, StringConstraints(min_length=1, max_length=4096)] = Field(
        description="The new Ed25519 public key, PEM (SubjectPublicKeyInfo)."
    )
    proof: Base64Signature = Field(
        description="The new key's proof of possession for this log, name and role site."
    )
    outgoing_signature: Base64Signature = Field(
        description="The outgoing key's signature of the hand-over (veracity.rotation.v1)."
    )


class SiteRotatedOut(BaseModel):
    """A recorded rotation: the ``key.rotated`` entry."""

    name: str
    previous_key_id: str
    key_id: str
    seq: int
    action_id: int


class SignedStatementIn(_In):
    """A statement a site signed on its own machine for this log (``sign_statement``)."""

    payload: dict[str, Any]
    signature: Base64Signature


class DecisionIn(SignedStatementIn):
    """A site's signed approval or refusal of a study."""

    kind: Literal["study.approved", "study.refused"]


class StatementIn(SignedStatementIn):
    """Another site statement: a checkpoint co-signature, a note, a budget refusal, a replay."""

    kind: Literal[
        "checkpoint.cosigned",
        "note.recorded",
        "budget.refused",
        # Site-side replay (#19).
        "replay.confirmed",
        "replay.failed",
    ]


class RecordedOut(BaseModel):
    """The ledger entry a statement became."""

    seq: int
    kind: str
    actor: str
    hash: str
    action_id: int


class DatasetOut(BaseModel):
    """A registered dataset (the latest registration per site and id)."""

    model_config = ConfigDict(extra="allow")

    site: str
    dataset_id: str
    commitment: str
    schema_hash: str
    rows: int
    label: str
    features: list[str]
    #: ``table``, ``signals`` or ``images`` (a table's registration leaves it out).
    kind: str = "table"
    signed_at: str
    seq: int


class DatasetListOut(BaseModel):
    """Registered datasets."""

    items: list[DatasetOut]
    #: ``offset`` of the next page (null on the last page).
    next_offset: int | None = None


# ---------------------------------------------------------------------- studies
class StudySummaryOut(BaseModel):
    """A study at a glance."""

    study_id: str
    study_hash: str
    title: str
    sites: list[str]
    min_sites: int
    #: ``analysis`` for an analysis study (no rounds: its queries are asked once per run).
    kind: Literal["training", "analysis"] = "training"
    rounds: int | None
    code_hash: str
    proposed_seq: int | None


class StudyListOut(BaseModel):
    """Proposed studies."""

    items: list[StudySummaryOut]
    #: ``offset`` of the next page (null on the last page).
    next_offset: int | None = None


class StudyOut(StudySummaryOut):
    """A study's document and where it stands."""

    study: dict[str, Any]
    decisions: dict[str, dict[str, Any]]
    approved_by: list[str]
    ready: bool


class StudyProposedOut(BaseModel):
    """A proposal: the study's identity and its ``study.proposed`` entry."""

    study_id: str
    study_hash: str
    code_hash: str
    seq: int
    action_id: int


# ------------------------------------------------------------------------- runs
class ExplainIn(_In):
    """What an explanation of a released model may cost at each site, and its terms.

    ``delta`` defaults to the model's study's DP delta.
    """

    epsilon: float = Field(gt=0, le=100)
    clip_norm: float = Field(gt=0, le=1e6)
    steps: int = Field(default=32, ge=2, le=1024)
    delta: float | None = Field(default=None, gt=0, lt=1)


class RunStartIn(_In):
    """Which approved study to run.

    ``explain_at_release``: ask its sites to explain the final model before release, so
    the model card holds the explanation report.
    """

    study_hash: Hash
    explain_at_release: ExplainIn | None = None


class PruneIn(_In):
    """A retention prune of the round archive (``updates/``)."""

    older_than_days: int = Field(ge=0, le=36_500)
    include_released: bool = False
    dry_run: bool = False


class PruneOut(BaseModel):
    """What a prune removed (or, ``dry_run``, would remove), and its ``updates.pruned`` seq."""

    before: str
    runs: list[str]
    kept_released: list[str]
    removed: int
    removed_bytes: int
    dry_run: bool
    seq: int | None


class RunStartedOut(BaseModel):
    """A submitted run and its ``run.started`` entry."""

    run_id: str
    study_hash: str
    seq: int
    action_id: int


class RunSummaryOut(BaseModel):
    """A run started through this coordinator."""

    run_id: str
    study_hash: str
    started_seq: int
    started_at: str
    finished: dict[str, Any] | None


class RunListOut(BaseModel):
    """Runs, oldest first."""

    items: list[RunSummaryOut]
    #: ``offset`` of the next page (null on the last page).
    next_offset: int | None = None


class RunOut(RunSummaryOut):
    """A run: the ledger's record and the SuperLink's view."""

    rounds_completed: int
    #: What the SuperLink says of the run; null when it no longer knows it (a restarted
    #: SuperLink keeps no runs: their state is in memory).
    superlink: dict[str, Any] | None


class RunLogsOut(BaseModel):
    """Log text since ``after``; pass ``latest`` as the next ``after``."""

    run_id: str
    text: str
    latest: float


class RunStoppedOut(BaseModel):
    """A stopped run and its ``run.finished`` entry (null if one existed already)."""

    run_id: str
    stopped: bool
    seq: int | None
    action_id: int


class RoundListOut(BaseModel):
    """The ``round.completed`` payloads of a run."""

    items: list[dict[str, Any]]
    #: ``offset`` of the next page (null on the last page).
    next_offset: int | None = None


# ----------------------------------------------------------------------- models
class ModelSummaryOut(BaseModel):
    """A released model at a glance."""

    model_config = ConfigDict(protected_namespaces=())

    model_hash: str
    name: str
    family: str
    n_features: int
    label: str
    card_hash: str
    released_seq: int | None


class ModelListOut(BaseModel):
    """Released models."""

    items: list[ModelSummaryOut]
    #: ``offset`` of the next page (null on the last page).
    next_offset: int | None = None


# --- explanations (#19) -------------------------------------------------------------------
class ExplanationStartedOut(BaseModel):
    """An explanation run submitted, and its ``run.started`` entry."""

    run_id: str
    model_hash: str
    study_hash: str
    terms_hash: str
    seq: int
    action_id: int


class ExplanationOut(BaseModel):
    """A recorded explanation: its ``model.explained`` entry, the report and its SVG plot."""

    seq: int
    run_id: str
    report_hash: str
    terms: dict[str, Any]
    top_features: list[str]
    records: int
    sites: list[str]
    report: dict[str, Any]
    plot_svg: str


class ExplanationListOut(BaseModel):
    """A model's explanations, oldest first."""

    items: list[ExplanationOut]
    #: ``offset`` of the next page (null on the last page).
    next_offset: int | None = None


class QueryBudgetIn(_In):
    """How many predictions a requester may get from a model, in all."""

    budget: int = Field(
        ge=0,
        le=2**53 - 1,
        description="Predictions allowed in all (charged: what each request's ciphertexts "
        "can carry).",
    )


class QueryBudgetOut(BaseModel):
    """A requester's query budget for a model."""

    model_config = ConfigDict(protected_namespaces=())

    requester: str
    model_hash: str
    budget: int | None = Field(description="Set by an admin; null: the deployment's default.")
    effective_budget: int
    used: int
    remaining: int


class QueryBudgetListOut(BaseModel):
    """Every requester's budget for a model (set or charged)."""

    items: list[QueryBudgetOut]
    #: ``offset`` of the next page (null on the last page).
    next_offset: int | None = None


class ModelOut(BaseModel):
    """A released model's description and card."""

    model_config = ConfigDict(protected_namespaces=())

    model_hash: str
    model: dict[str, Any]
    features: list[str]
    label: str
    scaling: list[list[float]]
    card: dict[str, Any]
    card_hash: str
    description_hash: str
    released_seq: int | None
    #: The model's recorded explanations (``model.explained``): seq, report hash, top
    #: features; the reports themselves at ``/models/{hash}/explanations``.
    explanations: list[dict[str, Any]] = Field(default_factory=list)


# ----------------------------------------------------------------------- ledger
class CheckpointOut(BaseModel):
    """A root-signed checkpoint."""

    log_id: str
    tree_size: int
    root_hash: str
    timestamp: str
    signature: str


class LedgerInfoOut(BaseModel):
    """The log's id and size, its identity (root) key (pin it out of band) and log key."""

    log_id: str
    size: int
    root_public_key: str
    root_key_id: str
    latest_checkpoint: CheckpointOut | None
    #: The online log key the identity (root) key enrolled last: it signs checkpoints.
    log_public_key: str | None = None
    log_key_id: str | None = None


class EntryOut(BaseModel):
    """An entry: its fields, hash, and ``body``, the exact hashed bytes as text."""

    seq: int
    ts: str
    kind: str
    actor: str
    payload: dict[str, Any]
    prev: str
    signature: str
    #: The root's countersignature at this position (entries of actors other than the root).
    root_signature: str | None = None
    hash: str
    body: str


class EntryPageOut(BaseModel):
    """One page of entries; ``next_since`` starts the next page (null at the end)."""

    entries: list[EntryOut]
    next_since: int | None


class KeyRecoveryOut(BaseModel):
    """A ``key.recovered`` the verified ledger holds: a lost key replaced, visibly."""

    seq: int
    name: str
    key_id: str


class VerifyOut(BaseModel):
    """The verification report (``ok`` false names the first bad entry and why)."""

    ok: bool
    entries: int | None
    checkpoints: int | None
    first_bad_seq: int | None
    reason: str | None
    log_id: str | None
    root_hash: str | None
    signatures_checked: int | None
    receipts_checked: int | None
    #: Every key recovery (the log key's included), so that none goes unnoticed.
    key_recoveries: list[KeyRecoveryOut] = []
    #: ``all`` or ``tail``; with ``tail``, which checkpoint it trusted and on whose word.
    root_signatures: Literal["all", "tail"] = "all"
    tail_trusted: dict[str, Any] | None = None


class CheckpointListOut(BaseModel):
    """Checkpoints, oldest first; ``next_since_size`` starts the next page (null at the end)."""

    items: list[CheckpointOut]
    next_since_size: int | None = None


class InclusionOut(BaseModel):
    """An RFC 9162 inclusion proof and the signed checkpoint of its tree size, if any."""

    proof: dict[str, Any]
    checkpoint: CheckpointOut | None


class ConsistencyOut(BaseModel):
    """An RFC 9162 consistency proof and the signed checkpoints of both sizes, if any."""

    proof: dict[str, Any]
    old_checkpoint: CheckpointOut | None
    new_checkpoint: CheckpointOut | None


# ----------------------------------------------------------------------- tokens
class TokenCreateIn(_In):
    """A token to issue."""

    role: Literal["admin", "site", "researcher", "auditor"]
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._@:-]{0,127}$")]
    site: SiteName | None = None
    expires_in_days: int = Field(default=90, ge=1, le=3650)


class TokenOut(BaseModel):
    """A token's record (never the token)."""

    id: str
    name: str
    role: str
    site: str | None
    created_at: str
    expires_at: str
    revoked_at: str | None
    created_by: str


class TokenCreatedOut(BaseModel):
    """A new token: ``token`` is shown this once and stored only as its hash."""

    token: str
    info: TokenOut


class TokenListOut(BaseModel):
    """Tokens, oldest first."""

    items: list[TokenOut]
    #: ``offset`` of the next page (null on the last page).
    next_offset: int | None = None


class PrincipalOut(BaseModel):
    """Who the request's token authenticates."""

    token_id: str | None
    name: str
    role: str
    site: str | None


class ActionOut(BaseModel):
    """One state-changing call: who, what, and the ledger entry it wrote."""

    id: int
    at: str
    token_id: str | None
    actor: str
    role: str
    action: str
    target: str
    ledger_seq: int | None


class ActionListOut(BaseModel):
    """API actions, oldest first; ``next_since`` starts the next page."""

    items: list[ActionOut]
    next_since: int | None


class LedgerJobIn(_In):
    """A background ledger job to start."""

    kind: Literal["verify", "export"]
    root_signatures: Literal["all", "tail"] = "all"
    #: Needed with ``tail``: trust the log key's checkpoint with no witness quorum.
    no_witnesses: bool = False


class LedgerJobOut(BaseModel):
    """A background ledger job and what it produced.

    ``result`` is the verification report, or the bundle's ``entries``, ``checkpoints``,
    ``bytes`` and ``sha256``, once ``done``; ``error`` says why it ``failed``.
    """

    job_id: str
    kind: Literal["verify", "export"]
    requested_by: str
    status: Literal["queued", "running", "done", "failed"]
    result: dict[str, Any] | None
    error: str | None


class HealthOut(BaseModel):
    """Liveness."""

    status: Literal["ok"]


class ReadyOut(BaseModel):
    """Readiness: the database and the SuperLink both answered just now."""

    status: Literal["ready"]
    database: Literal["ok"]
    superlink: Literal["ok"]


class AnalysisRunIn(_In):
    """Which approved analysis study to answer."""

    study_hash: Hash


class AnalysisResultsOut(BaseModel):
    """An analysis run: its state, and each answered query's ``analysis.answered`` payload."""

    study_hash: str
    run_id: str
    finished: dict[str, Any] | None
    answers: list[dict[str, Any]]
