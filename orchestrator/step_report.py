"""One training report: what every rank sends to Ray Train at a report step, typed.

The recipe builds a :class:`StepReport` and reports ``to_metrics()``, the flat dict Ray Train
and Tune carry (and Tune adds keys of its own to); the run monitor, the search and the
report read them back with :meth:`StepReport.from_metrics`. ``history.jsonl`` and a
checkpoint's meta hold the same flat dicts, so files written by earlier versions still read:
a field that did not exist then takes its default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

#: Metrics of an evaluation on the validation split are reported as ``eval/<metric>``.
EVAL_PREFIX = "eval/"


@dataclass(frozen=True)
class StepReport:
    """The state of training after ``step`` steps, averaged over the steps since the last
    report (loss, throughput) or accumulated since step 0 (pairs seen, steps per source)."""

    step: int
    total_steps: int
    loss: float
    lr: float
    time: float  # wall clock (epoch seconds) of the report
    resumed_from_step: int = 0  # where this attempt started
    restores: int = 0  # restarts of the workers from a checkpoint so far
    pairs_seen: int = 0
    pairs_per_s: float = 0.0
    tokens_per_s: float = 0.0  # a rank's own; :func:`run_report` sums the ranks'
    step_time_s: float = 0.0
    data_wait_fraction: float = 0.0
    padding_fraction: float = 0.0
    peak_memory_mib: float = 0.0
    rows_decoded: int = 0  # compiled rows decoded by this rank so far
    negatives_per_query: int = 0
    trainable_params: int = 0
    total_params: int = 0
    source_steps: dict[str, int] = field(default_factory=dict)
    #: candidates left out as the anchor's own positive, per query (losses that mask them)
    false_negatives_masked: float | None = None
    #: each rank's running fingerprint of what it trained on (checkpoint reports only)
    stream_digests: list[str] | None = None
    #: validation metrics of an evaluation report, by metric name (``ndcg@10``, ...)
    evaluation: dict[str, float] = field(default_factory=dict)

    def to_metrics(self) -> dict[str, Any]:
        """The flat dict Ray Train reports: optional fields only when set, ``eval/<metric>``."""
        metrics = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name != "evaluation" and getattr(self, f.name) is not None
        }
        metrics.update({EVAL_PREFIX + name: value for name, value in self.evaluation.items()})
        return metrics

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> StepReport:
        """A report from its flat dict; keys that are not a field (Tune's own) are ignored."""
        names = {f.name for f in fields(cls)} - {"evaluation"}
        evaluation = {
            key.removeprefix(EVAL_PREFIX): value
            for key, value in metrics.items()
            if key.startswith(EVAL_PREFIX)
        }
        return cls(**{k: v for k, v in metrics.items() if k in names}, evaluation=evaluation)

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps


def run_report(rank_reports: list[StepReport]) -> StepReport:
    """One report for the run: rank 0's, with tokens/s and rows decoded summed over the ranks
    and peak memory the largest."""
    first = rank_reports[0]
    return replace(
        first,
        tokens_per_s=sum(r.tokens_per_s for r in rank_reports),
        rows_decoded=sum(r.rows_decoded for r in rank_reports),
        peak_memory_mib=max(r.peak_memory_mib for r in rank_reports),
    )
