"""``veracity ledger verify-proof`` accepts only the log key valid at the proof's checkpoint.

Before, any log key the identity ever enrolled was accepted: the thief of a retired log key
could sign a checkpoint of a later size, and a key enrolled later could sign one of history
it never saw, and both proofs verified (issue 18).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from veracity.cli import main
from veracity.crypto.keys import SigningKey
from veracity.ledger.checkpoint import Checkpoint, sign_checkpoint
from veracity.ledger.log_key import retire_log_key

from .conftest import World
from .test_log_key import IDENTITY, LOG_1, LOG_2, rotate, split_world


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def _check(
    capsys: pytest.CaptureFixture[str],
    world: World,
    tmp_path: Path,
    checkpoint: Checkpoint,
    seq: int = 1,
) -> tuple[int, Any]:
    code, proof = _cli(
        capsys,
        "ledger",
        "prove",
        str(seq),
        "--size",
        str(checkpoint.tree_size),
        "--db",
        world.ledger.url,
        "--format",
        "json",
    )
    assert code == 0
    trust = tmp_path / "root.pub"
    trust.write_text(IDENTITY.public.pem(), encoding="utf-8")
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(json.dumps(proof), encoding="utf-8")
    checkpoint_file = tmp_path / "checkpoint.json"
    checkpoint_file.write_text(json.dumps(checkpoint.to_json()), encoding="utf-8")
    return _cli(
        capsys,
        "ledger",
        "verify-proof",
        "--proof",
        str(proof_file),
        "--checkpoint",
        str(checkpoint_file),
        "--trust",
        str(trust),
        "--format",
        "json",
    )


def _signed(world: World, key: SigningKey, size: int) -> Checkpoint:
    return sign_checkpoint(
        key,
        log_id=world.ledger.log_id,
        tree_size=size,
        root_hash=world.ledger.root(size).hex(),
        timestamp="2026-12-01T00:00:00.000000Z",
    )


def test_a_retired_log_key_cannot_sign_a_later_checkpoint_a_proof_relies_on(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = split_world(db_url)
    before = world.ledger.size()
    assert _check(capsys, world, tmp_path, _signed(world, LOG_1, before))[0] == 0
    rotate(world)
    retire_log_key(world.ledger, identity=IDENTITY, key_id=LOG_1.public.key_id)
    world.note("hospital-a", "after the retirement")
    size = world.ledger.size()
    assert _check(capsys, world, tmp_path, _signed(world, LOG_2, size))[0] == 0

    code, shown = _check(capsys, world, tmp_path, _signed(world, LOG_1, size))
    assert (code, shown["ok"]) == (1, False)
    world.ledger.close()


def test_a_log_key_enrolled_later_cannot_sign_a_checkpoint_of_earlier_history(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = split_world(db_url)
    before = world.ledger.size()
    rotate(world)
    world.note("hospital-a", "after the rotation")

    code, shown = _check(capsys, world, tmp_path, _signed(world, LOG_2, before))
    assert (code, shown["ok"]) == (1, False)
    # The outgoing key still signs during the overlap (until the identity retires it).
    assert _check(capsys, world, tmp_path, _signed(world, LOG_1, world.ledger.size()))[0] == 0
    world.ledger.close()
