"""Training metrics exported through ``ray.util.metrics``; ``dashboards/`` charts them.

Ray's metrics agent on each node serves these to Prometheus with a ``ray_`` prefix
(``ray_orchestrator_train_loss``), next to Ray's own node and GPU metrics. Every series is
labelled with the run id and the experiment name, so one Grafana variable picks a run. The
values are recorded where Ray Train gathers the workers' reports (its controller), once per
report, from rank 0's figures: the workers' training loop stays free of metric calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.step_report import StepReport

PREFIX = "orchestrator_"
RUN_TAGS = ("run_id", "experiment")


@dataclass(frozen=True)
class MetricDef:
    """One exported gauge: its name (without Ray's ``ray_`` prefix) and the report key it shows."""

    name: str
    report_key: str | None
    description: str
    extra_tags: tuple[str, ...] = ()

    @property
    def prometheus_name(self) -> str:
        return f"ray_{self.name}"


#: Everything this project exports. ``report_key`` is a field of the training report
#: (:class:`orchestrator.step_report.StepReport`); the evaluation gauge takes every evaluation.
METRICS: tuple[MetricDef, ...] = (
    MetricDef(f"{PREFIX}train_step", "step", "Optimizer steps taken"),
    MetricDef(f"{PREFIX}train_total_steps", "total_steps", "Optimizer steps the run will take"),
    MetricDef(f"{PREFIX}train_loss", "loss", "Training loss, mean over the last report window"),
    MetricDef(f"{PREFIX}train_learning_rate", "lr", "Learning rate after the last step"),
    MetricDef(f"{PREFIX}train_pairs_per_second", "pairs_per_s", "Training pairs per second"),
    MetricDef(
        f"{PREFIX}train_tokens_per_second",
        "tokens_per_s",
        "Non-padding tokens per second, all texts of all workers",
    ),
    MetricDef(f"{PREFIX}train_step_seconds", "step_time_s", "Mean seconds per optimizer step"),
    MetricDef(
        f"{PREFIX}train_data_wait_fraction",
        "data_wait_fraction",
        "Fraction of step time spent waiting for the next batch",
    ),
    MetricDef(
        f"{PREFIX}train_padding_fraction",
        "padding_fraction",
        "Fraction of the padded tokens that are padding (data.bucket_window lowers it)",
    ),
    MetricDef(
        f"{PREFIX}train_peak_memory_mib",
        "peak_memory_mib",
        "Peak memory of the busiest worker: GPU allocations, else process RSS (MiB)",
    ),
    MetricDef(
        f"{PREFIX}train_negatives_per_query",
        "negatives_per_query",
        "Candidates competing with each query's positive per step",
    ),
    MetricDef(f"{PREFIX}train_pairs_seen", "pairs_seen", "Training pairs consumed so far"),
    MetricDef(
        f"{PREFIX}eval_metric",
        None,
        "Held-out evaluation metric (ndcg@10, mrr@10, ...) during training",
        extra_tags=("metric",),
    ),
)


class TrainingTelemetry:
    """Gauges for one run; ``record(report)`` sets them from a training-loop report."""

    def __init__(self, run_id: str, experiment: str) -> None:
        from ray.util.metrics import Gauge

        self._tags = {"run_id": run_id, "experiment": experiment}
        self._gauges = {
            m.name: Gauge(m.name, m.description, tag_keys=RUN_TAGS + m.extra_tags) for m in METRICS
        }

    def record(self, report: StepReport) -> None:
        for metric in METRICS:
            value = getattr(report, metric.report_key) if metric.report_key else None
            if value is not None:
                self._gauges[metric.name].set(float(value), tags=self._tags)
        evaluation = self._gauges[f"{PREFIX}eval_metric"]
        for name, value in report.evaluation.items():
            evaluation.set(float(value), tags={**self._tags, "metric": name})
