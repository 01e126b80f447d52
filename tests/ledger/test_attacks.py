"""The ledger's own integrity against the attacks of issue 18, on SQLite and PostgreSQL.

The attacker writes the coordinator's database (any SQL, no private key) or is the
coordinator itself. Each test is an attack that succeeded before the fix:

* attack 1, tail-mode laundering: a forged root entry written before a checkpoint used to
  be sealed by it, so ``verify --root-signatures tail`` accepted what ``all`` rejected;
* attack 2, signatures not bound to position: a database writer revived a revoked key by
  copying the root's old enrolment to the head, and reordered, duplicated or re-dated the
  entries after the last checkpoint (even to before genesis), and ``verify`` passed;
* attack 4, site impersonation by the root: the root enrolled its own key for a site,
  signed a ``study.approved`` as that site and re-enrolled the real key, and ``verify``
  passed; a revoked key was enrolled again, a name changed its role after a revocation, a
  key was enrolled without its holder (no proof of possession) and a name's key was
  replaced without its current key;
* attack 5, orphan checkpoints: a checkpoint signed inside a transaction that then rolled
  back conflicted with the one finally committed at the same size.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.ledger.test_cli import run
from veracity.contracts.events import ROOT_ACTOR
from veracity.core.fields import format_timestamp
from veracity.crypto.keys import SigningKey
from veracity.errors import Conflict, InputError, LedgerIntegrityError, SignatureError
from veracity.ledger.entry import (
    Entry,
    build_body,
    entry_message,
    parse_body,
    statement_bytes,
    statement_message,
    statement_of_body,
)
from veracity.ledger.ledger import Ledger
from veracity.ledger.merkle import leaf_hash
from veracity.ledger.statement import encode_signature
from veracity.ledger.verify import RootSignatures

from .conftest import (
    T0,
    World,
    enrolment_payload,
    recovery_payload,
    rotation_payload,
    seeded_key,
)

ZERO_SIGNATURE = "A" * 86 + "=="


def raw_append(
    ledger: Ledger, kind: str, actor: str, payload: dict[str, Any], *, signature: str
) -> int:
    """A database writer's append: a well-formed, well-linked row, and the key index row."""
    with ledger.engine.begin() as connection:
        head, prev = connection.execute(
            sa.text("SELECT seq, hash FROM ledger_entry ORDER BY seq DESC LIMIT 1")
        ).one()
        seq, prev = int(head) + 1, bytes(prev)
        ts = "2026-11-27T16:00:00.000000Z"
        body = build_body(
            statement_bytes(kind, actor, payload),
            prev=prev.hex(),
            seq=seq,
            signature=signature,
            ts=ts,
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
        if kind == "key.enrolled":
            key = payload["public_key"]
            connection.execute(
                sa.text(
                    "INSERT INTO ledger_key_event (seq, name, action, role, key_id, public_key) "
                    "VALUES (:seq, :name, 'enrolled', :role, :key_id, :key)"
                ),
                {
                    "seq": seq,
                    "name": payload["name"],
                    "role": payload["role"],
                    "key_id": seeded_key_id(key),
                    "key": key,
                },
            )
    return seq


def seeded_key_id(pem: str) -> str:
    from veracity.crypto.keys import VerifyKey

    return VerifyKey.from_pem(pem).key_id


def _enrol_mallory_behind_the_apis_back(world: World, signature: str) -> SigningKey:
    mallory = seeded_key("mallory")
    payload = enrolment_payload(world.ledger.log_id, "mallory", mallory)
    raw_append(world.ledger, "key.enrolled", ROOT_ACTOR, payload, signature=signature)
    return mallory


def _mallory_registers_a_dataset(world: World, mallory: SigningKey) -> Entry:
    return world.ledger.append(
        "note.recorded", "mallory", {"text": "mallory was here"}, signer=mallory, now=world.now()
    )


# ---------------------------------------------------------------------- attack 1


@pytest.mark.parametrize(
    "signature",
    [ZERO_SIGNATURE, encode_signature(seeded_key("junk").sign(b"x"))],
    ids=["zeros", "another-keys"],
)
def test_a_forged_root_entry_is_never_sealed_by_a_checkpoint(
    db_url: str, make_world: Callable[..., World], signature: str
) -> None:
    world = make_world(db_url)
    mallory = _enrol_mallory_behind_the_apis_back(world, signature)
    _mallory_registers_a_dataset(world, mallory)  # the append path trusts its key index

    with pytest.raises(LedgerIntegrityError, match="signature") as caught:
        world.ledger.checkpoint()
    assert caught.value.seq == 3
    assert world.ledger.checkpoints() == []
    with pytest.raises(LedgerIntegrityError):
        world.ledger.verify(world.root.public, root_signatures="all")
    with pytest.raises(LedgerIntegrityError):
        world.ledger.verify(world.root.public, root_signatures="tail")


def test_tail_mode_refuses_a_forged_root_entry_through_the_cli_and_an_exported_bundle(
    db_url: str,
    make_world: Callable[..., World],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Attack 1 as an auditor meets it: ``veracity ledger verify`` on the database and on
    a bundle exported from it, in tail mode (even trusting the log key alone)."""
    world = make_world(db_url)
    mallory = _enrol_mallory_behind_the_apis_back(world, ZERO_SIGNATURE)
    _mallory_registers_a_dataset(world, mallory)
    trust = tmp_path / "root.pub"
    trust.write_text(world.root.public.pem(), encoding="utf-8")
    tail = ["--trust", str(trust), "--root-signatures", "tail", "--no-witnesses"]

    code, report, err = run(capsys, "ledger", "verify", "--db", db_url, *tail, "--format", "json")
    assert code == 1, err
    assert (report["ok"], report["first_bad_seq"]) == (False, 3)
    code, _text, err = run(capsys, "ledger", "verify", "--db", db_url, *tail)
    assert code == 1
    assert "entry 3" in err

    bundle = tmp_path / "ledger.jsonl"
    code, _info, err = run(capsys, "ledger", "export", "--db", db_url, "--out", str(bundle))
    assert code == 0, err
    code, report, err = run(
        capsys, "ledger", "verify", "--bundle", str(bundle), *tail, "--format", "json"
    )
    assert code == 1, err
    assert (report["ok"], report["first_bad_seq"]) == (False, 3)


def test_an_automatic_checkpoint_refuses_to_seal_a_forged_root_entry(
    db_url: str, make_world: Callable[..., World]
) -> None:
    world = make_world(db_url, checkpoint_every=4)
    mallory = _enrol_mallory_behind_the_apis_back(world, ZERO_SIGNATURE)
    for _ in range(3):
        _mallory_registers_a_dataset(world, mallory)  # crosses checkpoint_every

    assert world.ledger.checkpoints() == []
    with pytest.raises(LedgerIntegrityError) as caught:
        world.ledger.verify(world.root.public, root_signatures="tail")
    assert caught.value.seq == 3


def test_a_key_event_edited_below_the_last_checkpoint_is_not_trusted_by_the_signer(
    db_url: str, make_world: Callable[..., World]
) -> None:
    """The signer trusts the entries below its last checkpoint only as that tree holds them."""
    world = make_world(db_url)
    world.ledger.checkpoint(now=T0)
    mallory = seeded_key("mallory")
    with world.ledger.engine.begin() as connection:
        body = bytes(
            connection.execute(sa.text("SELECT body FROM ledger_entry WHERE seq = 1")).scalar_one()
        )
        pem = world.keys["hospital-a"].public.pem()
        forged = body.replace(
            pem.encode().replace(b"\n", b"\\n"),
            mallory.public.pem().encode().replace(b"\n", b"\\n"),
        )
        assert forged != body
        connection.execute(
            sa.text("UPDATE ledger_entry SET body = :body WHERE seq = 1"), {"body": forged}
        )
    with pytest.raises(LedgerIntegrityError, match="key event") as caught:
        world.ledger.checkpoint()
    assert caught.value.seq == 1


def test_the_signer_checks_site_signatures_in_entries_it_appended_itself(
    db_url: str, make_world: Callable[..., World]
) -> None:
    """The signer skips only its own root signatures: the append path trusted an edited
    key index, and the checkpoint still refuses the statement it let in."""
    world = make_world(db_url)
    mallory = seeded_key("mallory")
    with world.ledger.engine.begin() as connection:
        connection.execute(
            sa.text(
                "UPDATE ledger_key_event SET public_key = :key, key_id = :key_id "
                "WHERE name = 'hospital-a'"
            ),
            {"key": mallory.public.pem(), "key_id": mallory.public.key_id},
        )
    entry = world.ledger.append(
        "note.recorded", "hospital-a", {"text": "as hospital-a"}, signer=mallory
    )

    with pytest.raises(LedgerIntegrityError, match="signature") as caught:
        world.ledger.checkpoint()
    assert caught.value.seq == entry.seq
    assert world.ledger.checkpoints() == []


def test_the_signer_checks_every_signature_of_an_entry_it_appended_then_found_changed(
    db_url: str, make_world: Callable[..., World]
) -> None:
    world = make_world(db_url)
    world.note(ROOT_ACTOR, "the root's own entry")
    head = world.ledger.size() - 1
    forged = dict(parse_body(world.ledger.get(head).body).payload, text="rewritten")
    rechain(world.ledger, head, [])
    raw_append(world.ledger, "note.recorded", ROOT_ACTOR, forged, signature=ZERO_SIGNATURE)

    with pytest.raises(LedgerIntegrityError, match="signature") as caught:
        world.ledger.checkpoint()
    assert caught.value.seq == head


# ---------------------------------------------------------------------- attack 5


def test_a_rolled_back_transaction_leaves_no_signed_checkpoint(
    db_url: str, make_world: Callable[..., World]
) -> None:
    world = make_world(db_url, checkpoint_every=5)
    signed_inside: list[Entry] = []

    def rolled_back() -> None:
        with world.ledger.transaction() as session:
            for i in range(7):  # crosses an automatic checkpoint inside the transaction
                signed_inside.extend(
                    world.ledger.append(
                        "note.recorded",
                        "hospital-b",
                        {"text": f"never committed {i}"},
                        signer=world.keys["hospital-b"],
                        session=session,
                    )
                    for _ in [0]
                )
            world.ledger.checkpoint_after_commit(session)
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        rolled_back()
    assert [e.kind for e in signed_inside] == ["note.recorded"] * 7
    assert world.ledger.checkpoints() == []
    for i in range(7):
        world.note("hospital-a", f"committed {i}")
    assert world.ledger.checkpoints()  # signed after commits, over committed entries only
    world.ledger.verify(world.root.public)


def test_a_checkpoint_asked_for_inside_a_transaction_is_signed_after_it_commits(
    db_url: str, make_world: Callable[..., World]
) -> None:
    world = make_world(db_url, checkpoint_every=0)
    results: list[Any] = []
    with world.ledger.transaction() as session:
        entry = world.ledger.append(
            "note.recorded",
            "hospital-a",
            {"text": "x"},
            signer=world.keys["hospital-a"],
            session=session,
        )
        world.ledger.checkpoint_after_commit(session, on_done=results.append)
        assert world.ledger.checkpoints() == []  # nothing signed while the transaction is open
    ((checkpoint, recorded),) = results
    assert checkpoint.tree_size == entry.seq + 1
    assert recorded.seq == entry.seq + 1
    assert world.ledger.checkpoints() == [checkpoint]
    world.ledger.verify(world.root.public)


# ---------------------------------------------------------------------- attack 2


def rechain(ledger: Ledger, start: int, bodies: list[bytes], *, ts: str | None = None) -> None:
    """A database writer replaces entries ``start..`` with ``bodies``, relinked (and indexed).

    Each entry keeps its statement and signatures; ``ts`` re-dates every one of them.
    """
    with ledger.engine.begin() as connection:
        for statement in (
            "DELETE FROM ledger_site_statement WHERE seq >= :start",
            "DELETE FROM ledger_key_event WHERE seq >= :start",
            "DELETE FROM ledger_checkpoint WHERE tree_size >= :start",
            "DELETE FROM ledger_entry WHERE seq >= :start",
        ):
            connection.execute(sa.text(statement), {"start": start})
        prev = bytes(
            connection.execute(
                sa.text("SELECT hash FROM ledger_entry WHERE seq = :seq"), {"seq": start - 1}
            ).scalar_one()
        )
        for seq, old in enumerate(bodies, start=start):
            entry = parse_body(old)
            extra = {} if entry.root_signature is None else {"root_signature": entry.root_signature}
            when = ts or entry.ts
            body = build_body(
                statement_of_body(old),
                prev=prev.hex(),
                seq=seq,
                signature=entry.signature,
                ts=when,
                **extra,
            )
            digest = leaf_hash(body)
            connection.execute(
                sa.text(
                    "INSERT INTO ledger_entry (seq, ts, kind, actor, prev_seq, prev, hash, body) "
                    "VALUES (:seq, :ts, :kind, :actor, :prev_seq, :prev, :hash, :body)"
                ),
                {
                    "seq": seq,
                    "ts": when,
                    "kind": entry.kind,
                    "actor": entry.actor,
                    "prev_seq": seq - 1,
                    "prev": prev,
                    "hash": digest,
                    "body": body,
                },
            )
            if entry.kind in ("key.enrolled", "key.revoked"):
                enrolled = entry.kind == "key.enrolled"
                payload = entry.payload
                connection.execute(
                    sa.text(
                        "INSERT INTO ledger_key_event "
                        "(seq, name, action, role, key_id, public_key) "
                        "VALUES (:seq, :name, :action, :role, :key_id, :key)"
                    ),
                    {
                        "seq": seq,
                        "name": payload["name"],
                        "action": "enrolled" if enrolled else "revoked",
                        "role": payload["role"] if enrolled else None,
                        "key_id": seeded_key_id(payload["public_key"])
                        if enrolled
                        else payload["key_id"],
                        "key": payload["public_key"] if enrolled else None,
                    },
                )
            prev = digest


def _bodies(ledger: Ledger, start: int) -> list[bytes]:
    return [entry.body for entry in ledger.entries(since=start)]


def test_a_revoked_key_is_not_revived_by_copying_its_old_enrolment(
    db_url: str, make_world: Callable[..., World]
) -> None:
    world = make_world(db_url)
    enrolment = world.ledger.get(1)  # hospital-a's key.enrolled, signed by the root
    world.note("hospital-a", "before")
    world.revoke("hospital-a")
    head = world.ledger.size()
    rechain(world.ledger, head, [enrolment.body])  # the root's own statement, copied

    # Refused twice over: the signature binds seq 1, and a name is enrolled once.
    with pytest.raises(LedgerIntegrityError, match=r"at this position|enrolled once") as caught:
        world.ledger.verify(world.root.public)
    assert caught.value.seq == head
    with pytest.raises(LedgerIntegrityError):
        world.ledger.checkpoint()


@pytest.mark.parametrize("how", ["reordered", "duplicated", "re-dated", "before-genesis"])
def test_the_unsealed_tail_cannot_be_reordered_duplicated_or_re_dated(
    db_url: str, make_world: Callable[..., World], how: str
) -> None:
    world = make_world(db_url)
    world.ledger.checkpoint(now=T0)
    start = world.ledger.size()
    world.note(ROOT_ACTOR, "study X withdrawn")
    world.note("hospital-a", "hospital-a approves X")
    world.note(ROOT_ACTOR, "run started")
    tail = _bodies(world.ledger, start)
    world.ledger.verify(world.root.public)
    if how == "reordered":
        rechain(world.ledger, start, [tail[1], tail[2], tail[0]])
    elif how == "duplicated":
        rechain(world.ledger, start, [tail[0], tail[1], tail[2], tail[2]])
    elif how == "re-dated":
        rechain(world.ledger, start, tail, ts="2026-12-31T00:00:00.000000Z")
    else:
        rechain(world.ledger, start, tail, ts="2025-01-01T00:00:00.000000Z")

    with pytest.raises(LedgerIntegrityError, match="at this position"):
        world.ledger.verify(world.root.public)
    with pytest.raises(LedgerIntegrityError):
        world.ledger.verify(world.root.public, root_signatures="tail")


# ---------------------------------------------------------------------- attack 4


def dishonest_append(
    world: World,
    kind: str,
    actor: str,
    payload: dict[str, Any],
    *,
    signer: SigningKey | None = None,
) -> int:
    """The coordinator itself, root key in hand, writes a correctly signed entry at the head.

    It skips every check of the append path: only the verifier stands in its way.
    """
    ledger = world.ledger
    with ledger.engine.begin() as connection:
        head, prev = connection.execute(
            sa.text("SELECT seq, hash FROM ledger_entry ORDER BY seq DESC LIMIT 1")
        ).one()
        seq, prev = int(head) + 1, bytes(prev)
        ts = format_timestamp(world.now())
        statement = statement_bytes(kind, actor, payload)
        log_id = bytes.fromhex(ledger.log_id)
        root_signature = None
        if actor == ROOT_ACTOR:
            message = entry_message(log_id, seq, prev, ts, statement)
            signature = encode_signature(world.root.sign(message))
        else:
            assert signer is not None
            raw = signer.sign(statement_message(statement, log_id))
            signature = encode_signature(raw)
            message = entry_message(log_id, seq, prev, ts, statement, raw)
            root_signature = encode_signature(world.root.sign(message))
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


def _approval(site: str) -> dict[str, Any]:
    return {
        "study_hash": "b" * 64,
        "site": site,
        "dataset_id": "d1",
        "epsilon_cap": 3,
        "signed_at": format_timestamp(T0),
    }


def test_the_root_cannot_enrol_its_own_key_for_a_site_through_the_ledger(
    db_url: str, make_world: Callable[..., World]
) -> None:
    world = make_world(db_url)
    impostor = seeded_key("impostor")
    log_id = world.ledger.log_id
    size = world.ledger.size()

    with pytest.raises(Conflict, match="enrolled once"):
        world.ledger.append(
            "key.enrolled",
            ROOT_ACTOR,
            enrolment_payload(log_id, "hospital-a", impostor),
            signer=world.root,
        )
    forged_handover = rotation_payload(log_id, "hospital-a", impostor, impostor)
    with pytest.raises(SignatureError, match="outgoing key"):
        world.ledger.append("key.rotated", ROOT_ACTOR, forged_handover, signer=world.root)
    assert world.ledger.size() == size
    world.ledger.verify(world.root.public)


def test_a_site_impersonated_by_the_root_and_restored_fails_verification(
    db_url: str, make_world: Callable[..., World]
) -> None:
    """The attack as the review made it: enrol own key, sign as the site, restore the real key."""
    world = make_world(db_url)
    real, impostor = world.keys["hospital-a"], seeded_key("impostor")
    log_id = world.ledger.log_id
    first = dishonest_append(
        world,
        "key.enrolled",
        ROOT_ACTOR,
        enrolment_payload(log_id, "hospital-a", impostor),
    )
    dishonest_append(
        world, "study.approved", "hospital-a", _approval("hospital-a"), signer=impostor
    )
    dishonest_append(
        world, "key.enrolled", ROOT_ACTOR, enrolment_payload(log_id, "hospital-a", real)
    )

    modes: tuple[RootSignatures, ...] = ("all", "tail")
    for mode in modes:
        with pytest.raises(LedgerIntegrityError, match="enrolled once") as caught:
            world.ledger.verify(world.root.public, root_signatures=mode)
        assert caught.value.seq == first
    with pytest.raises(LedgerIntegrityError):
        world.ledger.checkpoint()


def test_a_recovery_is_visible_and_the_replaced_key_never_returns(
    db_url: str, make_world: Callable[..., World]
) -> None:
    """A lost key goes through key.recovered; the real key cannot be restored afterwards."""
    world = make_world(db_url)
    real, impostor = world.keys["hospital-a"], seeded_key("impostor")
    log_id = world.ledger.log_id
    recovered = world.ledger.append(
        "key.recovered",
        ROOT_ACTOR,
        recovery_payload(log_id, "hospital-a", impostor),
        signer=world.root,
        now=world.now(),
    )
    assert [action for _, action, _ in world.ledger.key_history("hospital-a")] == [
        "enrolled",
        "recovered",
    ]
    with pytest.raises(SignatureError):
        world.ledger.append("note.recorded", "hospital-a", {"text": "old"}, signer=real)
    with pytest.raises(Conflict, match="enrolled before"):
        world.ledger.append(
            "key.recovered",
            ROOT_ACTOR,
            recovery_payload(log_id, "hospital-a", real),
            signer=world.root,
        )
    world.ledger.verify(world.root.public)

    restored = dishonest_append(
        world, "key.recovered", ROOT_ACTOR, recovery_payload(log_id, "hospital-a", real)
    )
    with pytest.raises(LedgerIntegrityError, match="enrolled before") as caught:
        world.ledger.verify(world.root.public)
    assert caught.value.seq == restored > recovered.seq


def test_a_revoked_key_is_never_enrolled_again(
    db_url: str, make_world: Callable[..., World]
) -> None:
    world = make_world(db_url)
    old = world.keys["hospital-a"]
    log_id = world.ledger.log_id
    world.revoke("hospital-a")
    for kind, payload in (
        ("key.enrolled", enrolment_payload(log_id, "hospital-a", old)),
        ("key.enrolled", enrolment_payload(log_id, "hospital-c", old)),
        ("key.recovered", recovery_payload(log_id, "hospital-a", old)),
    ):
        with pytest.raises(Conflict, match=r"enrolled (once|before)"):
            world.ledger.append(kind, ROOT_ACTOR, payload, signer=world.root)

    again = dishonest_append(
        world, "key.enrolled", ROOT_ACTOR, enrolment_payload(log_id, "hospital-a", old)
    )
    with pytest.raises(LedgerIntegrityError, match="enrolled once") as caught:
        world.ledger.verify(world.root.public)
    assert caught.value.seq == again


def test_a_names_role_never_changes_after_a_revocation(
    db_url: str, make_world: Callable[..., World]
) -> None:
    world = make_world(db_url)
    log_id = world.ledger.log_id
    world.revoke("hospital-a")
    auditor = seeded_key("hospital-a-as-auditor")
    payload = enrolment_payload(log_id, "hospital-a", auditor, role="auditor")
    with pytest.raises(Conflict, match="roles never change"):
        world.ledger.append("key.enrolled", ROOT_ACTOR, payload, signer=world.root)
    # A recovery keeps the role: the proof for another role does not verify.
    wrong_role = recovery_payload(log_id, "hospital-a", auditor, role="auditor")
    with pytest.raises(SignatureError, match="proof of possession"):
        world.ledger.append("key.recovered", ROOT_ACTOR, wrong_role, signer=world.root)

    changed = dishonest_append(world, "key.enrolled", ROOT_ACTOR, payload)
    with pytest.raises(LedgerIntegrityError, match="roles never change") as caught:
        world.ledger.verify(world.root.public)
    assert caught.value.seq == changed


@pytest.mark.parametrize("how", ["missing", "another-key", "another-log", "another-name"])
def test_an_enrolment_needs_the_new_keys_proof_of_possession(
    db_url: str, make_world: Callable[..., World], how: str
) -> None:
    world = make_world(db_url)
    newcomer, other = seeded_key("hospital-c"), seeded_key("someone-else")
    payload = enrolment_payload(world.ledger.log_id, "hospital-c", newcomer)
    if how == "missing":
        del payload["proof"]
    elif how == "another-key":
        payload["proof"] = enrolment_payload(world.ledger.log_id, "hospital-c", other)["proof"]
    elif how == "another-log":
        payload["proof"] = enrolment_payload("f" * 64, "hospital-c", newcomer)["proof"]
    else:
        payload["proof"] = enrolment_payload(world.ledger.log_id, "hospital-d", newcomer)["proof"]

    with pytest.raises(SignatureError, match="proof of possession"):
        world.ledger.append("key.enrolled", ROOT_ACTOR, payload, signer=world.root)
    enrolled = dishonest_append(world, "key.enrolled", ROOT_ACTOR, payload)
    with pytest.raises(LedgerIntegrityError, match="proof of possession") as caught:
        world.ledger.verify(world.root.public)
    assert caught.value.seq == enrolled


def test_a_rotation_is_signed_by_the_outgoing_key(
    db_url: str, make_world: Callable[..., World]
) -> None:
    world = make_world(db_url)
    old = world.keys["hospital-a"]
    rotated = world.rotate("hospital-a")
    with pytest.raises(SignatureError):
        world.ledger.append("note.recorded", "hospital-a", {"text": "old"}, signer=old)
    world.note("hospital-a", "new key")
    world.ledger.verify(world.root.public)
    assert world.ledger.key_at("hospital-a", rotated.seq).key == old.public  # type: ignore[union-attr]

    world.revoke("hospital-a")
    after_revocation = rotation_payload(
        world.ledger.log_id, "hospital-a", world.keys["hospital-a"], seeded_key("later")
    )
    with pytest.raises(InputError, match=r"key\.recovered"):
        world.ledger.append("key.rotated", ROOT_ACTOR, after_revocation, signer=world.root)
