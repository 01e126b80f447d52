"""``veracity ledger verify --policy FILE --state DIR``: quorum-cosigned checkpoints and memory.

Attack 6: a split view (two copies of the database extended differently), a new log under
the same root key and a consistently truncated bundle all verify against the root key
alone; an auditor with a policy and a state directory refuses each.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.ledger.conftest import T0, World, seeded_key
from tests.ledger.test_cli import run
from tests.ledger.test_witness import _split
from tests.ledger.witness_helpers import (
    CopyableDatabase,
    copyable_db,
    feed,
    make_witness,
    second_db_url,
)
from veracity.contracts.events import ROOT_ACTOR
from veracity.errors import ProofError
from veracity.ledger.ledger import Ledger
from veracity.ledger.note import CheckpointText, Note, NoteVerifier, verify_note
from veracity.ledger.policy import Policy
from veracity.ledger.witnessed import WitnessedLog, witness_name

__all__ = ["copyable_db", "second_db_url"]

SITES = ("hospital-a", "hospital-b", "hospital-c")


def _cosign(world: World, tmp_path: Path, sites: tuple[str, ...]) -> None:
    """Each of ``sites`` witnesses the newest checkpoint; cosignatures stored by the log."""
    log = WitnessedLog(world.ledger)
    for site in sites:
        witness = make_witness(tmp_path / "witness" / site, world, site)
        signature = feed(witness, world.ledger)
        log.add_cosignature(witness.state().tree_size, signature, witness.verifier, site=site)


def _policy(world: World, tmp_path: Path, quorum: int = 2) -> Path:
    witnesses = {
        site: make_witness(tmp_path / "witness" / site, world, site).verifier for site in SITES
    }
    path = tmp_path / "policy.txt"
    policy = Policy.build(
        logs=[WitnessedLog(world.ledger).verifier], witnesses=witnesses, threshold=quorum
    )
    path.write_text(policy.render(), encoding="utf-8")
    return path


def _trust(world: World, tmp_path: Path) -> Path:
    path = tmp_path / "root.pub"
    path.write_text(world.root.public.pem(), encoding="utf-8")
    return path


def _verify(
    capsys: pytest.CaptureFixture[str], world_or_url: Any, tmp_path: Path, *extra: str
) -> tuple[int, Any]:
    url = world_or_url.ledger.url if hasattr(world_or_url, "ledger") else world_or_url
    code, document, err = run(
        capsys, "ledger", "verify", "--db", url, "--trust", str(tmp_path / "root.pub"),
        "--format", "json", *extra,
    )  # fmt: skip
    return code, document or err


def _world(make_world: Callable[..., World], url: str) -> World:
    world = make_world(url, sites=SITES)
    world.dataset("hospital-a")
    world.ledger.checkpoint(now=T0)
    return world


def test_quorum_of_cosignatures_verifies(
    make_world: Callable[..., World],
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    world = _world(make_world, db_url)
    _trust(world, tmp_path)
    _cosign(world, tmp_path, ("hospital-a", "hospital-c"))
    code, report = _verify(capsys, world, tmp_path, "--policy", str(_policy(world, tmp_path)))
    assert code == 0, report
    assert report["witnesses"]["cosigned_by"] == ["hospital-a", "hospital-c"]
    assert report["witnesses"]["quorum"] == "2 of 3 (witnesses)"


def test_the_policy_audit_checks_the_tree_it_verified_without_reading_the_log_again(
    make_world: Callable[..., World],
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second pass over every entry after verifying doubled the audit's time at 10^6
    entries, and what it read was not what the verifier had checked."""
    world = _world(make_world, db_url)
    _trust(world, tmp_path)
    _cosign(world, tmp_path, ("hospital-a", "hospital-c"))
    policy = str(_policy(world, tmp_path))
    reads: list[int | None] = []
    original = Ledger.iter_entries

    def counted(self: Ledger, *args: Any, **kwargs: Any) -> Any:
        reads.append(kwargs.get("limit"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Ledger, "iter_entries", counted)
    for mode in ("all", "tail"):
        code, report = _verify(
            capsys, world, tmp_path, "--policy", policy, "--root-signatures", mode
        )
        assert code == 0, report
        assert report["witnesses"]["cosigned_by"] == ["hospital-a", "hospital-c"]
    assert reads == []


def test_too_few_cosignatures_fail_the_policy(
    make_world: Callable[..., World],
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    world = _world(make_world, db_url)
    _trust(world, tmp_path)
    _cosign(world, tmp_path, ("hospital-b",))
    code, report = _verify(capsys, world, tmp_path, "--policy", str(_policy(world, tmp_path)))
    assert code == 1
    assert "lacks a quorum" in report["reason"]


def test_tail_mode_needs_a_quorum_on_the_checkpoint_it_relies_on(
    make_world: Callable[..., World],
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    world = _world(make_world, db_url)
    _trust(world, tmp_path)
    policy = str(_policy(world, tmp_path))
    code, report = _verify(capsys, world, tmp_path, "--policy", policy, "--root-signatures", "tail")
    assert code == 1
    _cosign(world, tmp_path, ("hospital-a", "hospital-b"))
    code, report = _verify(capsys, world, tmp_path, "--policy", policy, "--root-signatures", "tail")
    assert code == 0, report
    assert report["root_signatures"] == "tail"
    assert report["tail_trusted"]["witnesses"] is True
    assert "2 of 3" in report["tail_trusted"]["trusted_on"]


def test_tail_mode_without_a_policy_is_refused_unless_the_log_key_alone_is_asked_for(
    make_world: Callable[..., World],
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A checkpoint signed only by the log key used to be trusted by tail mode silently."""
    world = _world(make_world, db_url)
    world.note(ROOT_ACTOR, "after the checkpoint")
    _trust(world, tmp_path)
    code, _report = _verify(capsys, world, tmp_path, "--root-signatures", "tail")
    assert code == 2
    assert "--policy" in str(_report)
    bundle = tmp_path / "ledger.jsonl"
    world.ledger.export_bundle(bundle)
    code, _doc, err = run(
        capsys, "ledger", "verify", "--bundle", str(bundle), "--trust", str(tmp_path / "root.pub"),
        "--root-signatures", "tail",
    )  # fmt: skip
    assert code == 2
    assert "needs a witness quorum" in err
    code, report = _verify(capsys, world, tmp_path, "--root-signatures", "tail", "--no-witnesses")
    assert code == 0, report
    checkpoint = world.ledger.latest_checkpoint()
    assert checkpoint is not None
    assert report["tail_trusted"] == {
        "checkpoint_size": checkpoint.tree_size,
        "trusted_on": "the log key alone (--no-witnesses: no witness checked it)",
        "witnesses": False,
    }
    # With a state directory (and still no policy) nothing was witnessed either.
    code, report = _verify(
        capsys, world, tmp_path, "--root-signatures", "tail", "--no-witnesses",
        "--state", str(tmp_path / "state"),
    )  # fmt: skip
    assert code == 0, report
    assert report["tail_trusted"]["witnesses"] is False
    assert "log key alone" in report["tail_trusted"]["trusted_on"]
    code, report = _verify(capsys, world, tmp_path)
    assert (code, report["root_signatures"]) == (0, "all")
    assert "tail_trusted" not in report


def test_split_view_is_refused_by_an_auditor_with_state(
    make_world: Callable[..., World],
    db_url: str,
    second_db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = _split(make_world, db_url, second_db_url)
    _trust(a, tmp_path)
    state = str(tmp_path / "state")
    for world, text in ((a, "study X withdrawn"), (b, "study X approved")):
        world.note(ROOT_ACTOR, text)
        world.ledger.checkpoint(now=T0)
    code, report = _verify(capsys, a, tmp_path, "--state", state)
    assert code == 0, report
    assert _verify(capsys, b, tmp_path)[0] == 0  # the root key alone accepts the fork
    code, report = _verify(capsys, b, tmp_path, "--state", state)
    assert code == 1
    assert "fork" in report["reason"]


def test_a_new_log_under_the_same_root_key_is_refused(
    make_world: Callable[..., World],
    db_url: str,
    second_db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    world = _world(make_world, db_url)
    _trust(world, tmp_path)
    _cosign(world, tmp_path, SITES)
    policy = str(_policy(world, tmp_path))
    state = str(tmp_path / "state")
    assert _verify(capsys, world, tmp_path, "--policy", policy, "--state", state)[0] == 0
    later = T0 + timedelta(days=1)  # another genesis, so another log id
    with Ledger.init(second_db_url, root_key=world.root, now=later) as other:
        other.append("note.recorded", ROOT_ACTOR, {"text": "a cleaner history"}, signer=world.root)
        other.checkpoint(now=T0)
    assert _verify(capsys, second_db_url, tmp_path)[0] == 0  # the root key alone accepts it
    code, report = _verify(capsys, second_db_url, tmp_path, "--policy", policy)
    assert code == 1
    assert "another log" in report["reason"]
    code, report = _verify(capsys, second_db_url, tmp_path, "--state", state)
    assert code == 1
    assert "another log" in report["reason"]


def _truncate(bundle: Path, out: Path, size: int) -> None:
    """Cut the bundle to its first ``size`` entries, keeping it self-consistent."""
    lines = bundle.read_bytes().split(b"\n")[:-1]
    header = json.loads(lines[0])
    count = header["entries"]
    entries, trailers = lines[1 : 1 + count], [json.loads(t) for t in lines[1 + count :]]
    header["entries"] = size
    rebuilt = [json.dumps(header, sort_keys=True, separators=(",", ":")).encode()]
    rebuilt += entries[:size]
    for trailer in trailers:
        if "checkpoints" in trailer:
            trailer["checkpoints"] = [c for c in trailer["checkpoints"] if c["tree_size"] < size]
        if "key_events" in trailer:
            trailer["key_events"] = [e for e in trailer["key_events"] if e[0] < size]
        rebuilt.append(json.dumps(trailer, sort_keys=True, separators=(",", ":")).encode())
    out.write_bytes(b"\n".join(rebuilt) + b"\n")


def test_a_consistently_truncated_bundle_is_refused_by_an_auditor_with_state(
    make_world: Callable[..., World],
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    world = _world(make_world, db_url)
    first = world.ledger.latest_checkpoint().tree_size  # type: ignore[union-attr]
    world.note(ROOT_ACTOR, "the inconvenient entry")
    world.ledger.checkpoint(now=T0)
    trust = _trust(world, tmp_path)
    bundle, cut = tmp_path / "ledger.jsonl", tmp_path / "cut.jsonl"
    world.ledger.export_bundle(bundle)
    _truncate(bundle, cut, first + 1)
    state = str(tmp_path / "state")

    def verify(path: Path, *extra: str) -> tuple[int, Any]:
        code, document, _ = run(
            capsys, "ledger", "verify", "--bundle", str(path), "--trust", str(trust),
            "--format", "json", *extra,
        )  # fmt: skip
        return code, document

    assert verify(cut)[0] == 0  # the root key alone accepts the cut bundle
    assert verify(bundle, "--state", state)[0] == 0
    code, report = verify(cut, "--state", state)
    assert code == 1
    assert "truncated" in report["reason"]


def test_a_bundle_carries_the_cosigned_notes_an_auditor_needs_for_the_policy(
    make_world: Callable[..., World],
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An auditor holding only the bundle (no database, no note files) checks the quorum."""
    world = _world(make_world, db_url)
    _trust(world, tmp_path)
    _cosign(world, tmp_path, ("hospital-a", "hospital-c"))
    bundle = tmp_path / "ledger.jsonl"
    exported = world.ledger.export_bundle(bundle)
    code, report, err = run(
        capsys, "ledger", "verify", "--bundle", str(bundle), "--trust", str(tmp_path / "root.pub"),
        "--policy", str(_policy(world, tmp_path)), "--format", "json",
    )  # fmt: skip
    assert code == 0, report or err
    assert report["witnesses"]["cosigned_by"] == ["hospital-a", "hospital-c"]
    assert exported["notes"] == 1


def test_a_malformed_note_in_a_bundle_is_a_json_failure_not_a_crash(
    make_world: Callable[..., World],
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Editing the bundle's notes line: ``--format json`` still prints ``{"ok": false}``."""
    world = _world(make_world, db_url)
    _trust(world, tmp_path)
    _cosign(world, tmp_path, ("hospital-a", "hospital-c"))
    bundle = tmp_path / "ledger.jsonl"
    world.ledger.export_bundle(bundle)
    lines = bundle.read_bytes().split(b"\n")
    edited = [i for i, line in enumerate(lines) if line.startswith(b'{"notes"')]
    assert len(edited) == 1
    lines[edited[0]] = json.dumps({"notes": ["not a signed note"]}).encode()
    bundle.write_bytes(b"\n".join(lines))
    code, report, err = run(
        capsys, "ledger", "verify", "--bundle", str(bundle), "--trust", str(tmp_path / "root.pub"),
        "--policy", str(_policy(world, tmp_path)), "--format", "json",
    )  # fmt: skip
    assert code == 1, err
    assert report["ok"] is False
    assert "malformed note" in report["reason"]


@pytest.mark.parametrize("listed", ["foreign-only", "foreign-beside-the-real-one"])
def test_a_policy_naming_a_log_key_the_identity_never_enrolled_is_refused(
    make_world: Callable[..., World],
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    listed: str,
) -> None:
    world = _world(make_world, db_url)
    _trust(world, tmp_path)
    _cosign(world, tmp_path, ("hospital-a", "hospital-c"))
    real = WitnessedLog(world.ledger).verifier
    foreign = NoteVerifier.for_key(real.name, seeded_key("never-enrolled").public)
    witnesses = {
        site: make_witness(tmp_path / "witness" / site, world, site).verifier for site in SITES
    }
    logs = [foreign] if listed == "foreign-only" else [real, foreign]
    path = tmp_path / "foreign-policy.txt"
    path.write_text(
        Policy.build(logs=logs, witnesses=witnesses, threshold=2).render(), encoding="utf-8"
    )
    code, report = _verify(capsys, world, tmp_path, "--policy", str(path))
    assert code == 1
    assert "never enrolled it as a log key" in report["reason"]
    assert foreign.vkey() in report["reason"]
    bundle = tmp_path / "ledger.bundle"
    world.ledger.export_bundle(bundle)
    code, document, _ = run(
        capsys, "ledger", "verify", "--bundle", str(bundle), "--trust", str(tmp_path / "root.pub"),
        "--policy", str(path), "--format", "json",
    )  # fmt: skip
    assert code == 1
    assert "never enrolled it as a log key" in document["reason"]


def test_checkpoint_note_needs_no_private_key_and_carries_every_cosignature(
    make_world: Callable[..., World],
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``ledger checkpoint --db URL --format note`` from a directory holding no key."""
    world = _world(make_world, db_url)
    _cosign(world, tmp_path, ("hospital-a", "hospital-c"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("VERACITY_DATA_DIR", raising=False)
    code, vkey, err = run(capsys, "ledger", "vkey", "--db", db_url)
    assert code == 0, err
    code, text, err = run(capsys, "ledger", "checkpoint", "--db", db_url, "--format", "note")
    assert code == 0, err
    note = Note.parse(str(text))
    log = NoteVerifier.parse(str(vkey).strip())
    assert verify_note(note, [log]) == [log]
    witnesses = [make_witness(tmp_path / "witness" / site, world, site).verifier for site in SITES]
    cosigned = verify_note(note, witnesses)
    assert [v.name for v in cosigned] == [witness_name(s) for s in ("hospital-a", "hospital-c")]
    assert CheckpointText.parse(note.text).tree_size == world.ledger.latest_checkpoint().tree_size  # type: ignore[union-attr]
    assert not (elsewhere / "veracity-coordinator").exists()


def test_a_split_view_made_from_one_copied_database_is_caught_and_proven(
    make_world: Callable[..., World],
    copyable_db: CopyableDatabase,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 18's "Done when": ONE coordinator database is copied (a file copy; on
    PostgreSQL ``CREATE DATABASE ... TEMPLATE``) and each copy is extended differently.
    Each verifies under the root key alone; the site witness that cosigned one refuses the
    other and keeps both notes; an auditor with a state directory refuses the other; and
    ``veracity ledger equivocation`` turns the witness's two evidence notes into proof."""
    world = _world(make_world, copyable_db.url)
    _trust(world, tmp_path)
    witness = make_witness(tmp_path / "witness" / "hospital-a", world, "hospital-a")
    feed(witness, world.ledger)  # the witness has cosigned the shared past
    world.ledger.close()
    copy_url = copyable_db.copy()
    a = dataclasses.replace(world, ledger=Ledger.open(copyable_db.url, root_key=world.root))
    b = dataclasses.replace(
        world, ledger=Ledger.open(copy_url, root_key=world.root), keys=dict(world.keys)
    )
    try:
        a.note(ROOT_ACTOR, "study X withdrawn")
        b.note(ROOT_ACTOR, "study X approved by the board")
        for side in (a, b):
            side.ledger.checkpoint(now=T0)
        assert a.ledger.size() == b.ledger.size()
        assert a.ledger.root() != b.ledger.root()
        for url in (a.ledger.url, b.ledger.url):  # the root key alone accepts either copy
            assert _verify(capsys, url, tmp_path)[0] == 0

        # The site witness: cosigns the view it is shown first, refuses the other.
        feed(witness, a.ledger)
        with pytest.raises(ProofError, match=r"two roots|inconsistent"):
            feed(witness, b.ledger)
        evidence = sorted((tmp_path / "witness" / "hospital-a" / "evidence").iterdir())
        assert len(evidence) == 2

        # The auditor with state: verifies one view, then refuses the other.
        state = str(tmp_path / "auditor-state")
        code, report = _verify(capsys, a.ledger.url, tmp_path, "--state", state)
        assert code == 0, report
        code, report = _verify(capsys, b.ledger.url, tmp_path, "--state", state)
        assert code == 1
        assert report["ok"] is False
        assert "fork" in report["reason"]

        # The evidence is transferable: anyone with the log's vkey checks it.
        vkey = WitnessedLog(a.ledger).verifier.vkey()
        code, proof, err = run(
            capsys, "ledger", "equivocation", str(evidence[0]), str(evidence[1]), "--vkey", vkey
        )
        assert code == 0, err
        assert proof["equivocation"] is True
        assert "two roots" in proof["reason"]
    finally:
        a.ledger.close()
        b.ledger.close()


def test_a_checkpoint_recorded_while_verifying_does_not_fail_the_audit(
    make_world: Callable[..., World], db_url: str, tmp_path: Path
) -> None:
    """The audit looks at the checkpoints of the entries verified, not at one recorded
    since (a busy coordinator checkpoints during a 7 s verification)."""
    from veracity.ledger.verify_audit import audit_verified

    world = _world(make_world, db_url)
    _cosign(world, tmp_path, ("hospital-a", "hospital-c"))
    policy = _policy(world, tmp_path)
    report = world.ledger.verify(world.ledger.identity_public_key)
    verified = world.ledger.latest_checkpoint()
    assert verified is not None
    world.note(ROOT_ACTOR, "recorded while the auditor verified")
    world.ledger.checkpoint(now=T0 + timedelta(seconds=5))
    assert world.ledger.size() > report.entries

    witnessed = audit_verified(
        report, db=world.ledger.url, bundle=None, policy_file=policy, state=None, notes=[],
        tail=False,
    )  # fmt: skip

    assert witnessed["cosigned_by"] == ["hospital-a", "hospital-c"]
    assert witnessed["tree_size"] == verified.tree_size
