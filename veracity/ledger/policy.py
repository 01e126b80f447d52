"""C2SP tlog-policy: which log and witness keys an auditor trusts, and the quorum.

The file is line based (``#`` comments and blank lines ignored)::

    log <vkey> [<url>]
    witness <name> <vkey> [<url>]
    group <name> all|any|<k> <member>...
    quorum <name>|none

A checkpoint meets the policy when one listed log signed it (the vkey's name is the
origin line) and the quorum group is witnessed: a witness witnesses by a valid
``cosignature/v1`` on the checkpoint, a group by at least ``k`` of its members.
:meth:`Policy.check` does that and says who cosigned, when.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from veracity.errors import InputError, SignatureError
from veracity.ledger.note import (
    SIG_COSIGNATURE_V1,
    SIG_ED25519,
    CheckpointText,
    Note,
    NoteVerifier,
)

__all__ = ["Policy", "PolicyWitness", "Group", "WitnessedCheckpoint", "MAX_POLICY_ITEMS"]

#: Logs, witnesses and groups a policy may list (the spec recommends supporting 32 each).
MAX_POLICY_ITEMS = 256
_NONE = "none"


@dataclass(frozen=True)
class PolicyWitness:
    """A named witness: its cosignature verifier key and optional URL."""

    name: str
    verifier: NoteVerifier
    url: str | None = None


@dataclass(frozen=True)
class Group:
    """``k`` of ``members`` (witness or group names) must witness."""

    name: str
    threshold: int
    members: tuple[str, ...]


@dataclass(frozen=True)
class WitnessedCheckpoint:
    """A checkpoint that met a policy: its text, the log key, and who cosigned when."""

    checkpoint: CheckpointText
    log: NoteVerifier
    cosigned: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    """A parsed tlog-policy."""

    logs: tuple[tuple[NoteVerifier, str | None], ...]
    witnesses: tuple[PolicyWitness, ...]
    groups: tuple[Group, ...]
    quorum: str

    # ------------------------------------------------------------------ building

    @classmethod
    def build(
        cls,
        *,
        logs: Iterable[NoteVerifier],
        witnesses: Mapping[str, NoteVerifier],
        threshold: int,
        group_name: str = "witnesses",
    ) -> Policy:
        """A policy of the given logs and ``threshold`` of ``witnesses`` (0: ``quorum none``).

        Raises
        ------
        InputError
            If the threshold is not between 0 and the number of witnesses, or a key is
            of the wrong type.
        """
        listed = tuple(PolicyWitness(name, key) for name, key in sorted(witnesses.items()))
        if not 0 <= threshold <= len(listed):
            raise InputError(f"the quorum is between 0 and {len(listed)} witnesses")
        groups: tuple[Group, ...] = ()
        quorum = _NONE
        if threshold:
            groups = (Group(group_name, threshold, tuple(w.name for w in listed)),)
            quorum = group_name
        policy = cls(tuple((log, None) for log in logs), listed, groups, quorum)
        return cls.parse(policy.render())  # one validation path

    def render(self) -> str:
        """The policy file's text."""
        lines = ["# C2SP tlog-policy written by veracity"]
        for log, url in self.logs:
            lines.append(" ".join(["log", log.vkey(), *([url] if url else [])]))
        for witness in self.witnesses:
            parts = ["witness", witness.name, witness.verifier.vkey()]
            lines.append(" ".join([*parts, *([witness.url] if witness.url else [])]))
        for group in self.groups:
            if group.threshold == len(group.members):
                k = "all"
            elif group.threshold == 1:
                k = "any"
            else:
                k = str(group.threshold)
            lines.append(" ".join(["group", group.name, k, *group.members]))
        lines.append(f"quorum {self.quorum}")
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ parsing

    @classmethod
    def parse(cls, data: str | bytes) -> Policy:
        """Parse a tlog-policy file.

        Raises
        ------
        InputError
            On a control character other than tab and newline, an unknown keyword, a
            duplicate key or name, a name used before it is defined, a bad threshold, or
            not exactly one quorum line.
        """
        text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
        if any((ord(c) < 0x20 and c not in "\t\n") or c == "\x7f" for c in text):
            raise InputError("a policy holds no control character other than tab and newline")
        logs: list[tuple[NoteVerifier, str | None]] = []
        witnesses: list[PolicyWitness] = []
        groups: list[Group] = []
        names: set[str] = set()
        keys: set[bytes] = set()
        quorum: str | None = None
        for number, raw in enumerate(text.split("\n"), start=1):
            words = raw.replace("\t", " ").split()
            if not words or words[0].startswith("#"):
                continue
            where = f"policy line {number}"
            keyword, rest = words[0], words[1:]
            if len(logs) + len(witnesses) + len(groups) >= MAX_POLICY_ITEMS:
                raise InputError(f"a policy lists at most {MAX_POLICY_ITEMS} items")
            if keyword == "log":
                if len(rest) not in (1, 2):
                    raise InputError(f"{where}: 'log <vkey> [<url>]'")
                log = _verifier(rest[0], SIG_ED25519, where)
                if log.public_key in keys:
                    raise InputError(f"{where}: this key is listed twice")
                keys.add(log.public_key)
                logs.append((log, rest[1] if len(rest) == 2 else None))
            elif keyword == "witness":
                if len(rest) not in (2, 3):
                    raise InputError(f"{where}: 'witness <name> <vkey> [<url>]'")
                name = rest[0]
                _new_name(name, names, where)
                witness = _verifier(rest[1], SIG_COSIGNATURE_V1, where)
                if witness.public_key in keys:
                    raise InputError(f"{where}: this key is listed twice")
                keys.add(witness.public_key)
                witnesses.append(PolicyWitness(name, witness, rest[2] if len(rest) == 3 else None))
            elif keyword == "group":
                if len(rest) < 3:
                    raise InputError(f"{where}: 'group <name> all|any|<k> <member>...'")
                name, k, members = rest[0], rest[1], tuple(rest[2:])
                for member in members:
                    if member not in names:
                        raise InputError(f"{where}: {member!r} is not defined above")
                if len(set(members)) != len(members):
                    raise InputError(f"{where}: a member is listed twice")
                _new_name(name, names, where)
                groups.append(Group(name, _threshold(k, len(members), where), members))
            elif keyword == "quorum":
                if len(rest) != 1:
                    raise InputError(f"{where}: 'quorum <name>'")
                if quorum is not None:
                    raise InputError(f"{where}: a policy has exactly one quorum line")
                if rest[0] != _NONE and rest[0] not in names:
                    raise InputError(f"{where}: {rest[0]!r} is not defined above")
                quorum = rest[0]
            else:
                raise InputError(f"{where}: unknown keyword {keyword!r}")
        if quorum is None:
            raise InputError("a policy has exactly one quorum line")
        return cls(tuple(logs), tuple(witnesses), tuple(groups), quorum)

    # ------------------------------------------------------------------ checking

    def witness(self, name: str) -> PolicyWitness | None:
        """The witness called ``name``, if listed."""
        return next((w for w in self.witnesses if w.name == name), None)

    def satisfied(self, witnessed: Iterable[str]) -> bool:
        """Whether the quorum holds when exactly the witnesses ``witnessed`` cosigned."""
        done = set(witnessed) & {w.name for w in self.witnesses}
        if self.quorum == _NONE:
            return True
        for group in self.groups:  # groups only reference earlier names
            if sum(member in done for member in group.members) >= group.threshold:
                done.add(group.name)
        return self.quorum in done

    @property
    def required(self) -> str:
        """The quorum in words."""
        if self.quorum == _NONE:
            return "no cosignature"
        for group in self.groups:
            if group.name == self.quorum:
                return f"{group.threshold} of {len(group.members)} ({group.name})"
        return f"witness {self.quorum}"

    def check(self, note: Note) -> WitnessedCheckpoint:
        """Check a checkpoint note: a listed log signed it and the quorum cosigned it.

        Raises
        ------
        InputError
            If the note text is not a checkpoint.
        SignatureError
            If no listed log signed it for its origin, a signature by a listed key does
            not verify, or the cosignatures fall short of the quorum.
        """
        checkpoint = CheckpointText.parse(note.text)
        log: NoteVerifier | None = None
        for candidate, _url in self.logs:
            if candidate.name != checkpoint.origin:
                continue
            for signature in note.signatures:
                if candidate.matches(signature):
                    candidate.verify(note.text, signature)
                    log = candidate
        if log is None:
            raise SignatureError(
                f"checkpoint of {checkpoint.origin} size {checkpoint.tree_size}: "
                "not signed by a log this policy lists"
            )
        cosigned: dict[str, int] = {}
        for witness in self.witnesses:
            for signature in note.signatures:
                if witness.verifier.matches(signature):
                    timestamp = witness.verifier.verify(note.text, signature)
                    cosigned[witness.name] = int(timestamp or 0)
        if not self.satisfied(cosigned):
            have = ", ".join(sorted(cosigned)) or "none"
            raise SignatureError(
                f"checkpoint of size {checkpoint.tree_size} lacks a quorum of cosignatures: "
                f"the policy needs {self.required}, it has {have}"
            )
        return WitnessedCheckpoint(checkpoint, log, cosigned)


def _verifier(vkey: str, sig_type: int, where: str) -> NoteVerifier:
    try:
        verifier = NoteVerifier.parse(vkey)
    except InputError as err:
        raise InputError(f"{where}: {err}") from err
    if verifier.sig_type != sig_type:
        raise InputError(f"{where}: the key must be of signature type 0x{sig_type:02x}")
    return verifier


def _new_name(name: str, names: set[str], where: str) -> None:
    if name == _NONE or name in names:
        raise InputError(f"{where}: the name {name!r} is reserved or already defined")
    names.add(name)


def _threshold(k: str, n: int, where: str) -> int:
    if k == "all":
        return n
    if k == "any":
        return 1
    if not k.isascii() or not k.isdigit() or k.startswith("0") or not 1 <= int(k) <= n:
        raise InputError(f"{where}: the threshold is all, any or a number from 1 to {n}")
    return int(k)
