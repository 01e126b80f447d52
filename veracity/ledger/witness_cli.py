"""``veracity ledger vkey|consistency|verify-consistency|equivocation|policy``.

The commands an outside tool needs to treat the ledger as a C2SP transparency log: the
log's note verifier key, consistency proofs between checkpoint notes, evidence that two
notes cannot both be true, and a tlog-policy file for a network's auditors.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from veracity.errors import ConfigError, InputError, VerificationError
from veracity.ledger.cli import DataDirOption, DbOption, KeyDirOption, _db_url, _key_dir, _read_json
from veracity.ledger.verify_audit import read_text
from veracity.output import FormatOption, OutputFormat, emit_json, emit_table

if TYPE_CHECKING:
    pass

__all__ = ["register"]

VkeyOption = Annotated[
    str | None,
    typer.Option(
        "--vkey",
        envvar="VERACITY_VKEY",
        help="The log's note verifier key (from `veracity ledger vkey`).",
    ),
]


def vkey(
    db: DbOption = None,
    data_dir: DataDirOption = None,
    identity: Annotated[
        bool,
        typer.Option(
            "--identity",
            envvar="VERACITY_IDENTITY",
            help="Print the log's identity key instead (PEM, what `--trust root.pub` holds), "
            "as genesis names it.",
        ),
    ] = False,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Print the current log key as a C2SP note verifier key (name = the checkpoint origin).

    The log key is the one the identity key enrolled last (genesis or a log key rotation),
    read from the entries; `--identity` prints the identity key instead. Nothing here is
    verified: run `veracity ledger verify --trust root.pub` before relying on it. With
    `--format json`: `{"origin", "vkey"}` (or `{"identity_public_key"}`).
    """
    from veracity.ledger.ledger import Ledger
    from veracity.ledger.witnessed import WitnessedLog

    with Ledger.open(_db_url(db, data_dir)) as ledger:
        if identity:
            pem = ledger.identity_public_key.pem()
            if output_format is OutputFormat.JSON:
                emit_json({"identity_public_key": pem})
            else:
                sys.stdout.write(pem)
            return
        verifier = WitnessedLog(ledger).verifier
    if output_format is OutputFormat.JSON:
        emit_json({"origin": verifier.name, "vkey": verifier.vkey()})
    else:
        sys.stdout.write(verifier.vkey() + "\n")


def consistency(
    old: Annotated[int, typer.Option("--old", envvar="VERACITY_OLD", min=1, help="Old size.")],
    new: Annotated[
        int | None,
        typer.Option(
            "--new",
            envvar="VERACITY_NEW",
            min=1,
            help="New size (default: the newest checkpoint's, else every entry).",
        ),
    ] = None,
    db: DbOption = None,
    key_dir: KeyDirOption = None,
    data_dir: DataDirOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Print a consistency proof from OLD to NEW entries (JSON), with both roots.

    Where checkpoints of those sizes exist and the log key is at hand, their signed notes
    come with it, so `verify-consistency` needs only the log's vkey. The proof file is a
    JSON document in either `--format`.
    """
    from veracity.errors import NotFound
    from veracity.ledger.cli import _root_key_if_present
    from veracity.ledger.ledger import Ledger
    from veracity.ledger.witnessed import WitnessedLog

    root = _root_key_if_present(_key_dir(key_dir, data_dir))
    with Ledger.open(_db_url(db, data_dir), root_key=root) as ledger:
        if new is None:
            latest = ledger.latest_checkpoint()
            new = latest.tree_size if latest is not None and latest.tree_size >= old else None
        proof = ledger.consistency_proof(old, new)
        document: dict[str, Any] = proof.to_json()
        document["old_root"] = ledger.root(proof.old_size).hex()
        document["new_root"] = ledger.root(proof.new_size).hex()
        if root is not None:
            log = WitnessedLog(ledger)
            for label, size in (("old_note", proof.old_size), ("new_note", proof.new_size)):
                try:
                    document[label] = log.note(size).render()
                except NotFound:
                    document[label] = None
    emit_json(document)  # the proof file: JSON in either format
    del output_format


def verify_consistency_command(
    proof: Annotated[
        Path, typer.Option("--proof", envvar="VERACITY_PROOF", help="Proof file (JSON).")
    ],
    log_vkey: VkeyOption = None,
    old_note: Annotated[
        Path | None,
        typer.Option(
            "--old-note",
            envvar="VERACITY_OLD_NOTE",
            help="The old checkpoint note (else the proof's).",
        ),
    ] = None,
    new_note: Annotated[
        Path | None,
        typer.Option(
            "--new-note",
            envvar="VERACITY_NEW_NOTE",
            help="The new checkpoint note (else the proof's).",
        ),
    ] = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Check a consistency proof between two checkpoint notes signed by the log (exit 1 if bad)."""
    from veracity.ledger.merkle import verify_consistency
    from veracity.ledger.note import CheckpointText, Note, NoteVerifier, verify_note

    if not log_vkey:
        raise ConfigError("give the log's verifier key with --vkey (or VERACITY_VKEY)")
    log = NoteVerifier.parse(log_vkey)
    document = _read_json(proof, "proof file")
    if not isinstance(document, dict):
        raise InputError("a consistency proof file is a JSON object")
    texts = []
    for label, path in (("old_note", old_note), ("new_note", new_note)):
        text = read_text(path, "note") if path is not None else document.get(label)
        if not isinstance(text, str):
            raise InputError(f"no {label.replace('_', ' ')}: give --{label.replace('_', '-')}")
        texts.append(text)
    try:
        old_size, new_size = int(document["old_size"]), int(document["new_size"])
        hashes = [bytes.fromhex(item) for item in document["proof"]]
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"the proof file is malformed: {err}") from err
    try:
        checkpoints = []
        for text in texts:
            note = Note.parse(text)
            verify_note(note, [log])
            checkpoints.append(CheckpointText.parse(note.text))
        old_cp, new_cp = checkpoints
        if old_cp.origin != log.name or new_cp.origin != log.name:
            raise VerificationError(f"a note is not of the log {log.name}")
        if (old_cp.tree_size, new_cp.tree_size) != (old_size, new_size):
            raise VerificationError("the proof is for other sizes than the notes")
        verify_consistency(old_size, new_size, hashes, old_cp.root_hash, new_cp.root_hash)
    except VerificationError as err:
        if output_format is OutputFormat.JSON:
            emit_json({"ok": False, "old_size": old_size, "new_size": new_size, "reason": str(err)})
            raise typer.Exit(1) from err
        raise
    shown = {"ok": True, "origin": log.name, "old_size": old_size, "new_size": new_size}
    if output_format is OutputFormat.JSON:
        emit_json(shown)
    else:
        emit_table("consistency verified", list(shown), [list(shown.values())])


def equivocation(
    note_a: Annotated[Path, typer.Argument(help="A checkpoint note.")],
    note_b: Annotated[Path, typer.Argument(help="Another checkpoint note of the same log.")],
    log_vkey: VkeyOption = None,
    policy: Annotated[
        Path | None,
        typer.Option("--policy", envvar="VERACITY_POLICY", help="Trust this policy's logs."),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            envvar="VERACITY_DB",
            help="A copy of the log holding the larger note's tree (different sizes).",
        ),
    ] = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Exit 0 and print the evidence if the log signed two notes that cannot both be true.

    Exit 1 (and say why) otherwise. The evidence is a JSON document in either `--format`.
    """
    del output_format  # the evidence is JSON either way
    from veracity.config import normalise_database_url
    from veracity.ledger.evidence import find_equivocation
    from veracity.ledger.ledger import Ledger
    from veracity.ledger.note import NoteVerifier
    from veracity.ledger.policy import Policy

    logs: list[NoteVerifier] = []
    if log_vkey:
        logs.append(NoteVerifier.parse(log_vkey))
    if policy is not None:
        logs += [log for log, _url in Policy.parse(read_text(policy, "policy")).logs]
    if not logs:
        raise ConfigError("give the log's key with --vkey or --policy")
    texts = (read_text(note_a, "note"), read_text(note_b, "note"))
    try:
        if db is None:
            evidence = find_equivocation(*texts, logs)
        else:
            with Ledger.open(normalise_database_url(db)) as ledger:
                evidence = find_equivocation(
                    *texts,
                    logs,
                    root_at=ledger.root,
                    proof_between=lambda old, new: ledger.consistency_proof(old, new).proof,
                )
    except VerificationError as err:
        emit_json({"equivocation": False, "reason": str(err)})
        raise typer.Exit(1) from err
    emit_json(evidence.to_json())


def policy_command(
    quorum: Annotated[
        int,
        typer.Option("--quorum", envvar="VERACITY_QUORUM", min=0, help="Cosignatures needed."),
    ],
    witness: Annotated[
        list[str] | None,
        typer.Option(
            "--witness", envvar="VERACITY_WITNESS", help="A witness verifier key (repeatable)."
        ),
    ] = None,
    witness_dir: Annotated[
        list[Path] | None,
        typer.Option(
            "--site-dir",
            envvar="VERACITY_SITE_DIR",
            help="A site directory whose witness key to list (repeatable).",
        ),
    ] = None,
    log_vkey: VkeyOption = None,
    db: DbOption = None,
    data_dir: DataDirOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", envvar="VERACITY_OUT", help="Write the policy here.")
    ] = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Write a C2SP tlog-policy: the log key, the sites' witness keys, QUORUM of them.

    Text: the policy itself (on stdout, or in `--out`). `--format json`: `{"policy",
    "log", "quorum", "witnesses", "out"}` on stdout (the file is written as well).
    """
    from veracity.ledger.ledger import Ledger
    from veracity.ledger.note import NoteVerifier
    from veracity.ledger.policy import Policy
    from veracity.ledger.witness import read_site_witness_vkey
    from veracity.ledger.witnessed import WitnessedLog, policy_witness_name

    if log_vkey:
        log = NoteVerifier.parse(log_vkey)
    else:
        with Ledger.open(_db_url(db, data_dir)) as ledger:
            log = WitnessedLog(ledger).verifier
    witnesses: dict[str, NoteVerifier] = {}
    keys = [NoteVerifier.parse(v) for v in witness or []]
    keys += [read_site_witness_vkey(directory) for directory in witness_dir or []]
    for key in keys:
        name = policy_witness_name(key.name)
        if name in witnesses:
            raise InputError(f"two witnesses named {name!r}")
        witnesses[name] = key
    text = Policy.build(logs=[log], witnesses=witnesses, threshold=quorum).render()
    if out is not None:
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as err:
            raise InputError(f"cannot write {out}: {err.strerror}") from err
    if output_format is OutputFormat.JSON:
        emit_json(
            {"policy": text, "log": log.name, "quorum": quorum, "witnesses": sorted(witnesses),
             "out": None if out is None else str(out.absolute())}
        )  # fmt: skip
    elif out is None:
        sys.stdout.write(text)
        return
    if out is not None:
        sys.stderr.write(
            f"policy for {log.name}: {quorum} of {len(witnesses)} witnesses -> {out}\n"
        )


def register(app: typer.Typer) -> None:
    """Add these commands to the ``ledger`` command group."""
    app.command("vkey")(vkey)
    app.command("consistency")(consistency)
    app.command("verify-consistency")(verify_consistency_command)
    app.command("equivocation")(equivocation)
    app.command("policy")(policy_command)
