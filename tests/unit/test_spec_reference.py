"""The README's table of spec fields is the one the field descriptions generate."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from orchestrator.spec import ExperimentSpec
from orchestrator.spec.reference import (
    COMMAND,
    main,
    models_in,
    readme_section,
    spec_table,
    with_table,
)

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_table_is_the_generated_one():
    assert readme_section(README.read_text()) == spec_table(), (
        f"README.md's table of spec fields differs from the field descriptions: run {COMMAND} "
        "(or make spec-table)"
    )


def models(model: type[BaseModel]) -> set[type[BaseModel]]:
    """``model`` and every section model below it."""
    found = {model}
    for info in model.model_fields.values():
        for inner in models_in(info.annotation)[0]:
            found |= models(inner)
    return found


def test_every_field_is_described():
    """A field without a description would stand in the table with an empty meaning."""
    tags = {"kind", "format"}  # a union's tag: its row is made of the kinds' docstrings
    missing = [
        f"{model.__name__}.{name}"
        for model in models(ExperimentSpec)
        for name, info in model.model_fields.items()
        if not info.description and name not in tags
    ]
    assert missing == []


def test_every_field_has_a_row():
    """A field's own row, or (a section) the bold row of its section."""
    table = spec_table()
    for model in models(ExperimentSpec):
        for name in model.model_fields:
            section = re.compile(rf"\*\*`([\w.<>]+\.)?{name}(\.<\w+>)?`\*\*")
            assert f"| `{name}` |" in table or section.search(table), (model, name)


def test_write_puts_the_table_between_the_markers_and_check_notices_a_change(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(
        "intro\n<!-- spec-table:begin -->\nold\n<!-- spec-table:end -->\nafter\n", encoding="utf-8"
    )
    assert main(["--check", str(readme)]) == 1
    assert COMMAND in capsys.readouterr().err
    assert main(["--write", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("intro\n<!-- spec-table:begin -->\n\n| section |")
    assert text.endswith("|\n\n<!-- spec-table:end -->\nafter\n")
    assert with_table(text) == text
    assert main(["--check", str(readme)]) == 0
