"""Evidence of equivocation: two checkpoint notes, signed by one log key, that cannot both be true.

Two notes of one origin, both signed by the log key, are inconsistent when

* they have the same size and different roots, or
* they have different sizes and a tree with the larger one's root implies a different root
  at the smaller size: a consistency proof from ``(small size, implied root)`` to the
  larger note verifies while the implied root is not the smaller note's root. The proof
  is taken from a copy of the log (a database) that serves the larger note; anyone can
  check it with the two notes and the log's vkey alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from veracity.errors import InputError, ProofError, VerificationError
from veracity.ledger.merkle import verify_consistency
from veracity.ledger.note import CheckpointText, Note, NoteVerifier, verify_note

__all__ = ["Equivocation", "find_equivocation"]


@dataclass(frozen=True)
class Equivocation:
    """Proof that the log signed two inconsistent checkpoints."""

    log: NoteVerifier
    notes: tuple[str, str]
    reason: str
    implied_root: bytes | None = None
    proof: tuple[bytes, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The evidence as a JSON document."""
        document: dict[str, Any] = {
            "equivocation": True,
            "log_vkey": self.log.vkey(),
            "origin": self.log.name,
            "notes": list(self.notes),
            "reason": self.reason,
        }
        if self.implied_root is not None:
            document["consistency"] = {
                "implied_old_root": self.implied_root.hex(),
                "proof": [item.hex() for item in self.proof],
            }
        return document


def _signed_by(note: Note, logs: Sequence[NoteVerifier]) -> NoteVerifier:
    checkpoint = CheckpointText.parse(note.text)
    candidates = [log for log in logs if log.name == checkpoint.origin]
    if not candidates:
        raise VerificationError(f"no trusted log key for the origin {checkpoint.origin}")
    return verify_note(Note(note.text, note.signatures), candidates)[0]


def find_equivocation(
    a: str,
    b: str,
    logs: Sequence[NoteVerifier],
    *,
    root_at: Any = None,
    proof_between: Any = None,
) -> Equivocation:
    """Show that notes ``a`` and ``b`` cannot both be true.

    ``root_at(size)`` and ``proof_between(old, new)`` read a copy of the log that gives the
    larger note's root; they are needed only when the sizes differ.

    Raises
    ------
    VerificationError
        If a note is not signed by a trusted log key, the notes are of different logs or
        keys, or they are consistent (or nothing shows that they are not).
    """
    note_a, note_b = Note.parse(a), Note.parse(b)
    log_a, log_b = _signed_by(note_a, logs), _signed_by(note_b, logs)
    if log_a != log_b:
        raise VerificationError("the notes are signed by different log keys")
    first, second = CheckpointText.parse(note_a.text), CheckpointText.parse(note_b.text)
    texts = (note_a.render(), note_b.render())
    if first.tree_size == second.tree_size:
        if first.root_hash == second.root_hash:
            raise VerificationError("the notes are the same tree")
        return Equivocation(log_a, texts, f"two roots signed for size {first.tree_size}")
    small, large = sorted((first, second), key=lambda c: c.tree_size)
    if root_at is None or proof_between is None:
        raise VerificationError("notes of different sizes need a copy of the log to compare (--db)")
    if root_at(large.tree_size) != large.root_hash:
        raise VerificationError(
            f"the given log does not hold the tree of the note of size {large.tree_size}"
        )
    implied = root_at(small.tree_size)
    if implied == small.root_hash:
        raise VerificationError("the notes are consistent")
    proof = tuple(proof_between(small.tree_size, large.tree_size))
    try:
        verify_consistency(small.tree_size, large.tree_size, proof, implied, large.root_hash)
    except (ProofError, InputError) as err:  # pragma: no cover - the log's own proof
        raise VerificationError(f"the log's consistency proof does not verify: {err}") from err
    return Equivocation(
        log_a,
        texts,
        f"the tree of size {large.tree_size} has another root at size {small.tree_size} "
        "than the note of that size",
        implied_root=implied,
        proof=proof,
    )
