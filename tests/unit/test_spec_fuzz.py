"""Mutated example specs: ``validate`` answers cleanly or with the project's own error, fast.

Types, values, keys and the YAML text itself are mutated from the shipped experiments; what
must never happen is a traceback from inside the validator or a hang.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.spec import SpecError, load_spec
from orchestrator.spec.yaml_reader import YamlProblem, parse_yaml

EXPERIMENTS = sorted((Path(__file__).parents[2] / "experiments").glob("*.yaml"))
RAW = [yaml.safe_load(p.read_text()) for p in EXPERIMENTS]
SECONDS = 2.0

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def paths(node, prefix=()):
    """Every (path to a value) of a nested dict/list spec."""
    yield prefix
    if isinstance(node, dict):
        for key, child in node.items():
            yield from paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from paths(child, (*prefix, index))


def mutate(raw, path, action, value):
    raw = copy.deepcopy(raw)
    if not path:
        return value if action == "replace" else raw
    *parents, last = path
    node = raw
    for key in parents:
        node = node[key]
    if action == "replace":
        node[last] = value
    elif action == "delete":
        del node[last]
    elif action == "add" and isinstance(node, dict):
        node[f"{last}_extra"] = value
    return raw


def answers_cleanly(raw) -> None:
    """Through the file path ``validate`` takes: YAML text on disk, then ``load_spec``."""
    with tempfile.TemporaryDirectory() as folder:
        spec_file = Path(folder, "spec.yaml")
        spec_file.write_text(yaml.safe_dump(raw))
        started = time.perf_counter()
        with contextlib.suppress(SpecError):
            load_spec(spec_file)
        assert time.perf_counter() - started < SECONDS


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_specs_are_valid_or_rejected_with_a_spec_error(data):
    raw = data.draw(st.sampled_from(RAW))
    path = data.draw(st.sampled_from(list(paths(raw))))
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    answers_cleanly(mutate(raw, path, action, data.draw(values)))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(EXPERIMENTS), st.data())
def test_mutated_yaml_text_is_read_or_refused_with_a_reason(path, data):
    text = path.read_text()
    start = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(start, min(len(text), start + 40)))
    insert = data.draw(st.text(alphabet=":-[]{}&*!|>'\"#%@ \n\t\\xab1", max_size=20))
    mutated = text[:start] + insert + text[end:]
    started = time.perf_counter()
    try:
        raw = parse_yaml(mutated)
    except YamlProblem:
        return
    answers_cleanly(raw)
    assert time.perf_counter() - started < SECONDS


@pytest.mark.parametrize("raw", RAW, ids=[p.stem for p in EXPERIMENTS])
def test_every_example_is_valid(raw):
    load_spec(raw)
