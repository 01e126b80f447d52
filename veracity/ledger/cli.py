"""``veracity ledger``: create, append to, verify, export, prove and explain the ledger.

Every command takes ``--db URL`` (default: the data directory's SQLite database) and
``--format json``. Verification failures exit 1 with the first bad seq and the reason;
configuration problems exit 2; nothing is written when a command fails.
"""

from __future__ import annotations

import enum
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from veracity.errors import (
    ConfigError,
    InputError,
    LedgerIntegrityError,
    SignatureError,
    VerificationError,
)
from veracity.output import FormatOption, OutputFormat, emit_json, emit_next, emit_table

if TYPE_CHECKING:
    from veracity.crypto.keys import SigningKey
    from veracity.ledger.checkpoint import Checkpoint
    from veracity.ledger.ledger import Ledger
    from veracity.ledger.note import Note

__all__ = ["app"]

app = typer.Typer(
    name="ledger",
    help="The signed, hash-chained, Merkle-proved audit ledger.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        "--database-url",
        envvar="VERACITY_DATABASE_URL",
        help="Database URL (default: SQLite in the data directory).",
    ),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", envvar="VERACITY_DATA_DIR", help="Data directory."),
]
KeyDirOption = Annotated[
    Path | None,
    typer.Option(
        "--key-dir", envvar="VERACITY_KEY_DIR", help="Key directory (default: DATA_DIR/keys)."
    ),
]
TrustOption = Annotated[
    Path,
    typer.Option(
        "--trust", envvar="VERACITY_TRUST", help="The root public key you trust (root.pub)."
    ),
]
_ROOT_KEY_NAME = "root"
_LOG_KEY_NAME = "log"


def _db_url(db: str | None, data_dir: Path | None) -> str:
    from veracity.config import load_settings, normalise_database_url

    if db:
        return normalise_database_url(db)
    return load_settings(data_dir=data_dir).db_url


def _key_dir(key_dir: Path | None, data_dir: Path | None) -> Path:
    from veracity.config import load_settings

    return key_dir if key_dir is not None else load_settings(data_dir=data_dir).key_dir


def _log_key_path(directory: Path) -> Path:
    """The log key in a key directory: ``log.pem``, else ``root.pem`` (identity and log in one)."""
    from veracity.crypto.keys import private_key_path

    path = private_key_path(directory, _LOG_KEY_NAME)
    return path if path.exists() else private_key_path(directory, _ROOT_KEY_NAME)


def _root_key_if_present(directory: Path) -> SigningKey | None:
    from veracity.crypto.keys import load_signing_key

    path = _log_key_path(directory)
    return load_signing_key(path) if path.exists() else None


def _read_json(path: Path, what: str) -> Any:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except OSError as err:
        raise InputError(f"cannot read {what} {path}: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise InputError(f"{what} {path} is not UTF-8 text") from err
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except ValueError as err:
        raise InputError(f"{what} {path} is not valid JSON: {err}") from err


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def _trusted_root(path: Path) -> Any:
    from veracity.crypto.keys import load_verify_key

    return load_verify_key(path)


def _open(url: str, **kwargs: Any) -> Ledger:
    from veracity.ledger.ledger import Ledger

    return Ledger.open(url, **kwargs)


@app.command("init")
def init(
    db: DbOption = None,
    key_dir: KeyDirOption = None,
    data_dir: DataDirOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Create the root key (root.pem, root.pub) if absent, the ledger tables and genesis."""
    from veracity.crypto.keys import (
        generate_signing_key,
        load_signing_key,
        private_key_path,
        public_key_path,
        write_key_pair,
    )
    from veracity.ledger.ledger import Ledger

    url = _db_url(db, data_dir)
    directory = _key_dir(key_dir, data_dir)
    private_path = private_key_path(directory, _ROOT_KEY_NAME)
    created_key = not private_path.exists()
    if created_key:
        root = generate_signing_key()
        write_key_pair(directory, _ROOT_KEY_NAME, root, prompt=True)
    else:
        root = load_signing_key(private_path)
    try:
        ledger = Ledger.init(url, root_key=root)
    except BaseException:
        if created_key:
            private_path.unlink(missing_ok=True)
            public_key_path(directory, _ROOT_KEY_NAME).unlink(missing_ok=True)
        raise
    with ledger:
        shown = {
            "db": url,
            "log_id": ledger.log_id,
            "entries": ledger.size(),
            "root_key_id": root.public.key_id,
            "root_public_key": str(public_key_path(directory, _ROOT_KEY_NAME)),
            "created_root_key": created_key,
        }
    if output_format is OutputFormat.JSON:
        emit_json(shown)
    else:
        emit_table(None, ["field", "value"], list(shown.items()))


@app.command("append")
def append(
    kind: Annotated[str, typer.Option("--kind", envvar="VERACITY_KIND", help="Event kind.")],
    payload_file: Annotated[
        Path,
        typer.Option(
            "--payload-file", envvar="VERACITY_PAYLOAD_FILE", help="JSON payload file ('-': stdin)."
        ),
    ],
    actor: Annotated[
        str,
        typer.Option(
            "--actor", envvar="VERACITY_ACTOR", help="Enrolled actor whose key signs (NAME.pem)."
        ),
    ] = "root",
    db: DbOption = None,
    key_dir: KeyDirOption = None,
    data_dir: DataDirOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Record an event signed by the actor's key from the key directory (default: root)."""
    from veracity.contracts.events import ROOT_ACTOR
    from veracity.crypto.keys import load_signing_key, private_key_path

    url = _db_url(db, data_dir)
    directory = _key_dir(key_dir, data_dir)
    payload = _read_json(payload_file, "payload file")
    if actor in (_ROOT_KEY_NAME, ROOT_ACTOR):
        actor, key_name = ROOT_ACTOR, _ROOT_KEY_NAME
    else:
        key_name = actor
    signer = load_signing_key(
        _log_key_path(directory)
        if key_name == _ROOT_KEY_NAME
        else private_key_path(directory, key_name)
    )
    root = signer if key_name == _ROOT_KEY_NAME else _root_key_if_present(directory)
    with _open(url, root_key=root) as ledger:
        entry = ledger.append(kind, actor, payload, signer=signer)
    if output_format is OutputFormat.JSON:
        emit_json(entry.to_json())
    else:
        emit_table(
            None,
            ["seq", "ts", "kind", "actor", "hash"],
            [[entry.seq, entry.ts, entry.kind, entry.actor, entry.hash]],
        )


LogIdOption = Annotated[
    str,
    typer.Option(
        "--log-id",
        envvar="VERACITY_LOG_ID",
        help="The log's id (64 hex: `veracity ledger init` prints it).",
    ),
]
NameOption = Annotated[
    str, typer.Option("--name", envvar="VERACITY_NAME", help="The enrolled name the key is for.")
]


def _log_id(text: str) -> str:
    from veracity.core.fields import is_hex64

    if not is_hex64(text):
        raise InputError(f"--log-id must be 64 lowercase hex characters, not {text!r}")
    return text


def _emit_signature(field: str, signature: str, output_format: OutputFormat) -> None:
    if output_format is OutputFormat.JSON:
        emit_json({field: signature})
    else:
        sys.stdout.write(signature + "\n")


@app.command("key-proof")
def key_proof(
    key: Annotated[
        Path, typer.Option("--key", envvar="VERACITY_KEY", help="The new private key (NAME.pem).")
    ],
    name: NameOption,
    log_id: LogIdOption,
    role: Annotated[
        str, typer.Option("--role", envvar="VERACITY_ROLE", help="The name's role.")
    ] = "site",
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Print the key's proof of possession (the `proof` of key.enrolled/rotated/recovered)."""
    from veracity.crypto.keys import load_signing_key
    from veracity.ledger.possession import sign_enrolment

    proof = sign_enrolment(load_signing_key(key), log_id=_log_id(log_id), name=name, role=role)
    _emit_signature("proof", proof, output_format)


@app.command("key-handover")
def key_handover(
    key: Annotated[
        Path,
        typer.Option("--key", envvar="VERACITY_KEY", help="The outgoing private key (NAME.pem)."),
    ],
    to: Annotated[
        Path, typer.Option("--to", envvar="VERACITY_TO", help="The new public key (.pub).")
    ],
    name: NameOption,
    log_id: LogIdOption,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Print the outgoing key's hand-over to a new key (key.rotated's `outgoing_signature`)."""
    from veracity.crypto.keys import load_signing_key, load_verify_key
    from veracity.ledger.possession import sign_rotation

    signature = sign_rotation(
        load_signing_key(key), log_id=_log_id(log_id), name=name, incoming=load_verify_key(to)
    )
    _emit_signature("outgoing_signature", signature, output_format)


def _load_checkpoints(paths: list[Path]) -> list[Checkpoint]:
    from veracity.ledger.checkpoint import Checkpoint

    found: list[Checkpoint] = []
    for path in paths:
        document = _read_json(path, "checkpoint file")
        items = document if isinstance(document, list) else [document]
        found.extend(Checkpoint.from_json(item) for item in items)
    return found


@app.command("verify")
def verify(
    trust: TrustOption,
    db: DbOption = None,
    bundle: Annotated[
        Path | None,
        typer.Option("--bundle", envvar="VERACITY_BUNDLE", help="Verify an exported bundle."),
    ] = None,
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option(
            "--checkpoint",
            envvar="VERACITY_CHECKPOINT",
            help="A checkpoint you saw before (JSON); the ledger must extend it.",
        ),
    ] = None,
    root_signatures: Annotated[
        str,
        typer.Option(
            "--root-signatures",
            envvar="VERACITY_ROOT_SIGNATURES",
            help="'all' checks every signature; 'tail' skips the root's own entries "
            "below the newest checkpoint (which commits to them).",
        ),
    ] = "all",
    workers: Annotated[
        int | None,
        typer.Option("--workers", envvar="VERACITY_WORKERS", help="Verifier processes."),
    ] = None,
    policy_file: Annotated[
        Path | None,
        typer.Option(
            "--policy",
            envvar="VERACITY_POLICY",
            help="A C2SP tlog-policy: the newest checkpoint (and the one 'tail' relies on) "
            "must be signed by its log and cosigned by its quorum of witnesses.",
        ),
    ] = None,
    state: Annotated[
        Path | None,
        typer.Option(
            "--state",
            envvar="VERACITY_STATE",
            help="The auditor's state directory: the ledger must extend the checkpoint "
            "verified last time; the newest one is kept for next time.",
        ),
    ] = None,
    note: Annotated[
        list[Path] | None,
        typer.Option(
            "--note",
            envvar="VERACITY_NOTE",
            help="A checkpoint note with cosignatures (repeatable).",
        ),
    ] = None,
    no_witnesses: Annotated[
        bool,
        typer.Option(
            "--no-witnesses",
            envvar="VERACITY_NO_WITNESSES",
            help="With --root-signatures tail and no --policy: trust a checkpoint signed by "
            "the log key alone, which no witness checked (the report says so).",
        ),
    ] = False,
    data_dir: DataDirOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Recompute everything and check it against the trusted root key (exit 1 if bad).

    ``--root-signatures tail`` trusts the checkpoint it relies on only when it meets
    ``--policy`` (a witness quorum), or, with ``--no-witnesses``, on the log key's word;
    without either it exits 2.
    """
    from veracity.ledger.verify import verify_bundle_file

    if db is not None and bundle is not None:
        raise typer.BadParameter("give --db or --bundle, not both")
    if root_signatures not in ("all", "tail"):
        raise typer.BadParameter("--root-signatures is 'all' or 'tail'")
    policy: Literal["all", "tail"] = "all" if root_signatures == "all" else "tail"
    if policy == "tail" and policy_file is None and not no_witnesses:
        raise ConfigError(
            "--root-signatures tail trusts a checkpoint instead of the signatures below it, "
            "so it needs a witness quorum: give --policy FILE (veracity ledger policy writes "
            "one), or --no-witnesses to trust the log key alone"
        )
    trusted = _trusted_root(trust)
    known = _load_checkpoints(checkpoint or [])
    try:
        if bundle is not None:
            report = verify_bundle_file(
                bundle,
                trusted_root=trusted,
                known_checkpoints=known,
                root_signatures=policy,
                workers=workers,
            )
        else:
            with _open(_db_url(db, data_dir)) as ledger:
                report = ledger.verify(
                    trusted, known_checkpoints=known, root_signatures=policy, workers=workers
                )
        witnessed = None
        if policy_file is not None or state is not None:
            from veracity.ledger.verify_audit import audit_verified

            witnessed = audit_verified(
                report,
                db=None if bundle is not None else _db_url(db, data_dir),
                bundle=bundle,
                policy_file=policy_file,
                state=state,
                notes=note or [],
                tail=policy == "tail",
            )
    except (LedgerIntegrityError, SignatureError) as err:
        if output_format is OutputFormat.JSON:
            emit_json(
                {
                    "ok": False,
                    "entries": None,
                    "checkpoints": None,
                    "first_bad_seq": getattr(err, "seq", None),
                    "reason": getattr(err, "reason", str(err)),
                }
            )
            raise typer.Exit(1) from err
        raise
    tail_trusted = None
    if policy == "tail":
        tail_trusted = _tail_trusted(
            report,
            witnessed,
            db=None if bundle is not None else _db_url(db, data_dir),
            bundle=bundle,
        )
    if output_format is OutputFormat.JSON:
        document = report.to_json()
        document["root_signatures"] = policy
        if tail_trusted is not None:
            document["tail_trusted"] = tail_trusted
        if witnessed is not None:
            document["witnesses"] = witnessed
        emit_json(document)
    else:
        if tail_trusted is not None:
            sys.stderr.write(
                f"tail mode trusted the checkpoint of size {tail_trusted['checkpoint_size']} "
                f"on the word of {tail_trusted['trusted_on']}\n"
            )
        for seq, name, key_id in report.recoveries:
            sys.stdout.write(
                f"note: entry {seq} recovered {name!r} to key {key_id[:16]} (key.recovered: "
                "its old key was lost and signs nothing after)\n"
            )
        emit_table(
            "ledger verified",
            ["entries", "checkpoints", "signatures", "receipts", "root"],
            [
                [
                    report.entries,
                    report.checkpoints,
                    report.signatures,
                    report.receipts,
                    report.root_hash,
                ]
            ],
        )


def _tail_trusted(
    report: Any, witnessed: dict[str, Any] | None, *, db: str | None, bundle: Path | None
) -> dict[str, Any]:
    """What ``--root-signatures tail`` trusted: which checkpoint, and on whose word."""
    from veracity.ledger.audit import NO_POLICY

    if (
        witnessed is not None
        and "tail_relies_on" in witnessed
        and witnessed.get("quorum") != NO_POLICY
    ):
        size = witnessed["tail_relies_on"]
        return {
            "checkpoint_size": size,
            "trusted_on": f"the policy's witness quorum ({witnessed['quorum']})",
            "witnesses": True,
        }
    if bundle is not None:
        from veracity.ledger.audit import bundle_tree

        sizes = bundle_tree(bundle)[1]
    else:
        assert db is not None  # noqa: S101 - one of the two is given by the caller
        with _open(db) as ledger:
            sizes = [c.tree_size for c in ledger.checkpoints()]
    entries = int(report.entries)
    return {
        "checkpoint_size": max((s for s in sizes if s < entries), default=None),
        "trusted_on": "the log key alone (--no-witnesses: no witness checked it)",
        "witnesses": False,
    }


@app.command("export")
def export(
    out: Annotated[
        Path, typer.Option("--out", envvar="VERACITY_OUT", help="Bundle file to write.")
    ],
    db: DbOption = None,
    data_dir: DataDirOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Write the whole ledger into one bundle an auditor verifies offline."""
    import shlex

    with _open(_db_url(db, data_dir)) as ledger:
        info = ledger.export_bundle(out)
    if output_format is OutputFormat.JSON:
        emit_json(info)
    else:
        emit_table(None, ["field", "value"], list(info.items()))
    bundle = shlex.quote(str(out))
    emit_next(
        f"veracity ledger verify --bundle {bundle} --trust root.pub",
        f"veracity ledger provenance MODEL_HASH --bundle {bundle} --trust root.pub",
    )


def _emit_checkpoints(
    items: list[Checkpoint], output_format: OutputFormat, *, single: bool
) -> None:
    if output_format is OutputFormat.JSON:
        documents = [c.to_json() for c in items]
        emit_json(documents[0] if single else documents)
    else:
        emit_table(
            None,
            ["tree_size", "root_hash", "timestamp"],
            [[c.tree_size, c.root_hash, c.timestamp] for c in items],
        )


class CheckpointFormat(enum.StrEnum):
    """``ledger checkpoint --format``: text, json, or the newest checkpoint as a C2SP note."""

    TEXT = "text"
    JSON = "json"
    NOTE = "note"


def _stored_newest_note(ledger: Ledger) -> Note | None:
    """The newest checkpoint's stored note with every cosignature; ``None`` if never signed.

    Raises
    ------
    NotFound
        If no checkpoint was signed yet.
    SignatureError
        If the stored log signature does not verify under the log's keys.
    """
    from veracity.errors import NotFound
    from veracity.ledger.note import NoteVerifier, verify_note
    from veracity.ledger.witnessed import WitnessedLog

    newest = ledger.latest_checkpoint()
    if newest is None:
        raise NotFound("no checkpoint has been signed yet")
    log = WitnessedLog(ledger)
    note = log.stored_note(newest.tree_size)
    if note is not None:
        verify_note(note, [NoteVerifier.for_key(log.origin, k) for k in ledger.log_keys()])
    return note


@app.command("checkpoint")
def checkpoint_now(
    db: DbOption = None,
    key_dir: KeyDirOption = None,
    data_dir: DataDirOption = None,
    output_format: Annotated[
        CheckpointFormat,
        typer.Option(
            "--format",
            envvar="VERACITY_FORMAT",
            case_sensitive=False,
            help="text or json: sign a checkpoint now; note: print the newest checkpoint "
            "as a C2SP signed note with every cosignature line (signs nothing new).",
        ),
    ] = CheckpointFormat.TEXT,
) -> None:
    """Sign a checkpoint of the ledger now with the log key, or print the newest as a note.

    ``--format note`` needs no private key when the newest checkpoint's note is stored (it
    is whenever this command, the API or a witness made or fetched it); otherwise the log
    key in the key directory signs it (exit 2 if it is not at hand; exit 1 if the stored
    note's log signature does not verify).
    """
    from veracity.crypto.keys import load_signing_key
    from veracity.ledger.witnessed import WitnessedLog

    url = _db_url(db, data_dir)
    if output_format is CheckpointFormat.NOTE:
        with _open(url) as ledger:
            stored = _stored_newest_note(ledger)
        if stored is None:
            key = _root_key_if_present(_key_dir(key_dir, data_dir))
            if key is None:
                raise ConfigError(
                    "the newest checkpoint was never signed as a note; give the log key "
                    "(--key-dir) once to sign it"
                )
            with _open(url, root_key=key) as ledger:
                stored = WitnessedLog(ledger).note()
        sys.stdout.write(stored.render())
        return
    root = load_signing_key(_log_key_path(_key_dir(key_dir, data_dir)))
    with _open(url, root_key=root) as ledger:
        signed = ledger.checkpoint()
        WitnessedLog(ledger).note(signed.tree_size)  # stored: readable later without a key
    shown = OutputFormat.JSON if output_format is CheckpointFormat.JSON else OutputFormat.TEXT
    _emit_checkpoints([signed], shown, single=True)


@app.command("checkpoints")
def checkpoints(
    db: DbOption = None,
    data_dir: DataDirOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """List the signed checkpoints, oldest first."""
    with _open(_db_url(db, data_dir)) as ledger:
        items = ledger.checkpoints()
    _emit_checkpoints(items, output_format, single=False)


@app.command("prove")
def prove(
    seq: Annotated[int, typer.Argument(help="Entry to prove.", min=0)],
    size: Annotated[
        int | None,
        typer.Option(
            "--size", envvar="VERACITY_SIZE", help="Tree size (default: newest checkpoint)."
        ),
    ] = None,
    db: DbOption = None,
    data_dir: DataDirOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Print an inclusion proof of entry SEQ (and the checkpoint of that size, if any)."""
    from veracity.contracts.events import KEY_KINDS, ROOT_ACTOR

    with _open(_db_url(db, data_dir)) as ledger:
        proof = ledger.inclusion_proof(seq, size)
        matching = [c for c in ledger.checkpoints() if c.tree_size == proof.tree_size]
        # Genesis and the log key's events: how the identity (root.pub) enrolled the log key
        # that signed the checkpoint.
        events = sorted(
            (
                entry
                for kind in KEY_KINDS
                for entry in ledger.iter_entries(kind=kind)
                if entry.payload.get("name") == ROOT_ACTOR
            ),
            key=lambda entry: entry.seq,
        )
    document = proof.to_json()
    document["checkpoint"] = matching[0].to_json() if matching else None
    document["log_key_events"] = [entry.body.decode("utf-8") for entry in events]
    if output_format is OutputFormat.JSON:
        emit_json(document)
    else:
        sys.stdout.write(json.dumps(document, indent=2) + "\n")


@app.command("verify-proof")
def verify_proof(
    proof: Annotated[Path, typer.Option("--proof", envvar="VERACITY_PROOF", help="Proof file.")],
    checkpoint: Annotated[
        Path,
        typer.Option("--checkpoint", envvar="VERACITY_CHECKPOINT", help="Checkpoint file (JSON)."),
    ],
    trust: TrustOption,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Check an inclusion proof against a checkpoint signed by the trusted root.

    The trusted root is the log's identity key (root.pub); the checkpoint is signed by a log
    key it enrolled, which the proof's `log_key_events` (from `veracity ledger prove`) show:
    the one valid at the checkpoint's size (or still in its rotation overlap), never a key
    enrolled after it or retired before it. Those events come from the prover: each is
    checked against the identity key, but a prover holding a stolen log key could leave
    out its later recovery. Where that matters, check the checkpoint's witness
    cosignatures or verify the whole bundle (`veracity ledger verify --bundle`).
    """
    from veracity.ledger.log_key import log_keys_from_entries
    from veracity.ledger.proofs import InclusionProof

    trusted = _trusted_root(trust)
    document = _read_json(proof, "proof file")
    parsed = InclusionProof.from_json(document)
    candidates = _load_checkpoints([checkpoint])
    if not candidates:
        raise InputError(f"checkpoint file {checkpoint} holds no checkpoint")
    chosen = next((c for c in candidates if c.tree_size == parsed.tree_size), candidates[0])
    try:
        events = document.get("log_key_events") if isinstance(document, dict) else None
        signers = [trusted]
        if isinstance(events, list) and events:
            # The identity (root.pub) enrolled the log keys that sign checkpoints.
            signers = log_keys_from_entries([str(e) for e in events], trusted, at=chosen.tree_size)
            if not signers:
                raise SignatureError(
                    f"no log key was valid at the checkpoint of size {chosen.tree_size}"
                )
        for position, signer in enumerate(signers):
            try:
                parsed.verify(chosen, signer)
                break
            except SignatureError:
                if position == len(signers) - 1:
                    raise
    except VerificationError as err:
        if output_format is OutputFormat.JSON:
            emit_json(
                {"ok": False, "seq": parsed.seq, "tree_size": parsed.tree_size, "reason": str(err)}
            )
            raise typer.Exit(1) from err
        raise
    shown = {
        "ok": True,
        "seq": parsed.seq,
        "tree_size": parsed.tree_size,
        "root_hash": chosen.root_hash,
    }
    if output_format is OutputFormat.JSON:
        emit_json(shown)
    else:
        emit_table("proof verified", list(shown), [list(shown.values())])


@app.command("show")
def show(
    kind: Annotated[
        str | None, typer.Option("--kind", envvar="VERACITY_KIND", help="Only this kind.")
    ] = None,
    since: Annotated[
        int, typer.Option("--since", envvar="VERACITY_SINCE", help="From this seq.", min=0)
    ] = 0,
    limit: Annotated[
        int | None,
        typer.Option("--limit", envvar="VERACITY_LIMIT", help="At most this many.", min=1),
    ] = None,
    db: DbOption = None,
    data_dir: DataDirOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Print entries (optionally of one kind, from a seq)."""
    with _open(_db_url(db, data_dir)) as ledger:
        items = ledger.entries(since=since, kind=kind, limit=limit)
    if output_format is OutputFormat.JSON:
        emit_json([entry.to_json() for entry in items])
    else:
        emit_table(
            None,
            ["seq", "ts", "kind", "actor", "payload"],
            [
                [e.seq, e.ts, e.kind, e.actor, json.dumps(e.payload, sort_keys=True)[:80]]
                for e in items
            ],
        )


@app.command("provenance")
def provenance(
    model_hash: Annotated[str, typer.Argument(help="SHA-256 of the model (hex).")],
    db: DbOption = None,
    bundle: Annotated[
        Path | None,
        typer.Option(
            "--bundle",
            envvar="VERACITY_BUNDLE",
            help="Offline: an exported bundle, verified against --trust first.",
        ),
    ] = None,
    trust: Annotated[
        Path | None,
        typer.Option("--trust", envvar="VERACITY_TRUST", help="The root public key (--bundle)."),
    ] = None,
    data_dir: DataDirOption = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """W3C PROV lineage of a model (PROV-JSON with --format json, PROV-N otherwise).

    With ``--bundle FILE --trust root.pub`` it needs nothing else: the bundle is verified
    against the root key, then the lineage is derived from it.
    """
    if bundle is not None:
        from veracity.ledger.bundle_view import provenance_from_bundle

        if trust is None:
            raise typer.BadParameter("--bundle needs --trust (the root public key)")
        if db is not None:
            raise typer.BadParameter("give --db or --bundle, not both")
        document = provenance_from_bundle(bundle, model_hash, trusted_root=_trusted_root(trust))
    else:
        with _open(_db_url(db, data_dir)) as ledger:
            document = ledger.provenance(model_hash)
    if output_format is OutputFormat.JSON:
        emit_json(document)
        return
    from prov.model import ProvDocument

    parsed = ProvDocument.deserialize(content=json.dumps(document), format="json")
    sys.stdout.write(parsed.get_provn() + "\n")
