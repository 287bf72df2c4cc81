"""The README's table of every spec field, rendered from the models' own field descriptions.

The table is written once, in the models (``Field(description=...)``, defaults, allowed values
and bounds), and generated into the README between two marker comments::

    python -m orchestrator.spec.reference                    # print the table
    python -m orchestrator.spec.reference --write README.md  # rewrite the README's table
    python -m orchestrator.spec.reference --check README.md  # exit 1 if it is out of date

A section row (its name in bold) carries the description of the field that holds the section;
its fields follow. A union (``loss``, ``data.sources.<name>``, ``data.eval_sets.<name>``) lists
the fields of all its kinds, each marked with the kinds that have it. A model met a second time
is not listed again: its row says where its fields are.
"""

from __future__ import annotations

import argparse
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from orchestrator.spec.experiment import ExperimentSpec

BEGIN = "<!-- spec-table:begin -->"
END = "<!-- spec-table:end -->"
COMMAND = "python -m orchestrator.spec.reference --write README.md"

#: The placeholder of a mapping's keys in a field path; ``<name>`` unless listed here.
_KEY_NAMES = {"tune.space": "<path>"}

_BOUNDS = (
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Ge, "ge", "≥"),
    (annotated_types.Lt, "lt", "<"),
    (annotated_types.Le, "le", "≤"),
)


@dataclass
class _Group:
    """One section of the table: a header row for the section, then a row a field."""

    path: str
    header: tuple[str, str] | None  # (default, meaning) of the field holding the section
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (field, default, meaning)


def spec_table() -> str:
    """The Markdown table of every field of :class:`ExperimentSpec`, by section."""
    groups: list[_Group] = []
    _add_group(groups, {}, "", None, [ExperimentSpec])
    lines = ["| section | field | default | what it means |", "|---|---|---|---|"]
    for group in groups:
        name = f"**`{group.path}`**" if group.path else "(top level)"
        if group.header:
            lines.append(f"| {name} | | {group.header[0]} | {group.header[1]} |")
            name = ""
        for field_name, default, meaning in group.rows:
            lines.append(f"| {name} | `{field_name}` | {default} | {meaning} |")
            name = ""
    return "\n".join(lines) + "\n"


def _add_group(
    groups: list[_Group],
    seen: dict[tuple[type, ...], str],
    path: str,
    header: tuple[str, str] | None,
    models: list[type[BaseModel]],
) -> None:
    """Append the group of ``models`` (one model, or the kinds of a union) and its subgroups."""
    group = _Group(path, header)
    groups.append(group)
    seen[tuple(models)] = path
    children: list[tuple[str, tuple[str, str], list[type[BaseModel]]]] = []
    tag = _discriminator(models)
    names = list(dict.fromkeys(n for m in models for n in m.model_fields))
    if tag:
        names.remove(tag)
        kinds = ", ".join(f"`{k}`" for m in models for k in _tags(m, tag))
        meaning = " ".join(f"*{_kinds(m, tag)}*: {_first_line(m)}" for m in models)
        group.rows.append((tag, "required", _escape(f"{meaning} Allowed: {kinds}.")))
    for name in names:
        having = [m for m in models if name in m.model_fields]
        variants: dict[tuple[str, str], list[type[BaseModel]]] = {}
        for model in having:
            info = model.model_fields[name]
            variants.setdefault((_default(info), _meaning(info)), []).append(model)
        for (default, meaning), kinds in variants.items():
            if tag and len(kinds) < len(models):
                meaning = f"*{', '.join(_kinds(m, tag) for m in kinds)}*: {meaning}"
            info = kinds[0].model_fields[name]
            inner, key = models_in(info.annotation)
            if inner:
                child = f"{path}.{name}" if path else name
                if key:
                    child += "." + _KEY_NAMES.get(child, "<name>")
                children.append((child, (default, meaning), inner))
            else:
                group.rows.append((name, default, meaning))
    for child, (default, meaning), inner in children:
        if (where := seen.get(tuple(inner))) is not None:
            groups.append(_Group(child, (default, f"{meaning} Fields as `{where}`.")))
        else:
            _add_group(groups, seen, child, (default, meaning), inner)


def models_in(annotation: Any) -> tuple[list[type[BaseModel]], bool]:
    """The models a field holds (one, or a union's kinds), and whether under mapping keys."""
    if get_origin(annotation) is Annotated:
        return models_in(get_args(annotation)[0])
    if get_origin(annotation) is dict:
        return models_in(get_args(annotation)[1])[0], True
    if get_origin(annotation) in (Union, types.UnionType):
        found = [a for a in get_args(annotation) if _is_model(a)]
        nested = [a for a in get_args(annotation) if get_origin(a) is Annotated]
        return found or (models_in(nested[0])[0] if nested else []), False
    return ([annotation] if _is_model(annotation) else []), False


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _discriminator(models: list[type[BaseModel]]) -> str | None:
    """The field that tells a union's kinds apart (``kind`` or ``format``), or None."""
    if len(models) < 2:
        return None
    shared = set.intersection(*(set(m.model_fields) for m in models))
    return next(n for n in ("kind", "format") if n in shared)


def _tags(model: type[BaseModel], tag: str) -> tuple[str, ...]:
    return get_args(model.model_fields[tag].annotation)


def _kinds(model: type[BaseModel], tag: str) -> str:
    return "/".join(_tags(model, tag))


def _first_line(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").split("\n\n")[0].split()).replace("``", "`")


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
        return "its defaults" if isinstance(value, BaseModel) else f"`{_yaml(value)}`"
    if info.default is PydanticUndefined:
        return "required"
    return f"`{_yaml(info.default)}`"


def _yaml(value: Any) -> str:
    """A default as it would be written in a spec's YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if value.strip() and value == value.strip() else f'"{value}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _meaning(info: FieldInfo) -> str:
    """The field's description, then what it allows: choices, bounds, a pattern, a length."""
    allowed = _choices(info.annotation)
    constraints = [*info.metadata, *_optional_metadata(info.annotation)]
    for kind, attribute, sign in _BOUNDS:
        allowed += [
            f"{sign} {_number(getattr(c, attribute))}" for c in constraints if isinstance(c, kind)
        ]
    for constraint in constraints:
        if isinstance(constraint, annotated_types.MinLen) and constraint.min_length == 1:
            allowed.append("not empty")
        if isinstance(constraint, annotated_types.MaxLen) and constraint.max_length > 1:
            allowed.append(f"at most {constraint.max_length} characters")
        if pattern := getattr(constraint, "pattern", None):
            allowed.append(f"`{pattern}`")
    text = info.description or ""
    if allowed:
        text += f" Allowed: {', '.join(allowed)}."
    return _escape(text.strip())


def _optional_metadata(annotation: Any) -> list[Any]:
    """The bounds of an optional number (``PositiveInt | None``): they sit inside the union."""
    if get_origin(annotation) not in (Union, types.UnionType):
        return []
    found = []
    for option in (a for a in get_args(annotation) if get_origin(a) is Annotated):
        for item in get_args(option)[1:]:
            found.extend(item.metadata if isinstance(item, FieldInfo) else [item])
    return found


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and abs(value) >= 10_000 else str(value)


def _choices(annotation: Any) -> list[str]:
    """``mean``, ``cls``... for a Literal (or an optional one); nothing for a single value."""
    if get_origin(annotation) in (Union, types.UnionType):
        return [c for a in get_args(annotation) for c in _choices(a)]
    if get_origin(annotation) is Literal and len(get_args(annotation)) > 1:
        return [f"`{_yaml(v)}`" for v in get_args(annotation)]
    return []


def _escape(text: str) -> str:
    """Markdown for a table cell: ``|`` escaped, and ``<name>`` outside code kept from being
    read as an HTML tag."""
    parts = text.replace("|", "\\|").split("`")
    parts[::2] = [re.sub(r"<(?=[A-Za-z/])", r"\\<", p) for p in parts[::2]]
    return "`".join(parts)


def readme_section(text: str) -> str:
    """What stands between the markers of a README."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[start:end].strip("\n") + "\n"


def with_table(text: str) -> str:
    """The README text with the generated table between its markers."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return f"{text[:start]}\n\n{spec_table()}\n{text[end:]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", metavar="README", type=Path, help="rewrite its table")
    action.add_argument("--check", metavar="README", type=Path, help="exit 1 if out of date")
    args = parser.parse_args(argv)
    if args.write:
        args.write.write_text(with_table(args.write.read_text()))
    elif args.check:
        if readme_section(args.check.read_text()) != spec_table():
            print(f"{args.check}: the spec table is out of date; run {COMMAND}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(spec_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
