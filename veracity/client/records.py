"""Datasets of signals and images: what registration validated, and what training reads.

A table has one row per record (:class:`veracity.client.datasets.Table`). Signals and images
are :class:`Records`: arrays with one label per sample (recordings), per window or per image.

``signals``
    Either *recordings*: each a ``(samples, channels)`` array sampled at ``rate`` Hz with a
    class index per sample (a CSV file with a timestamp column, a folder of them, or an NPZ
    with a 2-D ``x``); or *windows*: one ``(windows, channels, steps)`` array with a class
    index per window (an NPZ with a 3-D ``x``). Windowing recordings is the study's
    (:func:`window_recordings`), done at the site before training.
``images``
    One ``(images, channels, height, width)`` array of raw pixel values with a class index
    per image (a folder of PNG or DICOM files with a labels CSV, or an NPZ).

The content digest (:func:`records_digest`) covers the schema (kind, channels, label,
classes, geometry) and every array's shape, labels and values as float64, so the same
content gives the same digest, and the same commitment, whatever file format it came in.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from veracity.client.fingerprint import label_values
from veracity.core.canonical import canonical_hash, canonical_json, sha256_hex
from veracity.errors import InputError

__all__ = [
    "IMAGE_CHANNELS",
    "Records",
    "Source",
    "MISSING_CELLS",
    "class_index",
    "finite_cell",
    "read_source",
    "records_digest",
    "records_fingerprints",
    "window_recordings",
]

#: How image channels are named, by count (a study's ``features`` for images).
IMAGE_CHANNELS: dict[int, tuple[str, ...]] = {1: ("grey",), 3: ("red", "green", "blue")}

_CONTENT_DOMAIN = b"veracity.dataset-content.v1\x00"
#: Cell texts that mean "no value" (compared lower-cased, after stripping blanks).
MISSING_CELLS = frozenset({"", "na", "n/a", "nan", "null", "none", "?", "#n/a"})
_RECORD_DOMAIN = b"veracity.record.v1\x00"


def finite_cell(name: str, text: str, where: str, *, what: str = "value") -> float:
    """A finite number from one cell of ``name``; ``what`` names it in errors (value, sample).

    Raises
    ------
    InputError
        If the cell is missing, not a number, or not finite, naming ``where``.
    """
    stripped = text.strip()
    if stripped.lower() in MISSING_CELLS:
        raise InputError(f"{name}: missing {what} ({stripped or 'empty'}) at {where}")
    try:
        value = float(stripped)
    except ValueError as err:
        raise InputError(f"{name}: non-numeric {what} {stripped[:40]!r} at {where}") from err
    if not math.isfinite(value):
        raise InputError(f"{name}: non-finite {what} {stripped[:40]!r} at {where}")
    return value


def class_index(name: str, raw: object, classes: Sequence[str], where: str, label: str) -> int:
    """The class index of a label value (``classes`` in index order).

    A value matches a class by its text (``walk``), or as a number equal to an integer
    class (``1.0`` is class ``1``).

    Raises
    ------
    InputError
        If the value is missing or not one of ``classes``.
    """
    text = str(raw).strip()
    if text in classes:
        return classes.index(text)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if text.lower() in MISSING_CELLS:
        raise InputError(f"{name}: missing value at {where}")
    if math.isfinite(value) and value == int(value) and str(int(value)) in classes:
        return classes.index(str(int(value)))
    allowed = " or ".join(classes) if len(classes) == 2 else ", ".join(classes)
    raise InputError(
        f"{name}: label {label!r} must be {allowed}, found {text[:40]!r} at {where}; "
        "a label outside the declared classes is refused"
    )


@dataclass(frozen=True)
class Source:
    """A dataset's bytes as read once: one file, or every file of a folder.

    ``sha256`` is the file's SHA-256, or for a folder the SHA-256 of the RFC 8785 JSON of
    ``{"files": {relative path: SHA-256}}``; the agent refuses to train when it changed.
    """

    path: Path
    files: dict[str, bytes]
    sha256: str
    directory: bool

    def single(self) -> bytes:
        """The bytes of a one-file source."""
        return next(iter(self.files.values()))


_MAX_FILES = 1_000_000


def read_source(path: Path) -> Source:
    """Read a data file, or every regular file under a folder (hidden ones left out).

    Raises
    ------
    InputError
        If the path does not exist or cannot be read.
    """
    try:
        if path.is_dir():
            files: dict[str, bytes] = {}
            for item in sorted(path.rglob("*")):
                relative = item.relative_to(path).as_posix()
                if any(part.startswith(".") for part in relative.split("/")):
                    continue
                if item.is_file():
                    files[relative] = item.read_bytes()
                    if len(files) > _MAX_FILES:
                        raise InputError(f"{path}: more than {_MAX_FILES} files")
            manifest = {"files": {name: sha256_hex(data) for name, data in files.items()}}
            return Source(path, files, canonical_hash(manifest), True)
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise InputError(f"no such file or folder: {path}") from err
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror or err}") from err
    return Source(path, {path.name: data}, sha256_hex(data), False)


@dataclass(frozen=True)
class Records:
    """A validated dataset of signals or images (see the module docstring).

    ``geometry`` is what the kind declares: for signals ``rate`` and ``layout``
    (``recordings`` or ``windows``, with ``steps`` for windows); for images ``height``,
    ``width`` and ``channels``.
    """

    kind: Literal["signals", "images"]
    label: str
    classes: tuple[str, ...]
    channels: tuple[str, ...]
    geometry: dict[str, Any]
    arrays: tuple[npt.NDArray[np.float64], ...]
    labels: tuple[npt.NDArray[np.int64], ...]
    source_files: tuple[str, ...] = field(default=())

    @property
    def rows(self) -> int:
        """Samples of all recordings, or windows, or images."""
        return int(sum(labels.shape[0] for labels in self.labels))

    @property
    def positives(self) -> int:
        """Labels of a class other than the first."""
        return int(sum(np.count_nonzero(labels) for labels in self.labels))

    def schema(self) -> dict[str, Any]:
        """The public schema: kind, channels, label, classes and geometry."""
        return {
            "kind": self.kind,
            "channels": list(self.channels),
            "label": self.label,
            "label_values": label_values(self.classes),
            **self.geometry,
            "type": "float64",
        }

    def schema_hash(self) -> str:
        """SHA-256 (hex) of the RFC 8785 JSON of :meth:`schema`."""
        return canonical_hash(self.schema())

    def layout(self) -> dict[str, Any]:
        """What the store keeps about the dataset beyond its columns."""
        return {"kind": self.kind, "classes": list(self.classes), **self.geometry}

    def records(self) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]]:
        """Each record (a recording, a window or an image) with its label(s)."""
        if self.kind == "signals" and self.geometry.get("layout") == "recordings":
            yield from zip(self.labels, self.arrays, strict=True)
            return
        for labels, values in zip(self.labels, self.arrays, strict=True):
            for index in range(labels.shape[0]):
                yield labels[index : index + 1], values[index]


def _record_bytes(labels: npt.NDArray[np.int64], values: npt.NDArray[np.float64]) -> bytes:
    shape = struct.pack(">B", values.ndim) + b"".join(struct.pack(">Q", d) for d in values.shape)
    return (
        shape
        + np.ascontiguousarray(labels, dtype="<f8").tobytes()
        + np.ascontiguousarray(values, dtype="<f8").tobytes()
    )


def records_digest(records: Records) -> str:
    r"""SHA-256 (hex) of the content, independent of the file format.

    ::

        SHA-256( "veracity.dataset-content.v1" || 0x00
                 || u32be(len(S)) || S              S = RFC 8785 JSON of the schema
                 || u64be(records)
                 || per record: u8 ndim || u64be(dim)... || labels float64-LE
                                || values float64-LE, C order )

    The schema holds ``kind``, which a table's schema lacks, so no table shares a digest
    with signals or images.
    """
    schema = canonical_json(records.schema())
    items = list(records.records())
    digest = hashlib.sha256(_CONTENT_DOMAIN)
    digest.update(struct.pack(">I", len(schema)) + schema)
    digest.update(struct.pack(">Q", len(items)))
    for labels, values in items:
        digest.update(_record_bytes(labels, values))
    return digest.hexdigest()


def records_fingerprints(key: bytes, records: Records) -> list[str]:
    """One salted fingerprint (32 hex) per record: a recording, a window or an image.

    ``HMAC-SHA256(key, "veracity.record.v1" || 0x00 || u32be(len(S)) || S || record)[:16]``
    with ``S`` the schema's JSON and ``record`` as in :func:`records_digest`. The same
    recording, window or image registered again (in any format) is recognised and draws
    from the same budget.

    Raises
    ------
    InputError
        If the key is not 32 bytes.
    """
    if len(key) != 32:
        raise InputError("a record key is 32 bytes")
    schema = canonical_json(records.schema())
    keyed = hmac.new(key, _RECORD_DOMAIN + struct.pack(">I", len(schema)) + schema, hashlib.sha256)
    fingerprints = []
    for labels, values in records.records():
        digest = keyed.copy()
        digest.update(_record_bytes(labels, values))
        fingerprints.append(digest.digest()[:16].hex())
    return fingerprints


def window_recordings(
    recordings: tuple[npt.NDArray[np.float64], ...],
    labels: tuple[npt.NDArray[np.int64], ...],
    *,
    window: int,
    hop: int,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Cut recordings into windows: ``(windows, channels, window)`` and one label each.

    Windows start every ``hop`` samples and never cross two recordings; a recording shorter
    than ``window`` gives none. A window's label is its most frequent sample label, ties
    going to the higher class index (a window half in a freeze is a freeze).
    """
    xs: list[npt.NDArray[np.float64]] = []
    ys: list[int] = []
    for recording, sample_labels in zip(recordings, labels, strict=True):
        samples = recording.shape[0]
        if samples < window:
            continue
        starts = range(0, samples - window + 1, hop)
        view = np.lib.stride_tricks.sliding_window_view(recording, window, axis=0)[::hop]
        xs.append(np.asarray(view, dtype=np.float64))  # (windows, channels, window)
        for start in starts:
            counts = np.bincount(sample_labels[start : start + window])
            ys.append(int(len(counts) - 1 - np.argmax(counts[::-1])))
    if not xs:
        channels = recordings[0].shape[1] if recordings else 0
        return np.empty((0, channels, window)), np.empty(0, dtype=np.int64)
    return np.concatenate(xs), np.asarray(ys, dtype=np.int64)
