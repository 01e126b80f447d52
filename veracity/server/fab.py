"""The Flower app bundle (FAB) a run submits, built from the installed Veracity source.

The FAB holds ``veracity/**/*.py``, the licence and a ``pyproject.toml`` whose
``[tool.flwr.app]`` table is :data:`FLOWER_APP` (the repository's pyproject.toml declares
the same table; a test keeps them equal). Zip entries use Flower's fixed date and sorted
paths, so the same source always gives the same bytes, and the FAB's SHA-256 (what Flower
calls the ``fab_hash``) is the study's code hash that sites approve.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veracity import __version__
from veracity.errors import ConfigError

__all__ = ["FLOWER_APP", "FLWR_REQUIREMENT", "Fab", "build_fab", "package_sources"]

FLWR_REQUIREMENT = "flwr>=1.42.0,<=1.42.0"

#: The ``[tool.flwr.app]`` table: components and run-config defaults.
FLOWER_APP: dict[str, Any] = {
    "publisher": "veracity",
    "fab-format-version": 1,
    "flwr-version-target": "1.42.0",
    "fab-include": ["veracity/**/*.py", "LICENSE"],
    "components": {
        "serverapp": "veracity.server.flower_app:app",
        "clientapp": "veracity.client.flower_app:app",
    },
    "config": {
        "study-hash": "",
        "coordinator-dir": "",
        "poll-interval": 0.2,
        "round-timeout": 600.0,
        "node-wait": 120.0,
        # An explanation run's terms as JSON text (#19); empty for a training run.
        "explain": "",
        # A training run's explanation at release (ReleaseExplanation as JSON text); empty: none.
        "explain-at-release": "",
    },
}


@dataclass(frozen=True)
class Fab:
    """A built bundle and its SHA-256 (hex)."""

    content: bytes
    fab_hash: str


def package_sources() -> dict[str, Path]:
    """Every ``.py`` file of the installed ``veracity`` package, keyed by archive path."""
    import veracity

    root = Path(veracity.__file__).resolve().parent
    return {
        f"veracity/{path.relative_to(root).as_posix()}": path
        for path in sorted(root.rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def _license_text() -> bytes:
    import veracity

    beside_package = Path(veracity.__file__).resolve().parent.parent / "LICENSE"
    if beside_package.is_file():  # a source checkout or editable install
        return beside_package.read_bytes()
    try:
        dist = importlib.metadata.distribution("veracity")
    except importlib.metadata.PackageNotFoundError as err:
        raise ConfigError("veracity is not installed; install it to build a FAB") from err
    for name in ("licenses/LICENSE", "LICENSE"):
        text = dist.read_text(name)
        if text:
            return text.encode("utf-8")
    raise ConfigError("the installed veracity has no LICENSE file to put in the FAB")


def _pyproject() -> bytes:
    import tomli_w

    config = {
        "project": {
            "name": "veracity",
            "version": __version__,
            "license": {"file": "LICENSE"},
            "dependencies": [FLWR_REQUIREMENT],
        },
        "tool": {"flwr": {"app": FLOWER_APP}},
    }
    return tomli_w.dumps(config).encode("utf-8")


def build_fab() -> Fab:
    """Build the FAB of the installed Veracity.

    Each study proposal and each run start asks for the bundle (~0.1 s to build: every
    source file read, filtered and compressed). The same files give the same bytes, so
    the bundle is kept per state of its inputs: the manifest, the licence, and each
    source file's path, size and modification time (as Python's bytecode cache decides
    that a module is unchanged). An edited, added or removed file builds it again.

    Raises
    ------
    ConfigError
        If Veracity is not installed or Flower rejects the bundle.
    """
    files: dict[str, bytes | Path] = {"pyproject.toml": _pyproject(), "LICENSE": _license_text()}
    files.update(package_sources())
    key = tuple(
        (name, value if isinstance(value, bytes) else _stat_key(value))
        for name, value in files.items()
    )
    with _BUILT_LOCK:
        fab = _BUILT.get(key)
    if fab is None:
        fab = _build(files)
        with _BUILT_LOCK:
            while len(_BUILT) >= _MAX_BUILT:
                del _BUILT[next(iter(_BUILT))]
            _BUILT[key] = fab
    return fab


def _stat_key(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


#: Bundles kept, by the state of their inputs (one unless the source changes under a
#: running process).
_MAX_BUILT = 4
_BUILT: dict[tuple[tuple[str, bytes | tuple[int, int]], ...], Fab] = {}
_BUILT_LOCK = threading.Lock()


def _build(files: dict[str, bytes | Path]) -> Fab:
    from flwr.cli.build import build_fab_from_files

    try:
        with warnings.catch_warnings():
            # flwr 1.42 asks pathspec for its deprecated 'gitwildmatch' factory; harmless.
            warnings.filterwarnings(
                "ignore",
                message=r"GitWildMatchPattern .* is deprecated",
                category=DeprecationWarning,
            )
            content, _metadata = build_fab_from_files(files)
    except ValueError as err:
        raise ConfigError(f"Flower refused the app bundle: {err}") from err
    return Fab(content=content, fab_hash=hashlib.sha256(content).hexdigest())
