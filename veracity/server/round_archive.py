"""Every round's received updates and aggregate, kept by hash, and a run's archive of them.

The coordinator keeps each verified site update it aggregated (DP-protected at the record
level at the site; under client-level DP, before the coordinator's noise, so an archive's
reader is outside that guarantee) and each round's aggregated model in an :class:`UpdateStore` under
``DIR/updates/``, one ``.npz`` per weights hash (``veracity.tasks.weights``). An auditor gets
a run's archive (:func:`write_archive`; the admin API serves it zipped,
:func:`write_archive_zip`, streamed from a temporary file, and ``veracity admin runs
archive RUN --out DIR`` downloads it to a file and unpacks it, :func:`extract_archive`);
every step holds one weights file in memory at a time, whatever the archive's size::

    ARCHIVE/index.json             format, run_id, study_hash, rounds: [{round,
                                   aggregated_model_hash, updates: {site: update_hash}}]
    ARCHIVE/weights/<hash>.npz     each update and each round's global model, by hash

The index is a convenience: :mod:`veracity.server.replay` takes every hash from the
verified ledger bundle and only looks files up by name, and every read recomputes the hash
of what it read, so a file that was changed is refused whatever the index says.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Protocol

from veracity.core.fields import is_hex64
from veracity.errors import InputError, NotFound
from veracity.tasks.weights import Weights, weights_from_bytes, weights_hash, weights_to_bytes

__all__ = [
    "ARCHIVE_FORMAT",
    "GlobalModel",
    "PruneBatch",
    "PrunePlan",
    "UpdateStore",
    "global_model",
    "plan_prune",
    "archive_files",
    "archive_index",
    "archive_zip",
    "extract_archive",
    "write_archive",
    "write_archive_zip",
]

ARCHIVE_FORMAT = "veracity.run-archive.v1"
_COPY_CHUNK = 1 << 20


class _EntryLike(Protocol):
    @property
    def payload(self) -> dict[str, Any]: ...


class _Entries(Protocol):
    def iter_entries(self, *, kind: str | None = None) -> Iterable[_EntryLike]: ...


class _SeqEntryLike(_EntryLike, Protocol):
    @property
    def seq(self) -> int: ...


class _SeqEntries(Protocol):
    def iter_entries(self, *, kind: str | None = None) -> Iterable[_SeqEntryLike]: ...


class _TimedEntryLike(_SeqEntryLike, Protocol):
    @property
    def ts(self) -> str: ...


class _TimedEntries(Protocol):
    def iter_entries(self, *, kind: str | None = None) -> Iterable[_TimedEntryLike]: ...


class UpdateStore:
    """Weights under ``root``, one ``<hash>.npz`` each, named by their weights hash."""

    def __init__(self, root: Path) -> None:
        self._root = Path(root)

    @property
    def root(self) -> Path:
        """The store's directory."""
        return self._root

    def path(self, weights_digest: str) -> Path:
        """Where the weights with this hash are (or would be) kept.

        Raises
        ------
        InputError
            If ``weights_digest`` is not 64 lowercase hex characters.
        """
        if not is_hex64(weights_digest):
            raise InputError(f"{weights_digest!r} is not a weights hash (64 lowercase hex)")
        return self._root / f"{weights_digest}.npz"

    def put(self, weights: Weights) -> str:
        """Keep ``weights``; return their hash. Keeping the same weights again is a no-op."""
        digest = weights_hash(weights)
        target = self.path(digest)
        if target.exists():
            return digest
        self._root.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, staging = tempfile.mkstemp(prefix=".incoming-", dir=self._root)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(weights_to_bytes(weights))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(staging, target)
        finally:
            if os.path.exists(staging):
                os.unlink(staging)
        return digest

    def get(self, weights_digest: str) -> dict[str, Any]:
        """The weights with this hash, read and re-hashed.

        Raises
        ------
        NotFound
            If no weights with this hash are kept.
        InputError
            If the file is unreadable or its weights hash to something else (it was changed).
        """
        path = self.path(weights_digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError as err:
            raise NotFound(f"no weights {weights_digest} in {self._root}") from err
        weights = weights_from_bytes(data)
        actual = weights_hash(weights)
        if actual != weights_digest:
            raise InputError(f"{path.name} holds weights that hash to {actual}; it was changed")
        return weights


def archive_index(entries: _Entries, run_id: str) -> tuple[dict[str, Any], list[str]]:
    """The index of ``run_id``'s archive and the weights hashes it holds, in archive order.

    ``entries`` is the coordinator's ledger (anything with ``iter_entries(kind=...)``); the
    rounds are its ``round.completed`` entries of the run (none: an archive with no round).
    Nothing is read from the store here.
    """
    rounds = sorted(
        (
            entry.payload
            for entry in entries.iter_entries(kind="round.completed")
            if entry.payload["run_id"] == run_id
        ),
        key=lambda payload: int(payload["round"]),
    )
    digests: dict[str, None] = {}
    index_rounds = []
    for payload in rounds:
        updates = {r["receipt"]["site"]: r["receipt"]["update_hash"] for r in payload["receipts"]}
        for digest in [*updates.values(), payload["aggregated_model_hash"]]:
            digests[digest] = None
        index_rounds.append(
            {
                "round": int(payload["round"]),
                "aggregated_model_hash": payload["aggregated_model_hash"],
                "updates": updates,
            }
        )
    index = {
        "format": ARCHIVE_FORMAT,
        "run_id": run_id,
        "study_hash": rounds[0]["study_hash"] if rounds else None,
        "rounds": index_rounds,
    }
    return index, sorted(digests)


def archive_files(
    entries: _Entries, store: UpdateStore, run_id: str
) -> Iterator[tuple[str, bytes]]:
    """``(name, content)`` of each ``weights/<hash>.npz`` of ``run_id``'s archive, one at a time.

    Each file is read from ``store`` (and its hash checked) only when the iterator gets to
    it, so at most one file is held at a time.

    Raises
    ------
    NotFound
        If an update or round model the ledger names is not in the store (pruned).
    """
    _index, digests = archive_index(entries, run_id)
    for digest in digests:
        try:
            weights = store.get(digest)
        except NotFound as err:
            raise NotFound(
                f"{err} (run {run_id}'s archive is incomplete: see the ledger's "
                "updates.pruned entries)"
            ) from err
        yield f"weights/{digest}.npz", weights_to_bytes(weights)


@dataclass(frozen=True)
class GlobalModel:
    """A global model of a run as the coordinator serves it to a replaying site."""

    model_hash: str
    data: bytes
    #: Which entry names it: ``round.completed`` of ``round`` at ``seq`` (the model round
    #: ``round + 1`` started from), or ``round`` 0 and ``seq`` the ``run.started`` for the
    #: initial model (the study's ``model_seed``).
    round: int
    seq: int


def global_model(
    entries: _SeqEntries,
    store: UpdateStore,
    run_id: str,
    model_hash: str,
    *,
    initial: Weights,
    site: str | None = None,
    approved: Collection[str] = (),
) -> GlobalModel:
    """The global model ``model_hash`` of ``run_id``, if the ledger names it as one.

    A run's global models are what its rounds started from: its initial model
    (``initial``: the study's ``model_seed`` weights, which the first round starts from;
    named by ``run.started``) and the aggregate of every round that a later round of the
    run started from. Nothing else is served: not the sites' updates, and not the last
    round's aggregate or any released model (no round starts from those; they are the
    model, whose plaintext weights only an administrator downloads, recorded as
    ``model.downloaded``). With ``site``, only to a site that took part in one of the
    run's rounds or is among ``approved`` (the sites that had approved the study when the
    run started: each was to receive these models).
    The bytes are re-hashed as they are read.

    Raises
    ------
    NotFound
        If the ledger names no such global model of the run (or ``site`` took no part), or
        it is no longer kept (``veracity admin runs prune``).
    InputError
        If the kept file no longer holds the weights of its hash.
    """
    if not is_hex64(model_hash):
        raise InputError(f"{model_hash!r} is not a model hash (64 lowercase hex)")
    rounds = [
        e for e in entries.iter_entries(kind="round.completed") if e.payload["run_id"] == run_id
    ]
    if (
        site is not None
        and site not in approved
        and not any(site in e.payload["participants"] for e in rounds)
    ):
        raise NotFound(f"{site} neither approved nor took part in run {run_id}")
    if weights_hash(initial) == model_hash:
        started = next(
            (e for e in entries.iter_entries(kind="run.started") if e.payload["run_id"] == run_id),
            None,
        )
        if started is not None:
            return GlobalModel(model_hash, weights_to_bytes(initial), 0, started.seq)
    recorded = {int(e.payload["round"]) for e in rounds}
    released = any(
        e.payload.get("model_hash") == model_hash
        for e in entries.iter_entries(kind="model.released")
    )
    for entry in rounds:
        if (
            entry.payload["aggregated_model_hash"] == model_hash
            and int(entry.payload["round"]) + 1 in recorded
            and not released
        ):
            data = weights_to_bytes(store.get(model_hash))
            return GlobalModel(model_hash, data, int(entry.payload["round"]), entry.seq)
    raise NotFound(
        f"no round of run {run_id} started from a model {model_hash}: only the initial "
        "model and the aggregates later rounds started from are served (a released model's "
        "weights: GET /models/{hash}/weights, administrators)"
    )


@dataclass(frozen=True)
class PrunePlan:
    """What a prune of ``updates/`` removes, and what it keeps because a release needs it."""

    before: str
    runs: tuple[str, ...]
    kept_released: tuple[str, ...]
    removed: tuple[str, ...]
    removed_bytes: int
    #: Each run of ``runs`` and the files of ``removed`` it names.
    removed_by_run: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: Each removed file's size in bytes, in ``removed`` order.
    sizes: tuple[int, ...] = ()
    #: Files an earlier ``updates.pruned`` already lists that are still there (its deletion
    #: was interrupted): deleted again, never recorded twice.
    leftover: tuple[str, ...] = ()

    def batches(self, per_entry: int) -> list[PruneBatch]:
        """``removed`` in batches of at most ``per_entry`` hashes, each with the runs naming them.

        Raises
        ------
        InputError
            If ``per_entry`` is below 1.
        """
        if per_entry < 1:
            raise InputError("a prune entry lists at least one file")
        batches: list[PruneBatch] = []
        for start in range(0, len(self.removed), per_entry):
            hashes = self.removed[start : start + per_entry]
            chunk = frozenset(hashes)
            runs = tuple(run for run, files in self.removed_by_run if not chunk.isdisjoint(files))
            size = sum(self.sizes[start : start + per_entry])
            batches.append(PruneBatch(runs, hashes, size))
        return batches

    def to_json(self) -> dict[str, Any]:
        """JSON form (the command's and the API's answer)."""
        return {
            "before": self.before,
            "runs": list(self.runs),
            "kept_released": list(self.kept_released),
            "removed": len(self.removed),
            "removed_bytes": self.removed_bytes,
        }


@dataclass(frozen=True)
class PruneBatch:
    """The files one ``updates.pruned`` entry lists, and the runs they were archived for."""

    runs: tuple[str, ...]
    removed: tuple[str, ...]
    removed_bytes: int


def _run_hashes(entries: _TimedEntries) -> tuple[dict[str, set[str]], dict[str, int]]:
    """The weights hashes each run's ``round.completed`` entries name, and each one's newest.

    Returns ``({run_id: hashes}, {hash: seq of the newest round.completed naming it})``;
    the hashes are the sites' updates and the aggregates.
    """
    named: dict[str, set[str]] = {}
    newest: dict[str, int] = {}
    for entry in entries.iter_entries(kind="round.completed"):
        payload = entry.payload
        hashes = {payload["aggregated_model_hash"]}
        hashes.update(r["receipt"]["update_hash"] for r in payload["receipts"])
        named.setdefault(str(payload["run_id"]), set()).update(hashes)
        for digest in hashes:
            newest[digest] = max(newest.get(digest, -1), entry.seq)
    return named, newest


def plan_prune(
    entries: _TimedEntries, store: UpdateStore, *, before: str, include_released: bool
) -> PrunePlan:
    """Which archived files a retention prune removes (nothing is removed here).

    Eligible: the runs whose ``run.finished`` is older than ``before`` (an RFC 3339
    timestamp; unfinished runs never are). A run whose model was released
    (``model.released``) stays unless ``include_released``: the auditor's replay of that
    model needs its updates and every round's model, and a site's replay may fetch its
    global models. A file is removed only if no run that stays names it, and only if it
    is there (files the ledger never named, e.g. of a round that failed to record, are
    left alone). A file an ``updates.pruned`` lists after the newest round naming it is
    never planned again: if it is still there (that prune's deletion was cut short) it is
    in ``leftover``; a file archived again after it was pruned (a later run made the same
    weights) is planned, and recorded, anew. Planned
    under the ledger's write lock (:meth:`CoordinatorService.prune_updates`), two prunes
    never record one file twice.
    """
    cutoff = datetime.fromisoformat(before)
    finished = {
        str(e.payload["run_id"]): datetime.fromisoformat(e.ts)
        for e in entries.iter_entries(kind="run.finished")
    }
    released = {str(e.payload["run_id"]) for e in entries.iter_entries(kind="model.released")}
    named, named_at = _run_hashes(entries)
    old = sorted(run for run, at in finished.items() if at < cutoff and named.get(run))
    kept_released = tuple(run for run in old if run in released and not include_released)
    runs = [run for run in old if run not in kept_released]
    staying: set[str] = set()
    for run, hashes in named.items():
        if run not in runs:
            staying |= hashes
    pruned_at: dict[str, int] = {}
    for entry in entries.iter_entries(kind="updates.pruned"):
        pruned_at.update(dict.fromkeys(entry.payload["removed"], entry.seq))
    removed: dict[str, int] = {}  # hash -> size, in the order first met
    leftover: set[str] = set()
    for run in runs:
        for digest in sorted(named[run] - staying):
            path = store.path(digest)
            if digest in removed or not path.is_file():
                continue
            if pruned_at.get(digest, -1) > named_at[digest]:  # recorded since last named
                leftover.add(digest)
            else:
                removed[digest] = path.stat().st_size
    by_run = tuple(
        (run, tuple(h for h in sorted(named[run]) if h in removed))
        for run in runs
        if not named[run].isdisjoint(removed)
    )
    return PrunePlan(
        before,
        tuple(run for run, _ in by_run),
        kept_released,
        tuple(removed),
        sum(removed.values()),
        removed_by_run=by_run,
        sizes=tuple(removed.values()),
        leftover=tuple(sorted(leftover)),
    )


def _new_directory(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=False)
        (out / "weights").mkdir()
    except FileExistsError as err:
        raise InputError(f"{out} exists; give a new directory for the archive") from err


def _write_index(out: Path, index: dict[str, Any]) -> None:
    (out / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True), encoding="utf-8")


def write_archive(entries: _Entries, store: UpdateStore, run_id: str, out: Path) -> dict[str, Any]:
    """Write the archive of ``run_id`` into the new directory ``out``; return its index.

    Raises
    ------
    NotFound
        As :func:`archive_files`.
    InputError
        If ``out`` exists already.
    """
    index, digests = archive_index(entries, run_id)
    missing = [d for d in digests if not store.path(d).is_file()]
    if missing:  # before anything is written (each file is re-hashed as it is copied)
        raise NotFound(
            f"no weights {missing[0]} in {store.root} (run {run_id}'s archive is incomplete: "
            "see the ledger's updates.pruned entries)"
        )
    _new_directory(out)
    for name, data in archive_files(entries, store, run_id):
        (out / name).write_bytes(data)
    _write_index(out, index)
    return index


def write_archive_zip(
    entries: _Entries, store: UpdateStore, run_id: str, target: IO[bytes]
) -> None:
    """Write the archive of ``run_id`` as one zip file (what the admin API serves) to ``target``.

    ``target`` is a file opened for binary writing (seekable or not); the weights are read
    and written one file at a time, so memory does not grow with the archive.

    Raises
    ------
    NotFound
        As :func:`archive_files`.
    """
    index, _digests = archive_index(entries, run_id)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("index.json", json.dumps(index, indent=2, sort_keys=True))
        for name, data in archive_files(entries, store, run_id):
            archive.writestr(name, data)


def archive_zip(entries: _Entries, store: UpdateStore, run_id: str) -> bytes:
    """The archive of ``run_id`` as zip bytes, for small archives (:func:`write_archive_zip`)."""
    buffer = io.BytesIO()
    write_archive_zip(entries, store, run_id, buffer)
    return buffer.getvalue()


def extract_archive(source: bytes | Path | IO[bytes], out: Path) -> dict[str, Any]:
    """Unpack a zip from :func:`write_archive_zip` (bytes, a path or a file) into ``out``.

    ``out`` must not exist yet.

    Only ``index.json`` and ``weights/<64 hex>.npz`` are accepted, so no name in the zip
    can write outside ``out``; only stored (uncompressed) members, as :func:`archive_zip`
    writes them, so what is unpacked is never larger than what was downloaded (no zip bomb).
    Everything is checked before ``out`` is made; the files are then copied one at a time
    (a zip file on disk is never read into memory whole). Returns the archive's index.

    Raises
    ------
    InputError
        If the zip is unreadable, holds any other name, a compressed member or no readable
        index, or ``out`` exists already.
    """
    opened = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with zipfile.ZipFile(opened) as archive:
            members = archive.infolist()
            for info in members:
                if info.compress_type != zipfile.ZIP_STORED:
                    raise InputError(
                        f"the run archive's {info.filename[:80]!r} is compressed; "
                        "a run archive stores its files uncompressed"
                    )
                if info.filename == "index.json":
                    continue
                folder, _, file = info.filename.partition("/")
                if folder != "weights" or not file.endswith(".npz") or not is_hex64(file[:-4]):
                    raise InputError(
                        f"the run archive holds {info.filename!r}, which is not weights/<hash>.npz"
                    )
            try:
                index = json.loads(archive.read("index.json"))
            except (KeyError, ValueError) as err:
                raise InputError("the run archive has no readable index.json") from err
            if (
                not isinstance(index, dict)
                or index.get("format") != ARCHIVE_FORMAT
                or not isinstance(index.get("rounds"), list)
            ):
                raise InputError(f"the run archive's index is not a {ARCHIVE_FORMAT} index")
            _new_directory(out)
            for info in members:
                if info.filename == "index.json":
                    continue
                with archive.open(info) as member, (out / info.filename).open("wb") as copy:
                    shutil.copyfileobj(member, copy, _COPY_CHUNK)
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"the run archive is not a readable zip: {err}") from err
    _write_index(out, index)
    return index
