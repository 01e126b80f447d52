from __future__ import annotations

import getpass
import io
import os
import stat
import sys
from pathlib import Path

import pytest

from veracity.crypto.keys import (
    PASSPHRASE_ENV,
    VerifyKey,
    generate_signing_key,
    load_signing_key,
    load_verify_key,
    write_key_pair,
)
from veracity.errors import ConfigError, CryptoError, SignatureError


def test_key_pair_files_round_trip_with_private_key_mode_0600(tmp_path: Path) -> None:
    key = generate_signing_key()
    private_path, public_path = write_key_pair(tmp_path, "hospital-a", key)
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert load_signing_key(private_path).public == key.public
    assert load_verify_key(public_path) == key.public


def test_existing_key_is_never_overwritten(tmp_path: Path) -> None:
    write_key_pair(tmp_path, "root", generate_signing_key())
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        write_key_pair(tmp_path, "root", generate_signing_key())


def test_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    private_path, _ = write_key_pair(tmp_path, "root", generate_signing_key())
    os.chmod(private_path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_signing_key(private_path)


def test_signature_by_another_key_is_rejected() -> None:
    signer, other = generate_signing_key(), generate_signing_key()
    signature = signer.sign(b"message")
    signer.public.verify(signature, b"message")
    with pytest.raises(SignatureError):
        other.public.verify(signature, b"message")
    with pytest.raises(SignatureError):
        signer.public.verify(signature, b"messagE")


def test_garbage_is_not_a_public_key() -> None:
    with pytest.raises(CryptoError):
        VerifyKey.from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")


def test_a_public_key_with_an_unknown_algorithm_oid_is_a_crypto_error() -> None:
    import base64

    from veracity.crypto.keys import VerifyKey, generate_signing_key

    pem = generate_signing_key().public.pem()
    body = "".join(pem.splitlines()[1:-1])
    der = bytearray(base64.b64decode(body))
    der[6] = 0x00  # the algorithm OID 1.3.101.112 becomes 0.3.101.112, unknown
    mangled = (
        "-----BEGIN PUBLIC KEY-----\n"
        + base64.b64encode(bytes(der)).decode()
        + "\n-----END PUBLIC KEY-----\n"
    )
    with pytest.raises(CryptoError):
        VerifyKey.from_pem(mangled)


def test_a_key_file_written_with_a_passphrase_is_encrypted_and_opens_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = generate_signing_key()
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse battery staple")
    private_path, _ = write_key_pair(tmp_path, "root", key)
    text = private_path.read_bytes()
    assert text.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert key.pem() not in text
    assert load_signing_key(private_path).public == key.public

    monkeypatch.setenv(PASSPHRASE_ENV, "wrong")
    with pytest.raises(CryptoError, match="does not open"):
        load_signing_key(private_path)
    monkeypatch.delenv(PASSPHRASE_ENV)
    with pytest.raises(ConfigError, match=PASSPHRASE_ENV):
        load_signing_key(private_path)  # no passphrase, and no terminal to ask at


def test_the_cli_signs_with_a_passphrase_protected_root_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from veracity.cli import main

    monkeypatch.setenv(PASSPHRASE_ENV, "s3cret")
    assert main(["ledger", "init", "--data-dir", str(tmp_path)]) == 0
    assert (tmp_path / "keys" / "root.pem").read_bytes().startswith(b"-----BEGIN ENCRYPTED")
    assert main(["ledger", "checkpoint", "--data-dir", str(tmp_path)]) == 0
    monkeypatch.delenv(PASSPHRASE_ENV)
    capsys.readouterr()
    assert main(["ledger", "checkpoint", "--data-dir", str(tmp_path)]) == 2
    assert PASSPHRASE_ENV in capsys.readouterr().err


class _Terminal(io.StringIO):
    """stdin as a person's terminal (``isatty``); getpass is replaced, nothing is read."""

    def isatty(self) -> bool:
        return True


def _answers(monkeypatch: pytest.MonkeyPatch, *answers: str) -> list[str]:
    """A terminal on stdin whose getpass prompts get ``answers`` (the last one repeats)."""
    asked: list[str] = []

    def answer(prompt: str = "") -> str:
        asked.append(prompt)
        return answers[min(len(asked), len(answers)) - 1]

    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    monkeypatch.setattr(sys, "stdin", _Terminal())
    monkeypatch.setattr(getpass, "getpass", answer)
    return asked


@pytest.mark.parametrize(
    ("argv", "written"),
    [
        (["keys", "new", "auditor", "--key-dir", "{d}"], "auditor.pem"),
        (["ledger", "init", "--data-dir", "{d}"], "keys/root.pem"),
        (["site", "init", "--name", "hospital-a", "--data-dir", "{d}"], "keys/hospital-a.pem"),
    ],
    ids=["keys-new", "ledger-init", "site-init"],
)
def test_a_new_key_is_passphrase_protected_when_a_person_at_a_terminal_gives_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], written: str
) -> None:
    from veracity.cli import main

    asked = _answers(monkeypatch, "correct horse", "correct horse")
    assert main([a.format(d=tmp_path) for a in argv]) == 0
    path = tmp_path / written
    assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert "again" in asked[1]  # asked twice: a typo does not lock the key away
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse")
    assert load_signing_key(path).public.key_id


@pytest.mark.parametrize("command", ["rotate-log-key", "recover-log-key"])
def test_a_new_log_key_is_passphrase_protected_when_a_person_at_a_terminal_gives_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    # Before, both commands wrote the new online log key unencrypted without asking,
    # unlike every other command that makes a key.
    from veracity.cli import main

    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # set-up without a person
    data_dir = tmp_path / "coordinator"
    assert main(["ledger", "init", "--data-dir", str(data_dir)]) == 0
    identity = next(
        p for p in (data_dir / "identity" / "root.pem", data_dir / "keys" / "root.pem")
        if p.exists()
    )  # fmt: skip
    new = tmp_path / "new-log.pem"
    asked = _answers(monkeypatch, "battery staple", "battery staple")
    extra = ["--reason", "the disk died"] if command == "recover-log-key" else []
    argv = ["ledger", command, "--data-dir", str(data_dir), "--identity-key", str(identity),
            "--new-log-key", str(new), *extra]  # fmt: skip

    assert main(argv) == 0

    assert new.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert [str(new) in prompt for prompt in asked] == [True, True]
    monkeypatch.setenv(PASSPHRASE_ENV, "battery staple")
    assert load_signing_key(new).public.key_id


def test_two_different_passphrases_write_no_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from veracity.cli import main

    _answers(monkeypatch, "correct horse", "correct hrose")
    assert main(["keys", "new", "auditor", "--key-dir", str(tmp_path)]) == 2
    assert "differ" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_empty_passphrase_or_no_terminal_leaves_the_key_unencrypted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from veracity.cli import main

    asked = _answers(monkeypatch, "")
    assert main(["keys", "new", "a", "--key-dir", str(tmp_path)]) == 0
    assert len(asked) == 1
    assert (tmp_path / "a.pem").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # a pipe, not a person: never asked
    assert main(["keys", "new", "b", "--key-dir", str(tmp_path)]) == 0
    assert len(asked) == 1
    assert (tmp_path / "b.pem").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
