"""One change to the coordinator: who asked, its ledger entries, and its effects outside.

A :class:`UnitOfWork` owns one database transaction that holds the ledger's write lock.
Everything a change writes goes into it: the ledger entries (:meth:`UnitOfWork.append_root`,
:meth:`UnitOfWork.append_signed`), their projection into the read model, and the audit
record of who asked (an :class:`AuditHook`, the admin API's ``api_action`` row). Either all
of it commits or none of it does.

Effects outside the database cannot roll back, so each is registered with its undo
(:meth:`UnitOfWork.effect`): if anything fails afterwards, the commit included, the undo
steps run, newest first and best effort. :meth:`UnitOfWork.seal` writes the audit record
and closes the change to further entries; an effect made after it is the last thing before
the commit (how the SuperLink hears of an enrolment or a stop).
"""

from __future__ import annotations

import getpass
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy.orm import Session

from veracity.contracts.base import Payload
from veracity.contracts.events import ROOT_ACTOR, RequestedPayload
from veracity.crypto.keys import SigningKey
from veracity.errors import ConfigError, VeracityError
from veracity.ledger.checkpoint import Checkpoint
from veracity.ledger.entry import Entry
from veracity.ledger.ledger import EventRequest, Ledger
from veracity.server.coordinator.read_model import ReadModel

__all__ = [
    "Actor",
    "SystemActor",
    "SERVER_APP",
    "INFERENCE",
    "SUPERVISOR",
    "operator",
    "AuditHook",
    "Recorded",
    "UnitOfWork",
]

log = logging.getLogger(__name__)

#: Actors that are the coordinator itself: its root events name no person.
_SYSTEM_ROLES = frozenset({"serverapp", "service"})

T = TypeVar("T")
R = TypeVar("R")


class Actor(Protocol):
    """Who asks for a change: an API token's principal, the CLI's operator, the ServerApp."""

    @property
    def name(self) -> str:
        """Who they are (a token's holder, an OS user, ``serverapp``)."""
        ...

    @property
    def role(self) -> str:
        """In what capacity (a token's role, ``operator``, ``serverapp``)."""
        ...

    @property
    def token_id(self) -> str | None:
        """The API token acted through, if any."""
        ...


@dataclass(frozen=True)
class SystemActor:
    """An actor that is not an API token: the command line, the ServerApp."""

    name: str
    role: str
    token_id: str | None = None


#: The ServerApp recording a run it executes.
SERVER_APP = SystemActor(name="serverapp", role="serverapp")
#: The encrypted-inference service recording a batch it served.
INFERENCE = SystemActor(name="inference", role="service")
#: ``veracity server start`` recording the end of a run whose ServerApp died unrecorded.
SUPERVISOR = SystemActor(name="supervisor", role="service")


def operator(name: str | None = None) -> SystemActor:
    """The person at the coordinator's command line (default: the OS user)."""
    if name is None:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry (containers): still an operator
            name = "operator"
    return SystemActor(name=name, role="operator")


class AuditHook(Protocol):
    """Records who made a change, in the change's own transaction."""

    def record(
        self, session: Session, *, actor: Actor, action: str, target: str, seq: int | None
    ) -> int:
        """Write the record of ``action`` on ``target`` (entry ``seq``); returns its id."""
        ...


@dataclass(frozen=True)
class Recorded(Generic[T]):
    """What a change did: the ledger entry it recorded, its result, its audit record."""

    entry: Entry
    value: T
    #: The audit record's id (the admin API's ``api_action`` row), if one was written.
    action_id: int | None = None

    @property
    def seq(self) -> int:
        """The recorded entry's seq."""
        return self.entry.seq


class UnitOfWork:
    """One change in progress (made by ``CoordinatorService``; see the module docstring)."""

    def __init__(
        self,
        session: Session,
        *,
        actor: Actor,
        action: str,
        target: str,
        ledger: Ledger,
        read_model: ReadModel,
        root_key: SigningKey,
        audit: AuditHook | None,
    ) -> None:
        self.session = session
        self.actor = actor
        self.action = action
        self.target = target
        self._ledger = ledger
        self._read_model = read_model
        self._root_key = root_key
        self._audit = audit
        self._undo: list[Callable[[], None]] = []
        self._sealed = False
        #: The entries this change appended, in order (automatic checkpoints included).
        self.entries: list[Entry] = []
        #: The audit record's id, once sealed with an audit hook.
        self.action_id: int | None = None
        #: The checkpoint signed after the change committed, or why none was.
        self.checkpointed: tuple[Checkpoint, Entry] | VeracityError | None = None

    # ---------------------------------------------------------------- entries
    def _append(self, request: EventRequest) -> Entry:
        if self._sealed:
            raise ConfigError("a change appends nothing after its external effects")
        entries = self._ledger.append_batch([request], session=self.session)
        self._read_model.apply(self.session, entries)
        self.entries.extend(entries)
        return entries[0]

    def append_root(self, payload: Payload) -> Entry:
        """Append an event the root key signs here.

        Raises
        ------
        InputError
            If the payload breaks a ledger rule.
        """
        document = payload.to_json()
        if isinstance(payload, RequestedPayload) and self.actor.role not in _SYSTEM_ROLES:
            document.setdefault("requested_by", self.actor.name)
        return self._append(EventRequest(payload.KIND, ROOT_ACTOR, document, signer=self._root_key))

    def append_signed(
        self, kind: str, actor: str, payload: dict[str, Any], signature: str
    ) -> Entry:
        """Append a statement ``actor`` signed elsewhere.

        Raises
        ------
        InputError, Conflict
            If it breaks a ledger rule, or was recorded before.
        SignatureError
            If ``actor`` did not sign it with the key it holds.
        """
        return self._append(EventRequest(kind, actor, dict(payload), signature=signature))

    def record_checkpoint(self, signed: Checkpoint) -> Entry:
        """Record a checkpoint signed before this change began (``Ledger.sign_checkpoint``).

        Raises
        ------
        ConfigError
            After the change's external effects.
        """
        if self._sealed:
            raise ConfigError("a change appends nothing after its external effects")
        entry = self._ledger.record_checkpoint(self.session, signed)
        if self._read_model.watermark(self.session) == entry.seq:  # else recorded before
            self._read_model.skip(self.session, entry.seq)
            self.entries.append(entry)
        return entry

    def checkpoint(self) -> None:
        """Sign a checkpoint of the ledger including this change's entries, once it commits.

        The ledger verifies every entry since its last checkpoint and signs only committed
        entries, in a transaction of its own (``Ledger.checkpoint_after_commit``); the
        outcome is in :attr:`checkpointed` after the change.
        """
        if self._sealed:
            raise ConfigError("a change appends nothing after its external effects")
        read_model = self._read_model

        def fold(session: Session, entry: Entry) -> None:
            if read_model.watermark(session) == entry.seq:
                read_model.skip(session, entry.seq)

        def done(result: tuple[Checkpoint, Entry] | VeracityError) -> None:
            self.checkpointed = result

        self._ledger.checkpoint_after_commit(self.session, on_done=done, on_record=fold)

    # ---------------------------------------------------------------- effects
    def effect(self, do: Callable[[], R], *, undo: Callable[[R], None] | None = None) -> R:
        """Act outside the database now; ``undo`` it if the change does not commit."""
        result = do()
        if undo is not None:
            self._undo.append(lambda: undo(result))
        return result

    def seal(self) -> None:
        """Write the audit record; no entry may follow (effects may)."""
        if self._sealed:
            return
        self._sealed = True
        if self._audit is not None:
            seq = self.entries[0].seq if self.entries else None
            self.action_id = self._audit.record(
                self.session, actor=self.actor, action=self.action, target=self.target, seq=seq
            )
        self.session.flush()

    def undo(self) -> None:
        """Undo the effects made so far, newest first, best effort."""
        while self._undo:
            step = self._undo.pop()
            try:
                step()
            except VeracityError as err:  # the original failure matters more
                log.warning("could not undo part of %s %s: %s", self.action, self.target, err)

    def recorded(self, value: T, entry: Entry | None = None) -> Recorded[T]:
        """The change's outcome: ``value`` and its first entry (or ``entry``).

        Raises
        ------
        ConfigError
            If the change recorded no entry (a programming error).
        """
        chosen = entry if entry is not None else (self.entries[0] if self.entries else None)
        if chosen is None:
            raise ConfigError(f"{self.action} recorded no ledger entry")
        return Recorded(entry=chosen, value=value, action_id=self.action_id)
