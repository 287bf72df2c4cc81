"""Population-based training without Ray: what the spec allows, where trials train, lineage."""

from __future__ import annotations

import pytest

from orchestrator.layout import tune_location
from orchestrator.search_space import (
    exploit_record,
    format_exploit,
    pbt_trial_spec,
    trial_spec,
)
from orchestrator.spec import load_spec
from orchestrator.tune_report import TrialRow, to_csv, to_markdown
from tests.unit.test_search_space import problems_of, with_tune

MUTABLE_SPACE = {
    "train.lr": {"loguniform": [1e-5, 1e-3]},
    "loss.temperature": {"choice": [0.02, 0.05]},
    "loss.matryoshka_weights": {"choice": [[1, 1], [2, 1]]},
}


def pbt(space: dict, **tune) -> dict:
    raw = with_tune(space, scheduler="pbt", **tune)
    raw["train"].update(checkpoint_every=10)
    raw["loss"]["matryoshka_dims"] = [32, 16]
    return raw


def test_a_search_over_what_can_change_mid_training_is_valid():
    spec = load_spec(pbt(MUTABLE_SPACE))
    assert spec.tune.pbt_interval(spec.train.eval_every, spec.train.checkpoint_every) == 10


def test_the_default_interval_is_a_step_that_evaluates_and_checkpoints():
    raw = pbt({"train.lr": {"loguniform": [1e-5, 1e-3]}})
    raw["train"].update(eval_every=4, checkpoint_every=6)
    tune = load_spec(raw).tune
    assert tune.pbt_interval(4, 6) == 12


@pytest.mark.parametrize(
    ("space", "tune", "words"),
    [
        pytest.param({"lora.r": {"choice": [4, 8]}}, {}, "tune.space.lora.r: pbt", id="lora"),
        pytest.param(
            {"train.batch_size": {"choice": [8, 16]}}, {}, "train.batch_size: pbt", id="batch"
        ),
        pytest.param(
            {"loss.kind": {"grid": ["infonce", "mnrl"]}}, {}, "loss.kind: pbt", id="loss-kind"
        ),
        pytest.param(
            {"train.weight_decay": {"uniform": [0.0, 0.1]}}, {}, "weight_decay: pbt", id="decay"
        ),
        pytest.param(
            {"train.lr": {"choice": [1e-5, 1e-4]}},
            {"search": "optuna"},
            "tune.search: pbt",
            id="optuna",
        ),
        pytest.param(
            {
                "loss.temperature": {"choice": [0.02, 0.05]},
                "train.lr": {"choice": [1e-5], "when": {"loss.temperature": 0.02}},
            },
            {},
            "train.lr.when: pbt",
            id="conditional",
        ),
        pytest.param(
            {"train.lr": {"choice": [1e-5, 1e-4]}},
            {"perturbation_interval": 15},
            "multiple of train.eval_every (10) and train.checkpoint_every (10)",
            id="interval-between-evaluations",
        ),
        pytest.param(
            {"train.lr": {"choice": [1e-5, 1e-4]}},
            {"perturbation_interval": 40},
            "before pbt ever decides",
            id="interval-past-the-end",
        ),
    ],
)
def test_a_search_pbt_cannot_run_is_rejected_before_it_starts(space, tune, words):
    problems = problems_of(pbt(space, **tune))
    assert any(words in p for p in problems), problems


def test_a_pbt_trial_never_trains_where_a_run_of_its_values_would():
    base = load_spec(pbt(MUTABLE_SPACE))
    params = {"train.lr": 1e-4, "loss.temperature": 0.05}
    run = trial_spec(base, params)
    start = pbt_trial_spec(base, params, "abc_00001", [])
    assert start.storage.uri == tune_location(base).join("pbt", "trial-abc_00001", "start").uri
    assert start.run_id != run.run_id
    assert start.train.lr == run.train.lr and start.loss == run.loss
    exploit = exploit_record("abc_00000", 20, {"train.lr": 1e-3}, params)
    after = pbt_trial_spec(base, params, "abc_00001", [exploit])
    assert after.storage.uri.endswith("/pbt/trial-abc_00001/step-20-from-abc_00000")


def test_an_exploit_records_what_changed():
    before = {"train.lr": 1e-4, "loss.temperature": 0.05}
    after = {"train.lr": 8e-5, "loss.temperature": 0.05}
    exploit = exploit_record("abc_00000", 4, before, after)
    assert exploit == {"trial": "abc_00000", "step": 4, "changes": {"train.lr": [1e-4, 8e-5]}}
    assert format_exploit(exploit) == "trial-abc_00000@step 4 (train.lr 0.0001→8e-05)"
    assert format_exploit(exploit_record("x", 2, after, after)) == "trial-x@step 2 (same values)"


def test_mutations_stay_inside_the_searched_range():
    from orchestrator.tuning import _mutation, _within_bounds

    spec = load_spec(pbt({**MUTABLE_SPACE, "loss.temperature": {"uniform": [0.02, 0.1]}}))
    space = spec.tune.space
    clipped = _within_bounds(space, {"loss.temperature": 0.12, "train.lr": 1e-6})
    assert clipped == {"loss.temperature": 0.1, "train.lr": 1e-5}
    assert _mutation(space["loss.matryoshka_weights"]) == [[1, 1], [2, 1]]


def row(trial: str, lineage: list) -> TrialRow:
    return TrialRow(trial, {"train.lr": 1e-4}, "r1", "completed", 8, 8, 0.5, 3.0, "", [], lineage)


def test_the_results_table_has_a_lineage_column_only_for_pbt():
    exploit = exploit_record("t0", 4, {"train.lr": 1e-3}, {"train.lr": 1e-4})
    rows = [row("t1", [exploit]), row("t0", [])]
    pbt_spec = load_spec(pbt({"train.lr": {"choice": [1e-4, 1e-3]}}))
    markdown = to_markdown(rows, 0.25, pbt_spec)
    assert "| run id | lineage |" in markdown
    assert "| r1 | trial-t0@step 4 (train.lr 0.001→0.0001) |" in markdown
    assert "lineage" in to_csv(rows, 0.25, "ndcg@10", lineage=True).splitlines()[0]
    asha = load_spec(with_tune({"train.lr": {"choice": [1e-4, 1e-3]}}))
    assert "lineage" not in to_markdown(rows, 0.25, asha)
    assert "lineage" not in to_csv(rows, 0.25, "ndcg@10")
    assert "lineage" not in row("t0", []).as_dict()
