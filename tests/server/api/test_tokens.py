"""Bearer tokens: random, shown once, stored as SHA-256, expiring, revocable."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from veracity.errors import InputError, NotFound
from veracity.server.api.db import ActionRow, TokenRow
from veracity.server.api.tokens import Role, TokenStore, hash_token

from .conftest import make_coordinator, open_api

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def store(tmp_path: Path, db_url: str) -> Any:
    coordinator = make_coordinator(tmp_path / "coordinator", db_url)
    with coordinator:
        yield TokenStore(coordinator.ledger.engine, clock=Clock(T0))


def test_a_token_is_stored_only_as_its_sha256(store: TokenStore) -> None:
    issued = store.create(role=Role.AUDITOR, name="ethics board")
    assert issued.token.startswith("vrc_")
    assert len(issued.token) == 47
    with Session(store.engine) as session:
        row = session.execute(select(TokenRow)).scalar_one()
        assert row.token_hash == hashlib.sha256(issued.token.encode()).hexdigest()
        dumped = session.execute(text("SELECT * FROM api_token")).all()
    assert all(issued.token not in str(value) for value in dumped[0])
    assert store.lookup(issued.token) == issued.info


def test_tokens_come_from_the_injected_randomness(store: TokenStore) -> None:
    fixed = TokenStore(store.engine, clock=store.clock, random_bytes=lambda n: b"\x01" * n)
    issued = fixed.create(role=Role.RESEARCHER, name="clinic")
    assert issued.token == "vrc_" + "AQEB" * 10 + "AQE"
    assert issued.info.id == "01" * 8
    assert hash_token(issued.token) != hash_token(issued.token + "x")


def test_a_token_expires(store: TokenStore) -> None:
    issued = store.create(role=Role.ADMIN, name="alice", expires_in=timedelta(hours=1))
    info = store.lookup(issued.token)
    assert info is not None
    assert info.refusal(T0 + timedelta(minutes=59)) is None
    assert info.refusal(T0 + timedelta(hours=1)) == "expired"


def test_a_revoked_token_stays_revoked_and_revoking_is_recorded_once(store: TokenStore) -> None:
    issued = store.create(role=Role.ADMIN, name="alice")
    first = store.revoke(issued.info.id)
    again = store.revoke(issued.info.id)
    assert first.revoked_at == again.revoked_at is not None
    info = store.lookup(issued.token)
    assert info is not None
    assert info.refusal(T0) == "revoked"
    with Session(store.engine) as session:
        actions = session.execute(select(ActionRow.action)).scalars().all()
    assert actions == ["token.create", "token.revoke"]


def test_revoking_an_unknown_token_is_not_found(store: TokenStore) -> None:
    with pytest.raises(NotFound):
        store.revoke("0" * 16)


@pytest.mark.parametrize(
    ("role", "name", "site"),
    [
        ("site", "north ops", None),
        ("researcher", "clinic", "north"),
        ("superuser", "x", None),
        ("admin", "", None),
        ("admin", "bad\nname", None),
        ("site", "north ops", "North!"),
    ],
)
def test_malformed_tokens_are_refused(store: TokenStore, role: str, name: str, site: Any) -> None:
    with pytest.raises(InputError):
        store.create(role=role, name=name, site=site)


def test_unknown_and_oversized_tokens_find_nothing(store: TokenStore) -> None:
    store.create(role=Role.ADMIN, name="alice")
    assert store.lookup("vrc_" + "A" * 43) is None
    assert store.lookup("x" * 10_000) is None


def test_the_api_refuses_expired_and_revoked_tokens(tmp_path: Path, db_url: str) -> None:
    clock = Clock(datetime.now(UTC))
    for api in open_api(tmp_path / "coordinator", db_url, app_options={"clock": clock}):
        assert api.call("GET", "/api/v1/whoami", "auditor").status_code == 200
        clock.now += timedelta(days=2)  # the fixture's tokens live one day
        expired = api.call("GET", "/api/v1/whoami", "auditor")
        assert expired.status_code == 401
        assert expired.json()["code"] == "unauthenticated"
        clock.now -= timedelta(days=2)
        made = api.call(
            "POST", "/api/v1/tokens", "admin", json={"role": "researcher", "name": "clinic"}
        )
        assert made.status_code == 201
        token, token_id = made.json()["token"], made.json()["info"]["id"]
        headers = {"Authorization": f"Bearer {token}"}
        assert api.client.get("/api/v1/whoami", headers=headers).json()["name"] == "clinic"
        listed = api.call("GET", "/api/v1/tokens", "admin").json()["items"]
        assert token not in str(listed)
        assert api.call("POST", f"/api/v1/tokens/{token_id}/revoke", "admin").status_code == 200
        assert api.client.get("/api/v1/whoami", headers=headers).status_code == 401
