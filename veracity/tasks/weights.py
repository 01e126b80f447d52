"""Model weights as plain NumPy arrays: a content hash and a safe file format.

The hash is what receipts (``update_hash``), rounds (``aggregated_model_hash``) and the
model registry use to name weights. It covers, for every tensor in name order, its name,
dtype, shape and little-endian bytes, so it does not depend on any framework's
serialisation.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zipfile
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from veracity.errors import InputError

__all__ = ["Weights", "weights_hash", "weights_to_bytes", "weights_from_bytes"]

Weights = Mapping[str, npt.NDArray[np.floating]]

_DOMAIN = b"veracity.weights.v1\x00"


def _little_endian(array: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
    contiguous = np.ascontiguousarray(array)
    return contiguous.astype(contiguous.dtype.newbyteorder("<"), copy=False)


def weights_hash(weights: Weights) -> str:
    """SHA-256 (hex) over the names, dtypes, shapes and bytes of ``weights``."""
    digest = hashlib.sha256(_DOMAIN)
    for name in sorted(weights):
        array = _little_endian(np.asarray(weights[name]))
        encoded_name = name.encode("utf-8")
        dtype = array.dtype.str.encode("ascii")
        digest.update(struct.pack("<I", len(encoded_name)) + encoded_name)
        digest.update(struct.pack("<I", len(dtype)) + dtype)
        digest.update(struct.pack("<I", array.ndim))
        digest.update(b"".join(struct.pack("<Q", dim) for dim in array.shape))
        digest.update(array.tobytes())
    return digest.hexdigest()


def weights_to_bytes(weights: Weights) -> bytes:
    """Serialise ``weights`` as an ``.npz`` archive (no pickled objects, same bytes each time)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(weights):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(weights[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def weights_from_bytes(data: bytes) -> dict[str, npt.NDArray[np.floating]]:
    """Parse an ``.npz`` archive written by :func:`weights_to_bytes`.

    Raises
    ------
    InputError
        If the data is not an ``.npz`` archive of numeric arrays.
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            loaded = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise InputError(f"not a weights archive: {err}") from err
    for name, array in loaded.items():
        if not np.issubdtype(array.dtype, np.floating):
            raise InputError(f"weights {name!r} are {array.dtype}, not floating point")
    return loaded
