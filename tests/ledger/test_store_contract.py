"""One storage contract, run on SQLite and on the real PostgreSQL (``db_url``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from veracity.contracts.events import ROOT_ACTOR
from veracity.errors import ConfigError, InputError, LedgerIntegrityError, SignatureError
from veracity.ledger import store
from veracity.ledger.ledger import EventRequest, Ledger
from veracity.ledger.statement import sign_statement
from veracity.ledger.verify import verify_bundle_file

from .conftest import (
    STUDY_HASH,
    T0,
    World,
    dataset_payload,
    enrolment_payload,
    round_payload,
    seeded_key,
)

pytestmark = pytest.mark.integration


def test_init_writes_a_self_signed_genesis_under_the_root(
    db_url: str, make_world: Callable[..., World]
) -> None:
    world = make_world(db_url, sites=())
    genesis = world.ledger.get(0)
    assert (genesis.kind, genesis.actor, genesis.prev) == ("key.enrolled", ROOT_ACTOR, "0" * 64)
    assert genesis.payload["role"] == "root"
    assert world.ledger.log_id == genesis.hash
    assert world.ledger.root_public_key == world.root.public
    again = Ledger.init(db_url, root_key=world.root)
    assert again.size() == 1
    again.close()
    with pytest.raises(ConfigError, match="another root key"):
        Ledger.init(db_url, root_key=seeded_key("intruder"))


def test_append_links_each_entry_to_the_previous_hash(
    db_url: str, make_world: Callable[..., World]
) -> None:
    world = make_world(db_url)
    first = world.note("hospital-a", "one")
    second = world.note("hospital-b", "two")
    assert second.seq == first.seq + 1
    assert second.prev == first.hash
    assert world.ledger.get(second.seq) == second
    assert world.ledger.size() == second.seq + 1
    assert [e.seq for e in world.ledger.entries(kind="note.recorded")] == [first.seq, second.seq]
    assert [e.seq for e in world.ledger.entries(since=second.seq)] == [second.seq]
    assert world.ledger.entries(actor="hospital-b") == [second]
    world.ledger.verify(world.root.public)


def test_signature_made_elsewhere_is_checked_against_the_enrolled_key(
    db_url: str, make_world: Callable[..., World]
) -> None:
    world = make_world(db_url)
    payload = dataset_payload("hospital-a", "d1", signed_at="2026-11-27T15:47:52.123456Z")
    log_id = world.ledger.log_id
    good = sign_statement(
        world.keys["hospital-a"], "dataset.registered", "hospital-a", payload, log_id=log_id
    )
    forged = sign_statement(
        seeded_key("mallory"), "dataset.registered", "hospital-a", payload, log_id=log_id
    )
    before = world.ledger.size()
    with pytest.raises(SignatureError):
        world.ledger.append("dataset.registered", "hospital-a", payload, signature=forged)
    with pytest.raises(SignatureError, match="exactly one"):
        world.ledger.append("dataset.registered", "hospital-a", payload)
    assert world.ledger.size() == before
    entry = world.ledger.append("dataset.registered", "hospital-a", payload, signature=good)
    assert entry.signature == good
    with pytest.raises(InputError, match="already recorded"):
        world.ledger.append("dataset.registered", "hospital-a", payload, signature=good)


def test_never_enrolled_and_revoked_keys_cannot_append(
    db_url: str, make_world: Callable[..., World]
) -> None:
    world = make_world(db_url)
    with pytest.raises(SignatureError, match="holds no enrolled key"):
        world.ledger.append("note.recorded", "hospital-z", {"text": "x"}, signer=seeded_key("z"))
    world.revoke("hospital-b")
    with pytest.raises(SignatureError, match="holds no enrolled key"):
        world.note("hospital-b", "after revocation")
    with pytest.raises(SignatureError, match="not the key enrolled"):
        world.ledger.append(
            "note.recorded", "hospital-a", {"text": "x"}, signer=world.keys["hospital-b"]
        )
    served = {
        "model_hash": "a" * 64,
        "requester": "c",
        "he_params_hash": "a" * 64,
        "batch_size": 1,
        "request_hash": "a" * 64,
        "served_total": 1,
    }
    with pytest.raises(SignatureError, match=r"a site key may not record inference\.served"):
        world.ledger.append(
            "inference.served", "hospital-a", served, signer=world.keys["hospital-a"]
        )
    world.ledger.verify(world.root.public)


def test_key_rotation_and_history(db_url: str, make_world: Callable[..., World]) -> None:
    world = make_world(db_url)
    old_key = world.keys["hospital-a"]
    rotation = world.rotate("hospital-a")
    assert world.ledger.key_at("hospital-a", rotation.seq) is not None
    assert world.ledger.key_at("hospital-a", rotation.seq).key == old_key.public  # type: ignore[union-attr]
    assert world.ledger.key_at("hospital-a").key == world.keys["hospital-a"].public  # type: ignore[union-attr]
    with pytest.raises(SignatureError):
        world.ledger.append("note.recorded", "hospital-a", {"text": "old key"}, signer=old_key)
    world.note("hospital-a", "new key")
    history = world.ledger.key_history("hospital-a")
    assert [action for _, action, _ in history] == ["enrolled", "rotated"]
    with pytest.raises(InputError, match=r"not 'hospital-b''s current key"):
        world.ledger.append(
            "key.revoked",
            ROOT_ACTOR,
            {"name": "hospital-b", "key_id": old_key.public.key_id, "reason": "x"},
            signer=world.root,
        )
    with pytest.raises(InputError, match="enrolled before \\(for 'hospital-a'\\)"):
        world.ledger.append(
            "key.enrolled",
            ROOT_ACTOR,
            enrolment_payload(world.ledger.log_id, "hospital-c", world.keys["hospital-a"]),
            signer=world.root,
        )
    world.ledger.verify(world.root.public)


def test_batch_is_atomic_and_checkpoints_every_n(
    db_url: str, make_world: Callable[..., World]
) -> None:
    world = make_world(db_url, checkpoint_every=10)
    site = world.keys["hospital-a"]
    size = world.ledger.size()
    bad = [
        EventRequest("note.recorded", "hospital-a", {"text": str(i)}, signer=site)
        for i in range(25)
    ]
    bad.append(EventRequest("note.recorded", "hospital-a", {"text": 7}, signer=site))
    with pytest.raises(InputError):
        world.ledger.append_batch(bad)
    assert world.ledger.size() == size
    assert world.ledger.checkpoints() == []
    entries = world.ledger.append_batch(bad[:-1])
    # One checkpoint once the batch has committed (verified, then signed, never inside it).
    sizes = [c.tree_size for c in world.ledger.checkpoints()]
    assert sizes == [size + 25]
    assert [e.kind for e in entries].count("checkpoint") == 0
    world.ledger.append_batch(bad[:8])  # the checkpoint entry and 8 more: 9 since the last
    assert [c.tree_size for c in world.ledger.checkpoints()] == [size + 25]
    world.ledger.append_batch(bad[:1])
    assert [c.tree_size for c in world.ledger.checkpoints()] == [size + 25, size + 35]
    for checkpoint in world.ledger.checkpoints():
        checkpoint.verify(world.root.public)
        assert world.ledger.get(checkpoint.tree_size).kind == "checkpoint"
        assert world.ledger.root(checkpoint.tree_size).hex() == checkpoint.root_hash
    report = world.ledger.verify(world.root.public)
    assert report.entries == world.ledger.size()
    assert report.checkpoints == 2


def test_session_coupling_commits_or_rolls_back_with_the_callers_rows(
    db_url: str, make_world: Callable[..., World]
) -> None:
    world = make_world(db_url)
    engine = world.ledger.engine
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE app_state (name VARCHAR(20) PRIMARY KEY)"))
    size = world.ledger.size()

    def failing_api_call() -> None:
        with world.ledger.transaction() as session:
            session.execute(sa.text("INSERT INTO app_state VALUES ('approved')"))
            world.ledger.append(
                "note.recorded",
                "hospital-a",
                {"text": "x"},
                signer=world.keys["hospital-a"],
                session=session,
            )
            raise RuntimeError("the API call failed after the append")

    with pytest.raises(RuntimeError):
        failing_api_call()
    assert world.ledger.size() == size
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM app_state")).scalar_one() == 0
    with world.ledger.transaction() as session:
        session.execute(sa.text("INSERT INTO app_state VALUES ('approved')"))
        world.ledger.append(
            "note.recorded",
            "hospital-a",
            {"text": "x"},
            signer=world.keys["hospital-a"],
            session=session,
        )
    assert world.ledger.size() == size + 1
    world.ledger.verify(world.root.public)


def test_schema_refuses_a_fork_even_without_the_lock(
    db_url: str, make_world: Callable[..., World]
) -> None:
    world = make_world(db_url)
    head = world.ledger.get(world.ledger.size() - 1)
    sibling = world.ledger.get(head.seq - 1)
    with pytest.raises(sa.exc.IntegrityError), world.ledger.engine.begin() as connection:
        connection.execute(
            sa.insert(store.EntryRow),
            {
                "seq": head.seq + 1,
                "ts": head.ts,
                "kind": head.kind,
                "actor": head.actor,
                "prev_seq": head.seq,
                "prev": bytes.fromhex(head.prev),  # a second child of head's parent
                "hash": b"\x01" * 32,
                "body": head.body,
            },
        )
    with pytest.raises(sa.exc.IntegrityError), world.ledger.engine.begin() as connection:
        connection.execute(
            sa.insert(store.EntryRow),
            {
                "seq": head.seq + 5,
                "ts": head.ts,
                "kind": head.kind,
                "actor": head.actor,
                "prev_seq": head.seq,
                "prev": head.leaf_hash,
                "hash": b"\x02" * 32,
                "body": sibling.body,
            },
        )


def test_proofs_verify_against_signed_checkpoints(
    db_url: str, make_world: Callable[..., World]
) -> None:
    world = make_world(db_url)
    for i in range(20):
        world.note("hospital-a", f"n{i}")
    first = world.ledger.checkpoint(now=T0)
    for i in range(13):
        world.note("hospital-b", f"m{i}")
    second = world.ledger.checkpoint(now=T0)
    proof = world.ledger.inclusion_proof(5)
    assert proof.tree_size == second.tree_size
    proof.verify(second, world.root.public)
    early = world.ledger.inclusion_proof(5, first.tree_size)
    early.verify(first, world.root.public)
    with pytest.raises(Exception, match="tree size"):
        early.verify(second, world.root.public)
    world.ledger.consistency_proof(first.tree_size, second.tree_size).verify(
        first, second, world.root.public
    )


def test_export_bundle_verifies_offline(
    db_url: str, make_world: Callable[..., World], tmp_path: Path
) -> None:
    world = make_world(db_url, checkpoint_every=7)
    world.dataset("hospital-a")
    world.round("42", STUDY_HASH, 1, ["hospital-a", "hospital-b"], "b" * 64)
    for i in range(10):
        world.note("hospital-b", f"n{i}")
    info = world.ledger.export_bundle(tmp_path / "ledger.bundle")
    report = verify_bundle_file(tmp_path / "ledger.bundle", trusted_root=world.root.public)
    assert report.entries == info["entries"] == world.ledger.size()
    assert report.receipts == 2
    assert report.root_hash == world.ledger.root().hex()


def test_forged_receipt_is_refused_when_appending(
    db_url: str, make_world: Callable[..., World]
) -> None:
    world = make_world(db_url)
    payload = round_payload(
        {"hospital-a": world.keys["hospital-a"], "hospital-b": seeded_key("mallory")},
        "42",
        STUDY_HASH,
        1,
        ["hospital-a", "hospital-b"],
        "b" * 64,
        log_id=world.ledger.log_id,
    )
    with pytest.raises(SignatureError, match="receipt of 'hospital-b'"):
        world.ledger.append("round.completed", ROOT_ACTOR, payload, signer=world.root)


def test_alembic_upgrade_downgrade_upgrade(db_url: str) -> None:
    engine = store.create_engine(db_url)
    try:
        store.upgrade(engine)
        assert store.current_revision(engine) == store.head_revision()
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"version_table": store.VERSION_TABLE}
            )
            assert compare_metadata(context, store.Base.metadata) == []
            assert "ledger_alembic_version" in sa.inspect(connection).get_table_names()
        store.downgrade(engine, "base")
        assert store.current_revision(engine) is None
        with engine.connect() as connection:
            assert not {"ledger_entry", "ledger_checkpoint"} & set(
                sa.inspect(connection).get_table_names()
            )
        store.upgrade(engine)
        assert store.current_revision(engine) == store.head_revision()
    finally:
        engine.dispose()


def test_open_refuses_a_missing_or_uninitialised_database(tmp_path: Path, db_url: str) -> None:
    with pytest.raises(ConfigError, match="ledger init"):
        Ledger.open(f"sqlite:///{tmp_path / 'absent.db'}")
    with pytest.raises(ConfigError, match="ledger init"):
        Ledger.open(db_url)
    assert not (tmp_path / "absent.db").exists()


def test_verify_refuses_an_untrusted_root(db_url: str, make_world: Callable[..., World]) -> None:
    world = make_world(db_url)
    with pytest.raises(LedgerIntegrityError) as caught:
        world.ledger.verify(seeded_key("auditor-pinned-other").public)
    assert caught.value.seq == 0


def test_proofs_stay_right_after_a_rolled_back_checkpoint(
    db_url: str, make_world: Callable[..., World]
) -> None:
    world = make_world(db_url, checkpoint_every=5)
    world.note("hospital-a", "committed")
    first = world.ledger.checkpoint()
    world.ledger.inclusion_proof(1, first.tree_size).verify(first, world.root.public)

    def rolled_back() -> None:
        with world.ledger.transaction() as session:
            for i in range(7):  # crosses an automatic checkpoint inside the caller's session
                world.ledger.append(
                    "note.recorded",
                    "hospital-b",
                    {"text": f"never committed {i}"},
                    signer=world.keys["hospital-b"],
                    session=session,
                )
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        rolled_back()
    for i in range(3):
        world.note("hospital-a", f"after {i}")
    latest = world.ledger.checkpoint()
    for seq in range(latest.tree_size):
        world.ledger.inclusion_proof(seq, latest.tree_size).verify(latest, world.root.public)
    world.ledger.verify(world.root.public)


def test_proofs_from_the_tree_cache_equal_synchronised_proofs(
    db_url: str, make_world: Callable[..., World]
) -> None:
    world = make_world(db_url, checkpoint_every=6)
    for i in range(17):
        world.note("hospital-a", f"n{i}")
    warm = world.ledger
    warm.inclusion_proof(0)  # brings the cache to the head
    size = warm.size()
    cases: list[tuple[int, int | None]] = [(seq, None) for seq in range(size)]
    cases += [(seq, tree_size) for tree_size in (1, 7, size) for seq in range(tree_size)]

    def fresh_proofs(url: str) -> list[object]:
        with Ledger.open(url) as fresh:  # empty cache: every proof synchronises first
            proofs: list[object] = []
            for seq, tree_size in cases:
                fresh._tree.truncate(0)
                proofs.append(fresh.inclusion_proof(seq, tree_size))
            return proofs

    synchronised: list[int] = []
    original = warm._synced_tree

    def counting(*args: Any, **kwargs: Any) -> Any:
        synchronised.append(1)
        return original(*args, **kwargs)

    warm._synced_tree = counting  # type: ignore[method-assign]
    cached = [warm.inclusion_proof(seq, tree_size) for seq, tree_size in cases]
    assert not synchronised  # every one was served from the cache
    assert cached == fresh_proofs(db_url)
    # Another writer moves the head: the cache is behind and must not answer alone.
    with Ledger.open(db_url, root_key=world.root, checkpoint_every=6) as other:
        for i in range(5):
            other.append(
                "note.recorded", "hospital-b", {"text": f"o{i}"}, signer=world.keys["hospital-b"]
            )
        other.checkpoint(now=T0)
        newest = other.latest_checkpoint()
    assert newest is not None
    proof = warm.inclusion_proof(3)
    assert proof.tree_size == newest.tree_size > size
    proof.verify(newest, world.root.public)
    with pytest.raises(InputError):
        warm.inclusion_proof(newest.tree_size + 5)
    with pytest.raises(InputError):
        warm.inclusion_proof(2, newest.tree_size + 5)
