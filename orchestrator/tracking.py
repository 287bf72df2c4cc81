"""MLflow tracking: every run (and every trial of a search) recorded where teams already look.

What a run records: its resolved spec as params (dotted field paths), each training report as
metrics by step (``train/<field>``, ``eval/<metric>``), then both evaluations
(``baseline/<metric>``, ``finetuned/<metric>``), the verdict (``verdict/delta`` and its
interval, the guard's) and as artifacts ``summary.json``, ``report.html`` and the model card.
A search is a parent run (the base spec, results.csv/md, the plot) with one child run per
trial.

The reports are logged by :class:`MlflowReports`, a Ray Train callback in the controller
(beside :class:`orchestrator.monitor.RunMonitor`): no MLflow call in the training loop. An
MLflow run is found again by the orchestrator's run id (a tag), so a resumed or repeated run
continues its MLflow run instead of starting another. Only the MLflow client is used
(``MlflowClient``): nothing global (no active run, no autologging) is touched.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.train import UserCallback

from orchestrator.step_report import EVAL_PREFIX, StepReport, run_report
from orchestrator.storage import Location, read_bytes

if TYPE_CHECKING:
    from orchestrator.spec import ExperimentSpec
    from orchestrator.summary import RunSummary

URI_ENV = "MLFLOW_TRACKING_URI"
#: Tags that find a run's MLflow run again: the orchestrator's run id, a search's id.
RUN_TAG, SEARCH_TAG = "orchestrator.run_id", "orchestrator.tune_id"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: nests a trial under its search
#: MLflow's limits on a param's value and on the entries of one ``log_batch`` call.
PARAM_VALUE_LIMIT, BATCH_LIMIT = 6000, 100


@dataclass(frozen=True)
class MlflowTarget:
    """Where to log: a tracking URI and an experiment name (picklable, for Ray)."""

    uri: str
    experiment: str

    @classmethod
    def of(cls, spec: ExperimentSpec) -> MlflowTarget | None:
        """The spec's MLflow, or ``$MLFLOW_TRACKING_URI``'s; None: no tracking."""
        mlflow = spec.tracking.mlflow
        uri = (mlflow.uri if mlflow else None) or os.environ.get(URI_ENV)
        if not uri:
            return None
        return cls(uri, (mlflow.experiment if mlflow else None) or spec.name)

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri)


def metric_key(name: str) -> str:
    """A report's metric name as MLflow accepts it (no ``@``: ``ndcg@10`` → ``ndcg_at_10``)."""
    return name.replace("@", "_at_")


def spec_params(spec: ExperimentSpec) -> dict[str, str]:
    """The resolved spec as flat params: ``train.lr`` → ``2e-05``; lists and maps as JSON."""
    params: dict[str, str] = {}

    def flatten(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                flatten(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            params[prefix] = text[:PARAM_VALUE_LIMIT]

    flatten("", spec.model_dump(mode="json", exclude={"tracking"}))
    return params


def start_run(
    target: MlflowTarget,
    spec: ExperimentSpec,
    parent: str | None = None,
    search: str | None = None,
) -> str:
    """The MLflow run of ``spec`` (or of the search ``search``): found again by its tag, or
    created with the spec as params; the MLflow run id."""
    from mlflow.entities import Param, RunTag

    client = target.client()
    experiment = client.get_experiment_by_name(target.experiment)
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment(target.experiment)
    )
    tag, value = (SEARCH_TAG, search) if search else (RUN_TAG, spec.run_id)
    found = client.search_runs([experiment_id], filter_string=f"tags.`{tag}` = '{value}'")
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    tags = {tag: value, "orchestrator.experiment": spec.name}
    if parent:
        tags[PARENT_TAG] = parent
    name = f"{spec.name}-{search}" if search else f"{spec.name}-{spec.run_id}"
    run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    params = [Param(k, v) for k, v in spec_params(spec).items()]
    for start in range(0, len(params), BATCH_LIMIT):
        client.log_batch(run_id, params=params[start : start + BATCH_LIMIT])
    client.log_batch(run_id, tags=[RunTag("orchestrator.spec_hash", spec.hash())])
    return run_id


def report_metrics(report: StepReport) -> dict[str, float]:
    """A training report's numeric figures under their MLflow names."""
    figures = {
        f"train/{name}": float(value)
        for name, value in report.to_metrics().items()
        if not name.startswith(EVAL_PREFIX)
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and name not in ("step", "time")
    }
    figures.update({metric_key(EVAL_PREFIX + k): float(v) for k, v in report.evaluation.items()})
    return figures


def log_metrics(client, run_id: str, figures: dict[str, float], step: int = 0) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(metric_key(k), v, now, step) for k, v in figures.items()]
    for start in range(0, len(metrics), BATCH_LIMIT):
        client.log_batch(run_id, metrics=metrics[start : start + BATCH_LIMIT])


class MlflowReports(UserCallback):
    """Each training report of a run as MLflow metrics at its step (in Ray Train's controller)."""

    def __init__(self, target: MlflowTarget, run_id: str) -> None:
        self.target, self.run_id = target, run_id
        self._client = None

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        if self._client is None:  # created here, in the controller process
            self._client = self.target.client()
        report = run_report([StepReport.from_metrics(m) for m in metrics])
        log_metrics(self._client, self.run_id, report_metrics(report), report.step)


def finish_run(
    target: MlflowTarget, run_id: str, summary: RunSummary, run: Location, files: list[str]
) -> None:
    """A finished run's figures, verdict and files (paths under ``run``) into its MLflow run."""
    from mlflow.entities import RunTag

    client = target.client()
    figures = {f"baseline/{k}": v for k, v in summary.baseline.items()}
    figures.update({f"finetuned/{k}": v for k, v in summary.finetuned.items()})
    verdict = summary.verdict
    figures["verdict/delta"] = verdict.delta
    if verdict.interval:
        figures["verdict/interval_low"], figures["verdict/interval_high"] = verdict.interval
    if verdict.guard:
        figures["guard/delta"] = verdict.guard.delta
    log_metrics(client, run_id, figures, summary.steps)
    tags = {"verdict": verdict.outcome, "improved": str(verdict.improved).lower()}
    if verdict.guard:
        tags["forgot"] = str(verdict.guard.forgot).lower()
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    log_files(client, run_id, run, files)
    client.set_terminated(run_id, "FINISHED")


def log_files(client, run_id: str, folder: Location, files: list[str]) -> None:
    """Files of a run or search folder (local or in object storage) as MLflow artifacts."""
    with tempfile.TemporaryDirectory() as scratch:
        for name in files:
            try:
                data = read_bytes(folder.join(name))
            except FileNotFoundError:  # e.g. no model card: the export failed
                continue
            local = Path(scratch, name.replace("/", "_"))  # model/README.md → model_README.md
            local.write_bytes(data)
            client.log_artifact(run_id, str(local))


class RunTracking:
    """One orchestrator run's (or search's) MLflow run, while it goes on."""

    def __init__(self, target: MlflowTarget, run_id: str) -> None:
        self.target, self.run_id = target, run_id

    def callbacks(self) -> list[UserCallback]:
        return [MlflowReports(self.target, self.run_id)]

    def log(self, figures: dict[str, float], step: int = 0) -> None:
        log_metrics(self.target.client(), self.run_id, figures, step)

    def finished(self, summary: RunSummary | None, folder: Location, files: list[str]) -> None:
        """The run ended: its summary's figures (if it has one: a search's trials do not) and
        ``files`` of ``folder``, then FINISHED."""
        if summary is not None:
            finish_run(self.target, self.run_id, summary, folder, files)
            return
        client = self.target.client()
        log_files(client, self.run_id, folder, files)
        client.set_terminated(self.run_id, "FINISHED")


class NoTracking(RunTracking):
    """No tracker configured: every call does nothing."""

    def __init__(self) -> None:
        self.target, self.run_id = None, None

    def callbacks(self) -> list[UserCallback]:
        return []

    def log(self, figures: dict[str, float], step: int = 0) -> None:
        return None

    def finished(self, summary: RunSummary | None, folder: Location, files: list[str]) -> None:
        return None


@contextmanager
def tracked(
    spec: ExperimentSpec,
    parent: str | None = None,
    search: str | None = None,
    target: MlflowTarget | None = None,
) -> Iterator[RunTracking]:
    """The MLflow run of ``spec`` (``NoTracking`` without a tracker) for the ``with`` block; an
    exception leaves it FAILED (KILLED for an interrupt). ``parent``: the search's MLflow run;
    ``target``: where the search logs (a trial's process may not have its environment)."""
    target = target or MlflowTarget.of(spec)
    if target is None:
        yield NoTracking()
        return
    tracking = RunTracking(target, start_run(target, spec, parent, search))
    try:
        yield tracking
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        target.client().set_terminated(tracking.run_id, status)
        raise


@dataclass(frozen=True)
class TrialTracking:
    """How the trials of a search log: each as a child of the search's MLflow run (picklable:
    Tune hands it to every trial)."""

    target: MlflowTarget | None
    parent: str | None

    @classmethod
    def under(cls, search: RunTracking) -> TrialTracking:
        return cls(search.target, search.run_id)

    def tracked(self, spec: ExperimentSpec) -> AbstractContextManager[RunTracking]:
        if self.target is None:
            return nullcontext(NoTracking())
        return tracked(spec, parent=self.parent, target=self.target)
