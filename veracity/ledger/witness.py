"""A site's witness: cosign a checkpoint only if it extends everything cosigned before.

This is C2SP tlog-witness's ``add-checkpoint`` logic, without the transport (the site
agent fetches and posts, :mod:`veracity.client.witness`). :meth:`Witness.witness` is given
the log's newest checkpoint note, a consistency proof from the size the witness last
cosigned, and the entries in between, and:

1. checks the note's signature under the pinned log key, and that its origin is the log's;
2. refuses a checkpoint smaller than the one it cosigned (a rollback); at the same size
   the roots must be equal;
3. checks the RFC 9162 consistency proof from its last cosigned tree; a failure means the
   log signed two trees that cannot both be true: both notes are kept as evidence
   (``evidence/``) and the witness refuses;
4. recomputes the new root from its stored compact range (the right edge of the old tree)
   and the entries' leaf hashes, so the entries it reads are exactly the tree's;
5. scans those entries' ``key.*`` events for its own site's name: an enrolment of a key
   the site does not hold, a second enrolment of its current key, a revocation or any
   other key event about the site is refused, loudly (the log rotated or re-enrolled the
   site without it: the root impersonating a site);
   The same scan follows the log key: genesis names the log's identity key and first log
   key; a ``key.rotated`` of the log key is accepted only when the identity key signed it
   (and the outgoing log key handed over), and is logged; an identity-signed
   ``key.recovered`` of the log key (it was lost) replaces every older log key and is
   logged at ERROR; an identity-signed retirement
   (``key.revoked`` of an old log key) ends the overlap. The note must be signed by a log
   key valid after those entries: a retired log key's note is refused;
6. stores the new state atomically (temporary file, fsync, rename), then signs a
   ``cosignature/v1``.

State is one JSON file per witness directory; nothing is stored on refusal, so a refused
history stays refused.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veracity.contracts.events import ROOT_ACTOR
from veracity.crypto.keys import SigningKey, VerifyKey
from veracity.errors import (
    ConfigError,
    CryptoError,
    InputError,
    LedgerIntegrityError,
    ProofError,
    SignatureError,
)
from veracity.ledger.entry import parse_body
from veracity.ledger.keyring import check_genesis_identity
from veracity.ledger.merkle import EMPTY_ROOT, leaf_hash, node_hash, verify_consistency
from veracity.ledger.note import (
    SIG_COSIGNATURE_V1,
    CheckpointText,
    Note,
    NoteSignature,
    NoteVerifier,
    cosign,
    decode_b64,
    encode_b64,
)
from veracity.ledger.possession import verify_identity, verify_rotation

__all__ = [
    "CompactRange",
    "WitnessState",
    "Witness",
    "STATE_FILE",
    "WITNESS_KEY_NAME",
    "read_site_witness_vkey",
]

log = logging.getLogger(__name__)

STATE_FILE = "witness-state.json"
#: The witness key in a site's key directory: ``_witness.pem``, ``.pub`` and ``.vkey``
#: (no site is called ``_witness``: site names start with a letter or digit).
WITNESS_KEY_NAME = "_witness"
_KEY_MARKER = b'"kind":"key.'
_ROTATION_MARKER = b'"kind":"key.rotated"'
_RECOVERY_MARKER = b'"kind":"key.recovered"'
_LOG_KEY_MARKER = b'"name":"coordinator"'


@dataclass
class CompactRange:
    """The right edge of an RFC 9162 tree: one perfect-subtree hash per set bit of ``size``."""

    size: int = 0
    hashes: list[bytes] = field(default_factory=list)

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash."""
        current, k = leaf, self.size
        while k & 1:
            current = node_hash(self.hashes.pop(), current)
            k >>= 1
        self.hashes.append(current)
        self.size += 1

    def root(self) -> bytes:
        """The tree's root (SHA-256 of nothing for the empty tree)."""
        if not self.hashes:
            return EMPTY_ROOT
        root = self.hashes[-1]
        for item in reversed(self.hashes[:-1]):
            root = node_hash(item, root)
        return root


@dataclass
class WitnessState:
    """What the witness cosigned last, and what it knows of its site's key."""

    origin: str
    tree_size: int = 0
    root_hash: bytes = EMPTY_ROOT
    compact: CompactRange = field(default_factory=CompactRange)
    note: str = ""
    enrolled_key: str | None = None  # hex of the site key the log has enrolled
    #: Hex of the log's identity key (from genesis); ``None`` before genesis was seen.
    identity_key: str | None = None
    #: Hex of the log keys that may sign now, current last (empty: only the pinned one).
    log_keys: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The JSON document stored on disk."""
        return {
            "origin": self.origin,
            "tree_size": self.tree_size,
            "root_hash": encode_b64(self.root_hash),
            "compact": [encode_b64(h) for h in self.compact.hashes],
            "note": self.note,
            "enrolled_key": self.enrolled_key,
            "identity_key": self.identity_key,
            "log_keys": list(self.log_keys),
        }

    @classmethod
    def from_json(cls, document: Any) -> WitnessState:
        """Read :meth:`to_json` output.

        Raises
        ------
        InputError
            If the document is malformed or its compact range does not give its root.
        """
        try:
            size = int(document["tree_size"])
            compact = CompactRange(size, [decode_b64(h, "a hash") for h in document["compact"]])
            state = cls(
                origin=str(document["origin"]),
                tree_size=size,
                root_hash=decode_b64(document["root_hash"], "the root hash"),
                compact=compact,
                note=str(document["note"]),
                enrolled_key=document["enrolled_key"],
                identity_key=document.get("identity_key"),
                log_keys=[str(k) for k in document.get("log_keys", [])],
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"the witness state is malformed: {err}") from err
        if len(compact.hashes) != bin(size).count("1") or compact.root() != state.root_hash:
            raise InputError("the witness state's compact range does not give its root")
        return state


@dataclass
class _LogKeys:
    """The log key as a witness follows it through the entries (hex keys)."""

    identity: str | None
    log_keys: list[str]
    origin: str

    @property
    def log_id(self) -> str:
        """The log id the origin ends with."""
        return self.origin.rsplit("/", 1)[-1]


def read_site_witness_vkey(site_dir: Path) -> NoteVerifier:
    """The witness verifier key a site directory publishes (``keys/_witness.vkey``).

    Raises
    ------
    ConfigError
        If the site has no witness key yet (``veracity site witness-key`` makes one).
    InputError
        If the file is not a cosignature vkey.
    """
    path = site_dir / "keys" / f"{WITNESS_KEY_NAME}.vkey"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(
            f"{site_dir} has no witness key; run `veracity site witness-key --data-dir {site_dir}`"
        ) from err
    verifier = NoteVerifier.parse(text)
    if verifier.sig_type != SIG_COSIGNATURE_V1:
        raise InputError(f"{path} is not a cosignature/v1 key")
    return verifier


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class Witness:
    """The witness of site ``site`` for the log whose note key is ``log``.

    Parameters
    ----------
    directory
        Where the state file and the evidence live.
    site
        The site's enrolled name (its key events are watched).
    key
        The witness's own signing key (not the site's statement key).
    name
        The witness's key name (``<site>.witness.veracity.local``).
    log
        The log's pinned note verifier key; its name is the origin.
    site_keys
        The statement public keys this site holds (an enrolment of any other is refused).
    clock
        Seconds since the epoch (the cosignature's time).
    """

    def __init__(
        self,
        directory: Path,
        *,
        site: str,
        key: SigningKey,
        name: str,
        log: NoteVerifier,
        site_keys: Sequence[VerifyKey],
        clock: Callable[[], float],
    ) -> None:
        self.directory = directory
        self.site = site
        self.key = key
        self.name = name
        self.log = log
        self.site_keys = {k.raw.hex() for k in site_keys}
        self.clock = clock

    @property
    def verifier(self) -> NoteVerifier:
        """The cosignature verifier key of this witness."""
        return NoteVerifier.for_key(self.name, self.key.public, sig_type=SIG_COSIGNATURE_V1)

    @property
    def state_path(self) -> Path:
        """The state file."""
        return self.directory / STATE_FILE

    def state(self) -> WitnessState:
        """The stored state (a fresh one for a first run).

        Raises
        ------
        InputError
            If the state file is unreadable or for another log.
        """
        try:
            document = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return WitnessState(origin=self.log.name)
        except (OSError, ValueError) as err:
            raise InputError(f"cannot read the witness state {self.state_path}: {err}") from err
        state = WitnessState.from_json(document)
        if state.origin != self.log.name:
            raise InputError(f"the witness state is for {state.origin}, not {self.log.name}")
        return state

    def keep_evidence(self, *notes: str) -> list[Path]:
        """Store notes that cannot all be true; returns their paths."""
        paths = []
        for text in notes:
            body = Note.parse(text).text
            checkpoint = CheckpointText.parse(body)
            stem = f"{checkpoint.tree_size}-{checkpoint.root_hash.hex()[:16]}"
            path = self.directory / "evidence" / f"{stem}.note"
            if not path.exists():
                write_atomic(path, text.encode("utf-8"))
            paths.append(path)
        return paths

    def witness(
        self, note_text: str, proof: Sequence[bytes], entries: Sequence[bytes]
    ) -> NoteSignature:
        """Check a checkpoint against everything cosigned before and cosign it.

        ``proof`` is the consistency proof from the stored size (empty from size 0 or at
        the same size); ``entries`` are the exact bytes of the entries from the stored
        size up to the checkpoint's.

        Raises
        ------
        SignatureError
            If the note is not signed by the pinned log key for its origin.
        ProofError
            If the checkpoint is older than, or inconsistent with, the last one cosigned
            (both notes are kept in ``evidence/``), or the entries are not the tree's.
        LedgerIntegrityError
            If an entry in between is a key event about this site that the site did not
            make (enrolment of a foreign key, re-enrolment, revocation).
        """
        note = Note.parse(note_text)
        checkpoint = CheckpointText.parse(note.text)
        if checkpoint.origin != self.log.name:
            raise SignatureError(f"the checkpoint is of {checkpoint.origin}, not {self.log.name}")
        state = self.state()
        signed = self._log_signatures(note, state.log_keys)  # step 1
        if not signed and (
            checkpoint.tree_size <= state.tree_size
            or not any(
                (_ROTATION_MARKER in body or _RECOVERY_MARKER in body) and _LOG_KEY_MARKER in body
                for body in entries
            )
        ):
            # Only a log key rotated in the entries served may have signed it; they are
            # checked against the note's root before that key is trusted (steps 4 and 5).
            raise SignatureError(f"the checkpoint is not signed by the log key {self.log.name}")
        logged = Note(note.text, tuple(signed or note.signatures)).render()
        if checkpoint.tree_size < state.tree_size:  # step 2
            raise ProofError(
                f"the log offers size {checkpoint.tree_size}, older than the size "
                f"{state.tree_size} this witness cosigned: a rollback"
            )
        if checkpoint.tree_size == state.tree_size and state.tree_size:
            if checkpoint.root_hash != state.root_hash:
                paths = self.keep_evidence(state.note, logged)
                raise ProofError(
                    f"the log signed two roots for size {checkpoint.tree_size}: "
                    f"equivocation, evidence in {paths[0].parent}"
                )
        elif state.tree_size:  # step 3
            try:
                verify_consistency(
                    state.tree_size,
                    checkpoint.tree_size,
                    proof,
                    state.root_hash,
                    checkpoint.root_hash,
                )
            except ProofError as err:
                if not signed:
                    raise SignatureError(
                        f"the checkpoint is not signed by the log key {self.log.name}"
                    ) from err
                paths = self.keep_evidence(state.note, logged)
                log.error(
                    "witness %s: the log's checkpoint of size %d is inconsistent with the "
                    "one of size %d this witness cosigned (%s); evidence in %s",
                    self.name,
                    checkpoint.tree_size,
                    state.tree_size,
                    err,
                    paths[0].parent,
                )
                raise ProofError(
                    f"the checkpoint of size {checkpoint.tree_size} is inconsistent with the "
                    f"one of size {state.tree_size} this witness cosigned: {err}; "
                    f"evidence in {paths[0].parent}"
                ) from err
        expected = checkpoint.tree_size - state.tree_size
        if len(entries) != expected:
            raise ProofError(f"expected {expected} entries, the log served {len(entries)}")
        compact = CompactRange(state.compact.size, list(state.compact.hashes))
        key_events: list[tuple[int, bytes]] = []
        for offset, body in enumerate(entries):  # step 4
            compact.append(leaf_hash(body))
            if _KEY_MARKER in body:
                key_events.append((state.tree_size + offset, body))
        if compact.root() != checkpoint.root_hash:
            raise ProofError("the entries the log served are not its tree's")
        enrolled = state.enrolled_key
        keys = _LogKeys(state.identity_key, list(state.log_keys), checkpoint.origin)
        for seq, body in key_events:  # step 5
            if not self._check_log_key_event(seq, body, keys):
                enrolled = self._check_key_event(seq, body, enrolled)
        signed = self._log_signatures(note, keys.log_keys)
        if not signed:
            message = (
                f"witness {self.name} refuses to cosign: the checkpoint of size "
                f"{checkpoint.tree_size} is not signed by a log key the log's identity "
                "enrolled and did not retire"
            )
            log.error("%s", message)
            raise SignatureError(message)
        logged = Note(note.text, tuple(signed)).render()
        new_state = WitnessState(
            origin=checkpoint.origin,
            tree_size=checkpoint.tree_size,
            root_hash=checkpoint.root_hash,
            compact=compact,
            note=logged,
            enrolled_key=enrolled,
            identity_key=keys.identity,
            log_keys=keys.log_keys,
        )
        write_atomic(  # step 6
            self.state_path, json.dumps(new_state.to_json(), sort_keys=True).encode("utf-8")
        )
        return cosign(self.key, self.name, note.text, timestamp=int(self.clock()))

    def _log_signatures(self, note: Note, log_keys: Sequence[str]) -> list[NoteSignature]:
        """The note's signatures by the log keys ``log_keys`` (hex; empty: the pinned key).

        Raises
        ------
        SignatureError
            If a signature line of one of those keys does not verify.
        """
        verifiers = (
            [
                NoteVerifier.for_key(self.log.name, VerifyKey.from_raw(bytes.fromhex(k)))
                for k in log_keys
            ]
            if log_keys
            else [self.log]
        )
        signed = []
        for signature in note.signatures:
            for verifier in verifiers:
                if verifier.matches(signature):
                    verifier.verify(note.text, signature)
                    signed.append(signature)
                    break
        return signed

    def _check_log_key_event(self, seq: int, body: bytes, keys: _LogKeys) -> bool:
        """Follow the log key: genesis, identity-signed rotations and retirements.

        Returns whether the entry was a key event of the log key.
        """
        entry = parse_body(body)
        payload = entry.payload
        if payload.get("name") != ROOT_ACTOR or not entry.kind.startswith("key."):
            return False
        refused = f"witness {self.name} refuses to cosign: entry {seq}"
        try:
            if seq == 0:
                log_key = VerifyKey.from_pem(str(payload["public_key"]))
                check_genesis_identity(payload, log_key)
                identity = payload.get("identity_key")
                keys.identity = (
                    log_key if identity is None else VerifyKey.from_pem(str(identity))
                ).raw.hex()
                keys.log_keys = [log_key.raw.hex()]
                return True
            if keys.identity is None or not keys.log_keys:
                raise SignatureError("this witness never saw the log's genesis (its identity key)")
            identity_key = VerifyKey.from_raw(bytes.fromhex(keys.identity))
            current = VerifyKey.from_raw(bytes.fromhex(keys.log_keys[-1]))
            if entry.kind == "key.rotated":
                incoming = VerifyKey.from_pem(str(payload["public_key"]))
                verify_identity(
                    identity_key,
                    log_id=keys.log_id,
                    action="rotated",
                    key_id=incoming.key_id,
                    previous=current.key_id,
                    signature=payload.get("identity_signature"),
                )
                verify_rotation(
                    current,
                    log_id=keys.log_id,
                    name=ROOT_ACTOR,
                    incoming=incoming,
                    signature=str(payload["outgoing_signature"]),
                )
                keys.log_keys.append(incoming.raw.hex())
                log.warning(
                    "witness %s: the log key rotated at entry %d to %s, signed by the log's "
                    "identity key and handed over by the outgoing log key: accepted",
                    self.name,
                    seq,
                    incoming.key_id[:16],
                )
            elif entry.kind == "key.recovered":
                incoming = VerifyKey.from_pem(str(payload["public_key"]))
                verify_identity(
                    identity_key,
                    log_id=keys.log_id,
                    action="recovered",
                    key_id=incoming.key_id,
                    previous=current.key_id,
                    signature=payload.get("identity_signature"),
                )
                keys.log_keys = [incoming.raw.hex()]  # the lost keys sign nothing after
                log.error(
                    "witness %s: the log key %s was RECOVERED at entry %d (replaced without "
                    "a hand-over, signed by the log's identity key; reason: %s): accepted, "
                    "every older log key is refused from here on",
                    self.name,
                    current.key_id[:16],
                    seq,
                    payload.get("reason"),
                )
            elif entry.kind == "key.revoked":
                key_id = str(payload["key_id"])
                verify_identity(
                    identity_key,
                    log_id=keys.log_id,
                    action="retired",
                    key_id=key_id,
                    signature=payload.get("identity_signature"),
                )
                retired = [
                    k
                    for k in keys.log_keys[:-1]
                    if VerifyKey.from_raw(bytes.fromhex(k)).key_id == key_id
                ]
                current_id = VerifyKey.from_raw(bytes.fromhex(keys.log_keys[-1])).key_id
                if key_id == current_id:
                    raise InputError(f"the current log key {key_id[:16]} cannot be retired")
                if retired:
                    keys.log_keys.remove(retired[0])
                # Not listed: a key a recovery already replaced (it signs nothing since),
                # which the identity may still retire to close its overlap; nothing to do.
                log.warning(
                    "witness %s: the log's identity retired the log key %s at entry %d%s",
                    self.name,
                    key_id[:16],
                    seq,
                    "" if retired else " (replaced by a recovery before: it signed nothing since)",
                )
            else:
                raise InputError(f"a {entry.kind} of the log key is never valid")
        except (CryptoError, SignatureError, InputError, KeyError) as err:
            message = f"{refused} changes the log key without the log's identity: {err}"
            log.error("%s", message)
            raise LedgerIntegrityError(message, seq=seq) from err
        return True

    def _check_key_event(self, seq: int, body: bytes, enrolled: str | None) -> str | None:
        entry = parse_body(body)
        payload = entry.payload
        if not entry.kind.startswith("key.") or payload.get("name") != self.site:
            return enrolled
        refused = f"witness {self.name} refuses to cosign: entry {seq}"
        if entry.kind not in ("key.enrolled", "key.rotated", "key.recovered"):
            message = f"{refused} is a {entry.kind} of site {self.site!r} the site did not make"
        else:
            try:
                key = VerifyKey.from_pem(str(payload.get("public_key", ""))).raw.hex()
            except CryptoError as err:
                raise LedgerIntegrityError(f"{refused} enrols an unreadable key", seq=seq) from err
            if key not in self.site_keys:
                message = f"{refused} enrols a key for {self.site!r} that the site does not hold"
            elif key == enrolled:
                message = f"{refused} re-enrols {self.site!r}'s key without the site"
            else:
                return key
        log.error("%s", message)
        raise LedgerIntegrityError(message, seq=seq)
