"""Site initialisation: the files, their permissions, and refusing to half-initialise."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from tests.client.support import SITE, TickingClock
from veracity.client import site as site_module
from veracity.client.site import Site, SiteConfig, init_site
from veracity.contracts.events import StudyRefused
from veracity.crypto.keys import load_verify_key
from veracity.errors import ConfigError
from veracity.ledger.statement import verify_statement


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_creates_keys_store_and_config_readable_only_by_the_site(tmp_path: Path) -> None:
    root = tmp_path / "site"
    config = init_site(
        root, SITE, torch_threads=2, default_epsilon_budget=4.0, clock=TickingClock()
    )
    keys = root / "keys"
    assert sorted(p.name for p in keys.iterdir()) == sorted(
        [f"{SITE}.pem", f"{SITE}.pub", "supernode", "supernode.pub"]
    )
    for private in (keys / f"{SITE}.pem", keys / "supernode", root / "site.json", root / "site.db"):
        assert _mode(private) == 0o600, private
    assert _mode(root) == 0o700
    assert _mode(keys) == 0o700
    stored = SiteConfig.model_validate(json.loads((root / "site.json").read_text()))
    assert stored == config
    assert (stored.name, stored.torch_threads, stored.default_epsilon_budget) == (SITE, 2, 4.0)
    assert stored.created_at == "2026-03-01T09:00:00.001000Z"
    assert (stored.clipping, stored.secure_mode, stored.share_train_loss) == (
        "linear-ghost",
        False,
        False,
    )


def test_an_initialised_site_opens_and_signs_statements(site_dir: Path) -> None:
    with Site.open(site_dir, clock=TickingClock()) as site:
        statement = site.sign(
            StudyRefused(
                site=SITE, study_hash="ab" * 32, reason="no ethics approval", signed_at=site.now()
            )
        )
        assert statement.kind == "study.refused"
        assert statement.payload["signed_at"] == "2026-03-01T09:00:00.001000Z"
        verify_statement(
            load_verify_key(site.paths.public_key), "study.refused", SITE, statement.payload,
            statement.signature, log_id=site.log_id)  # fmt: skip


def test_a_site_is_initialised_only_once(site_dir: Path) -> None:
    with pytest.raises(ConfigError, match="initialised only once"):
        init_site(site_dir, SITE)


def test_failed_init_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(site_module, "write_supernode_key_pair", broken)
    root = tmp_path / "site"
    with pytest.raises(OSError, match="disk full"):
        init_site(root, SITE)
    assert not root.exists()
    monkeypatch.undo()
    init_site(root, SITE)  # and a clean retry works
    assert (root / "site.json").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"name": "bad name"}, "name"), ({"torch_threads": 0}, "torch_threads"),
     ({"default_epsilon_budget": -1.0}, "default_epsilon_budget")],
)  # fmt: skip
def test_invalid_settings_are_configuration_errors(
    changes: dict[str, object], message: str, tmp_path: Path
) -> None:
    arguments: dict[str, object] = {"name": SITE, **changes}
    name = arguments.pop("name")
    with pytest.raises(ConfigError, match=message):
        init_site(tmp_path / "site", str(name), **arguments)  # type: ignore[arg-type]
    assert not (tmp_path / "site").exists()


def test_secure_mode_needs_no_extra_package(tmp_path: Path) -> None:
    # Secure noise is ChaCha20 from cryptography: torchcsprng (no build for torch 2.x) is
    # no longer needed.
    config = init_site(tmp_path / "site", SITE, secure_mode=True)
    assert config.secure_mode is True


def test_opening_something_that_is_not_a_site_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a site directory"):
        Site.open(tmp_path)
    (tmp_path / "site.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a valid site configuration"):
        Site.open(tmp_path)


def test_a_private_key_readable_by_others_is_refused(site_dir: Path) -> None:
    key = site_dir / "keys" / f"{SITE}.pem"
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        Site.open(site_dir)
