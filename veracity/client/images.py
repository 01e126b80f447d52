"""Registering images: a folder of PNG or DICOM files with a labels CSV, or an NPZ array.

A folder holds the images and a labels CSV (``labels.csv`` unless named otherwise) with a
``file`` column (the image's path inside the folder) and the label column; the images are
read in the CSV's order. PNG files are decoded with Pillow (8- or 16-bit grey, or RGB),
DICOM files with pydicom (its ``pixel_array``; compressed transfer syntaxes need pydicom's
optional decoders). An NPZ file holds ``x`` of shape ``(images, height, width)`` or
``(images, channels, height, width)`` and ``y``, a label per image.

Pixel values are kept as they are (the study's ``intensity_max`` scales them at training),
so the same pixels in PNG and in NPZ give the same digest and commitment.

Refused, each with its own message: a missing labels CSV or ``file`` column, a listed file
that is missing or not a PNG or DICOM file, a truncated or corrupt image, images of
different sizes (or not the declared size), a channel count other than the declared one,
non-finite values in an NPZ, and a label outside the declared classes.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from veracity.client.records import IMAGE_CHANNELS, Records, Source, class_index
from veracity.client.signals import load_npz, npz_floats
from veracity.errors import InputError

__all__ = ["DEFAULT_LABELS_FILE", "IMAGE_SUFFIXES", "decode_image", "parse_images"]

#: File names a folder of images may hold (PNG, DICOM).
IMAGE_SUFFIXES = (".png", ".dcm", ".dicom")

#: The labels CSV of a folder of images, unless the operator names another.
DEFAULT_LABELS_FILE = "labels.csv"


def _decode_png(name: str, data: bytes) -> npt.NDArray[np.float64]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes every row: a truncated file fails here
            mode = image.mode
            if mode in ("L", "I;16", "I;16B", "I"):
                pixels = np.asarray(image, dtype=np.float64)[None, :, :]
            elif mode in ("RGB", "RGBA", "P", "LA"):
                rgb = image.convert("RGB")
                pixels = np.asarray(rgb, dtype=np.float64).transpose(2, 0, 1)
            else:
                raise InputError(f"{name}: PNG mode {mode} is neither grey nor RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{name}: not a readable PNG image ({err}); it may be truncated") from err
    return np.ascontiguousarray(pixels)


def _decode_dicom(name: str, data: bytes) -> npt.NDArray[np.float64]:
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError as err:  # pragma: no cover - pydicom is an optional extra
        raise InputError(
            f"{name}: reading DICOM needs pydicom (pip install 'veracity[dicom]')"
        ) from err
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        pixels = np.asarray(dataset.pixel_array, dtype=np.float64)
    except (InvalidDicomError, AttributeError, ValueError, OSError, EOFError) as err:
        raise InputError(f"{name}: not a readable DICOM image ({err})") from err
    if pixels.ndim == 2:
        return pixels[None, :, :]
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))
    raise InputError(f"{name}: DICOM pixel data of shape {pixels.shape} is not one 2-D image")


def decode_image(name: str, data: bytes) -> npt.NDArray[np.float64]:
    """One PNG or DICOM image as ``(channels, height, width)`` pixel values.

    Raises
    ------
    InputError
        If the name is not a .png, .dcm or .dicom file or the image does not decode.
    """
    lowered = name.lower()
    if lowered.endswith(".png"):
        return _decode_png(name, data)
    if lowered.endswith((".dcm", ".dicom")):
        return _decode_dicom(name, data)
    raise InputError(f"{name}: images are .png or .dcm files")


def _check_geometry(
    name: str, pixels: npt.NDArray[np.float64], first: tuple[str, tuple[int, ...]] | None
) -> None:
    if first is not None and pixels.shape != first[1]:
        other, shape = first
        if pixels.shape[1:] == shape[1:]:
            raise InputError(
                f"mixed channels: {name} has {pixels.shape[0]} channel(s), {other} has "
                f"{shape[0]}; every image of a dataset is grey, or every one RGB"
            )
        raise InputError(
            f"mixed image sizes: {name} is {pixels.shape[2]}x{pixels.shape[1]} with "
            f"{pixels.shape[0]} channel(s), {other} is {shape[2]}x{shape[1]} with {shape[0]}; "
            "every image of a dataset has one size"
        )


def _from_folder(
    source: Source, *, label: str, classes: Sequence[str], labels_file: str
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], tuple[str, ...]]:
    if labels_file not in source.files:
        raise InputError(
            f"{source.path}: no labels file {labels_file!r} in the folder (a CSV with a "
            "'file' column and the label column)"
        )
    try:
        text = source.files[labels_file].decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"{labels_file}: not UTF-8 text") from err
    rows = list(csv.reader(io.StringIO(text, newline="")))
    header = [cell.strip() for cell in rows[0]] if rows else []
    for column in ("file", label):
        if column not in header:
            raise InputError(
                f"{labels_file}: no column {column!r}; the columns are {', '.join(header)}"
            )
    file_index, label_index = header.index("file"), header.index(label)
    images: list[npt.NDArray[np.float64]] = []
    labels: list[int] = []
    names: list[str] = []
    first: tuple[str, tuple[int, ...]] | None = None
    for line, row in enumerate(rows[1:], start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise InputError(f"{labels_file}: line {line} has {len(row)} fields, not {len(header)}")
        name = row[file_index].strip()
        if name not in source.files:
            raise InputError(f"{labels_file}: line {line} names {name!r}, not in the folder")
        pixels = decode_image(name, source.files[name])
        _check_geometry(name, pixels, first)
        if first is None:
            first = (name, pixels.shape)
        where = f"line {line}, column {label!r}"
        labels.append(class_index(labels_file, row[label_index], classes, where, label))
        images.append(pixels)
        names.append(name)
    if not images:
        raise InputError(f"{labels_file}: lists no images")
    return np.stack(images), np.asarray(labels, dtype=np.int64), tuple(names)


def _from_npz(
    name: str, data: bytes, *, label: str, classes: Sequence[str]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    arrays = load_npz(name, data)
    if "x" not in arrays or "y" not in arrays:
        raise InputError(f"{name}: an NPZ dataset holds arrays 'x' and 'y'; found {sorted(arrays)}")
    x, y = arrays["x"], arrays["y"]
    if x.ndim == 3:
        x = x[:, None, :, :]
    if x.ndim != 4 or x.shape[0] == 0:
        raise InputError(
            f"{name}: x has shape {x.shape}; expected (images, height, width) or "
            "(images, channels, height, width)"
        )
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise InputError(f"{name}: y has shape {y.shape}; expected ({x.shape[0]},)")
    values = npz_floats(name, x, "image, channel, row, column")
    labels = np.empty(y.shape[0], dtype=np.int64)
    for index, value in enumerate(y.tolist()):
        labels[index] = class_index(name, value, classes, f"image {index + 1}", label)
    return values, labels


def parse_images(
    source: Source,
    *,
    label: str,
    classes: Sequence[str],
    height: int,
    width: int,
    channels: int = 1,
    labels_file: str = DEFAULT_LABELS_FILE,
) -> Records:
    """Validate a folder of images or an NPZ array (see the module docstring).

    Parameters
    ----------
    source
        A folder with the images and a labels CSV, or one NPZ file.
    label, classes
        The label column and its values in class order.
    height, width, channels
        The geometry every image must have (channels 1: grey, 3: RGB).
    labels_file
        The labels CSV inside the folder.

    Raises
    ------
    InputError
        Naming the first problem found.
    """
    if channels not in IMAGE_CHANNELS:
        raise InputError(f"images have 1 (grey) or 3 (RGB) channels, not {channels}")
    if not (1 <= height <= 4096 and 1 <= width <= 4096):
        raise InputError(f"image size {height}x{width} must be between 1 and 4096 pixels")
    if source.directory:
        x, y, files = _from_folder(source, label=label, classes=classes, labels_file=labels_file)
    else:
        name = next(iter(source.files))
        if not name.lower().endswith(".npz"):
            raise InputError(f"{name}: images are a folder with a labels CSV, or one .npz file")
        x, y = _from_npz(name, source.single(), label=label, classes=classes)
        files = (name,)
    found = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
    if found != (channels, height, width):
        raise InputError(
            f"{files[0]}: images are {found[2]}x{found[1]} with {found[0]} channel(s); "
            f"the declared geometry is {width}x{height} with {channels}"
        )
    if not math.isfinite(float(x.max())):  # pragma: no cover - decoders give finite pixels
        raise InputError(f"{files[0]}: non-finite pixel values")
    return Records(
        kind="images",
        label=label,
        classes=tuple(classes),
        channels=IMAGE_CHANNELS[channels],
        geometry={"height": height, "width": width},
        arrays=(np.ascontiguousarray(x),),
        labels=(y,),
        source_files=files,
    )
