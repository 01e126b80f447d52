"""Fixtures for coordinator tests: an initialised coordinator and a live SuperLink."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from veracity.crypto.keys import SigningKey, generate_signing_key
from veracity.server.coordinator import CoordinatorService, init_coordinator
from veracity.server.superlink import SuperLinkOptions, start_superlink
from veracity.supervise import ProcessGroup, free_port


@dataclass(frozen=True)
class SiteIdentity:
    """A site's Ed25519 signing key and its SuperNode key (OpenSSH public text)."""

    name: str
    key: SigningKey
    supernode_public: str


def make_site_identity(name: str) -> SiteIdentity:
    supernode = ec.generate_private_key(ec.SECP384R1())
    public = supernode.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return SiteIdentity(name, generate_signing_key(), public.decode())


@pytest.fixture
def coordinator_with_superlink(tmp_path: Path) -> Iterator[CoordinatorService]:
    """A fresh coordinator whose SuperLink (TLS, SuperNode auth) runs on a free port."""
    port = free_port()
    coordinator = init_coordinator(tmp_path / "coordinator", superlink_port=port)
    with ProcessGroup() as group:
        start_superlink(coordinator.home, SuperLinkOptions(port=port), group)
        try:
            yield coordinator
        finally:
            coordinator.close()
