"""The experiment spec: loading, field-path errors, overrides, run ids, preflight and the CLI."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.__main__ import main
from orchestrator.preflight import preflight
from orchestrator.spec import SpecError, apply_overrides, load_spec, parse_spec

EXPERIMENTS = sorted((Path(__file__).parents[2] / "experiments").glob("*.yaml"))
REMOVE = object()  # marks a key to delete in `changed`


def minimal_raw() -> dict:
    """The smallest valid spec; parse_spec needs no files."""
    return {
        "name": "t",
        "model": {"base": "some-model"},
        "data": {
            "sources": {"a": {"format": "jsonl", "path": "a.jsonl"}},
            "eval": {"corpus": "c.jsonl", "queries": "q.jsonl", "qrels": "r.tsv"},
        },
        "loss": {"kind": "infonce"},
    }


GUARD = {"corpus": "g/c.jsonl", "queries": "g/q.jsonl", "qrels": "g/r.tsv"}


def changed(raw: dict, changes: dict[str, object]) -> dict:
    """A deep copy of ``raw`` with dotted keys set (or deleted with REMOVE)."""
    raw = copy.deepcopy(raw)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        if value is REMOVE:
            del node[last]
        else:
            node[last] = value
    return raw


def problems_of(raw: dict, overrides: list[str] | None = None) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(raw, overrides)
    return info.value.problems


def write_spec(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_file_loads(path):
    spec = load_spec(path)
    assert spec.name


def test_minimal_spec_is_valid():
    spec = parse_spec(minimal_raw())
    assert spec.train.batch_size == 32 and spec.data.sources["a"].weight == 1.0


BAD_SPECS = [
    pytest.param({"trian": {"lr": 0.1}}, "trian", "unknown field", id="top-level-typo"),
    pytest.param({"train.lrr": 0.1}, "train.lrr", "unknown field", id="section-typo"),
    pytest.param({"train.max_steps": "many"}, "train.max_steps", "integer", id="wrong-type"),
    pytest.param({"loss.kind": "arcface"}, "loss.kind", "arcface", id="unknown-loss"),
    pytest.param(
        {"loss.kind": "triplet"},
        "data.sources.a.columns",
        "trains on triplets (columns.negatives); these columns make pairs",
        id="triplet-without-negatives",
    ),
    pytest.param(
        {"loss.kind": "triplet", "data.sources.a.columns.negatives": ["n1", "n2"]},
        "data.sources.a.columns",
        "compares 1 negative per row",
        id="triplet-with-two-negatives",
    ),
    pytest.param(
        {"loss.kind": "cosent"},
        "data.sources.a.columns",
        "trains on scored_pairs (columns.score)",
        id="cosent-without-scores",
    ),
    pytest.param(
        {"loss.kind": "online_contrastive", "data.sources.a.columns.score": "s"},
        "data.sources.a.columns",
        "trains on labeled_pairs (columns.label); these columns make scored_pairs",
        id="contrastive-on-scores",
    ),
    pytest.param(
        {"data.sources.a.columns.negatives": ["n"], "data.sources.a.columns.label": "y"},
        "data.sources.a.columns",
        "one of negatives, score or label",
        id="two-formats-at-once",
    ),
    pytest.param(
        {"loss.kind": "cached_mnrl", "loss.mini_batch_size": 0},
        "loss.mini_batch_size",
        "greater than 0",
        id="cached-mini-batch",
    ),
    pytest.param(
        {"loss.guide": {"model": "base"}, "loss.symmetric": True},
        "loss",
        "query -> passage only",
        id="guide-symmetric",
    ),
    pytest.param(
        {"loss.guide": {"model": "base"}, "loss.mask_false_negatives": True},
        "loss",
        "guide replaces mask_false_negatives",
        id="guide-and-equal-text-mask",
    ),
    pytest.param(
        {"loss.guide": {"model": "base"}, "data.sources.a.columns.negatives": ["n1", "n2"]},
        "data.sources.a.columns",
        "the guided loss takes one negative per row",
        id="guide-two-negatives",
    ),
    pytest.param(
        {"loss.guide": {"model": "base", "margin": -0.1}},
        "loss.guide.margin",
        "greater than or equal to 0",
        id="guide-negative-margin",
    ),
    pytest.param(
        {"data.sources.a.columns.anchor": " "}, "data.sources.a.columns", "empty", id="empty-col"
    ),
    pytest.param(
        {"data.sources.a.columns.negatives": ["anchor"]},
        "data.sources.a.columns",
        "['anchor'] is mapped twice",
        id="column-twice",
    ),
    pytest.param(
        {"data.sources.a": {"format": "csv", "path": "a.csv", "delimiter": "\\t"}},
        "data.sources.a.delimiter",
        "at most 1 character",
        id="tab-in-single-quotes",
    ),
    pytest.param({"name": "x" * 101}, "name", "at most 100 characters", id="long-name"),
    pytest.param({"name": "a/../b"}, "name", "should match pattern", id="name-with-slash"),
    pytest.param({"eval.main_metric": "ndcg@7"}, "eval.main_metric", "eval.k_values", id="k"),
    pytest.param({"eval.main_metric": "map@10"}, "eval.main_metric", "at 100 only", id="map-k"),
    pytest.param(
        {"eval.guard": {**GUARD, "metric": "recall@20"}}, "eval.guard.metric", "k_values", id="gk"
    ),
    pytest.param(
        {"data.sources.a.max_rows": 8, "train.batch_size": 16},
        "data.sources.a.max_rows",
        "cannot fill one global batch of 16",
        id="max-rows-below-batch",
    ),
    pytest.param({"train.batch_size": 1}, "train.batch_size", "nothing to contrast", id="b1"),
    pytest.param(
        {"testing": {"kill_worker_at_step": 90}, "train.max_steps": 80, "scaling.max_failures": 1},
        "testing.kill_worker_at_step",
        "comes after the last step",
        id="chaos-after-end",
    ),
    pytest.param({"model.base": ""}, "model.base", "empty", id="empty-base"),
    pytest.param({"data.sources.a.path": " "}, "data.sources.a.path", "empty", id="blank-path"),
    pytest.param({"data.eval.qrels": ""}, "data.eval.qrels", "empty", id="empty-qrels"),
    pytest.param({"train.lr": float("nan")}, "train.lr", "finite number", id="nan-lr"),
    pytest.param({"loss.temperature": float("inf")}, "loss.temperature", "finite", id="inf"),
    pytest.param({"train.max_steps": True}, "train.max_steps", "expected a number", id="bool"),
    pytest.param({"train.seed": 2**32}, "train.seed", "less than 4294967296", id="big-seed"),
    pytest.param({"train.seed": -1}, "train.seed", "greater than or equal to 0", id="neg-seed"),
    pytest.param({"data.eval": REMOVE}, "data", "no held-out data", id="no-held-out-data"),
    pytest.param(
        {"data.eval_sets.refutes": {"kind": "triplets", "path": "t.jsonl"}},
        "data.eval_sets.refutes",
        "needs triplets (columns.negatives)",
        id="triplet-set-without-negative",
    ),
    pytest.param(
        {"data.eval_sets.sts": {"kind": "scored_pairs", "path": "s.csv"}},
        "data.eval_sets.sts",
        "needs scored_pairs (columns.score)",
        id="scored-set-without-score",
    ),
    pytest.param(
        {"eval.main_metric": "sts/spearman"},
        "eval.main_metric",
        "no set 'sts' in data.eval_sets",
        id="metric-of-unknown-set",
    ),
    pytest.param(
        {
            "data.eval_sets.refutes": {
                "kind": "triplets",
                "path": "t.jsonl",
                "columns": {"negatives": ["negative"]},
            },
            "eval.main_metric": "refutes/roc_auc",
        },
        "eval.main_metric",
        "a triplets set reports accuracy",
        id="metric-the-set-lacks",
    ),
    pytest.param(
        {
            "data.eval": REMOVE,
            "data.eval_sets.labels": {
                "kind": "labeled_pairs",
                "path": "l.jsonl",
                "columns": {"label": "y"},
            },
        },
        "eval.main_metric",
        "needs data.eval (a retrieval set); or name 'labels/roc_auc'",
        id="retrieval-metric-without-retrieval-set",
    ),
    pytest.param(
        {"train.batch_size": 10, "scaling.num_workers": 3},
        "train.batch_size",
        "num_workers=3",
        id="batch-not-divisible",
    ),
    pytest.param(
        {"loss.matryoshka_dims": [16, 32]}, "loss", "strictly decreasing", id="matryoshka-order"
    ),
    pytest.param(
        {"loss.matryoshka_dims": [32, 16], "loss.matryoshka_weights": [1.0]},
        "loss",
        "one weight per",
        id="matryoshka-weights",
    ),
    pytest.param({"train.precision": "fp16"}, "train.precision", "GPUs", id="fp16-on-cpu"),
    pytest.param(
        {"data.sources.1bad": {"format": "jsonl", "path": "b.jsonl"}},
        "data.sources",
        "'1bad'",
        id="bad-source-name",
    ),
    pytest.param({"model.base": REMOVE}, "model.base", "required", id="missing-model-base"),
    pytest.param(
        {"data.sources.a.format": "xml"}, "data.sources.a.format", "xml", id="unknown-format"
    ),
    pytest.param(
        {"loss.temperature": 2}, "loss.temperature", "less than or equal", id="temperature-above-1"
    ),
    pytest.param({"eval.main_metric": "f1"}, "eval.main_metric", "ndcg@10", id="bad-main-metric"),
    pytest.param(
        {"eval.guard": {**GUARD, "metric": "roc_auc"}},
        "eval.guard.metric",
        "not a retrieval metric",
        id="guard-metric",
    ),
    pytest.param(
        {
            "eval.guard": {**GUARD, "name": "sts"},
            "data.eval_sets.sts": {
                "kind": "scored_pairs",
                "path": "s.csv",
                "columns": {"score": "score"},
            },
        },
        "eval.guard.name",
        "taken",
        id="guard-name-collides",
    ),
    pytest.param({"merge.alphas": [0.5]}, "merge", "eval.guard", id="merge-without-guard"),
    pytest.param(
        {"merge.alphas": [0.5, 0.5], "eval.guard": GUARD}, "merge.alphas", "repeat", id="alphas"
    ),
    pytest.param(
        {"merge.alphas": [0.0], "eval.guard": GUARD},
        "merge.alphas.0",
        "greater than 0",
        id="alpha0",
    ),
    pytest.param({"data.shuffle_buffer": 1024}, "data.shuffle_buffer", "unknown", id="old-field"),
]


@pytest.mark.parametrize(("changes", "path", "words"), BAD_SPECS)
def test_bad_spec_names_the_field(changes, path, words):
    problems = problems_of(changed(minimal_raw(), changes))
    matching = [p for p in problems if f"{path}:" in p]
    assert matching, problems
    assert any(words in p for p in matching), problems


def test_every_problem_is_reported_at_once():
    problems = problems_of(changed(minimal_raw(), {"trian": {}, "train.lrr": 1, "model.base": 3}))
    assert len(problems) == 3


def test_cross_field_problems_are_separate_and_start_with_their_path():
    raw = changed(minimal_raw(), {"train.batch_size": 10, "scaling.num_workers": 3})
    problems = problems_of(changed(raw, {"train.precision": "fp16"}))
    assert any(p.startswith("train.batch_size:") for p in problems), problems
    assert any(p.startswith("train.precision:") for p in problems), problems


def test_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")


def test_invalid_yaml_is_a_spec_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)


# --------------------------------------------------------------------------- overrides


def test_overrides_are_parsed_as_yaml_and_applied():
    spec = load_spec(
        minimal_raw(),
        overrides=[
            "train.lr=0.001",
            "loss.kind=triplet",
            "data.sources.a.columns.negatives=[wrong]",
            "lora.r=4",
        ],
    )
    assert spec.train.lr == 0.001
    assert spec.loss.kind == "triplet"
    assert spec.data.sources["a"].columns.negatives == ["wrong"]
    assert spec.lora is not None and spec.lora.r == 4


def test_overrides_apply_before_validation():
    # The raw spec is valid; the override alone makes it invalid.
    problems = problems_of(minimal_raw(), ["loss.kind=triplet"])
    assert any("data.sources.a.columns: loss 'triplet'" in p for p in problems)


def test_override_can_repair_an_invalid_spec():
    raw = changed(minimal_raw(), {"train.max_steps": "many"})
    assert load_spec(raw, ["train.max_steps=5"]).train.max_steps == 5


@pytest.mark.parametrize("override", ["train.lr", "=0.1", ""])
def test_malformed_override_is_a_spec_error(override):
    with pytest.raises(SpecError, match=r"expected key\.path=value"):
        load_spec(minimal_raw(), [override])


def test_override_below_a_value_is_a_spec_error():
    with pytest.raises(SpecError, match="'name' is not a section"):
        apply_overrides(minimal_raw(), ["name.first=x"])


def test_load_spec_leaves_the_callers_dict_alone():
    raw = minimal_raw()
    load_spec(raw, ["train.lr=0.5"])
    assert raw == minimal_raw()


def test_overrides_apply_to_files(tmp_path):
    path = write_spec(tmp_path / "s.yaml", minimal_raw())
    assert load_spec(path, ["train.seed=7"]).train.seed == 7


def test_non_mapping_spec_file_with_overrides_is_a_spec_error(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(SpecError):
        load_spec(path, ["train.lr=0.1"])


# --------------------------------------------------------------------------- hash / run id


def reversed_keys(node):
    if isinstance(node, dict):
        return {k: reversed_keys(node[k]) for k in reversed(list(node))}
    return node


def test_hash_ignores_key_order():
    raw = changed(minimal_raw(), {"data.sources.b": {"format": "csv", "path": "b.csv"}})
    assert load_spec(raw).hash() == load_spec(reversed_keys(raw)).hash()


def test_hash_is_the_same_with_defaults_written_out():
    spec = load_spec(minimal_raw())
    explicit = spec.model_dump(mode="json")
    assert explicit["train"]["lr"] == 2e-5  # the defaults really are spelled out
    assert load_spec(explicit).hash() == spec.hash()
    partly = changed(minimal_raw(), {"train.batch_size": 32, "loss.temperature": 0.05})
    assert load_spec(partly).run_id == spec.run_id


def test_hash_is_stable_across_loads_and_files(tmp_path):
    path = write_spec(tmp_path / "s.yaml", minimal_raw())
    assert load_spec(path).hash() == load_spec(minimal_raw()).hash()


@pytest.mark.parametrize(
    "override",
    ["train.lr=0.001", "loss.temperature=0.1", "data.sources.a.weight=2", "model.base=other"],
)
def test_hash_changes_with_a_value(override):
    assert load_spec(minimal_raw(), [override]).hash() != load_spec(minimal_raw()).hash()


def test_run_id_is_a_hash_prefix():
    spec = load_spec(minimal_raw())
    assert len(spec.run_id) == 12 and spec.hash().startswith(spec.run_id)


# --------------------------------------------------------------------------- preflight


def test_preflight_accepts_real_files(tiny_spec):
    assert preflight(load_spec(tiny_spec)) == []


def test_missing_corpus_points_at_its_path_and_prepare(tiny_spec, tmp_path):
    raw = changed(tiny_spec, {"data.sources.colors.path": str(tmp_path / "gone.jsonl")})
    with pytest.raises(SpecError) as info:
        preflight(load_spec(raw))
    (problem,) = info.value.problems
    assert problem.startswith("data.sources.colors.path:")
    assert "prepare" in problem


def test_missing_eval_file_is_reported(tiny_spec, tmp_path):
    raw = changed(tiny_spec, {"data.eval.qrels": str(tmp_path / "gone.tsv")})
    with pytest.raises(SpecError) as info:
        preflight(load_spec(raw))
    assert [p.split(":")[0] for p in info.value.problems] == ["data.eval.qrels"]


def test_matryoshka_wider_than_the_model_fails(tiny_spec):
    # The tiny model is 32-d.
    raw = changed(tiny_spec, {"loss.matryoshka_dims": [64, 16]})
    with pytest.raises(SpecError) as info:
        preflight(load_spec(raw))
    assert any(p.startswith("loss.matryoshka_dims:") and "32" in p for p in info.value.problems)


def test_matryoshka_within_the_model_passes(tiny_spec):
    preflight(load_spec(changed(tiny_spec, {"loss.matryoshka_dims": [32, 16]})))


def test_a_guide_model_is_checked_like_the_base(tiny_spec, tiny_model):
    raw = changed(tiny_spec, {"loss.guide": {"model": "no-such-guide"}})
    with pytest.raises(SpecError) as info:
        preflight(load_spec(raw))
    assert [p.split(":")[0] for p in info.value.problems] == ["loss.guide.model"]
    for guide in ("base", str(tiny_model)):
        spec = load_spec(changed(tiny_spec, {"loss.guide": {"model": guide}}))
        assert preflight(spec) == []
        # as workers receive it: dumped and validated again
        again = type(spec).model_validate(spec.model_dump(mode="json"))
        assert again.loss.guide == spec.loss.guide and not again.loss.masks_equal_texts


def test_unknown_model_name_fails(tiny_spec):
    with pytest.raises(SpecError) as info:
        preflight(load_spec(changed(tiny_spec, {"model.base": "no-such-model"})))
    assert any(p.startswith("model.base:") for p in info.value.problems)


def test_relative_glob_that_matches_passes(tiny_spec, corpora, monkeypatch):
    monkeypatch.chdir(corpora["root"])
    preflight(load_spec(changed(tiny_spec, {"data.sources.colors.path": "col*.jsonl"})))


def test_absolute_glob_that_matches_passes(tiny_spec, corpora):
    pattern = str(corpora["root"] / "col*.jsonl")
    preflight(load_spec(changed(tiny_spec, {"data.sources.colors.path": pattern})))


# --------------------------------------------------------------------------- CLI


def test_cli_validate_accepts_a_valid_spec(tiny_spec, tmp_path, capsys):
    path = write_spec(tmp_path / "ok.yaml", tiny_spec)
    assert main(["validate", str(path)]) == 0
    assert "valid (run id" in capsys.readouterr().out


def test_cli_validate_prints_the_field_path_of_a_bad_spec(tiny_spec, tmp_path, capsys):
    path = write_spec(tmp_path / "bad.yaml", changed(tiny_spec, {"train.lrr": 1}))
    assert main(["validate", str(path)]) == 2
    assert "train.lrr" in capsys.readouterr().err


def test_cli_validate_applies_overrides(tiny_spec, tmp_path, capsys):
    path = write_spec(tmp_path / "ok.yaml", tiny_spec)
    assert main(["validate", str(path), "train.batch_size=7"]) == 2  # 7 over 2 workers
    assert "train.batch_size" in capsys.readouterr().err


def test_cli_validate_no_files_skips_file_checks(tiny_spec, tmp_path, capsys):
    raw = changed(tiny_spec, {"data.sources.colors.path": str(tmp_path / "gone.jsonl")})
    path = write_spec(tmp_path / "s.yaml", raw)
    assert main(["validate", str(path)]) == 2
    assert "data.sources.colors.path" in capsys.readouterr().err
    assert main(["validate", "--no-files", str(path)]) == 0
    assert main(["validate", str(path), "train.lr=1e-4", "--no-files"]) == 0  # after overrides
    assert main(["validate", str(path), "--no-files", "train.lr=-1"]) == 2  # or before them
    assert "train.lr" in capsys.readouterr().err


def test_a_usage_error_exits_apart_from_an_invalid_spec(tiny_spec, tmp_path, capsys):
    """64 (EX_USAGE) for a command line that cannot be parsed, 2 for an invalid spec."""
    path = write_spec(tmp_path / "s.yaml", tiny_spec)
    for argv in (["validate", str(path), "--bogus"], ["valdate", str(path)], []):
        with pytest.raises(SystemExit) as usage:
            main(argv)
        assert usage.value.code == 64, argv
        assert "usage error" in capsys.readouterr().err
    assert main(["validate", str(path), "train.lr=-1"]) == 2
    assert "train.lr" in capsys.readouterr().err


# --------------------------------------------------------------------------- run


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"train.lrr": 1}, id="invalid-spec"),
        pytest.param({"data.sources.colors.path": "/no/such/file.jsonl"}, id="missing-file"),
    ],
)
def test_run_fails_before_starting_ray(tiny_spec, changes, tmp_path):
    """In a fresh interpreter (this session may already run Ray): no Ray instance is started."""
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(changed(tiny_spec, changes)))
    script = (
        "import sys, ray, orchestrator\n"
        "try:\n"
        f"    orchestrator.run({str(spec)!r})\n"
        "except orchestrator.SpecError as exc:\n"
        "    print(exc.problems)\n"
        "sys.exit(3 if ray.is_initialized() else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert next(iter(changes)).rsplit(".", 1)[0] in done.stdout


@pytest.mark.parametrize(
    ("tau", "warned"), [(0.05, False), (0.02, True), (0.1, False), (0.2, True)]
)
def test_a_temperature_far_from_the_models_own_is_warned_about(tau, warned):
    from orchestrator.preflight import temperature_warnings

    spec = load_spec("experiments/quickstart.yaml", [f"loss.temperature={tau}"])
    warnings = temperature_warnings(spec)
    assert bool(warnings) is warned
    if warned:
        assert warnings[0].startswith(f"loss.temperature: {tau} is ")
        assert "all-MiniLM-L6-v2 was trained with (0.05, scale 20)" in warnings[0]


def test_no_temperature_warning_without_a_known_trained_temperature():
    from orchestrator.preflight import temperature_warnings

    triplet = load_spec("experiments/tune-losses.yaml", ["loss={kind: triplet}", "tune=null"])
    assert temperature_warnings(triplet) == []  # no τ
    other = load_spec(
        "experiments/quickstart.yaml", ["model.base=sre-MiniLM", "loss.temperature=0.5"]
    )
    assert temperature_warnings(other) == []


def test_lora_targets_the_base_model_lacks_are_named_with_what_it_has(tiny_spec):
    raw = changed(tiny_spec, {"lora": {"target_modules": ["q_proj", "value"]}})
    with pytest.raises(SpecError) as info:
        preflight(load_spec(raw))
    (problem,) = info.value.problems
    assert problem.startswith("lora.target_modules: ['q_proj'] are not modules of")
    assert "'query'" in problem and "'value'" in problem
    preflight(load_spec(changed(tiny_spec, {"lora": {"target_modules": ["query", "dense"]}})))


def file_problems(raw) -> list[str]:
    with pytest.raises(SpecError) as info:
        preflight(load_spec(raw))
    return info.value.problems


def test_file_checks_name_what_cannot_be_read(tiny_spec, tmp_path):
    csv_as_jsonl = tmp_path / "pairs.jsonl"
    csv_as_jsonl.write_text("question,answer\nwhat,that\n")
    empty_folder = tmp_path / "empty"
    empty_folder.mkdir()
    (empty_folder / "notes.txt").write_text("no corpus here")
    cases = {
        "data.sources.colors.path": (str(csv_as_jsonl), "does not look like jsonl"),
        "data.sources.more.path": (str(empty_folder), "holds no jsonl files"),
        "data.eval.qrels": (str(tmp_path), "is a folder; name the file"),
        "data.eval.corpus": ("https://example.com/c.jsonl", "s3:// URIs (lower case) only"),
        "data.eval.queries": ("S3://bucket/q.jsonl", "s3:// URIs (lower case) only"),
        "model.base": ("/nowhere/model", "/nowhere/model does not exist"),
    }
    raw = changed(tiny_spec, {field: value for field, (value, _) in cases.items()})
    problems = file_problems(raw)
    for field, (_, message) in cases.items():
        assert any(p.startswith(f"{field}:") and message in p for p in problems), (field, problems)


def test_a_home_path_and_a_file_named_like_a_glob_are_read_as_such(
    tiny_spec, tmp_path, monkeypatch
):
    import shutil

    from orchestrator.data.sources import resolve_paths

    monkeypatch.setenv("HOME", str(tmp_path))
    literal = tmp_path / "pairs[1].jsonl"
    shutil.copyfile(tiny_spec["data"]["sources"]["colors"]["path"], literal)
    raw = changed(tiny_spec, {"data.sources.colors.path": "~/pairs[1].jsonl"})
    assert preflight(load_spec(raw)) == []
    assert resolve_paths("~/pairs[1].jsonl") == [str(literal)]
