"""docs/architecture.md states exactly the contracts the models enforce."""

from __future__ import annotations

from pathlib import Path

from veracity.contracts.docs import TABLES, generated_blocks, render

PAGE = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def test_the_architecture_page_holds_every_generated_contract_table() -> None:
    page = PAGE.read_text(encoding="utf-8")
    blocks = generated_blocks(page)
    assert set(blocks) == set(TABLES)
    for name, table in TABLES.items():
        assert blocks[name] == table(), (
            f"docs/architecture.md's {name} table differs from the models; "
            "run: python -m veracity.contracts.docs docs/architecture.md"
        )


def test_rendering_rewrites_a_stale_table_from_the_models() -> None:
    stale = "intro\n<!-- generated: contracts.events -->\n| old |\n<!-- end: contracts.events -->\n"
    rendered = render(stale)
    assert "| old |" not in rendered
    assert generated_blocks(rendered)["contracts.events"] == TABLES["contracts.events"]()
