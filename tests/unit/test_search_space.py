"""The tune section: domains, searchable paths, conditional parameters, trial specs, checks."""

from __future__ import annotations

import pytest

from orchestrator.search_space import check_space, format_params, trial_spec
from orchestrator.spec import SpecError, TuneSpec, load_spec
from tests.unit.test_spec import minimal_raw


def with_tune(space: dict, **tune) -> dict:
    raw = minimal_raw()
    raw["data"]["sources"]["a"]["columns"] = {"negatives": ["neg"]}
    raw["train"] = {"max_steps": 40, "eval_every": 10}
    raw["tune"] = {"space": space, **tune}
    return raw


LOSSES = {
    "loss.kind": {"grid": ["infonce", "triplet"]},
    "loss.temperature": {"loguniform": [0.01, 0.1], "when": {"loss.kind": "infonce"}},
    "loss.margin": {"uniform": [0.1, 0.5], "when": {"loss.kind": "triplet"}},
}


def problems_of(raw: dict) -> list[str]:
    with pytest.raises(SpecError) as info:
        spec = load_spec(raw)
        check_space(spec)
    return info.value.problems


def test_a_loss_search_is_valid_and_its_candidates_are_checked():
    spec = load_spec(with_tune(LOSSES))
    candidates = check_space(spec)
    kinds = {c.loss.kind for c in candidates}
    assert kinds == {"infonce", "triplet"}
    # Conditional parameters land only on their own loss kind.
    assert {c.loss.temperature for c in candidates if c.loss.kind == "infonce"} == {0.01, 0.1}
    assert {c.loss.margin for c in candidates if c.loss.kind == "triplet"} == {0.1, 0.5}


def test_the_tune_section_leaves_the_run_id_alone():
    raw = with_tune(LOSSES)
    without = {k: v for k, v in raw.items() if k != "tune"}
    assert load_spec(raw).run_id == load_spec(without).run_id
    assert load_spec(raw).hash(include_tune=True) != load_spec(raw).hash()


def test_switching_the_loss_kind_drops_settings_the_new_kind_lacks():
    base = load_spec(with_tune(LOSSES))
    assert base.loss.temperature == 0.05
    spec = trial_spec(base, {"loss.kind": "triplet", "loss.margin": 0.3})
    assert spec.loss.kind == "triplet" and spec.loss.margin == 0.3
    assert spec.tune is None
    # A trial is the run of the spec with those overrides: the same run id.
    by_override = load_spec(
        {k: v for k, v in with_tune(LOSSES).items() if k != "tune"},
        ["loss={kind: triplet, margin: 0.3}"],
    )
    assert spec.run_id == by_override.run_id


def test_searching_lora_rank_turns_lora_on():
    base = load_spec(with_tune({"lora.r": {"choice": [4, 16]}}))
    assert base.lora is None
    assert trial_spec(base, {"lora.r": 16}).lora.r == 16


def test_source_weights_are_searchable():
    spec = load_spec(with_tune({"data.sources.a.weight": {"uniform": [0.5, 2.0]}}))
    assert trial_spec(spec, {"data.sources.a.weight": 1.5}).data.sources["a"].weight == 1.5


def test_trial_params_drop_parameters_whose_condition_fails():
    tune = TuneSpec.model_validate({"space": LOSSES})
    config = {"loss.kind": "triplet", "loss.temperature": 0.02, "loss.margin": 0.2}
    assert tune.trial_params(config) == {"loss.kind": "triplet", "loss.margin": 0.2}
    config = {"loss.kind": "infonce", "loss.temperature": 0.02, "loss.margin": 0.2}
    assert tune.trial_params(config) == {"loss.kind": "infonce", "loss.temperature": 0.02}


def test_when_accepts_a_list_of_values():
    tune = TuneSpec.model_validate(
        {
            "space": {
                "loss.kind": {"choice": ["infonce", "mnrl", "triplet"]},
                "loss.symmetric": {
                    "choice": [True, False],
                    "when": {"loss.kind": ["infonce", "mnrl"]},
                },
            }
        }
    )
    assert tune.trial_params({"loss.kind": "mnrl", "loss.symmetric": True})["loss.symmetric"]
    assert "loss.symmetric" not in tune.trial_params({"loss.kind": "triplet", "loss.symmetric": 1})


BAD_SEARCHES = [
    pytest.param(
        {"model.max_seq_length": {"choice": [128, 256]}}, {}, "not searchable", id="model"
    ),
    pytest.param({"data.eval.max_queries": {"choice": [10]}}, {}, "not searchable", id="eval-set"),
    pytest.param({"train.eval_every": {"choice": [5, 10]}}, {}, "not searchable", id="eval-every"),
    pytest.param({"data.sources.b.weight": {"uniform": [1, 2]}}, {}, "no source 'b'", id="source"),
    pytest.param({"train.lr": {"uniform": [0.1, 0.01]}}, {}, "low < high", id="reversed-range"),
    pytest.param({"train.lr": {"uniform": [0.1, 0.2], "choice": [1]}}, {}, "exactly one", id="two"),
    pytest.param({"train.lr": {"loguniform": [0, 1]}}, {}, "greater than 0", id="log-of-zero"),
    pytest.param(
        {"loss.kind": {"grid": ["infonce", "cosent"]}}, {}, "'cosent'", id="unknown-loss-kind"
    ),
    pytest.param(
        {"loss.temperature": {"uniform": [0.01, 2.0]}}, {}, "2 is invalid", id="tau-above-1"
    ),
    pytest.param(
        {"scaling.num_workers": {"choice": [1, 3]}}, {}, "num_workers=3", id="indivisible-batch"
    ),
    pytest.param(
        {"loss.margin": {"uniform": [0.1, 0.5], "when": {"loss.kind": "triplet"}}},
        {},
        "must be searched before it",
        id="condition-not-searched",
    ),
    pytest.param(
        {
            "loss.kind": {"choice": ["infonce"]},
            "loss.margin": {"uniform": [0.1, 0.5], "when": {"loss.kind": "triplet"}},
        },
        {},
        "never holds",
        id="condition-never-holds",
    ),
    pytest.param(
        {"loss.kind": {"grid": ["infonce"]}, "train.lr": {"grid": [1], "when": {"loss.kind": "x"}}},
        {},
        "cannot be conditional",
        id="conditional-grid",
    ),
    pytest.param({"train.lr": {"grid": [1e-5]}}, {"search": "optuna"}, "use choice", id="optuna"),
    pytest.param({"train.lr": {"choice": [1e-5]}}, {"metric": "f1"}, "tune.metric", id="metric"),
    pytest.param(
        {"train.lr": {"choice": [1e-5]}},
        {"metric": "dim64/ndcg@10"},
        "64 in eval.matryoshka_dims",
        id="metric-dim",
    ),
]


@pytest.mark.parametrize(("space", "tune", "words"), BAD_SEARCHES)
def test_a_bad_search_is_rejected_before_it_starts(space, tune, words):
    problems = problems_of(with_tune(space, **tune))
    assert any(words in p for p in problems), problems
    assert all(p.startswith(("tune.", "train.")) for p in problems), problems


def test_a_search_needs_evaluations_during_training():
    raw = with_tune({"train.lr": {"choice": [1e-5]}})
    raw["train"]["eval_every"] = 0
    assert any(p.startswith("train.eval_every:") for p in problems_of(raw))


def test_a_combination_invalid_only_together_is_left_to_skip():
    # 3 workers fit a batch of 48, not one of 32: each value is valid in some combination.
    raw = with_tune(
        {"train.batch_size": {"choice": [32, 48]}, "scaling.num_workers": {"choice": [1, 3]}}
    )
    candidates = check_space(load_spec(raw))
    assert len(candidates) == 3
    with pytest.raises(SpecError, match="num_workers=3"):
        trial_spec(load_spec(raw), {"train.batch_size": 32, "scaling.num_workers": 3})


def test_a_metric_at_a_matryoshka_dim_is_accepted():
    raw = with_tune({"train.lr": {"choice": [1e-5]}}, metric="dim64/ndcg@10")
    raw["eval"] = {"matryoshka_dims": [64]}
    assert load_spec(raw).tune.metric_key == "eval/dim64/ndcg@10"


def test_format_params_is_short_and_stable():
    assert format_params({"loss.kind": "triplet", "train.lr": 3e-05}) == (
        'loss.kind="triplet" train.lr=3e-05'
    )
    assert format_params({}) == "(base spec)"


def test_expected_trials_multiplies_grids_by_samples():
    from orchestrator.tuning import expected_trials

    tune = TuneSpec.model_validate(
        {
            "num_samples": 3,
            "space": {
                "loss.kind": {"grid": ["infonce", "triplet"]},
                "train.lr": {"loguniform": [1e-5, 1e-3]},
                "train.seed": {"grid": [1, 2]},
            },
        }
    )
    assert expected_trials(tune) == 3 * 2 * 2


def test_optuna_suggests_a_conditional_parameter_only_where_it_applies():
    optuna = pytest.importorskip("optuna")
    from orchestrator.tuning import _optuna_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tune = TuneSpec.model_validate(
        {"search": "optuna", "space": {**LOSSES, "loss.kind": {"choice": ["infonce", "triplet"]}}}
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        _optuna_space(tune.space, trial)
        kind = trial.params["loss.kind"]
        extra = {"infonce": "loss.temperature", "triplet": "loss.margin"}[kind]
        assert set(trial.params) == {"loss.kind", extra}
        seen.add(kind)
    assert seen == {"infonce", "triplet"}


def test_a_sampler_seed_of_zero_is_kept():
    space = {"train.lr": {"choice": [1e-5]}}
    assert TuneSpec.model_validate({"space": space, "seed": 0}).sampler_seed(42) == 0
    assert TuneSpec.model_validate({"space": space}).sampler_seed(42) == 42
