"""``run``: spec → compiled data → ``TorchTrainer.fit()`` → export, judged against the base.

The driver is cheap (it runs on a head node or a laptop): training runs in Ray Train's
workers (:mod:`orchestrator.trainer`), and anything else that loads the model (export and
the evaluation of both models, :mod:`orchestrator.finalize`) runs as a Ray task with a
worker's resources. ``tune`` (:mod:`orchestrator.tuning`) shares the prologue and the end.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray.train import Checkpoint

from orchestrator.assets import resolve_model
from orchestrator.data.compile import CompiledData, compile_sources
from orchestrator.data.sources import SourceReport
from orchestrator.estimate import total_steps
from orchestrator.layout import (
    LEASE_FILE,
    MODEL_DIR,
    REJECTED_DIR,
    REPORT_FILE,
    SPEC_FILE,
    SUMMARY_FILE,
    TENSORBOARD_DIR,
    run_location,
)
from orchestrator.lease import RunLease
from orchestrator.monitor import interactive_display, read_history
from orchestrator.preflight import preflight
from orchestrator.published import without_home
from orchestrator.ray_init import ensure_ray, task_resources
from orchestrator.spec import ExperimentSpec, load_spec
from orchestrator.step_report import StepReport
from orchestrator.storage import Location, remove_tree, write_bytes, write_text
from orchestrator.summary import (
    Judgement,
    RunSummary,
    SourceCounts,
    Trained,
    read_run_summary,
    write_summary,
)
from orchestrator.tracking import tracked
from orchestrator.trainer import build_trainer
from orchestrator.verdict import Evaluation

log = logging.getLogger("orchestrator")


@dataclass
class RunResult:
    """What a finished run produced; ``summary`` is what its ``summary.json`` holds."""

    run_id: str
    run_uri: str
    model_uri: str
    summary: RunSummary = field(repr=False)

    @classmethod
    def of(cls, run: Location, summary: RunSummary) -> RunResult:
        return cls(summary.run_id, run.uri, summary.model_uri, summary)

    @property
    def run_dir(self) -> Path:
        """The run folder, for runs stored locally."""
        return Location(self.run_uri).path

    @property
    def model_dir(self) -> Path:
        """The exported model folder, for runs stored locally (else: ``orchestrator pull``)."""
        return Location(self.model_uri).path

    @property
    def baseline(self) -> dict[str, float]:
        return self.summary.baseline

    @property
    def finetuned(self) -> dict[str, float]:
        return self.summary.finetuned

    @property
    def improved(self) -> bool:
        return self.summary.improved


def run(
    spec: ExperimentSpec | str | Path | dict,
    overrides: list[str] | None = None,
    resume_from: str | None = None,
    fresh: bool = False,
) -> RunResult:
    """Run one experiment end to end and return its summary (also written to the run folder).

    ``resume_from`` names a checkpoint (folder or ``s3://`` URI) to continue from: its step,
    optimizer and mixture positions. A run whose own folder already holds checkpoints resumes
    from the latest of them, unless ``fresh`` deletes that folder first. A run that already
    finished there (its ``summary.json``) returns that result, without starting Ray.
    """
    spec = load_spec(spec, overrides)
    preflight(spec)
    location = run_location(spec)
    with RunLease(location):
        if not fresh and resume_from is None and (done := read_run_summary(location)):
            log.info("%s finished earlier in %s (--fresh trains it again)", spec.name, location.uri)
            return RunResult.of(location, done)
        ready = start(spec, location, fresh)
        with tracked(spec) as tracking:
            t0 = time.time()
            begin = Location(resume_from, *location.connection) if resume_from else None
            steps = total_steps(spec, ready.data.rows)
            callbacks = tracking.callbacks()
            display = interactive_display()
            trainer = build_trainer(
                spec, ready.model_path, steps, ready.data, begin, callbacks, display
            )
            fitted = trainer.fit()
            if fitted.checkpoint is None:
                raise RuntimeError(f"training finished without a checkpoint in {location.uri}")
            final = StepReport.from_metrics(fitted.metrics or {})
            # The step the workers resumed at (an earlier one than the latest if that
            # checkpoint was damaged); if nothing was left to train, the checkpoint's own step.
            resumed_from = final.resumed_from_step if final.time >= t0 else final.step
            summary = finish(
                spec,
                ready,
                fitted.checkpoint,
                final,
                resumed_from_step=resumed_from,
                train_s=time.time() - t0,
                baseline=None,
                wall_since=ready.started,
            )
            write_outputs(location, summary)
            tracking.finished(summary, location, run_files(summary))
        return RunResult.of(location, summary)


@dataclass(frozen=True)
class Started:
    """What ``run`` and ``tune`` have once their shared prologue is done."""

    model_path: str
    data: CompiledData
    started: float  # epoch seconds: the run's or search's wall time counts from here


def start(
    spec: ExperimentSpec,
    folder: Location,
    fresh: bool,
    also_fresh: Sequence[Location] = (),
    what: str = "run",
) -> Started:
    """The prologue of a run or a search, once this driver holds ``folder``'s lease.

    Resolve the base model; with ``fresh``, delete the earlier ``what`` in ``folder`` (and
    ``also_fresh``: a search's trial runs); write the spec; start Ray; compile the sources.
    """
    started = time.time()
    model_path = resolve_model(spec.model.base)
    if fresh:
        removed = remove_tree(folder, keep=frozenset({LEASE_FILE}))
        removed += sum(remove_tree(other) for other in also_fresh)
        if removed:
            log.warning("--fresh: deleted %d file(s) of the earlier %s", removed, what)
    write_text(folder.join(SPEC_FILE), spec.published_yaml())
    ensure_ray()
    return Started(model_path, prepare_data(spec, model_path), started)


def prepare_data(spec: ExperimentSpec, model_path: str) -> CompiledData:
    """Every source compiled to token-id fragments (or found compiled), rows checked."""
    data = compile_sources(spec, model_path)
    for report in data.reports:
        if report.rows < spec.train.batch_size:
            raise ValueError(
                f"data.sources.{report.name}: {report.rows} usable row(s) cannot fill one global "
                f"batch of train.batch_size={spec.train.batch_size}"
            )
    return data


def evaluate_baseline(spec: ExperimentSpec, model_path: str) -> Evaluation:
    """The base model on the held-out set, in a task with a training worker's resources."""
    task = _evaluate_task.options(**task_resources(spec))
    baseline = ray.get(task.remote(spec.model_dump(mode="json"), model_path))
    log.info("baseline %s = %.4f", spec.eval.main_metric, baseline.metrics[spec.eval.main_metric])
    return baseline


def finish(
    spec: ExperimentSpec,
    ready: Started,
    checkpoint: Checkpoint,
    final: StepReport,
    resumed_from_step: int,
    train_s: float,
    baseline: Evaluation | None,
    wall_since: float | None = None,
) -> RunSummary:
    """After training: export the checkpoint, evaluate it and the base model (unless
    ``baseline`` is known), publish it; the run's summary.

    ``final`` is the report that came with ``checkpoint``. Shared by ``run`` and by a search's
    best trial, so both publish exactly the same artifacts. The total time is the wall time
    since ``wall_since``, or else the sum of the phases (a trial of a search).
    """
    location = run_location(spec)
    reports = ready.data.reports
    trained = trained_facts(spec, final, resumed_from_step, reports, checkpoint, location)
    task = _export_task.options(**task_resources(spec))
    spec_json = spec.model_dump(mode="json")
    args = (spec_json, ready.model_path, checkpoint, location, trained, baseline)
    judgement, export_timings = ray.get(task.remote(*args))
    if baseline is None:
        main = spec.eval.main_metric
        log.info("baseline %s = %.4f", main, judgement.baseline[main])
    timings = {"data": ready.data.seconds, "train": train_s, **export_timings}
    timings["total"] = time.time() - wall_since if wall_since else sum(timings.values())
    rounded = {phase: round(seconds, 2) for phase, seconds in timings.items()}
    return RunSummary.of(trained, judgement, rounded)


def trained_facts(
    spec: ExperimentSpec,
    final: StepReport,
    resumed_from_step: int,
    reports: list[SourceReport],
    checkpoint: Checkpoint,
    location: Location,
) -> Trained:
    """The training half of a run's summary, from the report of its final checkpoint."""
    negatives = final.negatives_per_query or spec.loss.negatives_per_query(
        spec.per_worker_batch_size, spec.scaling.num_workers, 0
    )
    return Trained(
        run_id=spec.run_id,
        name=spec.name,
        spec_hash=spec.hash(),
        base_model=spec.model.base,
        steps=final.step,
        resumed_from_step=resumed_from_step,
        restores=final.restores,
        stream_digests=final.stream_digests,
        pairs_seen=final.pairs_seen,
        source_steps=final.source_steps,
        negatives_per_query=negatives,
        trainable_params=final.trainable_params,
        total_params=final.total_params,
        final_loss=final.loss,
        sources={
            r.name: SourceCounts(rows=r.rows, bad_rows=r.bad_rows, examples=r.lines())
            for r in reports
        },
        checkpoint=f"s3://{checkpoint.path}" if location.is_remote else checkpoint.path,
    )


def run_files(summary: RunSummary) -> list[str]:
    """A finished run's files that trackers keep: its summary, report page and model card."""
    model = REJECTED_DIR if summary.rejected else MODEL_DIR
    return [SUMMARY_FILE, REPORT_FILE, f"{model}/README.md"]


def write_outputs(run: Location, summary: RunSummary) -> None:
    """A finished run's own files: ``summary.json``, ``report.html`` and TensorBoard logs."""
    from orchestrator.report import render_html, write_tensorboard

    write_summary(run, summary)
    history = read_history(run)
    write_text(run.join(REPORT_FILE), without_home(render_html(history, summary)))
    remove_tree(run.join(TENSORBOARD_DIR))  # a rerun's events would repeat every scalar
    with tempfile.TemporaryDirectory() as scratch:
        if write_tensorboard(history, Path(scratch)) is None:
            log.info("tensorboardX is not installed: no TensorBoard logs for this run")
            return
        for path in Path(scratch).rglob("*"):
            if path.is_file():
                target = run.join(TENSORBOARD_DIR, str(path.relative_to(scratch)))
                write_bytes(target, path.read_bytes())


@ray.remote
def _evaluate_task(spec_json: dict, model_path: str) -> Evaluation:
    from orchestrator.finalize import evaluate_model

    return evaluate_model(ExperimentSpec.model_validate(spec_json), model_path)


@ray.remote
def _export_task(
    spec_json: dict,
    model_path: str,
    checkpoint: Checkpoint,
    run: Location,
    trained: Trained,
    baseline: Evaluation | None,
) -> tuple[Judgement, dict[str, float]]:
    """:func:`orchestrator.finalize.finalize` in a task with a training worker's resources.

    The base model is evaluated there, after training, rather than before it: the first step
    comes that much sooner (bench/RESULTS.md) and a run's wall time is the same.
    """
    from orchestrator.finalize import finalize

    spec = ExperimentSpec.model_validate(spec_json)
    return finalize(spec, model_path, checkpoint, run, trained, baseline)
