"""The coordinator's read model: tables folded from the ledger, in the append's transaction.

The ledger is the record; these tables are an index of it, so that "which sites approved
this study" or "how did this run end" is a key lookup instead of a scan of every entry of a
kind. Each table is a fold over the entries in seq order:

``coord_site``      a site's latest ``key.enrolled`` (role site), ``key.rotated`` or
                    ``key.recovered``; its ``key_id`` is cleared by a ``key.revoked`` of it
``coord_dataset``   the latest ``dataset.registered`` per (site, dataset id)
``coord_study``     each ``study.proposed`` (the first of a hash)
``coord_decision``  the latest ``study.approved`` / ``study.refused`` per (study, site)
``coord_run``       ``run.started`` joined with the run's first ``run.finished``
``coord_round``     every ``round.completed``, by run
``coord_model``     each ``model.released`` (the first of a hash)
``coord_projection`` one row: ``upto``, the number of entries folded in (the watermark)

The coordinator service folds each entry it appends in the same transaction
(:meth:`ReadModel.apply`), so a committed change and its projection never disagree. Entries
that reached the ledger another way are folded in by :meth:`ReadModel.catch_up`, which
every change runs first under the write lock and which a read runs when it finds the
watermark behind the log. :meth:`ReadModel.rebuild` (``veracity server reindex``) folds
the whole log again from scratch. Nothing here is trusted by verification: ``verify``
reads only the ledger's own tables.

The tables have their own Alembic history (``veracity/server/coordinator/migrations``,
version table ``coord_alembic_version``), run after the ledger's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from veracity.core.canonical import canonical_json
from veracity.crypto.keys import VerifyKey
from veracity.errors import ConfigError, LedgerIntegrityError
from veracity.ledger.entry import Entry
from veracity.ledger.ledger import Ledger
from veracity.migrations import MigrationHistory
from veracity.server.coordinator.tables import (
    TABLES,
    VERSION_TABLE,
    DatasetRow,
    DecisionRow,
    ModelRow,
    ProjectionRow,
    RoundRow,
    RunRow,
    SiteRow,
    StudyRow,
)

__all__ = ["PROJECTED_KINDS", "ReadModel", "HISTORY"]

#: Where a writing session remembers the watermark it wrote.
_WATERMARK = "veracity.coordinator.watermark"

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
HISTORY = MigrationHistory("coordinator read model", MIGRATIONS_DIR, VERSION_TABLE)


def _text(payload: dict[str, Any]) -> str:
    return canonical_json(payload).decode("utf-8")


# --------------------------------------------------------------------- the fold
def _key_enrolled(session: Session, entry: Entry) -> None:
    payload = entry.payload
    row = session.get(SiteRow, payload["name"])
    if row is None:
        if entry.kind != "key.enrolled" or payload.get("role") != "site":
            return  # not a site (a rotation or recovery keeps the name's role)
        row = SiteRow(name=payload["name"])
        session.add(row)
    row.public_key = payload["public_key"]
    if entry.kind == "key.enrolled" or payload.get("supernode_public_key") is not None:
        row.supernode_public_key = payload.get("supernode_public_key")
    row.valid_from = payload["valid_from"]
    row.enrolled_seq = entry.seq
    row.key_id = VerifyKey.from_pem(payload["public_key"]).key_id
    row.revoked_seq = None


def _key_revoked(session: Session, entry: Entry) -> None:
    row = session.get(SiteRow, entry.payload["name"])
    if row is not None and row.key_id == entry.payload["key_id"]:
        row.key_id = None
        row.revoked_seq = entry.seq


def _dataset_registered(session: Session, entry: Entry) -> None:
    key = (entry.actor, entry.payload["dataset_id"])
    row = session.get(DatasetRow, key)
    if row is None:
        row = DatasetRow(site=key[0], dataset_id=key[1])
        session.add(row)
    row.seq = entry.seq
    row.payload = _text(entry.payload)


def _study_proposed(session: Session, entry: Entry) -> None:
    study_hash = entry.payload["study_hash"]
    if session.get(StudyRow, study_hash) is not None:
        return  # proposed before: the first proposal stands
    session.add(
        StudyRow(
            study_hash=study_hash,
            study_id=entry.payload["study_id"],
            seq=entry.seq,
            ts=entry.ts,
            document=_text(entry.payload["study"]),
        )
    )


def _decided(session: Session, entry: Entry) -> None:
    key = (entry.payload["study_hash"], entry.actor)
    row = session.get(DecisionRow, key)
    if row is None:
        row = DecisionRow(study_hash=key[0], site=key[1])
        session.add(row)
    row.kind = entry.kind
    row.seq = entry.seq
    row.payload = _text(entry.payload)


def _run_started(session: Session, entry: Entry) -> None:
    payload = entry.payload
    row = session.get(RunRow, payload["run_id"])
    if row is None:
        row = RunRow(run_id=payload["run_id"], study_hash=payload["study_hash"])
        session.add(row)
    if row.started_seq is None:
        row.started_seq, row.started_at = entry.seq, entry.ts


def _run_finished(session: Session, entry: Entry) -> None:
    payload = entry.payload
    row = session.get(RunRow, payload["run_id"])
    if row is None:  # a run the coordinator never started (recorded as failed)
        row = RunRow(run_id=payload["run_id"], study_hash=payload["study_hash"])
        session.add(row)
    if row.finished_seq is not None:
        return  # the first outcome stands
    row.finished_seq, row.finished_at = entry.seq, entry.ts
    row.status, row.reason = payload["status"], payload["reason"]
    row.rounds_completed, row.model_hash = payload["rounds_completed"], payload["model_hash"]


def _round_completed(session: Session, entry: Entry) -> None:
    payload = entry.payload
    session.add(
        RoundRow(
            seq=entry.seq, run_id=payload["run_id"], round=payload["round"], payload=_text(payload)
        )
    )


def _model_released(session: Session, entry: Entry) -> None:
    payload = entry.payload
    if session.get(ModelRow, payload["model_hash"]) is not None:
        return  # released before: the first release stands
    session.add(
        ModelRow(
            model_hash=payload["model_hash"],
            seq=entry.seq,
            released_at=entry.ts,
            run_id=payload["run_id"],
            study_hash=payload["study_hash"],
            card_hash=payload["card_hash"],
        )
    )


_PROJECTORS = {
    "key.enrolled": _key_enrolled,
    "key.rotated": _key_enrolled,
    "key.recovered": _key_enrolled,
    "key.revoked": _key_revoked,
    "dataset.registered": _dataset_registered,
    "study.proposed": _study_proposed,
    "study.approved": _decided,
    "study.refused": _decided,
    "run.started": _run_started,
    "run.finished": _run_finished,
    "round.completed": _round_completed,
    "model.released": _model_released,
}
#: The kinds the read model folds; every other kind only moves the watermark.
PROJECTED_KINDS: frozenset[str] = frozenset(_PROJECTORS)


class ReadModel:
    """The read model of one coordinator's ledger (same database)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    @property
    def engine(self) -> Engine:
        """The database of the ledger and the read model."""
        return self.ledger.engine

    # -------------------------------------------------------------- schema
    def upgrade(self, revision: str = "head") -> None:
        """Create or migrate the read model's tables (the ledger's must exist).

        Raises
        ------
        ConfigError
            If the database cannot be migrated.
        """
        try:
            with self.ledger.transaction() as session:
                HISTORY.run(session.connection(), "upgrade", revision)
        except sa.exc.DatabaseError as err:
            raise ConfigError(f"cannot migrate the read model: {str(err).splitlines()[0]}") from err

    def downgrade(self, revision: str) -> None:
        """Migrate the read model's tables down to ``revision`` (``"base"`` drops them)."""
        with self.ledger.transaction() as session:
            HISTORY.run(session.connection(), "downgrade", revision)

    def check_schema(self) -> None:
        """Refuse a database whose read model is missing or at another revision.

        Raises
        ------
        ConfigError
            Saying to run ``veracity server init``.
        """
        revision = HISTORY.current(self.engine)
        if revision != HISTORY.head():
            found = "no read model" if revision is None else f"read model {revision}"
            raise ConfigError(
                f"the database has {found}; this version needs {HISTORY.head()}: "
                "run `veracity server init`"
            )

    # -------------------------------------------------------------- the fold
    @staticmethod
    def watermark(session: Session) -> int:
        """How many entries are folded in (``[0, upto)``), as ``session`` sees it."""
        known = session.info.get(_WATERMARK)
        if known is not None:
            return int(known)
        upto = session.scalar(select(ProjectionRow.upto).where(ProjectionRow.id == 1))
        return 0 if upto is None else int(upto)

    @staticmethod
    def _set_watermark(session: Session, upto: int) -> None:
        moved = session.execute(
            update(ProjectionRow).where(ProjectionRow.id == 1).values(upto=upto)
        )
        if getattr(moved, "rowcount", 0) == 0:
            session.execute(insert(ProjectionRow).values(id=1, upto=upto))
        # A writer's session holds the write lock: nobody else moves the watermark until it
        # ends, so it can remember it (read once per change, not once per statement).
        session.info[_WATERMARK] = upto

    def apply(self, session: Session, entries: Iterable[Entry]) -> None:
        """Fold entries this transaction just appended (in seq order).

        Raises
        ------
        LedgerIntegrityError
            If they do not follow the watermark (entries would be skipped or folded twice).
        """
        upto = self.watermark(session)
        for entry in entries:
            if entry.seq != upto:
                raise LedgerIntegrityError(
                    f"the read model is at {upto}, not at the appended entry", seq=entry.seq
                )
            projector = _PROJECTORS.get(entry.kind)
            if projector is not None:
                projector(session, entry)
            upto += 1
        self._set_watermark(session, upto)

    def skip(self, session: Session, seq: int) -> None:
        """Note an appended entry that folds into nothing (this transaction's checkpoint).

        Raises
        ------
        LedgerIntegrityError
            If it does not follow the watermark.
        """
        if self.watermark(session) != seq:
            raise LedgerIntegrityError("the read model is not at the checkpoint", seq=seq)
        self._set_watermark(session, seq + 1)

    def _committed(self, start: int, stop: int) -> Iterator[Entry]:
        """Committed entries ``[start, stop)`` of the projected kinds, in seq order."""
        for entry in self.ledger.iter_entries(since=start, limit=stop - start):
            if entry.kind in PROJECTED_KINDS:
                yield entry

    def catch_up(self, session: Session) -> int:
        """Fold in every committed entry past the watermark; returns how many there were.

        ``session`` must hold the ledger's write lock (from ``Ledger.transaction()``), so
        that nothing is appended meanwhile.
        """
        upto = self.watermark(session)
        size = self.ledger.size()
        if upto >= size:
            session.info[_WATERMARK] = upto
            return 0
        for folded, entry in enumerate(self._committed(upto, size), start=1):
            _PROJECTORS[entry.kind](session, entry)
            if folded % 2048 == 0:
                session.flush()
        self._set_watermark(session, size)
        return size - upto

    def catch_up_now(self) -> int:
        """:meth:`catch_up` in a transaction of its own; returns the entries folded in."""
        with self.ledger.transaction() as session:
            return self.catch_up(session)

    def is_behind(self) -> bool:
        """Whether the log has entries the read model has not folded in yet.

        The log's size is read before the watermark: a change commits both together, so a
        read between them can only find the watermark ahead, never falsely behind.
        """
        size = self.ledger.size()
        with Session(self.engine) as session:
            return self.watermark(session) < size

    def rebuild(self) -> dict[str, int]:
        """Empty the read model and fold the whole log again; returns rows per table."""
        with self.ledger.transaction() as session:
            for table in TABLES:
                session.execute(delete(table))
            session.execute(delete(ProjectionRow))
            session.info.pop(_WATERMARK, None)
            session.flush()
            self.catch_up(session)
            return self.counts(session)

    @staticmethod
    def counts(session: Session) -> dict[str, int]:
        """Rows per table."""
        return {
            table.__tablename__: int(session.scalar(select(func.count()).select_from(table)) or 0)
            for table in reversed(TABLES)
        }

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, sorted (to compare two read models)."""
        out: dict[str, list[tuple[Any, ...]]] = {}
        with Session(self.engine) as session:
            for table in (*TABLES, ProjectionRow):
                columns = list(table.__table__.columns)
                rows = session.execute(select(*columns)).all()
                out[table.__tablename__] = sorted((tuple(row) for row in rows), key=repr)
        return out
