"""The laptop-side estimate: rows, steps, pairs, tokens and negatives, checked by hand."""

from __future__ import annotations

import pytest

from orchestrator.data.tokenize import load_tokenizer
from orchestrator.estimate import estimate
from orchestrator.spec import ExperimentSpec
from tests.conftest import pairs, tiny_spec_dict


@pytest.fixture
def spec_dict(tiny_model, corpora, tmp_path) -> dict:
    return tiny_spec_dict(tiny_model, corpora, tmp_path)


def test_rows_steps_pairs_and_negatives(spec_dict):
    spec = ExperimentSpec.model_validate(spec_dict)
    found = estimate(spec)
    colors, more = found.sources
    # colors.jsonl: 96 good rows plus one with an empty question; more.jsonl: 64 rows.
    assert (colors.rows, colors.bad_rows, more.rows, more.bad_rows) == (96, 1, 64, 0)
    assert (colors.share, more.share) == (0.75, 0.25)  # weights 3 and 1
    assert (found.steps, found.pairs) == (4, 32)  # train.max_steps=4, batch 8
    assert found.negatives_per_query == 7  # 2 workers x 4, gathered, minus the positive
    assert found.epochs(colors, 8) == pytest.approx(4 * 0.75 * 8 / 96)


def test_tokens_are_the_mean_tokenized_length_times_the_pairs(spec_dict, tiny_model):
    spec = ExperimentSpec.model_validate(spec_dict)
    tokenizer = load_tokenizer(tiny_model)

    def mean_tokens(seed: int, n: int) -> float:
        rows = pairs(seed, n)
        lengths = [len(tokenizer(r[c])["input_ids"]) for r in rows for c in ("question", "answer")]
        return sum(lengths) / n

    # colors.jsonl is pairs(1, 96) (its broken row is skipped); more.jsonl is pairs(2, 64).
    expected = 4 * 8 * (0.75 * mean_tokens(1, 96) + 0.25 * mean_tokens(2, 64))
    assert estimate(spec).tokens == round(expected)


def test_epochs_decide_the_steps_when_max_steps_is_unset(spec_dict):
    spec_dict["train"].update(max_steps=None, epochs=2)
    found = estimate(ExperimentSpec.model_validate(spec_dict))
    assert found.steps == 2 * (96 + 64) // 8
    assert "steps 40 x batch 8 = 320 pairs" in found.lines(8)[0]


def test_remote_sources_are_not_downloaded(spec_dict):
    spec_dict["data"]["sources"]["more"]["path"] = "s3://bucket/more.jsonl"
    found = estimate(ExperimentSpec.model_validate(spec_dict))
    assert found.sources[1].rows is None and found.tokens is None
    assert found.steps == 4  # max_steps is known all the same
    spec_dict["train"].update(max_steps=None)
    found = estimate(ExperimentSpec.model_validate(spec_dict))
    assert found.steps is None and "steps unknown" in found.lines(8)[0]
