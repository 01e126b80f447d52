"""What the coordinator's reads return: typed records of sites, studies, decisions, runs.

Each record is built from the read model (:mod:`.read_model`) and carries the seq of the
ledger entry it comes from, so any answer can be checked against the log; where a record
holds a site's or the coordinator's statement, it holds it as its contract model
(:mod:`veracity.contracts.events`), validated again on the way out. ``to_json`` gives the
JSON the admin API has always answered with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from veracity.contracts.events import (
    DatasetRegistered,
    RoundCompleted,
    RunStatus,
    StudyApproved,
    StudyRefused,
)
from veracity.tasks.study import AnyStudy, Study

__all__ = [
    "SiteRecord",
    "EnrolledSite",
    "DatasetRecord",
    "StudyRecord",
    "Decision",
    "RunOutcome",
    "RunRecord",
    "RoundRecord",
    "ModelRecord",
    "ReindexReport",
]


@dataclass(frozen=True)
class SiteRecord:
    """An enrolled site: its latest ``key.enrolled`` and whether its key still holds."""

    name: str
    public_key: str
    supernode_public_key: str | None
    valid_from: str
    enrolled_seq: int
    #: The key id it holds now; None once revoked.
    key_id: str | None

    @property
    def revoked(self) -> bool:
        """Whether its key was revoked (and not replaced by a new enrolment)."""
        return self.key_id is None


@dataclass(frozen=True)
class EnrolledSite:
    """What an enrolment made: the site's key id, its SuperNode's node id, the entry."""

    name: str
    key_id: str
    node_id: int
    seq: int


@dataclass(frozen=True)
class DatasetRecord:
    """A site's latest registration of one dataset."""

    seq: int
    statement: DatasetRegistered

    @property
    def site(self) -> str:
        """The registering site."""
        return self.statement.site

    @property
    def dataset_id(self) -> str:
        """The site's name for the dataset."""
        return self.statement.dataset_id

    def to_json(self) -> dict[str, Any]:
        """The signed payload plus ``seq``."""
        return {**self.statement.to_json(), "seq": self.seq}


@dataclass(frozen=True)
class StudyRecord:
    """A proposed study (training or analysis), its document parsed."""

    study: AnyStudy
    proposed_seq: int
    proposed_at: str

    @property
    def study_hash(self) -> str:
        """SHA-256 of the document's canonical JSON."""
        return self.study.study_hash

    def summary(self) -> dict[str, Any]:
        """Identity, sites and terms at a glance (the admin API's listing)."""
        study = self.study
        return {
            "study_id": study.study_id,
            "study_hash": self.study_hash,
            "title": study.title,
            "sites": sorted(study.epsilon_caps),
            "min_sites": study.min_sites,
            "kind": "training" if isinstance(study, Study) else "analysis",
            "rounds": study.rounds if isinstance(study, Study) else None,
            "code_hash": study.code_hash,
            "proposed_seq": self.proposed_seq,
        }


@dataclass(frozen=True)
class Decision:
    """A site's latest signed decision on a study."""

    seq: int
    statement: StudyApproved | StudyRefused

    @property
    def site(self) -> str:
        """The deciding site."""
        return self.statement.site

    @property
    def kind(self) -> str:
        """``study.approved`` or ``study.refused``."""
        return self.statement.KIND

    @property
    def approves(self) -> bool:
        """Whether it is an approval."""
        return isinstance(self.statement, StudyApproved)

    def to_json(self) -> dict[str, Any]:
        """The signed payload plus ``kind`` and ``seq``."""
        return {**self.statement.to_json(), "kind": self.kind, "seq": self.seq}


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended (its ``run.finished``)."""

    seq: int
    ts: str
    status: RunStatus
    reason: str
    rounds_completed: int
    model_hash: str | None

    def to_json(self, run_id: str, study_hash: str) -> dict[str, Any]:
        """The ``run.finished`` payload plus ``seq`` and ``ts``."""
        return {
            "run_id": run_id,
            "study_hash": study_hash,
            "status": self.status,
            "reason": self.reason,
            "rounds_completed": self.rounds_completed,
            "model_hash": self.model_hash,
            "seq": self.seq,
            "ts": self.ts,
        }


@dataclass(frozen=True)
class RunRecord:
    """A run started through the coordinator, and its outcome once it has one."""

    run_id: str
    study_hash: str
    started_seq: int
    started_at: str
    finished: RunOutcome | None
    #: ``round.completed`` entries recorded for it so far.
    rounds_recorded: int

    def summary(self) -> dict[str, Any]:
        """The admin API's run listing."""
        return {
            "run_id": self.run_id,
            "study_hash": self.study_hash,
            "started_seq": self.started_seq,
            "started_at": self.started_at,
            "finished": None
            if self.finished is None
            else self.finished.to_json(self.run_id, self.study_hash),
        }


@dataclass(frozen=True)
class RoundRecord:
    """One ``round.completed`` of a run."""

    seq: int
    completed: RoundCompleted

    @property
    def round(self) -> int:
        """The round number."""
        return self.completed.round

    def to_json(self) -> dict[str, Any]:
        """The payload plus ``seq``."""
        return {**self.completed.to_json(), "seq": self.seq}


@dataclass(frozen=True)
class ModelRecord:
    """A model the coordinator released (its ``model.released``)."""

    model_hash: str
    seq: int
    released_at: str
    run_id: str
    study_hash: str
    card_hash: str


@dataclass(frozen=True)
class ReindexReport:
    """What a rebuild of the read model folded in."""

    entries: int
    rows: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"entries": self.entries, "rows": dict(self.rows)}
