r"""C2SP signed notes, checkpoints and cosignatures, so that other implementations check ours.

The formats are c2sp.org/signed-note, tlog-checkpoint and tlog-cosignature (copies in
``shared/notes/c2sp``).

A **signed note** is a text ending in a newline, a blank line, then signature lines
``— <key name> base64(4-byte key id || signature)``. The key id of an Ed25519 key (type
``0x01``) is ``SHA-256(name || 0x0A || 0x01 || public key)[:4]``; a **verifier key** (vkey)
is ``<name>+<8 hex key id>+base64(type || public key)``.

A **checkpoint** is a note whose text is ``origin\nsize\nbase64(root)\n``; the log signs it
with an Ed25519 note signature under the name ``origin``. Veracity's origins are
``<host or name>/veracity/<log id>``.

A **cosignature** (``cosignature/v1``, type ``0x04``) is a witness's note signature over
``cosignature/v1\ntime <T>\n`` followed by the checkpoint text, carried as
``key id || u64 T (big-endian) || Ed25519 signature``: "as of T, the largest consistent
tree I have seen for this origin has this root".

Verification follows the spec's rules: signatures from unknown keys are ignored, a
signature from a known key (name and key id) must verify or the whole note is refused, and
a note with no verified signature is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from veracity.crypto.keys import SigningKey, VerifyKey
from veracity.errors import CryptoError, InputError, SignatureError

__all__ = [
    "SIG_ED25519",
    "SIG_COSIGNATURE_V1",
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "NoteSignature",
    "Note",
    "NoteVerifier",
    "CheckpointText",
    "key_id",
    "log_origin",
    "origin_log_id",
    "sign_note",
    "cosign",
    "verify_note",
    "cosignature_time",
    "encode_b64",
    "decode_b64",
]

#: Signature type of plain Ed25519 note signatures (signed-note).
SIG_ED25519 = 0x01
#: Signature type of timestamped Ed25519 checkpoint cosignatures (tlog-cosignature).
SIG_COSIGNATURE_V1 = 0x04
#: A note larger than this is refused before it is parsed.
MAX_NOTE_BYTES = 64 * 1024
#: More signature lines than this are refused (the spec asks to accept at least 16).
MAX_SIGNATURES = 64

_DASH = "\u2014 "
_COSIGNATURE_HEADER = "cosignature/v1\n"
_MAX_TIMESTAMP = 2**63 - 1
_NAME_RE = re.compile(r"[^\s+]+")
_DECIMAL_RE = re.compile(r"0|[1-9][0-9]*")


def decode_b64(text: str, what: str) -> bytes:
    """Decode strict standard base64: padded, canonical (the encoding round-trips).

    Raises
    ------
    InputError
        If ``text`` is not canonical base64; the message names ``what``.
    """
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as err:
        raise InputError(f"{what} is not base64") from err
    if base64.b64encode(data).decode("ascii") != text:
        raise InputError(f"{what} is not canonical base64")
    return data


def encode_b64(data: bytes) -> str:
    """Standard padded base64 text."""
    return base64.b64encode(data).decode("ascii")


def _check_name(name: str, what: str = "key name") -> None:
    if not _NAME_RE.fullmatch(name):
        raise InputError(f"{what} {name!r} must be non-empty, without spaces or '+'")


def key_id(name: str, sig_type: int, public_key: bytes) -> bytes:
    """``SHA-256(name || 0x0A || type || public key)[:4]`` (signed-note, tlog-cosignature)."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([sig_type]) + public_key).digest()[
        :4
    ]


def log_origin(name: str, log_id: str) -> str:
    """Veracity's checkpoint origin: ``<host or name>/veracity/<log id>``.

    Raises
    ------
    InputError
        If ``name`` holds a space or ``+``.
    """
    origin = f"{name}/veracity/{log_id}"
    _check_name(origin, "origin")
    return origin


def origin_log_id(origin: str) -> str | None:
    """The log id of a Veracity origin ``<host or name>/veracity/<log id>`` (else ``None``)."""
    _, marker, log_id = origin.rpartition("/veracity/")
    if not marker or len(log_id) != 64 or any(c not in "0123456789abcdef" for c in log_id):
        return None
    return log_id


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: key name, 4-byte key id, signature bytes (after the id)."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        """``— <name> base64(key id || signature)`` and a newline."""
        return f"{_DASH}{self.name} {encode_b64(self.key_id + self.signature)}\n"


@dataclass(frozen=True)
class Note:
    """A note text (ending in a newline) and its signatures, in order."""

    text: str
    signatures: tuple[NoteSignature, ...] = ()

    def render(self) -> str:
        """The signed note: text, a blank line, one line per signature."""
        return self.text + "\n" + "".join(s.line() for s in self.signatures)

    def with_signatures(self, extra: Iterable[NoteSignature]) -> Note:
        """The note with ``extra`` signatures appended (exact duplicates dropped)."""
        merged = list(self.signatures)
        for signature in extra:
            if signature not in merged:
                merged.append(signature)
        return Note(self.text, tuple(merged))

    @classmethod
    def parse(cls, data: str | bytes) -> Note:
        """Parse a signed note (without checking any signature).

        Raises
        ------
        InputError
            If the note is too large, not UTF-8, holds a control character other than
            newline, has no blank line before its signatures, or a signature line is
            malformed (name with a space or ``+``, non-canonical base64, under 5 bytes).
        """
        if isinstance(data, bytes):
            if len(data) > MAX_NOTE_BYTES:
                raise InputError(f"a note is at most {MAX_NOTE_BYTES} bytes")
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError("a note must be UTF-8") from err
        else:
            text = data
            if len(text.encode("utf-8", "surrogatepass")) > MAX_NOTE_BYTES:
                raise InputError(f"a note is at most {MAX_NOTE_BYTES} bytes")
        if any(ord(c) < 0x20 and c != "\n" for c in text):
            raise InputError("a note holds no control character other than newline")
        split = text.rfind("\n\n")
        if split < 0:
            raise InputError("a signed note has a blank line between its text and signatures")
        body, block = text[: split + 1], text[split + 2 :]
        if not block or not block.endswith("\n"):
            raise InputError("a signed note ends with signature lines, each ending in newline")
        lines = block[:-1].split("\n")
        if len(lines) > MAX_SIGNATURES:
            raise InputError(f"a note carries at most {MAX_SIGNATURES} signatures")
        signatures: list[NoteSignature] = []
        for line in lines:
            if not line.startswith(_DASH):
                raise InputError("a signature line starts with an em dash and a space")
            parts = line[len(_DASH) :].split(" ")
            if len(parts) != 2:
                raise InputError("a signature line is '— <name> <base64>'")
            name, encoded = parts
            _check_name(name)
            raw = decode_b64(encoded, f"the signature of {name!r}")
            if len(raw) < 5:
                raise InputError(f"the signature of {name!r} is too short")
            signatures.append(NoteSignature(name, raw[:4], raw[4:]))
        return cls(body, tuple(signatures))


@dataclass(frozen=True)
class NoteVerifier:
    """A verifier key: name, signature type, public key (Ed25519, types 0x01 and 0x04)."""

    name: str
    sig_type: int
    public_key: bytes

    def __post_init__(self) -> None:
        _check_name(self.name)
        if self.sig_type not in (SIG_ED25519, SIG_COSIGNATURE_V1):
            raise InputError(
                f"unsupported signature type 0x{self.sig_type:02x} "
                "(0x01 Ed25519 notes, 0x04 cosignature/v1)"
            )
        if len(self.public_key) != 32:
            raise InputError("an Ed25519 public key is 32 bytes")

    @classmethod
    def for_key(cls, name: str, key: VerifyKey, *, sig_type: int = SIG_ED25519) -> NoteVerifier:
        """The verifier for ``key`` under ``name``."""
        return cls(name, sig_type, key.raw)

    @property
    def key_id(self) -> bytes:
        """The 4-byte key id."""
        return key_id(self.name, self.sig_type, self.public_key)

    @property
    def verify_key(self) -> VerifyKey:
        """The Ed25519 public key."""
        try:
            return VerifyKey.from_raw(self.public_key)
        except CryptoError as err:  # pragma: no cover - length is checked above
            raise InputError(str(err)) from err

    def vkey(self) -> str:
        """``<name>+<hex key id>+base64(type || public key)``."""
        key = encode_b64(bytes([self.sig_type]) + self.public_key)
        return f"{self.name}+{self.key_id.hex()}+{key}"

    def __str__(self) -> str:
        return self.vkey()

    @classmethod
    def parse(cls, vkey: str) -> NoteVerifier:
        """Parse a vkey.

        Raises
        ------
        InputError
            If it is malformed, of an unsupported type, or its key id does not match.
        """
        parts = vkey.strip().split("+", 2)  # base64 may hold '+' itself
        if len(parts) != 3:
            raise InputError("a verifier key is '<name>+<hex key id>+<base64 key>'")
        name, hex_id, encoded = parts
        _check_name(name)
        if not re.fullmatch(r"[0-9a-f]{8}", hex_id):
            raise InputError("a verifier key's id is 8 lowercase hex digits")
        raw = decode_b64(encoded, "the verifier key")
        if len(raw) < 2:
            raise InputError("the verifier key holds no public key")
        verifier = cls(name, raw[0], raw[1:])
        if verifier.key_id.hex() != hex_id:
            raise InputError(f"the verifier key {name!r} has the wrong key id")
        return verifier

    def matches(self, signature: NoteSignature) -> bool:
        """Whether ``signature`` claims to be by this key (same name and key id)."""
        return signature.name == self.name and signature.key_id == self.key_id

    def verify(self, text: str, signature: NoteSignature) -> int | None:
        """Check ``signature`` over the note ``text``.

        Returns the cosignature's timestamp for type 0x04, ``None`` for type 0x01.

        Raises
        ------
        SignatureError
            If the signature is not this key's, malformed or does not verify.
        """
        if not self.matches(signature):
            raise SignatureError(f"the signature is not by {self.name}+{self.key_id.hex()}")
        if self.sig_type == SIG_ED25519:
            if len(signature.signature) != 64:
                raise SignatureError(f"the signature of {self.name} is not 64 bytes")
            self._check(signature.signature, text.encode("utf-8"))
            return None
        if len(signature.signature) != 8 + 64:
            raise SignatureError(f"the cosignature of {self.name} is not 72 bytes")
        timestamp = int.from_bytes(signature.signature[:8], "big")
        if timestamp > _MAX_TIMESTAMP:
            raise SignatureError(f"the cosignature of {self.name} has an invalid time")
        self._check(signature.signature[8:], _cosigned_message(text, timestamp))
        return timestamp

    def _check(self, raw_signature: bytes, message: bytes) -> None:
        try:
            self.verify_key.verify(raw_signature, message)
        except SignatureError as err:
            raise SignatureError(f"the signature of {self.name} does not verify") from err


def _cosigned_message(text: str, timestamp: int) -> bytes:
    return f"{_COSIGNATURE_HEADER}time {timestamp}\n{text}".encode()


def sign_note(key: SigningKey, name: str, text: str) -> NoteSignature:
    """An Ed25519 note signature (type 0x01) of ``text`` under ``name``.

    Raises
    ------
    InputError
        If ``name`` is not a valid key name or ``text`` does not end in a newline.
    """
    _check_name(name)
    if not text.endswith("\n"):
        raise InputError("a note text ends with a newline")
    verifier = NoteVerifier.for_key(name, key.public)
    return NoteSignature(name, verifier.key_id, key.sign(text.encode("utf-8")))


def cosign(key: SigningKey, name: str, checkpoint_text: str, *, timestamp: int) -> NoteSignature:
    """A ``cosignature/v1`` signature (type 0x04) of a checkpoint text at ``timestamp``.

    Raises
    ------
    InputError
        If ``name`` is invalid, the timestamp is out of range or the text is not a checkpoint.
    """
    _check_name(name)
    if not 0 <= timestamp <= _MAX_TIMESTAMP:
        raise InputError("a cosignature time is between 0 and 2^63 - 1")
    CheckpointText.parse(checkpoint_text)
    verifier = NoteVerifier.for_key(name, key.public, sig_type=SIG_COSIGNATURE_V1)
    raw = key.sign(_cosigned_message(checkpoint_text, timestamp))
    return NoteSignature(name, verifier.key_id, timestamp.to_bytes(8, "big") + raw)


def cosignature_time(signature: NoteSignature) -> int:
    """The timestamp a ``cosignature/v1`` signature carries (unchecked).

    Raises
    ------
    InputError
        If the signature is not 72 bytes.
    """
    if len(signature.signature) != 72:
        raise InputError("a cosignature/v1 signature is 72 bytes")
    return int.from_bytes(signature.signature[:8], "big")


def verify_note(note: Note, verifiers: Sequence[NoteVerifier]) -> list[NoteVerifier]:
    """Check ``note`` against known keys; the keys whose signatures verified.

    Unknown signatures are ignored; a known one that fails refuses the whole note.

    Raises
    ------
    SignatureError
        If a signature from a known key fails, or no known key signed the note.
    """
    verified: list[NoteVerifier] = []
    for signature in note.signatures:
        for verifier in verifiers:
            if verifier.matches(signature):
                verifier.verify(note.text, signature)
                if verifier not in verified:
                    verified.append(verifier)
    if not verified:
        raise SignatureError("the note carries no signature by a trusted key")
    return verified


@dataclass(frozen=True)
class CheckpointText:
    """The text of a tlog-checkpoint: origin, tree size, root hash, extension lines."""

    origin: str
    tree_size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise InputError("a checkpoint origin is one non-empty line")
        if self.tree_size < 0:
            raise InputError("a checkpoint tree size is not negative")
        if len(self.root_hash) != 32:
            raise InputError("a checkpoint root hash is 32 bytes")
        if any(not line or "\n" in line for line in self.extensions):
            raise InputError("checkpoint extension lines are non-empty single lines")

    def text(self) -> str:
        """The note text: origin, size and base64 root, one per line, then any extension lines."""
        lines = [self.origin, str(self.tree_size), encode_b64(self.root_hash), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse(cls, text: str) -> CheckpointText:
        """Parse a checkpoint note text.

        Raises
        ------
        InputError
            If there are fewer than three lines, the size is not canonical decimal, the
            root is not canonical base64 of 32 bytes, or a line is empty.
        """
        if not text.endswith("\n"):
            raise InputError("a checkpoint text ends with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3 or any(not line for line in lines):
            raise InputError("a checkpoint is at least three non-empty lines")
        if not _DECIMAL_RE.fullmatch(lines[1]) or len(lines[1]) > 20:
            raise InputError("a checkpoint tree size is decimal without leading zeros")
        root = decode_b64(lines[2], "the checkpoint root hash")
        return cls(lines[0], int(lines[1]), root, tuple(lines[3:]))
