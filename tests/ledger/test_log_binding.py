"""A site's signatures name the log they were made for (issue 18: site statements bound to one log).

A site signs ``DOMAIN || 0x00 || log_id || SHA-256(document)``. The attack: a dishonest
coordinator copies a statement (or a receipt) a site signed for log A into log B, a log
under the same identity or another one where the site's key is enrolled too, and
countersigns it at a position there; before, B's verifier accepted it. Now it is refused
when appended to B and by every verifier mode (``all``, ``tail`` below a checkpoint, the
template fast path and the reference path, an exported bundle), each naming B's log id.
A statement signed for no log (32 zero bytes: before the site knew its log) is refused
too, and a real site re-signs its queued statements for its log once it enrols.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from veracity.client.site import Site, init_site
from veracity.contracts.events import ROOT_ACTOR, NoteRecorded
from veracity.core.fields import format_timestamp
from veracity.errors import ConfigError, LedgerIntegrityError, SignatureError
from veracity.ledger import verify_fast
from veracity.ledger.checkpoint import sign_checkpoint
from veracity.ledger.entry import build_body, entry_message, statement_bytes
from veracity.ledger.ledger import Ledger
from veracity.ledger.merkle import MerkleTree, leaf_hash
from veracity.ledger.statement import (
    NO_LOG_ID,
    decode_signature,
    encode_signature,
    sign_statement,
)
from veracity.ledger.verify import RootSignatures, verify_bundle_file

from .conftest import T0, dataset_payload, enrolment_payload, round_payload, seeded_key

ROOT = seeded_key("root")
SITE = "hospital-a"
SITE_KEY = seeded_key("hospital-a-both-logs")
STUDY = "ab" * 32


def _log(url: str, *, start: int) -> Ledger:
    """A log under ROOT with hospital-a's key enrolled (its genesis time makes its id)."""
    ledger = Ledger.init(url, root_key=ROOT, now=T0 + timedelta(days=start), checkpoint_every=0)
    ledger.append(
        "key.enrolled",
        ROOT_ACTOR,
        enrolment_payload(ledger.log_id, SITE, SITE_KEY),
        signer=ROOT,
        now=T0 + timedelta(days=start, seconds=1),
    )
    return ledger


@dataclass
class Logs:
    a: Ledger
    b: Ledger


@pytest.fixture
def logs(tmp_path: Path, db_url: str) -> Iterator[Logs]:
    """Log A (SQLite) and log B (each backend), hospital-a enrolled in both."""
    a = _log(f"sqlite:///{tmp_path / 'a.db'}", start=0)
    b = _log(db_url, start=1)
    assert a.log_id != b.log_id
    try:
        yield Logs(a, b)
    finally:
        a.close()
        b.close()


def _dataset(dataset_id: str) -> dict[str, Any]:
    return dataset_payload(SITE, dataset_id, signed_at=format_timestamp(T0))


def _round_completed(log_id: str | bytes) -> dict[str, Any]:
    log = log_id if isinstance(log_id, str) else log_id.hex()
    return round_payload({SITE: SITE_KEY}, "42", STUDY, 1, [SITE], "cd" * 32, log_id=log)


def _countersigned_into(ledger: Ledger, kind: str, actor: str, payload: Any, signature: str) -> int:
    """B's coordinator, root key in hand, writes a copied statement at its head.

    It countersigns the statement at its position in B (what it may do for any statement),
    skipping every check of the append path: only the verifier stands in its way.
    """
    with ledger.engine.begin() as connection:
        head, prev = connection.execute(
            sa.text("SELECT seq, hash FROM ledger_entry ORDER BY seq DESC LIMIT 1")
        ).one()
        seq, prev = int(head) + 1, bytes(prev)
        ts = format_timestamp(T0 + timedelta(days=9, seconds=seq))
        statement = statement_bytes(kind, actor, payload)
        log_id = bytes.fromhex(ledger.log_id)
        if actor == ROOT_ACTOR:
            signature = encode_signature(ROOT.sign(entry_message(log_id, seq, prev, ts, statement)))
            root_signature = None
        else:
            raw = decode_signature(signature)
            message = entry_message(log_id, seq, prev, ts, statement, raw)
            root_signature = encode_signature(ROOT.sign(message))
        body = build_body(
            statement,
            prev=prev.hex(),
            seq=seq,
            signature=signature,
            ts=ts,
            root_signature=root_signature,
        )
        connection.execute(
            sa.text(
                "INSERT INTO ledger_entry (seq, ts, kind, actor, prev_seq, prev, hash, body) "
                "VALUES (:seq, :ts, :kind, :actor, :prev_seq, :prev, :hash, :body)"
            ),
            {
                "seq": seq,
                "ts": ts,
                "kind": kind,
                "actor": actor,
                "prev_seq": seq - 1,
                "prev": prev,
                "hash": leaf_hash(body),
                "body": body,
            },
        )
    return seq


def _seal(ledger: Ledger) -> None:
    """B's coordinator signs a checkpoint over the whole log without verifying it first."""
    bodies = [entry.body for entry in ledger.iter_entries()]
    tree = MerkleTree(leaf_hash(body) for body in bodies)
    signed = sign_checkpoint(
        ROOT,
        log_id=ledger.log_id,
        tree_size=tree.size,
        root_hash=tree.root().hex(),
        timestamp=format_timestamp(T0 + timedelta(days=10)),
    )
    with ledger.transaction() as session:
        ledger.record_checkpoint(session, signed)


def _verify_outcomes(ledger: Ledger, tmp_path: Path) -> dict[str, tuple[int | None, str] | None]:
    """Every verifier mode's verdict on ``ledger``: ``None`` if it passes."""
    bundle = tmp_path / "b.bundle"
    ledger.export_bundle(bundle)
    outcomes: dict[str, tuple[int | None, str] | None] = {}
    modes: list[tuple[str, RootSignatures, bool]] = [
        ("all", "all", False),
        ("tail", "tail", False),
        ("all-reference", "all", True),
        ("tail-reference", "tail", True),
    ]
    for name, root_signatures, reference in modes:
        with pytest.MonkeyPatch.context() as patch:
            if reference:  # every row on the reference path, none on the template fast path
                patch.setattr(verify_fast, "template_for", lambda body, kind=None: None)
            for source in ("db", "bundle"):
                try:
                    if source == "db":
                        ledger.verify(ROOT.public, root_signatures=root_signatures)
                    else:
                        verify_bundle_file(
                            bundle, trusted_root=ROOT.public, root_signatures=root_signatures
                        )
                except LedgerIntegrityError as err:
                    outcomes[f"{source}/{name}"] = (err.seq, str(err))
                else:
                    outcomes[f"{source}/{name}"] = None
    return outcomes


# ---------------------------------------------------------------------- append


def test_a_statement_signed_for_log_a_is_refused_when_appended_to_log_b(logs: Logs) -> None:
    payload = _dataset("d1")
    signature = sign_statement(SITE_KEY, "dataset.registered", SITE, payload, log_id=logs.a.log_id)
    logs.a.append("dataset.registered", SITE, payload, signature=signature)
    size = logs.b.size()
    with pytest.raises(SignatureError, match=f"this log {logs.b.log_id} .*another log"):
        logs.b.append("dataset.registered", SITE, payload, signature=signature)
    assert logs.b.size() == size
    logs.a.verify(ROOT.public)


def test_a_receipt_signed_for_log_a_is_refused_in_a_round_of_log_b(logs: Logs) -> None:
    logs.a.append("round.completed", ROOT_ACTOR, _round_completed(logs.a.log_id), signer=ROOT)
    size = logs.b.size()
    with pytest.raises(SignatureError, match=f"receipt of 'hospital-a'.*this log {logs.b.log_id}"):
        logs.b.append("round.completed", ROOT_ACTOR, _round_completed(logs.a.log_id), signer=ROOT)
    assert logs.b.size() == size


def test_a_statement_signed_for_no_log_is_refused_once_the_site_is_enrolled(logs: Logs) -> None:
    payload = _dataset("d2")
    unbound = sign_statement(SITE_KEY, "dataset.registered", SITE, payload, log_id=NO_LOG_ID)
    with pytest.raises(SignatureError, match=f"for no log .*not for this log {logs.b.log_id}"):
        logs.b.append("dataset.registered", SITE, payload, signature=unbound)
    with pytest.raises(SignatureError, match="for no log"):
        logs.b.append("round.completed", ROOT_ACTOR, _round_completed(NO_LOG_ID), signer=ROOT)


# ---------------------------------------------------------------------- verifiers


@pytest.mark.parametrize("signed_for", ["a", "none"])
def test_every_verifier_mode_refuses_a_statement_copied_from_another_log(
    logs: Logs, tmp_path: Path, signed_for: str
) -> None:
    payload = _dataset("d3")
    log_id = logs.a.log_id if signed_for == "a" else NO_LOG_ID
    signature = sign_statement(SITE_KEY, "dataset.registered", SITE, payload, log_id=log_id)
    seq = _countersigned_into(logs.b, "dataset.registered", SITE, payload, signature)
    logs.b.append("note.recorded", ROOT_ACTOR, {"text": "after the copy"}, signer=ROOT)
    # verify-before-sign: the honest signer refuses to seal it ...
    with pytest.raises(LedgerIntegrityError, match=f"this log {logs.b.log_id}"):
        logs.b.checkpoint()
    # ... and a dishonest one that seals it anyway does not get it past any verifier.
    _seal(logs.b)
    outcomes = _verify_outcomes(logs.b, tmp_path)
    reason = "another log" if signed_for == "a" else "for no log"
    for mode, outcome in outcomes.items():
        assert outcome is not None, f"{mode} accepted the copied statement"
        assert outcome[0] == seq, mode
        assert f"this log {logs.b.log_id}" in outcome[1], mode
        assert reason in outcome[1], mode
    assert len(set(outcomes.values())) == 1  # the same verdict everywhere


def test_every_verifier_mode_refuses_a_receipt_copied_from_another_log(
    logs: Logs, tmp_path: Path
) -> None:
    payload = _round_completed(logs.a.log_id)
    seq = _countersigned_into(logs.b, "round.completed", ROOT_ACTOR, payload, "")
    _seal(logs.b)
    outcomes = _verify_outcomes(logs.b, tmp_path)
    for mode, outcome in outcomes.items():
        assert outcome is not None, f"{mode} accepted the copied receipt"
        assert outcome[0] == seq, mode
        assert "receipt of 'hospital-a'" in outcome[1], mode
        assert f"this log {logs.b.log_id}" in outcome[1], mode


def test_the_statements_of_each_log_verify_in_it(logs: Logs, tmp_path: Path) -> None:
    for ledger in (logs.a, logs.b):
        payload = _dataset("d4")
        signature = sign_statement(
            SITE_KEY, "dataset.registered", SITE, payload, log_id=ledger.log_id
        )
        ledger.append("dataset.registered", SITE, payload, signature=signature)
        ledger.append("round.completed", ROOT_ACTOR, _round_completed(ledger.log_id), signer=ROOT)
        ledger.checkpoint()
    assert set(_verify_outcomes(logs.b, tmp_path).values()) == {None}


# ---------------------------------------------------------------------- a real site


def _site(tmp_path: Path) -> Site:
    init_site(tmp_path / "site", SITE)
    return Site.open(tmp_path / "site")


def _enrol(ledger: Ledger, site: Site, proof: str) -> None:
    payload = {**enrolment_payload(ledger.log_id, site.name, site.key), "proof": proof}
    ledger.append("key.enrolled", ROOT_ACTOR, payload, signer=ROOT)


def _log_with_another_name(url: str, *, start: int) -> Ledger:
    return Ledger.init(url, root_key=ROOT, now=T0 + timedelta(days=start), checkpoint_every=0)


def test_a_real_sites_statement_for_its_log_is_refused_in_another(
    tmp_path: Path, db_url: str
) -> None:
    a = _log_with_another_name(f"sqlite:///{tmp_path / 'a.db'}", start=0)
    b = _log_with_another_name(db_url, start=1)
    with _site(tmp_path) as site, a, b:
        _enrol(a, site, site.enrolment_proof(a.log_id))
        assert (site.paths.log_id.read_text().strip(), site.log_id.hex()) == (a.log_id,) * 2
        # The site refuses to sign for a second log, so B's coordinator cannot get its proof
        # (or any statement) for B from it ...
        with pytest.raises(ConfigError, match=f"signs for the log {a.log_id}, not {b.log_id}"):
            site.enrolment_proof(b.log_id)
        # ... and even with the site's key enrolled in B some other way, what the site signed
        # for A stays A's.
        from veracity.ledger.possession import sign_enrolment

        _enrol(b, site, sign_enrolment(site.key, log_id=b.log_id, name=SITE, role="site"))
        note = site.sign(NoteRecorded(text="ethics approval REC-7"))
        a.append(note.kind, note.actor, note.payload, signature=note.signature)
        with pytest.raises(SignatureError, match=f"this log {b.log_id} .*another log"):
            b.append(note.kind, note.actor, note.payload, signature=note.signature)
        a.verify(ROOT.public)


def test_a_real_site_re_signs_its_queued_statements_when_it_enrols(tmp_path: Path) -> None:
    with (
        _site(tmp_path) as site,
        _log_with_another_name(f"sqlite:///{tmp_path / 'a.db'}", start=0) as ledger,
    ):
        assert site.log_id == NO_LOG_ID
        early = site.sign(NoteRecorded(text="signed before enrolment"))
        site.store.add_statement(early, now=site.now())
        proof = site.enrolment_proof(ledger.log_id)  # the site learns its log here
        _enrol(ledger, site, proof)
        (queued,) = [entry.statement for entry in site.store.outbox()]
        assert queued.statement_id == early.statement_id
        assert queued.signature != early.signature
        # The copy signed for no log (kept by the coordinator, say) is refused ...
        with pytest.raises(SignatureError, match=f"for no log .*{ledger.log_id}"):
            ledger.append(early.kind, early.actor, early.payload, signature=early.signature)
        # ... and the re-signed statement is recorded and verifies.
        ledger.append(queued.kind, queued.actor, queued.payload, signature=queued.signature)
        ledger.verify(ROOT.public)
        # Opened again, the site still signs for its log.
        with Site.open(site.paths.root) as reopened:
            assert reopened.log_id.hex() == ledger.log_id


def test_the_site_cli_keeps_the_log_of_its_enrolment_proof(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from veracity.cli import main

    init_site(tmp_path / "site", SITE)
    first, second = "a1" * 32, "b2" * 32
    proof = ["site", "enrolment-proof", "--data-dir", str(tmp_path / "site"), "--log-id"]
    assert main([*proof, first]) == 0
    assert (tmp_path / "site" / "log_id").read_text() == first + "\n"
    assert main([*proof, first]) == 0  # asked again for the same log: fine
    capsys.readouterr()
    assert main([*proof, second]) != 0
    assert f"signs for the log {first}, not {second}" in capsys.readouterr().err
    assert (tmp_path / "site" / "log_id").read_text() == first + "\n"


def test_a_sites_witness_learns_its_log_and_refuses_another(tmp_path: Path) -> None:
    from veracity.client.witness import open_site_witness
    from veracity.ledger.note import NoteVerifier, log_origin

    def vkey(log_id: str) -> str:
        return NoteVerifier.for_key(log_origin("veracity.local", log_id), ROOT.public).vkey()

    first, second = "c3" * 32, "d4" * 32
    token = secrets.token_hex(8)  # never used: the log key is given, nothing is fetched
    init_site(tmp_path / "site", SITE)
    witness = open_site_witness(
        tmp_path / "site", api_url="http://127.0.0.1:9", token=token, log_vkey=vkey(first)
    )
    witness.api.close()
    with Site.open(tmp_path / "site") as site:
        assert site.log_id.hex() == first  # a site enrolled before it kept its log learns it
    (tmp_path / "site" / "witness" / "log.vkey").unlink()
    with pytest.raises(ConfigError, match=f"signs for the log {first}, not {second}"):
        open_site_witness(
            tmp_path / "site", api_url="http://127.0.0.1:9", token=token, log_vkey=vkey(second)
        )
