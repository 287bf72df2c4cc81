"""Spec files and override values read defensively: duplicate keys, encodings, sizes, bombs."""

from __future__ import annotations

import time

import pytest
import yaml

from orchestrator.spec import SpecError, load_spec
from orchestrator.spec.yaml_reader import MAX_BYTES
from tests.unit.test_spec import minimal_raw


def problem_of(path) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    (problem,) = info.value.problems
    return problem


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    path = tmp_path / "twice.yaml"
    text = yaml.safe_dump(minimal_raw(), sort_keys=False)
    path.write_text(text + "train:\n  lr: 0.001\n  lr: 0.01\n")
    lines = len(text.splitlines())
    assert problem_of(path) == (
        f"<file>: line {lines + 3}: duplicate key 'lr' (first at line {lines + 2})"
    )


def test_merge_keys_may_be_overridden(tmp_path):
    path = tmp_path / "merge.yaml"
    raw = minimal_raw()
    del raw["loss"]
    path.write_text(
        yaml.safe_dump(raw)
        + "defaults: &loss {kind: infonce, temperature: 0.05}\n"
        + "loss: {<<: *loss, temperature: 0.1}\n"
    )
    with pytest.raises(SpecError, match="defaults"):  # an unknown top-level section, but...
        load_spec(path)
    path.write_text(path.read_text().replace("defaults: &loss", "x-loss: &loss"))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert not any("duplicate" in p for p in info.value.problems)  # ...no duplicate key


def test_a_file_that_is_not_utf8_names_the_byte(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert problem_of(path) == "<file>: not UTF-8 text (byte 9: 0xe9)"


def test_a_byte_order_mark_is_fine(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(minimal_raw()).encode())
    assert load_spec(path).name == "t"


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("# " + "x" * MAX_BYTES + "\n")
    assert "a spec is at most 1,048,576" in problem_of(path)


def test_an_alias_bomb_is_refused_quickly(tmp_path):
    lines = ['a0: ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    path = tmp_path / "bomb.yaml"
    path.write_text(
        "\n".join(
            f"{line.replace(': [', ': &a' + str(i) + ' [', 1)}" for i, line in enumerate(lines)
        )
        + "\n"
    )
    started = time.perf_counter()
    assert "values once aliases are expanded" in problem_of(path)
    assert time.perf_counter() - started < 5


def test_deep_nesting_is_refused_without_a_crash(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("name: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nested deeper than 64 levels" in problem_of(path)
    path.write_text("name: " + "[" * 100 + "]" * 100 + "\n")
    assert "nested deeper than 64 levels" in problem_of(path)


def test_an_override_that_is_not_yaml_is_a_spec_error():
    with pytest.raises(SpecError) as info:
        load_spec(minimal_raw(), ["train.lr=[1e-3"])
    (problem,) = info.value.problems
    assert problem.startswith("override 'train.lr=[1e-3': the value is not valid YAML")
