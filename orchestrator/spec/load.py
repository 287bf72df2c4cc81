"""Loading a spec: a file, a dict or a spec, dotted overrides, and errors that name the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from orchestrator.credentials import credential_problems
from orchestrator.spec.base import CROSS_FIELD, IN_SECTION
from orchestrator.spec.evaluation import EvalSet
from orchestrator.spec.experiment import ExperimentSpec
from orchestrator.spec.loss import LOSS_CLASSES
from orchestrator.spec.yaml_reader import YamlProblem, parse_yaml, read_yaml


class SpecError(ValueError):
    """A spec that cannot run: each problem names the dotted field path and a hint where useful."""

    def __init__(self, problems: list[str], origin: str = "spec") -> None:
        self.problems = problems
        self.origin = origin
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{origin} is invalid ({len(problems)} problem(s)):\n{lines}")


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `dotted.path=value` strings to a raw spec dict; values are parsed as YAML."""
    for item in overrides:
        path, sep, text = item.partition("=")
        if not sep or not path:
            raise SpecError([f"override {item!r}: expected key.path=value"], "overrides")
        try:
            set_path(raw, path.strip(), parse_yaml(text))
        except YamlProblem as exc:
            raise SpecError([f"override {item!r}: the value is {exc}"], "overrides") from None
        except KeyError as exc:
            raise SpecError([f"override {item!r}: {exc.args[0]}"], "overrides") from None
    return raw


def set_path(raw: dict[str, Any], path: str, value: Any) -> None:
    """Set ``a.b.c`` in a raw spec dict, creating missing sections (e.g. ``lora.r`` adds LoRA)."""
    keys = path.split(".")
    node = raw
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise KeyError(f"{key!r} is not a section")
        node = child
    node[keys[-1]] = value


def _format_error(error: dict[str, Any]) -> list[str]:
    # Drop the union tag pydantic inserts (e.g. `loss.infonce.temperature` -> `loss.temperature`).
    loc = [str(p) for p in error["loc"] if not str(p).startswith("function-")]
    message = error["msg"].removeprefix("Value error, ")
    if message.startswith(CROSS_FIELD):
        return message.removeprefix(CROSS_FIELD).splitlines()
    if message.startswith(IN_SECTION):
        field, message = message.removeprefix(IN_SECTION).split("\n", 1)
        loc.append(field)
    hint = ""
    if error["type"] == "extra_forbidden":
        hint = " (unknown field: check spelling)"
    elif error["type"] == "union_tag_invalid":
        loc = loc[:-1] if loc and loc[-1] in ("kind", "format") else loc
        loc.append(str(error["ctx"]["discriminator"]).strip("'"))
    elif error["type"] == "missing":
        hint = " (required)"
    path = ".".join(p for p in loc if p not in _TAGS) or "<root>"
    return [f"{path}: {message}{hint}"]


#: Discriminator tags pydantic puts into error locations; they are not part of the user's path.
_TAGS = {
    *LOSS_CLASSES,
    *(get_args(c.model_fields["kind"].annotation)[0] for c in get_args(get_args(EvalSet)[0])),
    "jsonl",
    "parquet",
    "csv",
}


def parse_spec(raw: dict[str, Any], origin: str = "spec") -> ExperimentSpec:
    """Validate a raw dict; raise :class:`SpecError` naming every bad field."""
    if not isinstance(raw, dict):
        raise SpecError(["<root>: expected a mapping of sections"], origin)
    if leaks := credential_problems(raw):
        raise SpecError(leaks, origin)
    try:
        return ExperimentSpec.model_validate(raw)
    except ValidationError as exc:
        problems = [line for e in exc.errors() for line in _format_error(e)]
        raise SpecError(problems, origin) from None


def load_spec(
    source: str | Path | dict[str, Any] | ExperimentSpec, overrides: list[str] | None = None
) -> ExperimentSpec:
    """Load a spec from a YAML/JSON file, a dict, or a spec, applying dotted overrides first."""
    if isinstance(source, ExperimentSpec):
        raw, origin = source.model_dump(mode="json"), "spec"
    elif isinstance(source, dict):
        raw, origin = json.loads(json.dumps(source)), "spec"
    else:
        path = Path(source)
        if not path.is_file():
            raise SpecError([f"<file>: {path} does not exist"], str(path))
        try:
            raw = read_yaml(path)
        except YamlProblem as exc:
            raise SpecError([f"<file>: {exc}"], str(path)) from None
        origin = str(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError(["<root>: expected a mapping of sections"], origin)
    return parse_spec(apply_overrides(raw, overrides or []), origin)
