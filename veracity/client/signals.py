"""Registering signals: recordings (CSV) or windows (NPZ), validated before anything is stored.

A CSV recording has a header, a timestamp column, one column per channel and a label column,
one row per sample. Timestamps are numbers (seconds, or milliseconds with ``time_unit="ms"``)
or ISO 8601 date-times (``1970-01-01 00:04:40.015``, as in the Daphnet files). A dataset is
one CSV file or a folder of them (one recording each, in file-name order).

An NPZ file holds ``x`` and ``y``: ``x`` of shape ``(samples, channels)`` with ``y`` a label
per sample (one recording), or ``(windows, channels, steps)`` with ``y`` a label per window;
optionally ``channels`` (their names) and ``rate`` (Hz), which must then agree with what
the operator declares.

Refused, each with its own message naming the file, row and channel where there is one: a
declared channel the file lacks, a sampling rate other than the declared one (measured from
the timestamps: more than 2 % off), timestamps that do not increase or leave a gap of more
than 1.5 sampling periods, missing or non-finite samples (``NaN``, empty, ``inf``), a label
outside the declared classes, and an empty recording.
"""

from __future__ import annotations

import csv
import io
import math
import zipfile
from collections.abc import Sequence
from datetime import datetime

import numpy as np
import numpy.typing as npt

from veracity.client.records import Records, Source, class_index, finite_cell
from veracity.errors import InputError

__all__ = ["RATE_TOLERANCE", "load_npz", "npz_floats", "parse_signals"]

#: The largest relative difference between the measured and the declared sampling rate.
RATE_TOLERANCE = 0.02
#: The longest step between samples, in sampling periods, before it counts as a gap.
_MAX_STEP = 1.5
_TIME_UNITS = {"s": 1.0, "ms": 1e-3}


def _timestamp(name: str, text: str, where: str, unit: float) -> float:
    stripped = text.strip()
    try:
        return float(stripped) * unit
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(stripped)
    except ValueError as err:
        raise InputError(
            f"{name}: timestamp {stripped[:40]!r} at {where} is neither a number nor an "
            "ISO 8601 date-time"
        ) from err
    return moment.timestamp() if moment.tzinfo else (moment - datetime(1970, 1, 1)).total_seconds()


def _check_rate(name: str, times: npt.NDArray[np.float64], rate: float) -> None:
    if times.shape[0] < 2:
        return
    steps = np.diff(times)
    if not np.all(np.isfinite(steps)) or np.any(steps <= 0):
        row = int(np.flatnonzero(~(steps > 0))[0]) + 2
        raise InputError(f"{name}: timestamps do not increase at row {row}")
    measured = (times.shape[0] - 1) / float(times[-1] - times[0])
    if abs(measured / rate - 1.0) > RATE_TOLERANCE:
        raise InputError(
            f"{name}: sampled at {measured:.4g} Hz, but the declared rate is {rate:g} Hz; "
            "resample the recording or declare its rate"
        )
    gaps = np.flatnonzero(steps > _MAX_STEP / rate)
    if gaps.size:
        row = int(gaps[0]) + 2
        raise InputError(
            f"{name}: a gap of {float(steps[gaps[0]]):.4g} s before row {row} (the sampling "
            f"period is {1 / rate:.4g} s); split the recording at the gap"
        )


def _parse_csv_recording(
    name: str,
    data: bytes,
    *,
    label: str,
    classes: Sequence[str],
    channels: Sequence[str] | None,
    timestamp: str,
    time_unit: float,
    rate: float,
) -> tuple[tuple[str, ...], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
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
        for required, what in ((timestamp, "timestamp"), (label, "label")):
            if required not in header:
                raise InputError(
                    f"{name}: no {what} column {required!r}; the columns are {', '.join(header)}"
                )
        chosen = (
            tuple(c for c in header if c not in (timestamp, label))
            if channels is None
            else tuple(channels)
        )
        missing = [c for c in chosen if c not in header]
        if missing:
            raise InputError(
                f"{name}: the recording has no channel {missing[0]!r}; its columns are "
                f"{', '.join(header)}"
            )
        if not chosen:
            raise InputError(f"{name}: the recording has no channel columns")
        position = {column: index for index, column in enumerate(header)}
        channel_index = [position[c] for c in chosen]
        times: list[float] = []
        samples: list[list[float]] = []
        labels: list[int] = []
        row_number = 0
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            row_number += 1
            line = reader.line_num
            if len(row) != len(header):
                raise InputError(
                    f"{name}: row {row_number} (line {line}) has {len(row)} fields; "
                    f"the header has {len(header)}"
                )
            times.append(
                _timestamp(
                    name, row[position[timestamp]], f"row {row_number} (line {line})", time_unit
                )
            )
            samples.append(
                [
                    finite_cell(
                        name,
                        row[i],
                        f"row {row_number} (line {line}), channel {c!r}",
                        what="sample",
                    )
                    for c, i in zip(chosen, channel_index, strict=True)
                ]
            )
            where = f"row {row_number} (line {line}), column {label!r}"
            labels.append(class_index(name, row[position[label]], classes, where, label))
    except csv.Error as err:
        raise InputError(f"{name}: malformed CSV at line {reader.line_num}: {err}") from err
    if not samples:
        raise InputError(f"{name}: the recording has no samples")
    _check_rate(name, np.asarray(times, dtype=np.float64), rate)
    values = np.asarray(samples, dtype=np.float64).reshape(len(samples), len(chosen))
    return chosen, values, np.asarray(labels, dtype=np.int64)


def _npz_labels(
    name: str, raw: npt.NDArray[np.generic], classes: Sequence[str], label: str, unit: str
) -> npt.NDArray[np.int64]:
    out = np.empty(raw.shape[0], dtype=np.int64)
    for index, value in enumerate(raw.tolist()):
        out[index] = class_index(name, value, classes, f"{unit} {index + 1}", label)
    return out


def load_npz(name: str, data: bytes) -> dict[str, npt.NDArray[np.generic]]:
    """Every array of an NPZ file (pickled objects refused).

    Raises
    ------
    InputError
        If the bytes are not a readable NPZ file.
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise InputError(f"{name}: not a readable NPZ file ({err})") from err


def npz_floats(name: str, x: npt.NDArray[np.generic], what: str) -> npt.NDArray[np.float64]:
    """The NPZ array ``x`` as float64, refusing non-numeric and non-finite values.

    Raises
    ------
    InputError
        Naming the first non-finite value's position.
    """
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise InputError(f"{name}: x holds {x.dtype}, not numbers")
    values = np.asarray(x, dtype=np.float64)
    bad = np.argwhere(~np.isfinite(values))
    if bad.size:
        where = ", ".join(str(int(i)) for i in bad[0])
        problem = "missing sample (NaN)" if math.isnan(values[tuple(bad[0])]) else "non-finite"
        raise InputError(f"{name}: {problem} in x at {what} [{where}]")
    return values


def _parse_npz(
    name: str,
    data: bytes,
    *,
    label: str,
    classes: Sequence[str],
    channels: Sequence[str] | None,
    rate: float,
) -> Records:
    arrays = load_npz(name, data)
    if "x" not in arrays or "y" not in arrays:
        raise InputError(f"{name}: an NPZ dataset holds arrays 'x' and 'y'; found {sorted(arrays)}")
    x, y = arrays["x"], arrays["y"]
    if x.ndim not in (2, 3):
        raise InputError(
            f"{name}: x has shape {x.shape}; expected (samples, channels) or "
            "(windows, channels, steps)"
        )
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise InputError(f"{name}: y has shape {y.shape}; expected ({x.shape[0]},)")
    if "rate" in arrays:
        stored = float(np.asarray(arrays["rate"]).reshape(-1)[0])
        if abs(stored / rate - 1.0) > RATE_TOLERANCE:
            raise InputError(
                f"{name}: sampled at {stored:g} Hz, but the declared rate is {rate:g} Hz"
            )
    width = x.shape[1]
    if "channels" in arrays:
        names = tuple(str(c) for c in arrays["channels"].tolist())
        if len(names) != width:
            raise InputError(f"{name}: 'channels' names {len(names)} channels, x has {width}")
    else:
        names = tuple(f"ch{i}" for i in range(width))
    chosen = names if channels is None else tuple(channels)
    missing = [c for c in chosen if c not in names]
    if missing:
        raise InputError(
            f"{name}: the recording has no channel {missing[0]!r}; its channels are "
            f"{', '.join(names)}"
        )
    index = [names.index(c) for c in chosen]
    if x.shape[0] == 0:
        raise InputError(f"{name}: x holds no {'windows' if x.ndim == 3 else 'samples'}")
    if x.ndim == 3:
        values = npz_floats(name, x, "window, channel, step")[:, index, :]
        labels = _npz_labels(name, y, classes, label, "window")
        geometry = {"rate": float(rate), "layout": "windows", "steps": int(x.shape[2])}
    else:
        values = npz_floats(name, x, "sample, channel")[:, index]
        labels = _npz_labels(name, y, classes, label, "sample")
        geometry = {"rate": float(rate), "layout": "recordings"}
    return Records(
        kind="signals",
        label=label,
        classes=tuple(classes),
        channels=chosen,
        geometry=geometry,
        arrays=(np.ascontiguousarray(values),),
        labels=(labels,),
        source_files=(name,),
    )


def parse_signals(
    source: Source,
    *,
    label: str,
    classes: Sequence[str],
    rate: float,
    channels: Sequence[str] | None = None,
    timestamp: str = "timestamp",
    time_unit: str = "s",
) -> Records:
    """Validate recordings or windows (see the module docstring).

    Parameters
    ----------
    source
        One CSV or NPZ file, or a folder of CSV files.
    label, classes
        The label column (or what NPZ labels mean) and its values in class order.
    rate
        The sampling rate in Hz every recording must have.
    channels
        The channels to keep, in order (default: every column but timestamp and label).
    timestamp, time_unit
        The timestamp column of CSV recordings and the unit of numeric timestamps
        (``s`` or ``ms``).

    Raises
    ------
    InputError
        Naming the first problem found.
    """
    if not (math.isfinite(rate) and rate > 0):
        raise InputError(f"the sampling rate {rate!r} must be a positive number of Hz")
    if time_unit not in _TIME_UNITS:
        raise InputError(f"time unit {time_unit!r} must be 's' or 'ms'")
    if channels is not None and len(set(channels)) != len(channels):
        raise InputError("a channel is listed twice")
    names = sorted(source.files)
    if not names:
        raise InputError(f"{source.path}: the folder holds no recordings")
    if not source.directory and names[0].lower().endswith(".npz"):
        return _parse_npz(
            names[0], source.single(), label=label, classes=classes, channels=channels, rate=rate
        )
    recordings: list[npt.NDArray[np.float64]] = []
    labels: list[npt.NDArray[np.int64]] = []
    chosen: tuple[str, ...] | None = None
    for name in names:
        if not name.lower().endswith(".csv"):
            raise InputError(f"{name}: recordings are .csv files (or one .npz file)")
        these, values, sample_labels = _parse_csv_recording(
            name,
            source.files[name],
            label=label,
            classes=classes,
            channels=channels if channels is not None else chosen,
            timestamp=timestamp,
            time_unit=_TIME_UNITS[time_unit],
            rate=rate,
        )
        chosen = these
        recordings.append(values)
        labels.append(sample_labels)
    if chosen is None:  # pragma: no cover - names is not empty
        raise InputError(f"{source.path}: no recordings")
    return Records(
        kind="signals",
        label=label,
        classes=tuple(classes),
        channels=chosen,
        geometry={"rate": float(rate), "layout": "recordings"},
        arrays=tuple(recordings),
        labels=tuple(labels),
        source_files=tuple(names),
    )
