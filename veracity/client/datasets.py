"""Registering a site's datasets: reading, validating, fingerprinting.

Three kinds. A ``table`` (CSV or Parquet) has one label column and numeric feature columns,
one row per patient; ``signals`` (:mod:`veracity.client.signals`) and ``images``
(:mod:`veracity.client.images`) are validated by their own modules. The label's values are
the declared classes (default ``0`` and ``1``). Validation of a table refuses, each with
its own message naming the row and column where it can: an unreadable or non-UTF-8 file, a
file that is not comma-separated, a missing label or feature column, duplicate column
names, rows with the wrong number of fields, non-numeric or non-finite values, missing
values (empty, ``NA``, ``NaN``, ``null``, ...), a label outside the declared classes, a
label with a single class, and fewer rows than the site's minimum. Nothing is registered
unless everything passes.

Rows are numbered from 1 (the first data row); for CSV the physical line is given too
(the header is line 1).

The file (or folder) stays where it is: the store records its absolute path and SHA-256,
and the agent re-reads and re-hashes it before each round (:func:`load_registered`),
refusing to train on data that changed.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from veracity.client.fingerprint import (
    commitment,
    content_digest,
    new_salt,
    record_fingerprints,
    schema_hash,
)
from veracity.client.images import DEFAULT_LABELS_FILE, parse_images
from veracity.client.records import (
    Records,
    Source,
    class_index,
    finite_cell,
    read_source,
    records_digest,
    records_fingerprints,
)
from veracity.client.signals import parse_signals
from veracity.client.site import Site
from veracity.client.store import Dataset, SignedStatement
from veracity.contracts.events import DatasetRegistered
from veracity.core.canonical import sha256_hex
from veracity.errors import ApprovalMissing, InputError
from veracity.tasks.study import BINARY_CLASSES

__all__ = [
    "DATASET_ID_PATTERN",
    "ImagesDeclared",
    "Loaded",
    "SignalsDeclared",
    "Table",
    "parse_table",
    "read_table",
    "register_dataset",
    "check_registered",
    "load_registered",
]

log = logging.getLogger(__name__)

DATASET_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

_CLASS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()/-]{0,127}$")
_OTHER_DELIMITERS = ((";", "semicolon"), ("\t", "tab"), ("|", "pipe"))
_CSV_SUFFIXES = frozenset({".csv"})
_PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})


@dataclass(frozen=True)
class Table:
    """A validated dataset: feature matrix, class indices, the column names and classes."""

    features: tuple[str, ...]
    label: str
    x: npt.NDArray[np.float64]
    y: npt.NDArray[np.int64]
    classes: tuple[str, ...] = BINARY_CLASSES

    @property
    def rows(self) -> int:
        """Number of rows (patients)."""
        return int(self.y.shape[0])

    @property
    def positives(self) -> int:
        """Number of rows of a class other than the first (labelled 1, for two classes)."""
        return int(np.count_nonzero(self.y))


@dataclass(frozen=True)
class SignalsDeclared:
    """What a site operator declares about recordings (see :mod:`veracity.client.signals`)."""

    rate: float
    channels: tuple[str, ...] | None = None
    timestamp: str = "timestamp"
    time_unit: str = "s"


@dataclass(frozen=True)
class ImagesDeclared:
    """What a site operator declares about images (see :mod:`veracity.client.images`)."""

    height: int
    width: int
    channels: int = 1
    labels_file: str = DEFAULT_LABELS_FILE


Loaded = Table | Records


def _parse_records(
    source: Source,
    declared: SignalsDeclared | ImagesDeclared,
    *,
    label: str,
    classes: Sequence[str],
    channels: Sequence[str] | None = None,
) -> Records:
    if isinstance(declared, SignalsDeclared):
        return parse_signals(
            source,
            label=label,
            classes=classes,
            rate=declared.rate,
            channels=declared.channels if channels is None else channels,
            timestamp=declared.timestamp,
            time_unit=declared.time_unit,
        )
    return parse_images(
        source,
        label=label,
        classes=classes,
        height=declared.height,
        width=declared.width,
        channels=declared.channels,
        labels_file=declared.labels_file,
    )


def _declared_of(dataset: Dataset) -> SignalsDeclared | ImagesDeclared | None:
    layout = dataset.layout
    if dataset.kind == "signals":
        return SignalsDeclared(
            rate=float(layout["rate"]),
            channels=dataset.features,
            timestamp=str(layout.get("timestamp", "timestamp")),
            time_unit=str(layout.get("time_unit", "s")),
        )
    if dataset.kind == "images":
        return ImagesDeclared(
            height=int(layout["height"]),
            width=int(layout["width"]),
            channels=len(dataset.features),
            labels_file=str(layout.get("labels_file", DEFAULT_LABELS_FILE)),
        )
    return None


def _records_format(source: Source, records: Records) -> str:
    if not source.directory:
        return "npz"
    return "csv-folder" if records.kind == "signals" else "image-folder"


def _file_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _CSV_SUFFIXES:
        return "csv"
    if suffix in _PARQUET_SUFFIXES:
        return "parquet"
    raise InputError(f"{path.name}: expected a .csv or .parquet file")


def _select_columns(
    name: str, header: Sequence[str], label: str, features: Sequence[str] | None
) -> tuple[str, ...]:
    seen: set[str] = set()
    for column in header:
        if column in seen:
            raise InputError(f"{name}: column {column!r} appears twice in the header")
        seen.add(column)
    for index, column in enumerate(header, start=1):
        if not column:
            raise InputError(f"{name}: column {index} of the header has no name")
    if label not in seen:
        raise InputError(f"{name}: no label column {label!r}; the columns are {', '.join(header)}")
    if features is None:
        chosen = tuple(column for column in header if column != label)
    else:
        chosen = tuple(features)
        if len(set(chosen)) != len(chosen):
            raise InputError(f"{name}: a feature is listed twice")
        if label in chosen:
            raise InputError(f"{name}: the label {label!r} cannot also be a feature")
        missing = [column for column in chosen if column not in seen]
        if missing:
            raise InputError(
                f"{name}: no feature column {missing[0]!r}; the columns are {', '.join(header)}"
            )
    if not chosen:
        raise InputError(f"{name}: there are no feature columns besides the label {label!r}")
    return chosen


def _check_delimiter(name: str, header: Sequence[str], label: str) -> None:
    if label in header:
        return
    for delimiter, described in _OTHER_DELIMITERS:
        if any(delimiter in column for column in header):
            raise InputError(
                f"{name}: the header looks {described}-separated ({header[0][:60]!r}); "
                "Veracity reads comma-separated CSV: save the file with ',' as delimiter"
            )


def _label_value(
    name: str, value: float, shown: str, where: str, label: str, classes: Sequence[str]
) -> int:
    if classes == BINARY_CLASSES:
        if value == 0.0:
            return 0
        if value == 1.0:
            return 1
        raise InputError(f"{name}: label {label!r} must be 0 or 1, found {shown[:40]!r} at {where}")
    return class_index(name, shown, classes, where, label)


def _finish(
    name: str,
    label: str,
    features: tuple[str, ...],
    x: npt.NDArray[np.float64],
    y: npt.NDArray[np.int64],
    min_rows: int,
    classes: Sequence[str],
) -> Table:
    rows = int(y.shape[0])
    if rows < min_rows:
        raise InputError(f"{name}: {rows} data rows; at least {min_rows} are needed")
    present = np.unique(y)
    if present.size < 2:
        only = classes[int(present[0])] if present.size else "none"
        raise InputError(
            f"{name}: label {label!r} has only the class {only} ({rows} rows); "
            "training needs rows of at least two classes"
        )
    return Table(features=features, label=label, x=x, y=y, classes=tuple(classes))


def _parse_csv(
    name: str,
    data: bytes,
    label: str,
    features: Sequence[str] | None,
    min_rows: int,
    classes: Sequence[str],
) -> Table:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"{name}: not UTF-8 text (byte {err.start}); save it as UTF-8") from err
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header_row = next(reader, None)
        if header_row is None or not any(cell.strip() for cell in header_row):
            raise InputError(f"{name}: the file is empty; expected a header row")
        header = [cell.strip() for cell in header_row]
        _check_delimiter(name, header, label)
        chosen = _select_columns(name, header, label, features)
        position = {column: index for index, column in enumerate(header)}
        feature_index = [position[column] for column in chosen]
        label_index = position[label]
        matrix: list[list[float]] = []
        labels: list[int] = []
        data_row = 0
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            data_row += 1
            line = reader.line_num
            if len(row) != len(header):
                raise InputError(
                    f"{name}: row {data_row} (line {line}) has {len(row)} fields; "
                    f"the header has {len(header)}"
                )
            values = []
            for column, index in zip(chosen, feature_index, strict=True):
                where = f"row {data_row} (line {line}), column {column!r}"
                values.append(finite_cell(name, row[index], where))
            where = f"row {data_row} (line {line}), column {label!r}"
            raw_label = row[label_index]
            if tuple(classes) == BINARY_CLASSES:
                labels.append(
                    _label_value(
                        name,
                        finite_cell(name, raw_label, where),
                        raw_label.strip(),
                        where,
                        label,
                        classes,
                    )
                )
            else:
                labels.append(class_index(name, raw_label, classes, where, label))
            matrix.append(values)
    except csv.Error as err:
        raise InputError(f"{name}: malformed CSV at line {reader.line_num}: {err}") from err
    x = np.asarray(matrix, dtype=np.float64).reshape(len(matrix), len(chosen))
    y = np.asarray(labels, dtype=np.int64)
    return _finish(name, label, chosen, x, y, min_rows, classes)


def _parquet_column(name: str, table: object, column: str) -> npt.NDArray[np.float64]:
    import pyarrow as pa
    import pyarrow.compute as pc

    if not isinstance(table, pa.Table):  # pragma: no cover - only called with tables
        raise InputError(f"{name}: not a table")
    values = table.column(column)
    kind = values.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        texts = values.to_pylist()
        out = np.empty(len(texts), dtype=np.float64)
        for index, text in enumerate(texts):
            where = f"row {index + 1}, column {column!r}"
            if text is None:
                raise InputError(f"{name}: missing value at {where}")
            out[index] = finite_cell(name, str(text), where)
        return out
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        raise InputError(f"{name}: column {column!r} holds {kind}, not numbers")
    if values.null_count:
        first = int(pc.index(pc.is_null(values), True).as_py())
        raise InputError(f"{name}: missing value at row {first + 1}, column {column!r}")
    array = np.asarray(values.to_numpy(), dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        first = int(bad[0])
        problem = "missing value" if math.isnan(array[first]) else "non-finite value"
        raise InputError(f"{name}: {problem} at row {first + 1}, column {column!r}")
    return array


def _parse_parquet(
    name: str,
    data: bytes,
    label: str,
    features: Sequence[str] | None,
    min_rows: int,
    classes: Sequence[str],
) -> Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError, ValueError) as err:
        raise InputError(f"{name}: not a readable Parquet file ({err})") from err
    chosen = _select_columns(name, table.column_names, label, features)
    columns = [_parquet_column(name, table, column) for column in chosen]
    x = np.column_stack(columns) if columns else np.empty((table.num_rows, 0))
    if tuple(classes) == BINARY_CLASSES:
        raw_labels: Sequence[object] = list(_parquet_column(name, table, label))
    else:
        raw_labels = table.column(label).to_pylist()
    y = np.empty(len(raw_labels), dtype=np.int64)
    for index, value in enumerate(raw_labels):
        where = f"row {index + 1}, column {label!r}"
        if tuple(classes) == BINARY_CLASSES:
            number = float(value)  # type: ignore[arg-type]
            y[index] = _label_value(name, number, repr(number), where, label, classes)
        else:
            y[index] = class_index(name, "" if value is None else value, classes, where, label)
    return _finish(name, label, chosen, np.asarray(x, dtype=np.float64), y, min_rows, classes)


def parse_table(
    name: str,
    data: bytes,
    file_format: str,
    *,
    label: str,
    features: Sequence[str] | None = None,
    min_rows: int = 2,
    classes: Sequence[str] = BINARY_CLASSES,
) -> Table:
    """Validate and parse a dataset held in memory.

    Parameters
    ----------
    name
        How messages name the file.
    data
        The file's bytes.
    file_format
        ``"csv"`` or ``"parquet"``.
    label
        The label column.
    features
        The feature columns, in model order (default: every column but the label).
    min_rows
        The fewest rows accepted.
    classes
        The label's values in class-index order (default ``0`` and ``1``).

    Raises
    ------
    InputError
        Naming the first problem found, with its row and column where there is one.
    """
    classes = check_classes(classes)
    if file_format == "csv":
        return _parse_csv(name, data, label, features, min_rows, classes)
    if file_format == "parquet":
        return _parse_parquet(name, data, label, features, min_rows, classes)
    raise InputError(f"{name}: unknown file format {file_format!r}")


def check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    """A label's declared classes, checked: at least two, distinct, printable names.

    Raises
    ------
    InputError
        If they are not.
    """
    chosen = tuple(str(c).strip() for c in classes)
    if len(chosen) < 2 or len(chosen) > 1000:
        raise InputError(f"declare between 2 and 1000 classes, not {len(chosen)}")
    if len(set(chosen)) != len(chosen):
        raise InputError("the declared classes must be distinct")
    for value in chosen:
        if not _CLASS_NAME.match(value):
            raise InputError(f"class {value[:40]!r} must be 1-128 printable characters")
    return chosen


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as err:
        raise InputError(f"no such file: {path}") from err
    except IsADirectoryError as err:
        raise InputError(f"{path} is a directory, not a data file") from err
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror or err}") from err


def read_table(
    path: Path,
    *,
    label: str,
    features: Sequence[str] | None = None,
    min_rows: int = 2,
    classes: Sequence[str] = BINARY_CLASSES,
) -> tuple[Table, str]:
    """Read, validate and parse a CSV or Parquet file; returns the table and the file's SHA-256.

    The hash and the table come from the same bytes.

    Raises
    ------
    InputError
        If the file is missing, of an unknown type, or fails validation.
    """
    file_format = _file_format(path)
    data = _read_bytes(path)
    table = parse_table(
        path.name,
        data,
        file_format,
        label=label,
        features=features,
        min_rows=min_rows,
        classes=classes,
    )
    return table, sha256_hex(data)


def register_dataset(
    site: Site,
    *,
    dataset_id: str,
    path: Path,
    label: str,
    features: Sequence[str] | None = None,
    epsilon_budget: float | None = None,
    delta: float | None = None,
    min_rows: int | None = None,
    salt: bytes | None = None,
    classes: Sequence[str] = BINARY_CLASSES,
    declared: SignalsDeclared | ImagesDeclared | None = None,
) -> tuple[Dataset, SignedStatement]:
    """Validate a data file and register it, with a signed ``dataset.registered`` statement.

    Parameters
    ----------
    site
        The opened site.
    dataset_id
        The id studies are approved against.
    path
        The CSV or Parquet file; it stays where it is.
    label, features
        Label column and feature columns (default: all but the label).
    epsilon_budget, delta
        The dataset's privacy budget (default: the site's defaults). Every study's rounds
        on this dataset compose against it.
    min_rows
        Minimum rows (default: the site's setting).
    salt
        The commitment salt (default: 32 fresh random bytes; tests inject one).
    classes
        The label's values in class-index order (default ``0`` and ``1``); a row with
        another value is refused.
    declared
        For signals (:class:`SignalsDeclared`: a CSV file, a folder of them or an NPZ) or
        images (:class:`ImagesDeclared`: a folder of PNG or DICOM with a labels CSV, or an
        NPZ), what the operator declares; ``None`` for a table. ``features`` then names
        the channels of signals to keep.

    Returns
    -------
    tuple
        The stored :class:`~veracity.client.store.Dataset` (with the budget pool it draws
        from: a dataset sharing any record with registered ones joins their pool) and its
        signed statement.

    Raises
    ------
    InputError
        If the id or budget is invalid, the file fails validation, the id is taken or the
        same data is already registered. Nothing is written then.
    """
    if not DATASET_ID_PATTERN.match(dataset_id):
        raise InputError(
            f"dataset id {dataset_id!r} must be 1-128 letters, digits, '.', '_' or '-'"
        )
    budget = site.config.default_epsilon_budget if epsilon_budget is None else epsilon_budget
    if not (math.isfinite(budget) and budget > 0):
        raise InputError(f"epsilon budget {budget!r} must be positive and finite")
    chosen_delta = site.config.default_delta if delta is None else delta
    if not (math.isfinite(chosen_delta) and 0 < chosen_delta < 1):
        raise InputError(f"delta {chosen_delta!r} must lie in (0, 1)")
    resolved = path.expanduser().resolve()
    if declared is not None:
        return _register_records(
            site,
            dataset_id=dataset_id,
            path=resolved,
            label=label,
            features=features,
            budget=float(budget),
            delta=float(chosen_delta),
            min_rows=site.config.min_rows if min_rows is None else min_rows,
            salt=salt,
            classes=check_classes(classes),
            declared=declared,
        )
    table, file_hash = read_table(
        resolved,
        label=label,
        features=features,
        min_rows=site.config.min_rows if min_rows is None else min_rows,
        classes=classes,
    )
    digest = content_digest(table.features, table.label, table.x, table.y)
    salt_bytes = new_salt() if salt is None else salt
    now = site.now()
    dataset = Dataset(
        dataset_id=dataset_id,
        path=resolved,
        file_format=_file_format(resolved),
        file_sha256=file_hash,
        content_digest=digest,
        salt=salt_bytes,
        commitment=commitment(salt_bytes, digest),
        schema_hash=schema_hash(table.features, table.label, classes=table.classes),
        label=table.label,
        features=table.features,
        rows=table.rows,
        positives=table.positives,
        epsilon_budget=float(budget),
        delta=float(chosen_delta),
        registered_at=now,
        layout=(
            {}
            if table.classes == BINARY_CLASSES
            else {"kind": "table", "classes": list(table.classes)}
        ),
    )
    _fingerprint_older_datasets(site)
    fingerprints = record_fingerprints(
        site.store.record_key(), table.features, table.label, table.x, table.y
    )
    statement = site.sign(
        DatasetRegistered(
            site=site.name,
            dataset_id=dataset_id,
            commitment=dataset.commitment,
            schema_hash=dataset.schema_hash,
            rows=dataset.rows,
            label=dataset.label,
            features=list(dataset.features),
            signed_at=now,
        )
    )
    pool = site.store.add_dataset(dataset, statement, record_fingerprints=fingerprints)
    log.info("registered dataset %s (%d rows) from %s", dataset_id, dataset.rows, resolved)
    if pool.shared:
        log.warning(
            "dataset %s shares records with %s: it draws from budget pool %s",
            dataset_id,
            ", ".join(f"{name} ({count})" for name, count in pool.shared.items()),
            pool.pool_id,
        )
    return dataclasses.replace(dataset, pool_id=pool.pool_id), statement


def _register_records(
    site: Site,
    *,
    dataset_id: str,
    path: Path,
    label: str,
    features: Sequence[str] | None,
    budget: float,
    delta: float,
    min_rows: int,
    salt: bytes | None,
    classes: tuple[str, ...],
    declared: SignalsDeclared | ImagesDeclared,
) -> tuple[Dataset, SignedStatement]:
    """Register signals or images (the rest of :func:`register_dataset`)."""
    source = read_source(path)
    if isinstance(declared, ImagesDeclared) and features is not None:
        raise InputError("images take no feature list; their channels are named by count")
    records = _parse_records(source, declared, label=label, classes=classes, channels=features)
    if records.rows < min_rows:
        raise InputError(f"{path.name}: {records.rows} examples; at least {min_rows} are needed")
    digest = records_digest(records)
    salt_bytes = new_salt() if salt is None else salt
    now = site.now()
    layout = records.layout()
    if isinstance(declared, SignalsDeclared):
        layout |= {"timestamp": declared.timestamp, "time_unit": declared.time_unit}
    else:
        layout |= {"labels_file": declared.labels_file}
    dataset = Dataset(
        dataset_id=dataset_id,
        path=path,
        file_format=_records_format(source, records),
        file_sha256=source.sha256,
        content_digest=digest,
        salt=salt_bytes,
        commitment=commitment(salt_bytes, digest),
        schema_hash=records.schema_hash(),
        label=label,
        features=records.channels,
        rows=records.rows,
        positives=records.positives,
        epsilon_budget=budget,
        delta=delta,
        registered_at=now,
        layout=layout,
    )
    _fingerprint_older_datasets(site)
    fingerprints = records_fingerprints(site.store.record_key(), records)
    statement = site.sign(
        DatasetRegistered(
            site=site.name,
            dataset_id=dataset_id,
            commitment=dataset.commitment,
            schema_hash=dataset.schema_hash,
            rows=dataset.rows,
            label=dataset.label,
            features=list(dataset.features),
            kind=records.kind,
            signed_at=now,
        )
    )
    pool = site.store.add_dataset(dataset, statement, record_fingerprints=fingerprints)
    log.info(
        "registered %s dataset %s (%d examples) from %s",
        records.kind,
        dataset_id,
        records.rows,
        path,
    )
    return dataclasses.replace(dataset, pool_id=pool.pool_id), statement


def _fingerprint_older_datasets(site: Site) -> None:
    """Fingerprint the records of datasets registered before record fingerprints existed.

    A dataset whose file is gone or changed cannot be fingerprinted; it keeps its own
    pool (and the agent refuses to train on it anyway).
    """
    for dataset in site.store.list_datasets():
        if site.store.has_fingerprints(dataset.dataset_id):
            continue
        try:
            table = load_registered(dataset)
        except (ApprovalMissing, InputError) as err:
            log.warning("cannot fingerprint dataset %s: %s", dataset.dataset_id, err)
            continue
        if isinstance(table, Records):
            prints = records_fingerprints(site.store.record_key(), table)
        else:
            prints = record_fingerprints(
                site.store.record_key(), table.features, table.label, table.x, table.y
            )
        site.store.attach_fingerprints(dataset.dataset_id, prints)


def check_registered(dataset: Dataset) -> Source:
    """Read a registered dataset's file (or folder) and check it is still the registered one.

    Returns what was read, for :func:`load_registered`.

    Raises
    ------
    ApprovalMissing
        If the file is gone, unreadable, or no longer has the registered SHA-256.
    """
    try:
        source = read_source(dataset.path)
    except InputError as err:
        raise ApprovalMissing(
            f"dataset {dataset.dataset_id!r} cannot be read ({err}); restore the registered file"
        ) from err
    if source.sha256 != dataset.file_sha256:
        raise ApprovalMissing(
            f"dataset {dataset.dataset_id!r} changed since it was registered "
            f"({dataset.path}); training on it is refused until the registered file is back"
        )
    return source


def load_registered(dataset: Dataset, source: Source | None = None) -> Loaded:
    """Re-read a registered dataset for training, refusing a file that changed.

    ``source`` is what :func:`check_registered` returned (read again and checked when not
    given). A table gives a :class:`Table`, signals and images :class:`Records`.

    Raises
    ------
    ApprovalMissing
        If the file is gone, unreadable, or no longer has the registered SHA-256.
    """
    if source is None:
        source = check_registered(dataset)
    declared = _declared_of(dataset)
    if declared is not None:
        return _parse_records(source, declared, label=dataset.label, classes=dataset.classes)
    return parse_table(
        dataset.path.name,
        source.single(),
        dataset.file_format,
        label=dataset.label,
        features=dataset.features,
        min_rows=1,
        classes=dataset.classes,
    )
