"""The verdict: a paired bootstrap interval, an outcome in words, and the guard's say."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.verdict import (
    Evaluation,
    describe,
    guard_verdict,
    headline,
    outcome_of,
    paired_interval,
    verdict,
)


def test_identical_models_have_a_zero_interval():
    scores = np.random.default_rng(0).random(500)
    assert paired_interval(scores, scores) == (0.0, 0.0)


def test_the_interval_covers_the_true_shift_and_shrinks_with_more_queries():
    rng = np.random.default_rng(1)
    widths = []
    for n in (200, 2000):
        base = rng.random(n)
        tuned = np.clip(base + 0.02 + rng.normal(0, 0.1, n), 0, 1)
        low, high = paired_interval(base, tuned)
        assert low < (tuned - base).mean() < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # about 1/sqrt(10)


def test_pairing_sees_a_small_consistent_gain_that_unpaired_noise_would_hide():
    rng = np.random.default_rng(2)
    base = rng.random(1000)  # queries differ a lot in difficulty...
    tuned = base + 0.01  # ...but every one gains 0.01
    low, high = paired_interval(base, tuned)
    assert low > 0 and high == pytest.approx(0.01)


def test_outcomes():
    assert outcome_of((0.001, 0.02), 0.01) == "improved"
    assert outcome_of((-0.004, 0.005), 0.0002) == "within noise"
    assert outcome_of((-0.03, -0.01), -0.02) == "worse"
    assert outcome_of(None, 0.01) == "improved"  # no interval: the sign


def evaluation(values: np.ndarray, guard: np.ndarray | None = None) -> Evaluation:
    metrics = {"ndcg@10": float(values.mean())}
    per_query = {"ndcg@10": values}
    if guard is not None:
        metrics["nq/ndcg@10"], per_query["nq/ndcg@10"] = float(guard.mean()), guard
    return Evaluation(metrics, per_query)


def test_a_tiny_change_is_within_noise_and_said_so():
    rng = np.random.default_rng(3)
    base = rng.random(1000)
    tuned = np.clip(base + rng.normal(0, 0.05, 1000), 0, 1)
    judged = verdict("ndcg@10", evaluation(base), evaluation(tuned))
    assert judged.outcome == "within noise" and not judged.improved
    low, high = judged.interval
    assert low < 0 < high
    assert describe(judged).startswith("within noise: ndcg@10 ")
    tone, sentence = headline(judged)
    assert tone == "same" and "Keep the base model" in sentence


def test_a_metric_without_per_query_values_has_no_interval():
    base = Evaluation({"labels/roc_auc": 0.8}, {})
    judged = verdict("labels/roc_auc", base, Evaluation({"labels/roc_auc": 0.9}, {}))
    assert judged.interval is None and judged.outcome == "improved"
    assert describe(judged).endswith("(no interval)")


def test_forgetting_overrides_an_in_domain_gain():
    rng = np.random.default_rng(4)
    base, guard = rng.random(800), rng.random(600)
    before = evaluation(base, guard)
    after = evaluation(base + 0.03, guard - 0.02)
    judged = verdict("ndcg@10", before, after)
    assert judged.improved
    judged = judged.with_guard(guard_verdict("nq/ndcg@10", 0.005, before, after))
    assert judged.outcome == "improved" and judged.guard.forgot and not judged.improved
    tone, sentence = headline(judged, rejected=True)
    assert tone == "bad" and "model.rejected/" in sentence and "FORGOT" in sentence
    kept = guard_verdict("nq/ndcg@10", 0.005, before, evaluation(base, guard - 0.004))
    assert not kept.forgot


def test_interpolation_is_linear_in_alpha_and_keeps_integer_tensors():
    import torch

    from orchestrator.modeling import interpolated

    base = {"w": torch.zeros(2, 2), "ids": torch.tensor([1, 2])}
    tuned = {"w": torch.ones(2, 2) * 4, "ids": torch.tensor([1, 2])}
    assert torch.equal(interpolated(base, tuned, 0.25)["w"], torch.ones(2, 2))
    assert torch.equal(interpolated(base, tuned, 1.0)["w"], tuned["w"])
    assert torch.equal(interpolated(base, tuned, 0.5)["ids"], tuned["ids"])
    with pytest.raises(ValueError, match="different tensors"):
        interpolated(base, {"w": tuned["w"]}, 0.5)
