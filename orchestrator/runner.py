"""spec → datasets + TorchTrainer.fit() + export + evaluation of the base and tuned models.

This and :mod:`orchestrator.train_loop` are the only modules that know Ray Train. The driver
is cheap (it runs on a head node or a laptop); anything that loads the model — export and
the evaluation of both models — runs as a Ray task with a worker's resources.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import ray.data
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    FailureConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchTrainer

from orchestrator.assets import resolve_model
from orchestrator.checkpoints import checkpoint_at
from orchestrator.data.compile import CompiledData, compile_sources
from orchestrator.data.sources import SourceReport
from orchestrator.estimate import total_steps
from orchestrator.lease import LEASE_FILE, RunLease
from orchestrator.monitor import Display, RunMonitor, interactive_display, read_history
from orchestrator.preflight import preflight
from orchestrator.published import without_home
from orchestrator.spec import ExperimentSpec, load_spec
from orchestrator.storage import (
    Location,
    arrow_storage,
    read_text,
    remove_tree,
    write_bytes,
    write_text,
)
from orchestrator.verdict import Evaluation

log = logging.getLogger("orchestrator")
REPORT_FILE = "report.html"

#: Environment of the training workers. Ray Train runs the training function in a thread of
#: its own, and glibc gives such a thread its own malloc arena, which hands freed memory back
#: to the kernel and faults it in again at every step: 2.3x the page faults and 6 % more time
#: per CPU step than in the main thread (``bench/malloc_arenas.py``). With one arena per
#: process the step's activations stay mapped: Ray's per-step overhead fell from 14 % to 3 %.
WORKER_ENV = {"MALLOC_ARENA_MAX": "1"}


@dataclass
class RunResult:
    """What a finished run produced; ``summary`` is exactly what ``summary.json`` holds."""

    run_id: str
    run_uri: str
    model_uri: str
    summary: dict[str, Any] = field(repr=False)

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
        return self.summary["baseline"]

    @property
    def finetuned(self) -> dict[str, float]:
        return self.summary["finetuned"]

    @property
    def improved(self) -> bool:
        return self.summary["verdict"]["improved"]


def run_location(spec: ExperimentSpec) -> Location:
    return Location.of(spec.storage).join(spec.name, spec.run_id)


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
    summary: dict,
    baseline: Evaluation | None,
) -> dict[str, Any]:
    """:func:`orchestrator.finalize.finalize` in a task with a training worker's resources.

    The base model is evaluated there, after training, rather than before it: the first step
    comes that much sooner (bench/RESULTS.md) and a run's wall time is the same.
    """
    from orchestrator.finalize import finalize

    spec = ExperimentSpec.model_validate(spec_json)
    return finalize(spec, model_path, checkpoint, run, summary, baseline)


def _remote_options(spec: ExperimentSpec) -> dict[str, float]:
    return {"num_cpus": spec.scaling.cpus_per_worker, "num_gpus": spec.scaling.gpus_per_worker}


def ensure_ray() -> None:
    """Connect to the Ray of ``$RAY_ADDRESS`` (a job's cluster) or start a local one.

    A local instance serves its dashboard on 127.0.0.1 only: the job API runs code for
    whoever reaches it.
    """
    if not ray.is_initialized():
        ray.init(log_to_driver=True, configure_logging=False, dashboard_host="127.0.0.1")
    _configure_ray_data()
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # one line per dataset: too chatty


def _configure_ray_data() -> None:
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    # Blocks in input order, not in the order their tasks finish: what is stored, and so what
    # `max_rows` keeps and what a run trains on, must not depend on task timing.
    context.execution_options.preserve_order = True


def prepare_data(spec: ExperimentSpec, model_path: str) -> CompiledData:
    """Every source compiled to token-id fragments (or found compiled), rows checked."""
    data = compile_sources(spec, model_path)
    _check_rows(spec, data.reports)
    return data


def evaluate_baseline(spec: ExperimentSpec, model_path: str) -> Evaluation:
    """The base model on the held-out set, in a task with a training worker's resources."""
    task = _evaluate_task.options(**_remote_options(spec))
    baseline = ray.get(task.remote(spec.model_dump(mode="json"), model_path))
    log.info("baseline %s = %.4f", spec.eval.main_metric, baseline.metrics[spec.eval.main_metric])
    return baseline


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
        return _run_holding(spec, location, resume_from, fresh)


def _run_holding(
    spec: ExperimentSpec, location: Location, resume_from: str | None, fresh: bool
) -> RunResult:
    """:func:`run`, once this driver holds the run folder's lease."""
    if not fresh and resume_from is None and (done := finished_summary(location)):
        log.info("%s finished earlier in %s (--fresh trains it again)", spec.name, location.uri)
        return RunResult(spec.run_id, location.uri, done["model_uri"], done)
    started = time.time()
    model_path = resolve_model(spec.model.base)
    if fresh and (removed := remove_tree(location, keep=frozenset({LEASE_FILE}))):
        log.warning("--fresh: deleted %d file(s) of the earlier run in %s", removed, location.uri)
    write_text(location.join("spec.yaml"), spec.published_yaml())
    ensure_ray()

    data = prepare_data(spec, model_path)
    t0 = time.time()
    start = Location(resume_from, *location.connection) if resume_from else None
    steps = total_steps(spec, data.rows)
    display = interactive_display()
    result = build_trainer(spec, model_path, steps, data, start, display=display).fit()
    train_s = time.time() - t0
    if result.checkpoint is None:
        raise RuntimeError(f"training finished without a checkpoint in {location.uri}")
    metrics = result.metrics or {}
    # Reported here: the step the workers resumed at (an earlier one than the latest if that
    # checkpoint was damaged). Else nothing was left to train: the checkpoint's own step.
    trained_here = metrics.get("time", 0) >= t0
    resumed_from = metrics["resumed_from_step"] if trained_here else metrics["step"]
    summary = finish(
        spec,
        model_path,
        result.checkpoint,
        metrics,
        data.reports,
        baseline=None,
        resumed_from_step=resumed_from,
        timings={"data": data.seconds, "train": train_s},
    )
    summary["timings_s"]["total"] = round(time.time() - started, 2)
    write_outputs(location, summary)
    return RunResult(spec.run_id, location.uri, summary["model_uri"], summary)


def finish(
    spec: ExperimentSpec,
    model_path: str,
    checkpoint: Checkpoint,
    metrics: dict[str, Any],
    reports: list[SourceReport],
    baseline: Evaluation | None,
    resumed_from_step: int,
    timings: dict[str, float],
) -> dict[str, Any]:
    """After training: export the checkpoint, evaluate it and the base model (unless
    ``baseline`` is known), publish it; the run's summary.

    ``metrics`` are those reported with ``checkpoint``. Shared by ``run`` and by a search's
    best trial, so both publish exactly the same artifacts.
    """
    location = run_location(spec)
    summary = {
        "run_id": spec.run_id,
        "name": spec.name,
        "spec_hash": spec.hash(),
        "base_model": spec.model.base,
        "steps": metrics.get("step"),
        "resumed_from_step": resumed_from_step,
        "restores": metrics.get("restores", 0),
        "stream_digests": metrics.get("stream_digests"),
        "pairs_seen": metrics.get("pairs_seen"),
        "source_steps": metrics.get("source_steps"),
        "negatives_per_query": metrics.get("negatives_per_query")
        or spec.loss.negatives_per_query(spec.per_worker_batch_size, spec.scaling.num_workers, 0),
        "trainable_params": metrics.get("trainable_params"),
        "total_params": metrics.get("total_params"),
        "final_loss": metrics.get("loss"),
        "sources": {
            r.name: {"rows": r.rows, "bad_rows": r.bad_rows, "examples": r.lines()} for r in reports
        },
        "checkpoint": _uri_of(checkpoint, location),
    }
    task = _export_task.options(**_remote_options(spec))
    spec_json = spec.model_dump(mode="json")
    outcome = ray.get(task.remote(spec_json, model_path, checkpoint, location, summary, baseline))
    timings = {**timings, **outcome.pop("timings")}
    summary.update(outcome)
    if baseline is None:
        log.info(
            "baseline %s = %.4f", spec.eval.main_metric, summary["baseline"][spec.eval.main_metric]
        )
    timings["total"] = sum(timings.values())  # the phases; `run` replaces it with wall time
    summary["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    return summary


def finished_summary(run: Location) -> dict[str, Any] | None:
    """The summary of a run that finished in this folder; None if none (or a torn one)."""
    try:
        summary = json.loads(read_text(run.join("summary.json")))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        log.warning("%s/summary.json is torn: finishing the run again", run.uri)
        return None
    return summary if isinstance(summary, dict) and "model_uri" in summary else None


def write_outputs(run: Location, summary: dict[str, Any]) -> None:
    """A finished run's own files: ``summary.json``, ``report.html`` and TensorBoard logs."""
    import tempfile

    from orchestrator.report import render_html, write_tensorboard

    write_text(run.join("summary.json"), without_home(json.dumps(summary, indent=2)))
    history = read_history(run)
    write_text(run.join(REPORT_FILE), without_home(render_html(history, summary)))
    remove_tree(run.join("tensorboard"))  # a rerun's events would repeat every scalar
    with tempfile.TemporaryDirectory() as scratch:
        if write_tensorboard(history, Path(scratch)) is None:
            log.info("tensorboardX is not installed: no TensorBoard logs for this run")
            return
        for path in Path(scratch).rglob("*"):
            if path.is_file():
                target = run.join("tensorboard", str(path.relative_to(scratch)))
                write_bytes(target, path.read_bytes())


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's entry point in every worker.

    The recipe's imports (torch's model stack, transformers, sentence-transformers: about
    4 s) happen here, in the worker; the driver, which only submits and watches, never pays
    them (``bench/RESULTS.md``, start-up).
    """
    from orchestrator.train_loop import train_loop_per_worker

    train_loop_per_worker(config)


def build_trainer(
    spec: ExperimentSpec,
    model_path: str,
    steps: int,
    data: CompiledData,
    start: Location | None,
    callbacks: list | None = None,
    display: Display = "none",
) -> TorchTrainer:
    """The run's ``TorchTrainer``; every report feeds a :class:`RunMonitor` and ``callbacks``.

    The workers read ``data``'s compiled fragments themselves, each rank its own share
    (:mod:`orchestrator.data.feed`): Ray Train is given no datasets.

    ``display`` is how the monitor shows progress (a search shows Tune's table instead).
    """
    # Ray Train moves workers into a scratch folder by default; keep the driver's working
    # directory, which the spec's relative paths (and a job's shipped inputs) are relative to.
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    monitor = RunMonitor(spec.run_id, spec.name, run_location(spec), display)
    storage_path, filesystem = arrow_storage(Location.of(spec.storage).join(spec.name))
    return TorchTrainer(
        train_worker,
        train_loop_config={
            "spec": spec.model_dump(mode="json"),
            "model_path": model_path,
            "total_steps": steps,
            "compiled": {name: source.location for name, source in data.sources.items()},
            "resume_from": checkpoint_at(start) if start else None,
        },
        scaling_config=ScalingConfig(
            num_workers=spec.scaling.num_workers,
            use_gpu=spec.scaling.use_gpu,
            resources_per_worker={
                "CPU": spec.scaling.cpus_per_worker,
                **({"GPU": spec.scaling.gpus_per_worker} if spec.scaling.use_gpu else {}),
            },
        ),
        run_config=RunConfig(
            name=spec.run_id,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=spec.storage.keep_checkpoints),
            failure_config=FailureConfig(max_failures=spec.scaling.max_failures),
            callbacks=[monitor, *(callbacks or [])],
            worker_runtime_env={"env_vars": WORKER_ENV},
        ),
    )


def _uri_of(checkpoint: Checkpoint, location: Location) -> str:
    return f"s3://{checkpoint.path}" if location.is_remote else checkpoint.path


def _check_rows(spec: ExperimentSpec, reports: list[SourceReport]) -> None:
    for report in reports:
        if report.rows < spec.train.batch_size:
            raise ValueError(
                f"data.sources.{report.name}: {report.rows} usable row(s) cannot fill one global "
                f"batch of train.batch_size={spec.train.batch_size}"
            )
