r"""The log's side of witnessing: checkpoints as C2SP signed notes, cosignatures beside them.

Every checkpoint the ledger has signed (``ledger_checkpoint``) is also served as a
tlog-checkpoint note: ``<origin>\n<size>\n<base64 root>\n`` signed with the log key under
the name ``origin`` (``veracity.local/veracity/<log id>``). The note is signed when it is
asked for, and only for a stored checkpoint whose own signature verifies under the log key,
whose log id is this log's and whose root is the tree's root at that size: the note never
says more than the verified checkpoint already did, so signing it is no new decision
(Ed25519 is deterministic: the same note always gets the same signature).

The log's own note signature is stored beside the cosignatures the first time the note is
signed, so an auditor reading the database without the log key still gets the note
(:meth:`WitnessedLog.stored_note`). Witnesses post ``cosignature/v1`` signatures; each
is checked against the witness's vkey (whose name must be the posting site's witness
name, so one site cannot speak for another) and stored in ``ledger_cosignature``, outside
the Merkle tree, then served as extra signature lines of the note.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from veracity.crypto.keys import SigningKey, VerifyKey
from veracity.errors import ConfigError, InputError, NotFound, SignatureError
from veracity.ledger import store
from veracity.ledger.checkpoint import Checkpoint
from veracity.ledger.note import (
    SIG_COSIGNATURE_V1,
    CheckpointText,
    Note,
    NoteSignature,
    NoteVerifier,
    log_origin,
    sign_note,
)

__all__ = [
    "ORIGIN_NAME",
    "SignedLog",
    "WitnessedLog",
    "witness_name",
    "policy_witness_name",
]

#: The ``<host or name>`` part of Veracity's origins.
ORIGIN_NAME = "veracity.local"


def witness_name(site: str) -> str:
    """The key name a site's witness cosigns under: ``<site>.witness.veracity.local``."""
    return f"{site}.witness.{ORIGIN_NAME}"


def policy_witness_name(key_name: str) -> str:
    """The name a policy gives the witness with note key name ``key_name`` (its site)."""
    suffix = f".witness.{ORIGIN_NAME}"
    return key_name[: -len(suffix)] if key_name.endswith(suffix) else key_name


class SignedLog(Protocol):
    """What a :class:`WitnessedLog` reads of its ledger (a ``veracity.ledger.ledger.Ledger``).

    A protocol, not the class: ``Ledger`` builds bundles from this module, so importing it
    here would make the two modules import each other.
    """

    engine: Engine
    root_key: SigningKey | None
    overlap_keys: list[SigningKey]

    @property
    def log_id(self) -> str:
        """The log's id (hex)."""
        ...

    @property
    def root_public_key(self) -> VerifyKey:
        """The current log key."""
        ...

    def log_keys(self) -> list[VerifyKey]:
        """Every log key the identity enrolled, oldest first."""
        ...

    def log_keys_at(self, seq: int) -> list[VerifyKey]:
        """The log keys that may sign at ``seq``."""
        ...

    def checkpoints(self) -> list[Checkpoint]:
        """Every signed checkpoint, oldest first."""
        ...

    def root(self, size: int | None = None) -> bytes:
        """The Merkle root of the first ``size`` entries (default: all)."""
        ...

    def size(self) -> int:
        """Number of entries."""
        ...


@dataclass(frozen=True)
class WitnessedLog:
    """A ledger's checkpoints as notes, and the cosignatures witnesses posted for them."""

    ledger: SignedLog

    @property
    def origin(self) -> str:
        """``veracity.local/veracity/<log id>``."""
        return log_origin(ORIGIN_NAME, self.ledger.log_id)

    @property
    def verifier(self) -> NoteVerifier:
        """The current log key's note verifier key (type 0x01, name = origin)."""
        return NoteVerifier.for_key(self.origin, self.ledger.root_public_key)

    def _log_verifiers(self) -> list[NoteVerifier]:
        """Every log key's note verifier key (the log's own signature lines)."""
        return [NoteVerifier.for_key(self.origin, key) for key in self.ledger.log_keys()]

    def _is_log_signature(self, signature: NoteSignature) -> bool:
        return any(verifier.matches(signature) for verifier in self._log_verifiers())

    def _signing_keys(self) -> list[SigningKey]:
        """The log keys this process holds that sign notes now: current, then the overlap."""
        valid = self.ledger.log_keys_at(self.ledger.size())
        held = [self.ledger.root_key, *self.ledger.overlap_keys]
        keys: list[SigningKey] = []
        for key in held:
            if key is not None and key.public in valid and key not in keys:
                keys.append(key)
        return keys

    def _checkpoint(self, size: int | None) -> Checkpoint:
        checkpoints = self.ledger.checkpoints()
        if size is None:
            if not checkpoints:
                raise NotFound("no checkpoint has been signed yet")
            return checkpoints[-1]
        for checkpoint in checkpoints:
            if checkpoint.tree_size == size:
                return checkpoint
        raise NotFound(f"no checkpoint of size {size}")

    def text(self, checkpoint: Checkpoint) -> str:
        """The tlog-checkpoint text of ``checkpoint``."""
        return CheckpointText(
            self.origin, checkpoint.tree_size, bytes.fromhex(checkpoint.root_hash)
        ).text()

    def note(self, size: int | None = None, *, cosigned: bool = True) -> Note:
        """The checkpoint of ``size`` entries (default: the newest) as a signed note.

        Raises
        ------
        NotFound
            If there is no such checkpoint.
        ConfigError
            If the ledger was opened without the log's signing key.
        SignatureError
            If the stored checkpoint is not the log's (signature, log id or root): the
            database was edited; nothing is signed.
        """
        keys = self._signing_keys()
        if not keys:
            raise ConfigError("serving checkpoint notes needs the log's signing key")
        checkpoint = self._checkpoint(size)
        self._check_signed(checkpoint)
        if checkpoint.log_id != self.ledger.log_id:
            raise SignatureError(f"the checkpoint of size {checkpoint.tree_size} is another log's")
        if self.ledger.root(checkpoint.tree_size).hex() != checkpoint.root_hash:
            raise SignatureError(
                f"the checkpoint of size {checkpoint.tree_size} is not the tree's root; "
                "run `veracity ledger verify`"
            )
        text = self.text(checkpoint)
        signatures = tuple(sign_note(key, self.origin, text) for key in keys)
        stored = self._rows(checkpoint.tree_size)
        for signature in signatures:
            if signature not in stored:
                self._store(checkpoint.tree_size, signature, 0)
        note = Note(text, signatures)
        if cosigned:
            others = [s for s in stored if not self._is_log_signature(s)]
            note = note.with_signatures(others)
        return note

    def _check_signed(self, checkpoint: Checkpoint) -> None:
        """The stored checkpoint's own signature is by one of the log's keys.

        Raises
        ------
        SignatureError
            If no log key the identity enrolled signed it.
        """
        for key in self.ledger.log_keys():
            try:
                checkpoint.verify(key)
            except SignatureError:
                continue
            return
        raise SignatureError(
            f"the checkpoint of size {checkpoint.tree_size} is not signed by a log key of this log"
        )

    def bodies(self, start: int, end: int) -> list[bytes]:
        """The exact bytes of entries ``start`` to ``end - 1``, unparsed (a witness checks them)."""
        with store.read_session(self.ledger.engine) as session:
            rows = session.execute(
                select(store.EntryRow.body)
                .where(store.EntryRow.seq >= start, store.EntryRow.seq < end)
                .order_by(store.EntryRow.seq)
            ).scalars()
            return [bytes(body) for body in rows]

    def stored_note(self, size: int) -> Note | None:
        """The note of ``size`` entries as stored (log signature and cosignatures), no key needed.

        ``None`` if the log never signed that note. Nothing here is trusted: check the
        result against a policy.
        """
        signatures = self._rows(size)
        verifiers = self._log_verifiers()
        mine = [s for s in signatures if any(v.matches(s) for v in verifiers)]
        if not mine:
            return None
        others = [s for s in signatures if not any(v.matches(s) for v in verifiers)]
        return Note(self.text(self._checkpoint(size)), (*mine, *others))

    def _store(self, size: int, signature: NoteSignature, timestamp: int) -> bool:
        try:
            with store.write_session(self.ledger.engine) as session:
                session.execute(
                    insert(store.CosignatureRow),
                    [
                        {
                            "tree_size": size,
                            "witness": signature.name,
                            "key_id": signature.key_id,
                            "timestamp": timestamp,
                            "signature": signature.signature,
                        }
                    ],
                )
        except IntegrityError:
            return False
        return True

    def _rows(self, size: int) -> list[NoteSignature]:
        with store.read_session(self.ledger.engine) as session:
            rows = session.execute(
                select(store.CosignatureRow)
                .where(store.CosignatureRow.tree_size == size)
                .order_by(store.CosignatureRow.witness, store.CosignatureRow.key_id)
            ).scalars()
            return [
                NoteSignature(row.witness, bytes(row.key_id), bytes(row.signature)) for row in rows
            ]

    def cosignatures(self, size: int) -> list[NoteSignature]:
        """The stored cosignatures of the checkpoint of ``size`` entries, by witness name."""
        return [s for s in self._rows(size) if not self._is_log_signature(s)]

    def notes(self) -> list[Note]:
        """Every checkpoint as a note with its cosignatures, oldest first."""
        return [self.note(c.tree_size) for c in self.ledger.checkpoints()]

    def add_cosignature(
        self, size: int, signature: NoteSignature, verifier: NoteVerifier, *, site: str
    ) -> bool:
        """Check and store a witness's cosignature; ``False`` if it was already stored.

        Raises
        ------
        InputError
            If the vkey is not a cosignature key named for ``site``'s witness, or the
            signature line is not by that key.
        NotFound
            If there is no checkpoint of ``size`` entries.
        SignatureError
            If the cosignature does not verify over that checkpoint.
        """
        if verifier.sig_type != SIG_COSIGNATURE_V1:
            raise InputError("a witness key is a cosignature/v1 key (type 0x04)")
        if verifier.name != witness_name(site):
            raise InputError(f"site {site!r} cosigns as {witness_name(site)!r}")
        if not verifier.matches(signature):
            raise InputError("the cosignature is not by the given witness key")
        text = self.text(self._checkpoint(size))
        timestamp = verifier.verify(text, signature)
        return self._store(size, signature, int(timestamp or 0))
