"""The coordinator's side never loads torch, TenSEAL or Flower just to start or to audit.

Measured in fresh interpreters (``sys.modules`` after the import or the command), because
an import anywhere in the chain would load them for every admin-API worker and every
auditor's ``veracity ledger verify``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from veracity.crypto.keys import generate_signing_key
from veracity.ledger.ledger import Ledger

# Each test starts fresh interpreters (lint-imports, python -c).
pytestmark = pytest.mark.integration

HEAVY = ("torch", "opacus", "tenseal", "flwr", "sklearn")


def _loaded_after(code: str) -> list[str]:
    probe = (
        f"import json, sys\n{code}\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize(
    "module",
    [
        "veracity.server.api.app",
        "veracity.server.coordinator",
        "veracity.ledger.cli",
        "veracity.contracts.events",
        "veracity.tasks.study",
        "veracity.cli",
    ],
)
def test_importing_the_coordinator_side_loads_no_torch(module: str) -> None:
    loaded = _loaded_after(f"import {module}")
    assert "torch" not in loaded
    assert "opacus" not in loaded
    if module != "veracity.server.api.app":  # the admin API serves encrypted inference
        assert loaded == []


def test_an_auditors_ledger_verify_loads_no_torch(tmp_path: Path) -> None:
    root = generate_signing_key()
    (tmp_path / "root.pub").write_text(root.public.pem(), encoding="ascii")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Ledger.init(url, root_key=root) as ledger:
        ledger.checkpoint()
    argv = ["ledger", "verify", "--db", url, "--trust", str(tmp_path / "root.pub")]

    loaded = _loaded_after(
        f"from veracity.cli import main\nassert main({argv!r}) == 0, 'verify failed'"
    )

    assert loaded == []


def test_veracity_help_loads_neither_the_api_client_nor_the_heavy_packages() -> None:
    # Load-independent stand-in for "veracity --help under 0.5 s": what it imports, not how
    # long it takes. The admin commands open the API client (httpx, the API's schemas) only
    # when one of them runs.
    code = (
        "from veracity.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as done:\n    assert not done.code\n"
    )
    unwanted = ("veracity.server.api.schemas", "httpx", "torch", "tenseal", "flwr")
    probe = (
        f"import json, sys\n{code}"
        f"print(json.dumps(sorted(m for m in {unwanted!r} if m in sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert "Usage" in done.stdout  # the help was printed
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
