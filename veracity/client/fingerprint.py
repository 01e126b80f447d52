"""Dataset fingerprints: the file hash, the content digest, the schema hash and the commitment.

* the file's SHA-256 (``veracity.client.datasets``): kept at the site only; the agent
  refuses to train when the file no longer has it.
* ``content_digest``: SHA-256 of what training sees, independent of the file format::

      SHA-256( "veracity.dataset-content.v1" || 0x00
               || u32be(len(S)) || S          S = RFC 8785 JSON of {"features": [...], "label": L}
               || u64be(rows)
               || row-major float64 little-endian matrix [label, feature_1, ..., feature_n] )

  Kept at the site only: over low-entropy data it could be confirmed by guessing.
* ``commitment`` (public, in ``dataset.registered``)::

      SHA-256( "veracity.dataset-commitment.v1" || 0x00 || salt || content_digest )

  with ``salt`` 32 random bytes that never leave the site and ``content_digest`` the 32
  raw digest bytes. Without the salt, the commitment reveals nothing that a dictionary of
  candidate datasets could confirm; with the salt and the data, anyone can check it
  (:func:`verify_commitment`), so the site can open it to an auditor.
* ``schema_hash`` (public): SHA-256 of the RFC 8785 JSON of
  ``{"features": [...], "label": L, "label_values": [0, 1], "type": "float64"}`` for a
  table (``label_values``: the declared classes, integers where they are integers).
* record fingerprints (site only, never published), one per row::

      HMAC-SHA256( key, "veracity.record.v1" || 0x00 || u32be(len(C)) || C
                   || float64-LE values of the row in the order of C )[:16]   (hex)

  with ``C`` the RFC 8785 JSON of the sorted column names (label included) and ``key``
  the site's secret record key. The same patient row gives the same fingerprint in any
  file, order or format with the same columns, so a shuffled copy, an extract or a
  refresh of a registered cohort is recognised and draws from the same budget. A row
  whose values or columns differ (rounded, recoded, other columns) is not recognised:
  keeping such data attached to its budget stays the operator's responsibility.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import struct
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from veracity.core.canonical import canonical_hash, canonical_json
from veracity.errors import InputError, VerificationError

__all__ = [
    "SALT_BYTES",
    "new_salt",
    "content_digest",
    "label_values",
    "schema_hash",
    "commitment",
    "verify_commitment",
    "record_fingerprints",
]

SALT_BYTES = 32
_CONTENT_DOMAIN = b"veracity.dataset-content.v1\x00"
_COMMITMENT_DOMAIN = b"veracity.dataset-commitment.v1\x00"
_RECORD_DOMAIN = b"veracity.record.v1\x00"


def new_salt() -> bytes:
    """32 random bytes from the operating system's CSPRNG."""
    return secrets.token_bytes(SALT_BYTES)


def content_digest(
    features: tuple[str, ...],
    label: str,
    x: npt.NDArray[np.float64],
    y: npt.NDArray[np.integer],
) -> str:
    """SHA-256 (hex) of the training content, as described in the module docstring.

    Raises
    ------
    InputError
        If the arrays' shapes do not match the column names.
    """
    if x.ndim != 2 or x.shape[1] != len(features) or y.shape != (x.shape[0],):
        raise InputError("features and labels do not match the column names")
    schema = canonical_json({"features": list(features), "label": label})
    matrix = np.column_stack([np.asarray(y, dtype="<f8"), np.asarray(x, dtype="<f8")])
    digest = hashlib.sha256(_CONTENT_DOMAIN)
    digest.update(struct.pack(">I", len(schema)) + schema)
    digest.update(struct.pack(">Q", x.shape[0]))
    digest.update(np.ascontiguousarray(matrix, dtype="<f8").tobytes())
    return digest.hexdigest()


def label_values(classes: Sequence[str]) -> list[int | str]:
    """The classes as the schema lists them: integers where a class is one (``[0, 1]``)."""
    return [int(c) if re.fullmatch(r"-?[0-9]{1,18}", c) else c for c in classes]


def schema_hash(
    features: tuple[str, ...], label: str, *, classes: Sequence[str] = ("0", "1")
) -> str:
    """SHA-256 (hex) of the public schema description of a table."""
    return canonical_hash(
        {
            "features": list(features),
            "label": label,
            "label_values": label_values(classes),
            "type": "float64",
        }
    )


def commitment(salt: bytes, digest_hex: str) -> str:
    """The salted commitment (hex) to a content digest.

    Raises
    ------
    InputError
        If the salt is not 32 bytes or the digest is not 64 hex characters.
    """
    if len(salt) != SALT_BYTES:
        raise InputError(f"a commitment salt is {SALT_BYTES} bytes")
    try:
        raw = bytes.fromhex(digest_hex)
    except ValueError as err:
        raise InputError("a content digest is 64 hex characters") from err
    if len(raw) != 32:
        raise InputError("a content digest is 64 hex characters")
    return hashlib.sha256(_COMMITMENT_DOMAIN + salt + raw).hexdigest()


def verify_commitment(expected: str, salt: bytes, digest_hex: str) -> None:
    """Check that ``salt`` and ``digest_hex`` open the commitment ``expected``.

    Raises
    ------
    VerificationError
        If they do not.
    InputError
        If the salt or digest are malformed.
    """
    if not hmac.compare_digest(commitment(salt, digest_hex), expected):
        raise VerificationError("the dataset does not match its commitment")


def record_fingerprints(
    key: bytes,
    features: tuple[str, ...],
    label: str,
    x: npt.NDArray[np.float64],
    y: npt.NDArray[np.integer],
) -> list[str]:
    """One salted fingerprint (32 hex) per row, as described in the module docstring.

    Raises
    ------
    InputError
        If the key is not 32 bytes or the arrays do not match the column names.
    """
    if len(key) != 32:
        raise InputError("a record key is 32 bytes")
    if x.ndim != 2 or x.shape[1] != len(features) or y.shape != (x.shape[0],):
        raise InputError("features and labels do not match the column names")
    columns = [label, *features]
    order = sorted(range(len(columns)), key=lambda index: columns[index])
    names = canonical_json([columns[index] for index in order])
    matrix = np.column_stack([np.asarray(y, dtype="<f8"), np.asarray(x, dtype="<f8")])
    rows = np.ascontiguousarray(matrix[:, order], dtype="<f8")
    prefix = _RECORD_DOMAIN + struct.pack(">I", len(names)) + names
    keyed = hmac.new(key, prefix, hashlib.sha256)
    fingerprints = []
    for row in rows:
        digest = keyed.copy()
        digest.update(row.tobytes())
        fingerprints.append(digest.digest()[:16].hex())
    return fingerprints
