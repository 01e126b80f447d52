"""The layer rules in pyproject.toml are enforced, not decorative.

``lint-imports`` (import-linter) passes on the code as it is (``.ci/run`` runs it); with one
exemption removed from every adapter rule, each of those rules fails, so every listed
exemption is one the code needs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

# Each test starts fresh interpreters (lint-imports, python -c).
pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]


def _config() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        config: dict[str, Any] = tomllib.load(handle)["tool"]["importlinter"]
    return config


def _toml(config: dict[str, Any]) -> str:
    """The config as a pyproject-style TOML document (its values are strings and lists)."""
    lines = ["[tool.importlinter]"]
    for key, value in config.items():
        if key != "contracts":
            lines.append(f"{key} = {json.dumps(value)}")
    for contract in config["contracts"]:
        lines.append("[[tool.importlinter.contracts]]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in contract.items())
    return "\n".join(lines) + "\n"


def _lint(config_file: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint is not None, "import-linter is a dev dependency (pyproject.toml)"
    return subprocess.run(
        [lint, "--no-logo", "--cache-dir", str(cache), str(config_file)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )


def test_every_adapter_exemption_is_needed(tmp_path: Path) -> None:
    config = _config()
    exempted = [c for c in config["contracts"] if c.get("ignore_imports")]
    assert {c["id"] for c in exempted} >= {"flower-adapters", "web-adapter", "he-adapter"}
    for contract in exempted:
        contract["ignore_imports"] = contract["ignore_imports"][1:]
    config_file = tmp_path / "pyproject.toml"
    config_file.write_text(_toml(config), encoding="utf-8")

    result = _lint(config_file, tmp_path / "cache")

    assert result.returncode == 1, result.stdout
    for contract in exempted:
        assert f"{contract['name']} BROKEN" in result.stdout


@pytest.mark.parametrize("contract_id", ["layers", "torch-free-core"])
def test_the_layer_rules_hold_today(tmp_path: Path, contract_id: str) -> None:
    config = _config()
    config["contracts"] = [c for c in config["contracts"] if c["id"] == contract_id]
    config_file = tmp_path / "pyproject.toml"
    config_file.write_text(_toml(config), encoding="utf-8")

    result = _lint(config_file, tmp_path / "cache")

    assert result.returncode == 0, result.stdout


def _bullet(text: str, title: str) -> str:
    """The bullet of docs/architecture.md that starts ``* **title**``, up to the next one."""
    start = text.index(f"* **{title}**")
    end = text.find("\n* **", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_architecture_md_names_every_layer_and_every_adapter_exemption() -> None:
    config = _config()
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    layers_text = _bullet(doc, "Layers")
    adapters_text = _bullet(doc, "Adapters")
    (layers,) = [c for c in config["contracts"] if c["id"] == "layers"]
    names = [name.strip() for layer in layers["layers"] for name in layer.split("|")]
    spans = re.findall(r"`([^`]+)`", layers_text)
    named = {part.strip() for span in spans for part in span.split("|")}
    missing = [name for name in names if name not in named]
    assert missing == [], f"layers missing from the Layers rule of docs/architecture.md: {missing}"
    paths = set()
    for contract in config["contracts"]:
        for rule in contract.get("ignore_imports", []):
            module = rule.split("->")[0].strip().removeprefix("veracity.")
            if module.endswith(".**"):
                paths.add(module.removesuffix(".**").replace(".", "/") + "/")
            else:
                paths.add(module.replace(".", "/") + ".py")
    unnamed = sorted(p for p in paths if f"`{p}`" not in adapters_text)
    assert unnamed == [], f"exempted modules missing from the Adapters rule: {unnamed}"


#: Pairs of modules that still import each other: none. (he.layouts and he.contexts did
#: until PublicContext, which the layouts name, moved to he.public_context.) The set may
#: only shrink; the test below keeps failing on any new pair.
KNOWN_MUTUAL: set[tuple[str, str]] = set()


def test_no_two_modules_import_each_other() -> None:
    import grimp

    graph = grimp.build_graph("veracity")
    mutual = {
        (importer, imported)
        for importer in graph.modules
        for imported in graph.find_modules_directly_imported_by(importer)
        if importer < imported and importer in graph.find_modules_directly_imported_by(imported)
    }
    # Also through imports inside functions or under TYPE_CHECKING, which lint-imports'
    # layers do not see within one subpackage.
    assert mutual - KNOWN_MUTUAL == set(), "new pairs of modules that import each other"
    assert KNOWN_MUTUAL - mutual == set(), "these no longer import each other: drop them"
