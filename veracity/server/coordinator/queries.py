"""Reads of the coordinator's state from the read model, as typed records.

The functions take a :class:`~sqlalchemy.orm.Session` so that a change reads inside its
own transaction (under the ledger's write lock, after :meth:`ReadModel.catch_up`);
:class:`CoordinatorReads` runs them in a read session of their own for everyone else, after
folding in whatever the log has that the read model has not (normally nothing).
Every answer is a key lookup or an index range, whatever the size of the log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from veracity.contracts.events import DatasetRegistered, RoundCompleted, StudyApproved, StudyRefused
from veracity.errors import NotFound
from veracity.server.coordinator.read_model import ReadModel
from veracity.server.coordinator.records import (
    DatasetRecord,
    Decision,
    ModelRecord,
    RoundRecord,
    RunOutcome,
    RunRecord,
    SiteRecord,
    StudyRecord,
)
from veracity.server.coordinator.tables import (
    DatasetRow,
    DecisionRow,
    ModelRow,
    RoundRow,
    RunRow,
    SiteRow,
    StudyRow,
)
from veracity.tasks.study import parse_any_study

__all__ = [
    "CoordinatorReads",
    "site",
    "sites",
    "dataset",
    "datasets",
    "study",
    "studies",
    "decisions",
    "approvals",
    "run",
    "runs",
    "rounds",
    "model",
    "models",
]


# ----------------------------------------------------------------- rows to records
def _site(row: SiteRow) -> SiteRecord:
    return SiteRecord(
        name=row.name,
        public_key=row.public_key,
        supernode_public_key=row.supernode_public_key,
        valid_from=row.valid_from,
        enrolled_seq=row.enrolled_seq,
        key_id=row.key_id,
    )


def _study(row: StudyRow) -> StudyRecord:
    return StudyRecord(
        study=parse_any_study(json.loads(row.document)), proposed_seq=row.seq, proposed_at=row.ts
    )


def _decision(row: DecisionRow) -> Decision:
    model = StudyApproved if row.kind == StudyApproved.KIND else StudyRefused
    return Decision(seq=row.seq, statement=model.parse(json.loads(row.payload)))


def _run(row: RunRow, rounds_recorded: int) -> RunRecord:
    if row.started_seq is None or row.started_at is None:
        raise NotFound(f"run {row.run_id} was not started through this coordinator")
    finished = None
    if row.finished_seq is not None:
        finished = RunOutcome(
            seq=row.finished_seq,
            ts=row.finished_at or "",
            status=row.status,  # type: ignore[arg-type]  # a RunStatus, checked on append
            reason=row.reason or "",
            rounds_completed=int(row.rounds_completed or 0),
            model_hash=row.model_hash,
        )
    return RunRecord(
        run_id=row.run_id,
        study_hash=row.study_hash,
        started_seq=row.started_seq,
        started_at=row.started_at,
        finished=finished,
        rounds_recorded=rounds_recorded,
    )


def _model(row: ModelRow) -> ModelRecord:
    return ModelRecord(
        model_hash=row.model_hash,
        seq=row.seq,
        released_at=row.released_at,
        run_id=row.run_id,
        study_hash=row.study_hash,
        card_hash=row.card_hash,
    )


# ----------------------------------------------------------------------- queries
def site(session: Session, name: str) -> SiteRecord | None:
    """The site ``name``, if it was ever enrolled."""
    row = session.get(SiteRow, name)
    return None if row is None else _site(row)


def sites(session: Session) -> list[SiteRecord]:
    """Every enrolled site, by name."""
    return [_site(row) for row in session.scalars(select(SiteRow).order_by(SiteRow.name))]


def dataset(session: Session, site_name: str, dataset_id: str) -> DatasetRecord | None:
    """The latest registration of ``dataset_id`` by ``site_name``, if any."""
    row = session.get(DatasetRow, (site_name, dataset_id))
    if row is None:
        return None
    return DatasetRecord(seq=row.seq, statement=DatasetRegistered.parse(json.loads(row.payload)))


def datasets(session: Session, *, site_name: str | None = None) -> list[DatasetRecord]:
    """The latest registration per site and dataset id (of one site, when given)."""
    query = select(DatasetRow).order_by(DatasetRow.site, DatasetRow.dataset_id)
    if site_name is not None:
        query = query.where(DatasetRow.site == site_name)
    return [
        DatasetRecord(seq=row.seq, statement=DatasetRegistered.parse(json.loads(row.payload)))
        for row in session.scalars(query)
    ]


def study(session: Session, study_hash: str) -> StudyRecord | None:
    """The proposed study with this hash, if any."""
    row = session.get(StudyRow, study_hash)
    return None if row is None else _study(row)


def studies(session: Session, *, site_name: str | None = None) -> list[StudyRecord]:
    """Every proposed study, oldest first (those naming ``site_name``, when given)."""
    found = [_study(row) for row in session.scalars(select(StudyRow).order_by(StudyRow.seq))]
    if site_name is None:
        return found
    return [record for record in found if site_name in record.study.epsilon_caps]


def decisions(session: Session, study_hash: str) -> dict[str, Decision]:
    """Each site's latest decision on a study."""
    rows = session.scalars(
        select(DecisionRow).where(DecisionRow.study_hash == study_hash).order_by(DecisionRow.site)
    )
    return {row.site: _decision(row) for row in rows}


def approvals(session: Session, study_hash: str) -> dict[str, Decision]:
    """Sites whose latest decision approves the study and whose key is not revoked."""
    rows = session.scalars(
        select(DecisionRow)
        .join(SiteRow, SiteRow.name == DecisionRow.site)
        .where(
            DecisionRow.study_hash == study_hash,
            DecisionRow.kind == StudyApproved.KIND,
            SiteRow.key_id.is_not(None),
        )
        .order_by(DecisionRow.site)
    )
    return {row.site: _decision(row) for row in rows}


def _rounds_recorded(session: Session, run_id: str) -> int:
    count = session.scalar(select(func.count()).where(RoundRow.run_id == run_id))
    return int(count or 0)


def run(session: Session, run_id: str) -> RunRecord | None:
    """The run ``run_id``, if it was started through this coordinator."""
    row = session.get(RunRow, run_id)
    if row is None or row.started_seq is None:
        return None
    return _run(row, _rounds_recorded(session, run_id))


def runs(session: Session) -> list[RunRecord]:
    """Every run started through this coordinator, oldest first."""
    counts = (
        select(RoundRow.run_id, func.count().label("rounds")).group_by(RoundRow.run_id).subquery()
    )
    rows = session.execute(
        select(RunRow, counts.c.rounds)
        .outerjoin(counts, counts.c.run_id == RunRow.run_id)
        .where(RunRow.started_seq.is_not(None))
        .order_by(RunRow.started_seq)
    )
    return [_run(row, int(rounds or 0)) for row, rounds in rows]


def rounds(session: Session, run_id: str) -> list[RoundRecord]:
    """The ``round.completed`` entries of ``run_id``, in order."""
    rows = session.scalars(select(RoundRow).where(RoundRow.run_id == run_id).order_by(RoundRow.seq))
    return [
        RoundRecord(seq=row.seq, completed=RoundCompleted.parse(json.loads(row.payload)))
        for row in rows
    ]


def model(session: Session, model_hash: str) -> ModelRecord | None:
    """The release of ``model_hash``, if it was released."""
    row = session.get(ModelRow, model_hash)
    return None if row is None else _model(row)


def models(session: Session) -> list[ModelRecord]:
    """Every released model, oldest first."""
    return [_model(row) for row in session.scalars(select(ModelRow).order_by(ModelRow.seq))]


# ------------------------------------------------------------------ the facade
class CoordinatorReads:
    """The coordinator's state as typed records, read from the read model."""

    def __init__(self, read_model: ReadModel) -> None:
        self.read_model = read_model

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A read session on an up-to-date read model.

        The log's size is read before the watermark: a change commits both together, so
        the watermark can be found ahead of that size but never falsely behind it.
        """
        size = self.read_model.ledger.size()
        with Session(self.read_model.engine) as session:
            if self.read_model.watermark(session) < size:
                session.rollback()  # read again after the catch-up has committed
                self.read_model.catch_up_now()
            yield session

    def site(self, name: str) -> SiteRecord:
        """An enrolled site.

        Raises
        ------
        NotFound
            If it was never enrolled.
        """
        with self.session() as session:
            found = site(session, name)
        if found is None:
            raise NotFound(f"site {name!r} is not enrolled")
        return found

    def sites(self) -> list[SiteRecord]:
        """Every enrolled site, by name."""
        with self.session() as session:
            return sites(session)

    def dataset(self, site_name: str, dataset_id: str) -> DatasetRecord | None:
        """The latest registration of ``dataset_id`` by ``site_name``, if any."""
        with self.session() as session:
            return dataset(session, site_name, dataset_id)

    def datasets(self, *, site_name: str | None = None) -> list[DatasetRecord]:
        """The latest registration per site and dataset id."""
        with self.session() as session:
            return datasets(session, site_name=site_name)

    def find_study(self, study_hash: str) -> StudyRecord | None:
        """The proposed study with this hash, if any."""
        with self.session() as session:
            return study(session, study_hash)

    def study(self, study_hash: str) -> StudyRecord:
        """The proposed study with this hash.

        Raises
        ------
        NotFound
            If no such study was proposed.
        """
        found = self.find_study(study_hash)
        if found is None:
            raise NotFound(f"no study {study_hash!r} was proposed")
        return found

    def studies(self, *, site_name: str | None = None) -> list[StudyRecord]:
        """Every proposed study, oldest first (those naming ``site_name``, when given)."""
        with self.session() as session:
            return studies(session, site_name=site_name)

    def decisions(self, study_hash: str) -> dict[str, Decision]:
        """Each site's latest decision on a study."""
        with self.session() as session:
            return decisions(session, study_hash)

    def approvals(self, study_hash: str) -> dict[str, Decision]:
        """Sites whose latest decision approves the study and whose key is not revoked."""
        with self.session() as session:
            return approvals(session, study_hash)

    def find_run(self, run_id: str) -> RunRecord | None:
        """The run ``run_id``, if it was started through this coordinator."""
        with self.session() as session:
            return run(session, run_id)

    def run(self, run_id: str) -> RunRecord:
        """The run ``run_id``.

        Raises
        ------
        NotFound
            If it was not started through this coordinator.
        """
        found = self.find_run(run_id)
        if found is None:
            raise NotFound(f"run {run_id} was not started through this coordinator")
        return found

    def runs(self) -> list[RunRecord]:
        """Every run started through this coordinator, oldest first."""
        with self.session() as session:
            return runs(session)

    def rounds(self, run_id: str) -> list[RoundRecord]:
        """The ``round.completed`` entries of ``run_id``, in order."""
        with self.session() as session:
            return rounds(session, run_id)

    def model(self, model_hash: str) -> ModelRecord | None:
        """The release of ``model_hash``, if it was released."""
        with self.session() as session:
            return model(session, model_hash)

    def models(self) -> list[ModelRecord]:
        """Every released model, oldest first."""
        with self.session() as session:
            return models(session)

    def wait_run(self, run_id: str, *, timeout: float, interval: float = 0.2) -> RunRecord | None:
        """Poll until ``run.started`` of ``run_id`` is recorded or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.find_run(run_id)
            if found is not None or time.monotonic() >= deadline:
                return found
            time.sleep(interval)
