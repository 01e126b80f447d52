"""The :class:`Ledger` facade: append, checkpoint, read, prove, verify, export, provenance.

The class is built in layers, one responsibility per module, each a base of the next:
:mod:`.ledger_reads` (the shared state: engine, root key, Merkle cache, the entries this
process signed; genesis, log id, log keys and the read queries), :mod:`.ledger_proofs`
(the Merkle cache: roots, inclusion and consistency proofs), :mod:`.ledger_checkpoints`
(verify-before-sign, sign, record, and after a commit) and :mod:`.ledger_appends` (the
transaction and append path). This module adds opening and creating a ledger and the glue to
the offline verifier (:mod:`.verify`), export (:mod:`.bundle_export`) and provenance. The
work below them is done in modules of their own: :mod:`.appending` (prepare, check and write
events), :mod:`.keyview` (key lookups while appending), :mod:`.checkpointing`
(verify-before-sign and the recorded checkpoint), :mod:`.reads` (read queries) and
:mod:`.proofs` (inclusion and consistency proofs).

Appends are linear under concurrent writers and processes: each runs in a transaction that
holds the store's write lock (``BEGIN IMMEDIATE`` / ``pg_advisory_xact_lock``) while it
reads the head, and the schema itself refuses a fork. Everything about an append is
checked before anything is written: the payload schema, the actor's enrolled key at that
seq, its role, the signature (made here with ``signer=`` or passed in as base64 with
``signature=``), the key rules for ``key.*`` events and every receipt of
``round.completed``. A caller that must commit its own rows together with the entry opens
:meth:`Ledger.transaction` and passes the session as ``session=``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import select

from veracity.crypto.keys import SigningKey, VerifyKey
from veracity.errors import ConfigError, InputError
from veracity.ledger import reads, store
from veracity.ledger.appending import EventRequest, write_genesis
from veracity.ledger.checkpoint import Checkpoint
from veracity.ledger.entry import NO_LOG_ID, parse_body
from veracity.ledger.ledger_appends import LedgerAppends
from veracity.ledger.merkle import leaf_hash
from veracity.ledger.verify import RootSignatures, VerifyReport, verify_database

#: ``EventRequest`` is defined in :mod:`.appending` and imported from here by its callers.
__all__ = ["Ledger", "EventRequest"]


class Ledger(LedgerAppends):
    """A signed, hash-chained, Merkle-proved ledger in a SQL database.

    Open one with :meth:`open` (existing ledger) or :meth:`init` (new one, writes genesis).
    ``root_key`` is needed to sign checkpoints; with it, a checkpoint is signed
    automatically whenever ``checkpoint_every`` entries have passed since the last one.
    """

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls, url: str, *, root_key: SigningKey | None = None, checkpoint_every: int = 1000
    ) -> Ledger:
        """Open an existing ledger.

        Raises
        ------
        ConfigError
            If there is no database, no ledger schema at the current revision, or no
            genesis entry, or ``root_key`` is not the ledger's root.
        """
        path = store.sqlite_path(url)
        if path is not None and not path.exists():
            raise ConfigError(f"no ledger database at {path}; run `veracity ledger init`")
        engine = store.create_engine(url)
        try:
            revision = store.current_revision(engine)
        except sa.exc.DatabaseError as err:
            engine.dispose()
            raise ConfigError(f"cannot read the database: {str(err).splitlines()[0]}") from err
        if revision is None:
            engine.dispose()
            raise ConfigError("the database holds no ledger; run `veracity ledger init`")
        if revision != store.head_revision():
            engine.dispose()
            raise ConfigError(
                f"the ledger schema is at {revision}, this version needs "
                f"{store.head_revision()}; run `veracity ledger init` to migrate"
            )
        ledger = cls(engine, url, root_key=root_key, checkpoint_every=checkpoint_every)
        try:
            if root_key is not None:
                genesis = ledger._genesis_body()
                try:
                    enrolled = parse_body(genesis).payload.get("public_key")
                except InputError as err:
                    raise ConfigError(
                        "the genesis entry is unreadable; run `veracity ledger verify`"
                    ) from err
                if enrolled != root_key.public.pem() and root_key.public != ledger.root_public_key:
                    raise ConfigError(
                        "the given key is not this ledger's current log key (another log's, "
                        "or one rotated away)"
                    )
        except BaseException:
            engine.dispose()
            raise
        return ledger

    @classmethod
    def init(
        cls,
        url: str,
        *,
        root_key: SigningKey,
        identity_key: SigningKey | None = None,
        now: datetime | None = None,
        checkpoint_every: int = 1000,
        create: bool = True,
    ) -> Ledger:
        """Create (or migrate) the ledger tables and write genesis if there is none.

        Genesis is the ``key.enrolled`` of the log key ``root_key`` (name ``coordinator``,
        role ``root``), signed by it at position 0; with ``identity_key`` (the offline
        identity, :mod:`veracity.ledger.log_key`) it names that key and carries its
        signature of the log key. Without one, ``root_key`` is its own identity. With
        ``create=False`` a missing genesis is an error (the identity is not at hand).

        Raises
        ------
        ConfigError
            If the ledger already has a genesis for another root key.
        """
        engine = store.create_engine(url)
        try:
            store.upgrade(engine)
        except sa.exc.DatabaseError as err:
            engine.dispose()
            raise ConfigError(f"cannot create the ledger: {str(err).splitlines()[0]}") from err
        ledger = cls(engine, url, root_key=root_key, checkpoint_every=checkpoint_every)
        try:
            with store.write_session(engine) as session:
                row = session.get(store.EntryRow, 0)
                if row is None:
                    if not create:
                        raise ConfigError(
                            "the database holds no ledger, and a new one needs the identity key"
                        )
                    write_genesis(session, root_key, now, identity_key)
                else:
                    genesis = parse_body(bytes(row.body)).payload
                    identity = genesis.get("identity_key", genesis["public_key"])
                    if identity_key is not None and identity != identity_key.public.pem():
                        raise ConfigError("this ledger was created under another identity key")
            if ledger.root_public_key != root_key.public:
                raise ConfigError(
                    "this ledger was created under another root key (or its log key was "
                    "rotated since: use the current log key)"
                )
        except BaseException:
            engine.dispose()
            raise
        return ledger

    # ------------------------------------------------------------------ verify, export

    def verify(
        self,
        trusted_root: VerifyKey,
        *,
        known_checkpoints: Sequence[Checkpoint] = (),
        root_signatures: RootSignatures = "all",
        workers: int | None = None,
    ) -> VerifyReport:
        """Recompute and check everything (see :mod:`veracity.ledger.verify`).

        Parameters
        ----------
        trusted_root
            The auditor's pinned root public key (not the one the ledger names).
        known_checkpoints
            Checkpoints the auditor saw before; the ledger must extend each of them.
        root_signatures
            ``"all"`` checks every entry's signature; ``"tail"`` skips the root's own
            per-entry signatures below the newest checkpoint (which already commits to
            them) and still checks every site signature and receipt.
        workers
            Processes for the entry checks (default: one per CPU for large ledgers).

        Raises
        ------
        LedgerIntegrityError
            Naming the first bad seq (where determinable) and what was wrong.
        """
        with store.read_session(self.engine) as session:
            size = self._size(session)
            events = self._key_events(session, size)
            listed = reads.stored_checkpoints(session)
            genesis = session.execute(
                select(store.EntryRow.body).where(store.EntryRow.seq == 0)
            ).scalar_one_or_none()
        # (A missing genesis is reported by the checks of entry 0.)
        genesis_id = NO_LOG_ID if genesis is None else leaf_hash(bytes(genesis))
        return verify_database(
            self.url,
            size=size,
            trusted_root=trusted_root,
            key_events=events,
            checkpoints=listed,
            known_checkpoints=known_checkpoints,
            root_signatures=root_signatures,
            workers=workers,
            log_id=genesis_id,
        )

    def export_bundle(self, path: Path) -> dict[str, Any]:
        """Write every entry, checkpoint and key event into one offline-verifiable file.

        The file appears atomically (written beside it, then renamed).

        Returns
        -------
        dict
            ``{"path", "entries", "checkpoints", "bytes", "sha256"}``.
        """
        from veracity.ledger.bundle_export import export_bundle

        return export_bundle(self.engine, path, log_id=self.log_id, notes=self._bundle_notes)

    def _bundle_notes(self, sizes: Sequence[int]) -> list[str]:
        """The newest two checkpoints as signed notes with their cosignatures (rendered)."""
        from veracity.ledger.witnessed import WitnessedLog

        log = WitnessedLog(self)
        notes = (log.stored_note(size) for size in sizes[-2:])
        return [note.render() for note in notes if note is not None]

    def provenance(self, model_hash: str) -> dict[str, Any]:
        """W3C PROV-JSON of one model's lineage, derived from the entries.

        Raises
        ------
        InputError
            If no entry mentions the model.
        """
        from veracity.ledger.provenance import build_provenance

        return build_provenance(self, model_hash)
