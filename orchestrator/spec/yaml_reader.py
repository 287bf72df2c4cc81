"""Spec YAML read defensively: specs are shared, pasted and submitted to clusters.

PyYAML's ``safe_load`` runs no code, but it keeps the last of two equal keys (a silently
lost setting), and it materializes nothing of an alias bomb until something walks the
result, which then takes exponential time. This reader refuses duplicate keys with their
lines, caps the file size, the values after expanding aliases and the nesting depth, and
names an encoding error by byte offset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: A spec is a page of settings; anything near this size is not a spec.
MAX_BYTES = 1 << 20
#: Values (mappings, lists, scalars) once aliases are expanded.
MAX_VALUES = 100_000
MAX_DEPTH = 64


class YamlProblem(ValueError):
    """Why a text is not a spec's YAML (one line, for the spec's error list)."""


class _StrictLoader(yaml.SafeLoader):
    """The safe loader, refusing a key that appears twice in one mapping."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # <<: *base: overriding it is the point
            continue
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        try:
            if key in first_line:
                raise YamlProblem(
                    f"line {line}: duplicate key {key!r} (first at line {first_line[key]})"
                )
        except TypeError:  # an unhashable key: a list or a mapping
            raise YamlProblem(f"line {line}: a key must be a plain value") from None
        first_line[key] = line
    loader.flatten_mapping(node)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str) -> Any:
    """The value of a YAML text, within the caps; :class:`YamlProblem` says what is wrong."""
    try:
        value = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise YamlProblem(f"not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise YamlProblem(f"nested deeper than {MAX_DEPTH} levels") from None
    _check_expanded_size(value)
    return value


def read_yaml(path: Path) -> Any:
    """The value of a spec file: at most :data:`MAX_BYTES`, UTF-8, then :func:`parse_yaml`."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise YamlProblem(f"{size:,} bytes: a spec is at most {MAX_BYTES:,}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlProblem(f"not UTF-8 text (byte {exc.start}: {data[exc.start]:#04x})") from None
    return parse_yaml(text.removeprefix("\ufeff"))


def _check_expanded_size(value: Any) -> None:
    """Walk the value as a consumer would (aliases expanded), stopping at the caps."""
    stack, seen = [(value, 1)], 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise YamlProblem(f"more than {MAX_VALUES:,} values once aliases are expanded")
        if depth > MAX_DEPTH:
            raise YamlProblem(f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
