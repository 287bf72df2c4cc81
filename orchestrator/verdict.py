"""Did fine-tuning help? The main metric's change, with the noise of its measurement.

A held-out set of a thousand queries measures NDCG@10 to about ±0.01, so a difference of
+0.0002 says nothing. The paired bootstrap (Efron & Tibshirani; Sakai 2006 for IR) resamples
the held-out queries with replacement and recomputes the mean of the per-query differences of
the two models: both models are judged on the same resampled queries, so what the interval
measures is the noise of the *difference*, not of each figure. "improved" means its 95 %
interval lies above 0, "worse" below 0, else "within noise".

scipy's ``bootstrap`` does this too, but holds every resample's index array at once; the
resampling here is chunked and seeded, a few lines, with no scipy import on the driver.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple

import numpy as np

Outcome = Literal["improved", "within noise", "worse"]


class Evaluation(NamedTuple):
    """One model on the held-out data: flat metrics, and per-query values where they exist."""

    metrics: dict[str, float]
    #: metric → one value per held-out query (retrieval metrics), aligned across models.
    per_query: dict[str, np.ndarray]


RESAMPLES = 2000
LEVEL = 0.95


def paired_interval(
    base: np.ndarray,
    tuned: np.ndarray,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of mean(tuned - base) over items resampled with replacement."""
    differences = np.asarray(tuned, dtype=np.float64) - np.asarray(base, dtype=np.float64)
    if differences.ndim != 1 or len(differences) < 2:
        raise ValueError("a paired interval needs two aligned arrays of at least 2 items")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // len(differences))  # bounded memory for large held-out sets
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        picks = rng.integers(0, len(differences), size=(count, len(differences)))
        means[start : start + count] = differences[picks].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def standard_error(base: np.ndarray, tuned: np.ndarray) -> float:
    """The standard error of mean(tuned - base) over aligned items."""
    differences = np.asarray(tuned, dtype=np.float64) - np.asarray(base, dtype=np.float64)
    return float(differences.std(ddof=1) / np.sqrt(len(differences)))


def outcome_of(interval: tuple[float, float] | None, delta: float) -> Outcome:
    """improved / worse when the interval excludes 0; without an interval, by the sign."""
    low, high = interval if interval is not None else (delta, delta)
    if low > 0:
        return "improved"
    if high < 0:
        return "worse"
    return "within noise"


@dataclass(frozen=True, kw_only=True)
class Judged:
    """One metric of the base and the fine-tuned model: Δ, its paired interval, the outcome."""

    metric: str
    baseline: float
    finetuned: float
    delta: float
    #: the paired-bootstrap interval of ``delta``; None for a metric that is not a per-query mean
    interval: tuple[float, float] | None
    level: float
    outcome: Outcome


@dataclass(frozen=True, kw_only=True)
class GuardVerdict(Judged):
    """The guard's metric (general ability): ``forgot`` when it fell more than ``max_drop``."""

    max_drop: float
    forgot: bool


@dataclass(frozen=True, kw_only=True)
class Verdict(Judged):
    """The run's verdict on the main metric, with the guard's beside it.

    ``improved``: the interval lies above 0 and, with a guard, general ability was kept.
    """

    improved: bool
    guard: GuardVerdict | None = None

    def with_guard(self, guard: GuardVerdict) -> Verdict:
        return replace(self, guard=guard, improved=self.improved and not guard.forgot)


def _judged(metric: str, base: Evaluation, tuned: Evaluation) -> dict[str, Any]:
    delta = tuned.metrics[metric] - base.metrics[metric]
    interval = None
    if metric in base.per_query and metric in tuned.per_query:
        interval = paired_interval(base.per_query[metric], tuned.per_query[metric])
    return {
        "metric": metric,
        "baseline": base.metrics[metric],
        "finetuned": tuned.metrics[metric],
        "delta": delta,
        "interval": interval,
        "level": LEVEL,
        "outcome": outcome_of(interval, delta),
    }


def verdict(metric: str, base: Evaluation, tuned: Evaluation) -> Verdict:
    """The verdict on ``metric``: Δ, its paired interval and the outcome in words.

    Metrics that are not a mean over queries (ROC AUC, Spearman) get no interval: their
    outcome then goes by the sign alone and ``interval`` is None.
    """
    judged = _judged(metric, base, tuned)
    return Verdict(**judged, improved=judged["outcome"] == "improved")


def guard_verdict(key: str, max_drop: float, base: Evaluation, tuned: Evaluation) -> GuardVerdict:
    """Did the model forget? The guard metric's change, its interval, and ``forgot``.

    ``forgot`` when the fine-tuned figure is more than ``max_drop`` below the base's.
    """
    judged = _judged(key, base, tuned)
    return GuardVerdict(**judged, max_drop=max_drop, forgot=judged["delta"] < -max_drop)


def describe(judged: Judged) -> str:
    """One line in words: "improved: ndcg@10 0.8281 -> 0.8501, +0.0220 [+0.0150, +0.0290]"."""
    interval = judged.interval
    noise = f" [{interval[0]:+.4f}, {interval[1]:+.4f}]" if interval else " (no interval)"
    return (
        f"{judged.outcome}: {judged.metric} {judged.baseline:.4f} -> {judged.finetuned:.4f}, "
        f"{judged.delta:+.4f}{noise}"
    )


def describe_guard(guard: GuardVerdict) -> str:
    """One line: "general ability kept: nq/ndcg@10 ... (tolerated drop 0.005)" or forgot."""
    state = "FORGOT general ability" if guard.forgot else "general ability kept"
    interval = guard.interval
    noise = f" [{interval[0]:+.4f}, {interval[1]:+.4f}]" if interval else ""
    return (
        f"{state}: {guard.metric} {guard.baseline:.4f} -> {guard.finetuned:.4f}, "
        f"{guard.delta:+.4f}{noise} (tolerated drop {guard.max_drop})"
    )


def headline(judged: Verdict, rejected: bool = False) -> tuple[str, str]:
    """(tone, sentence) of a finished run for people: good, same or bad, and why.

    "helped" only when the interval excludes 0 *and* the guard (if any) kept general ability;
    ``rejected``: the model that forgot was kept beside instead of published.
    """
    guard = judged.guard
    sentence = describe(judged)
    if guard:
        sentence += "; " + describe_guard(guard)
    if guard and guard.forgot:
        where = "kept beside as model.rejected/" if rejected else "published"
        return "bad", f"Fine-tuning cost general ability ({where}): {sentence}"
    if judged.outcome == "improved":
        return "good", f"Fine-tuning helped: {sentence}"
    if judged.outcome == "worse":
        return "bad", f"Fine-tuning made it WORSE: {sentence}. Keep the base model."
    return "same", f"No measurable change: {sentence}. Keep the base model."
