"""Ray Tune over the spec itself: each trial is ``run`` of the spec with sampled overrides.

Ray Train V2 has no ``Tuner(trainer)``. Each trial is a small function that builds and fits
the same TorchTrainer as ``run`` (:func:`orchestrator.trainer.build_trainer`), with a
callback that forwards its evaluations to Tune. A trial's spec is the base spec with the
sampled values, so a trial *is* a run: it trains into ``<storage>/<name>/<run id>/``, resumes
from its own checkpoints after an interruption, and ``orchestrator run SPEC key=value ...``
with the same values finds it already trained.

What does not depend on the sampled values is done once for all trials: compiling the
sources, and evaluating the base model (the baseline every trial is compared
with). :data:`orchestrator.spec.SEARCHABLE` keeps the search away from everything else.

Population-based training (``tune.scheduler: pbt``) is the exception to "a trial is a run":
Ray Tune's :class:`~ray.tune.schedulers.PopulationBasedTraining` restarts a trailing trial
from a leading trial's checkpoint with mutated values, so its weights are no run's. Such a
trial trains in the search's own folder (:func:`orchestrator.search_space.pbt_trial_spec`)
and records its lineage (:func:`_run_pbt_trial`).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import ray
from ray import tune as ray_tune
from ray.train.v2.api.callback import UserCallback
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler
from ray.util.queue import Empty, Queue

from orchestrator.checkpoints import checkpoint_at, latest_checkpoint
from orchestrator.data.compile import CompiledData
from orchestrator.errors import SearchInterrupted
from orchestrator.estimate import total_steps
from orchestrator.layout import (
    RESULTS_CSV,
    RESULTS_MD,
    RESULTS_PLOT,
    SPEC_FILE,
    SUMMARY_FILE,
    TRIAL_PARAMS_FILE,
    run_location,
    tune_id,
    tune_location,
)
from orchestrator.lease import RunLease
from orchestrator.preflight import preflight
from orchestrator.runner import (
    RunResult,
    Started,
    evaluate_baseline,
    finish,
    run_files,
    start,
    write_outputs,
)
from orchestrator.search_space import (
    Exploit,
    check_space,
    exploit_record,
    pbt_trial_spec,
    trial_spec,
)
from orchestrator.spec import ExperimentSpec, SearchDomain, SpecError, TuneSpec, load_spec
from orchestrator.storage import Location, arrow_storage, list_keys, read_text, write_text
from orchestrator.summary import SearchSummary, read_run_summary, write_summary
from orchestrator.tracking import TrialTracking, tracked
from orchestrator.trainer import build_trainer
from orchestrator.tune_report import (
    LINEAGE,
    REUSED,
    SKIPPED,
    TrialRow,
    trial_rows,
    write_report,
)
from orchestrator.verdict import Evaluation

log = logging.getLogger("orchestrator")


@dataclass
class TuneResult:
    """What a finished search produced; ``summary`` is what the search's ``summary.json`` holds."""

    tune_uri: str
    rows: list[TrialRow]
    table: str  # results.md
    best: RunResult | None
    summary: SearchSummary = field(repr=False)


def tune(
    spec: ExperimentSpec | str | Path | dict,
    overrides: list[str] | None = None,
    fresh: bool = False,
) -> TuneResult:
    """Search the spec's ``tune.space``; export the best trial exactly as ``run`` would.

    Calling it again for the same spec continues an interrupted search (finished trials are
    kept, unfinished ones resume from their checkpoints); ``fresh`` deletes it first.
    """
    base = load_spec(spec, overrides)
    if base.tune is None:
        raise SpecError(["tune: the spec has no tune section (metric, space, ...)"], base.name)
    preflight(base)
    candidates = check_space(base)
    location = tune_location(base)
    with RunLease(location, what="search"):
        return _tune_holding(base, candidates, location, fresh)


def _tune_holding(
    base: ExperimentSpec, candidates: list[ExperimentSpec], location: Location, fresh: bool
) -> TuneResult:
    """:func:`tune`, once this driver holds the search folder's lease."""
    trials = recorded_trial_runs(base, location) if fresh else []  # before the folder goes
    ready = start(base, location, fresh, also_fresh=trials, what="search and its trial runs")
    with tracked(base, search=tune_id(base)) as tracking:
        t0 = time.time()
        trials_log = TrialTracking.under(tracking)
        grid = _tuner(base, location, ready, candidates, trials_log).fit()
        search_s = time.time() - t0
        # The base model is evaluated after the search: the trials start sooner.
        baseline = evaluate_baseline(base, ready.model_path)

        rows = trial_rows(grid, base, lambda row: trial_run_spec(base, row).run_id)
        table = write_report(location, base, rows, baseline.metrics)
        ended, expected = grid.num_terminated + grid.num_errors, expected_trials(base.tune)
        out_of_time = base.tune.time_budget_s and search_s >= base.tune.time_budget_s
        if ended < expected and not out_of_time:
            raise SearchInterrupted(
                f"search {tune_id(base)} stopped with {ended} of {expected} trials ended; run "
                "`orchestrator tune` on the same spec again to continue it (results so far: "
                f"{location.join(RESULTS_MD).uri})"
            )
        best_row = next((r for r in rows if r.finished), None)
        best = _publish(base, best_row, ready, baseline, trials_log) if best_row else None
        summary = SearchSummary(
            tune_id=tune_id(base),
            name=base.name,
            metric=base.tune.metric,
            mode=base.tune.mode,
            baseline=baseline.metrics,
            trials=[row.as_dict() for row in rows],
            best=best_row.as_dict() if best_row else None,
            best_run_uri=best.run_uri if best else None,
            best_model_uri=best.model_uri if best else None,
            verdict=best.summary.verdict if best else None,
            timings_s={
                "data": round(ready.data.seconds, 2),
                "search": round(search_s, 2),
                "total": round(time.time() - ready.started, 2),
            },
        )
        write_summary(location, summary)
        figures = {f"baseline/{k}": v for k, v in baseline.metrics.items()}
        if best_row and best_row.metric is not None:
            figures[f"best/{base.tune.metric}"] = best_row.metric
        tracking.log(figures)
        tracking.finished(None, location, [RESULTS_CSV, RESULTS_MD, RESULTS_PLOT, SUMMARY_FILE])
    return TuneResult(location.uri, rows, table, best, summary)


def _publish(
    base: ExperimentSpec,
    row: TrialRow,
    ready: Started,
    baseline: Evaluation,
    trials_log: TrialTracking,
) -> RunResult:
    """Export, evaluate and publish the best trial's final checkpoint, as ``run`` does."""
    spec = trial_run_spec(base, row)
    location = run_location(spec)
    summary = read_run_summary(location)
    if summary is None:
        folder, meta = latest_checkpoint(location)
        with trials_log.tracked(spec) as tracking:
            summary = finish(
                spec,
                ready,
                checkpoint_at(folder),
                meta.metrics,
                resumed_from_step=0,
                train_s=row.time_s or 0.0,
                baseline=baseline,
            )
            write_outputs(location, summary)
            tracking.finished(summary, location, run_files(summary))
    return RunResult.of(location, summary)


def trial_run_spec(base: ExperimentSpec, row: TrialRow) -> ExperimentSpec:
    """The spec a trial's run folder belongs to: a run's, or a population-based trial's."""
    if base.tune.scheduler == "pbt":
        return pbt_trial_spec(base, row.params, row.trial, row.lineage)
    return trial_spec(base, row.params)


def recorded_trial_runs(base: ExperimentSpec, location: Location) -> list[Location]:
    """The run folders of the trials an earlier search recorded (Tune's ``params.json``).

    Trials train in ordinary run folders (an identical run or trial is reused), so starting a
    search over has to delete those too, or its trials would resume from them. A
    population-based search has none: its trials train inside its own folder.
    """
    if base.tune.scheduler == "pbt":
        return []
    runs = []
    for key in list_keys(location):
        if not key.endswith(f"/{TRIAL_PARAMS_FILE}"):
            continue
        try:
            params = base.tune.trial_params(json.loads(read_text(location.join(key))))
            runs.append(run_location(trial_spec(base, params)))
        except (ValueError, KeyError, TypeError):  # torn, foreign or no longer valid: skip
            log.warning("--fresh: could not read the trial of %s", location.join(key).uri)
    return list({run.uri: run for run in runs}.values())


def expected_trials(spec: TuneSpec) -> int:
    """How many trials the search makes: num_samples, times every grid's length."""
    return spec.num_samples * math.prod(len(d.grid) for d in spec.space.values() if d.grid)


# --------------------------------------------------------------------------- one trial


class _EvaluationReports(TuneReportCallback):
    """Forward to Tune only the reports that carry the metric: the evaluations.

    Ray Train also reports every ``log_every`` steps; Tune rejects results without the
    metric it optimizes, and ASHA should compare trials at evaluations only.
    """

    def __init__(self, metric: str) -> None:
        super().__init__()
        self._metric = metric

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if self._metric in metrics[0]:
            super().after_report(run_context, metrics, checkpoint)


def _run_trial(
    config: dict[str, Any],
    base_json: dict[str, Any],
    model_path: str,
    data: CompiledData,
    trials_log: TrialTracking,
) -> None:
    """One Tune trial: the TorchTrainer of ``run`` for the base spec with this trial's values.

    Trials read the search's compiled sources (a trial varies nothing the token ids depend
    on: :data:`orchestrator.spec.SEARCHABLE`); each trial's workers read their own shares.
    """
    base = ExperimentSpec.model_validate(base_json)
    metric = base.tune.metric_key
    params = base.tune.trial_params(config)
    try:
        spec = trial_spec(base, params)
        preflight(spec)
    except SpecError as exc:
        _skip(metric, exc)
        return
    steps = total_steps(spec, data.rows)
    location = run_location(spec)
    write_text(location.join(SPEC_FILE), spec.published_yaml())
    latest = latest_checkpoint(location)
    with trials_log.tracked(spec) as tracking:
        if latest and latest[1].step >= steps and metric in latest[1].reported:
            # An identical trial or run finished before: its final evaluation is the result.
            ray_tune.report({**latest[1].reported, REUSED: True})
        else:
            callbacks = [_EvaluationReports(metric), *tracking.callbacks()]
            build_trainer(spec, model_path, steps, data, None, callbacks).fit()
        tracking.finished(None, location, [])


def _skip(metric: str, exc: SpecError) -> None:
    """End a trial whose values make an invalid spec, saying why in its result."""
    log.warning("skipping %s", exc)
    ray_tune.report({metric: math.nan, "step": 0, SKIPPED: "; ".join(exc.problems)})


# --------------------------------------------------------------------------- one PBT trial


class _PerturbationReports(UserCallback):
    """Hand a population-based trial's evaluations to its trial function, with the
    checkpoint of each perturbation step (where PBT may copy this trial into another).

    Ray Train V2's :class:`TuneReportCallback` gives Tune the metrics only (a checkpoint
    stays Ray Train's), but PBT can only exploit a checkpoint Tune holds: the trial function
    reports it (:func:`_relay`). Runs in Ray Train's controller; ``reports`` holds one item,
    so training waits while Tune is still taking the previous one, as with Tune's callback.
    """

    def __init__(self, metric: str, interval: int, reports: Queue) -> None:
        self._metric, self._interval, self._reports = metric, interval, reports

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if self._metric not in metrics[0]:
            return
        step, last = metrics[0]["step"], metrics[0]["total_steps"]
        # The last step's checkpoint is left out: a trial copied from it would have nothing
        # left to train, and would end with its donor's result as its own.
        exploitable = checkpoint is not None and step % self._interval == 0 and step < last
        self._reports.put((metrics[0], checkpoint if exploitable else None))


def _run_pbt_trial(
    config: dict[str, Any],
    base_json: dict[str, Any],
    model_path: str,
    data: CompiledData,
    trials_log: TrialTracking,
) -> None:
    """One trial of population-based training: :func:`_run_trial`, except where it trains,
    what it starts from and what it reports.

    After an exploit, Tune restarts the trial with the mutated ``config`` and the donor's
    checkpoint (``ray.tune.get_checkpoint``). The trial resumes from it as ``run
    --resume-from`` does: the donor's weights, optimizer moments, step and data positions,
    its own values from there on (the loss is built with the new τ/margin/weights;
    :func:`orchestrator.optimizer.restore_schedule` replaces the schedule's base lr).
    Continuing the donor's step and data position is standard PBT: the population shares one
    clock (``step``), which PBT's perturbation interval counts.
    """
    base = ExperimentSpec.model_validate(base_json)
    metric = base.tune.metric_key
    params = base.tune.trial_params(config)
    trial_id = ray_tune.get_context().get_trial_id()
    start = ray_tune.get_checkpoint()
    lineage = _lineage(start, trial_id, params)
    try:
        spec = pbt_trial_spec(base, params, trial_id, lineage)
        preflight(spec)
    except SpecError as exc:
        _skip(metric, exc)
        return
    location = run_location(spec)
    write_text(location.join(SPEC_FILE), spec.published_yaml())
    origin = _checkpoint_location(start, Location.of(spec.storage)) if start else None
    interval = base.tune.pbt_interval(spec.train.eval_every, spec.train.checkpoint_every)
    reports = Queue(maxsize=1, actor_options={"num_cpus": 0})
    with trials_log.tracked(spec) as tracking:
        callbacks = [_PerturbationReports(metric, interval, reports), *tracking.callbacks()]
        steps = total_steps(spec, data.rows)
        trainer = build_trainer(spec, model_path, steps, data, origin, callbacks)
        _relay(trainer, reports, {"trial": trial_id, "params": params, LINEAGE: lineage})
        tracking.finished(None, location, [])


def _lineage(start: ray_tune.Checkpoint | None, trial_id: str, params: dict) -> list[Exploit]:
    """The exploits behind the weights a trial starts from: the donor's, and this one.

    A trial restarted from its own checkpoint (a search continued after an interruption)
    keeps its lineage, and finds its segment's run folder again.
    """
    if start is None:
        return []
    donor = start.get_metadata()
    if donor["trial"] == trial_id:
        return donor[LINEAGE]
    return [*donor[LINEAGE], exploit_record(donor["trial"], donor["step"], donor["params"], params)]


def _checkpoint_location(checkpoint: ray_tune.Checkpoint, storage: Location) -> Location:
    """A checkpoint in the search's storage as a :class:`Location` (Tune gives a path)."""
    return Location(
        f"s3://{checkpoint.path}" if storage.is_remote else checkpoint.path, *storage.connection
    )


def _relay(trainer, reports: Queue, trial: dict[str, Any]) -> None:
    """Fit the trainer; report each evaluation to Tune, with the checkpoint PBT may exploit.

    Tune copies a reported checkpoint into the trial's folder of the search, so a donor's
    state outlives its run's own rotation (``storage.keep_checkpoints``); ``trial`` (who,
    with which values and lineage) goes with it as the checkpoint's metadata, for
    :func:`_lineage`, and the lineage with every result, for the results table. The
    trainer fits in a daemon thread: when PBT pauses or stops the trial, Tune ends this
    thread at its next report, and the trial's actor exits with Ray Train's (its children).
    """
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # re-raised in the trial function, as Tune expects
            failure.append(exc)

    fitting = threading.Thread(target=fit, name="pbt-trial-fit", daemon=True)
    fitting.start()
    while fitting.is_alive() or not reports.empty():
        try:
            metrics, checkpoint = reports.get(timeout=1.0)
        except Empty:
            continue
        if checkpoint is not None:
            checkpoint.set_metadata({**trial, "step": metrics["step"]})
            checkpoint = ray_tune.Checkpoint(checkpoint.path, checkpoint.filesystem)
        ray_tune.report({**metrics, LINEAGE: trial[LINEAGE]}, checkpoint=checkpoint)
    if failure:
        raise failure[0]


# --------------------------------------------------------------------------- Tune's configuration


def _tuner(
    base: ExperimentSpec,
    location: Location,
    ready: Started,
    candidates: list[ExperimentSpec],
    trials_log: TrialTracking,
) -> ray_tune.Tuner:
    """A new Tuner, or the interrupted one restored with its finished trials kept."""
    data = ready.data
    trial_function = _run_pbt_trial if base.tune.scheduler == "pbt" else _run_trial
    trainable = ray_tune.with_resources(
        ray_tune.with_parameters(
            trial_function,
            base_json=base.model_dump(mode="json"),
            model_path=ready.model_path,
            data=data,
            trials_log=trials_log,
        ),
        # The trial function only drives a TorchTrainer, whose workers reserve their own.
        {"cpu": 0.01},
    )
    path, filesystem = arrow_storage(location)
    if ray_tune.Tuner.can_restore(path, storage_filesystem=filesystem):
        log.info("tune: continuing the search in %s (finished trials are kept)", location.uri)
        return ray_tune.Tuner.restore(
            path,
            trainable,
            resume_unfinished=True,
            resume_errored=True,
            storage_filesystem=filesystem,
        )
    param_space, searcher = _search_setup(base, _concurrency(base, candidates))
    max_steps = max(total_steps(s, data.rows) for s in candidates)
    spec = base.tune
    return ray_tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=ray_tune.TuneConfig(
            metric=spec.metric_key,
            mode=spec.mode,
            search_alg=searcher,
            scheduler=_scheduler(base, max_steps),
            num_samples=spec.num_samples,
            time_budget_s=spec.time_budget_s,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=ray_tune.RunConfig(
            name=tune_id(base),
            storage_path=arrow_storage(Location.of(base.storage).join(base.name))[0],
            storage_filesystem=filesystem,
        ),
    )


def _search_setup(base: ExperimentSpec, concurrency: int) -> tuple[dict[str, Any] | None, Any]:
    """(param_space, search_alg) for Tune.

    Each trial's workers are not Tune's resources (Tune only sees the trial function), so
    the searcher itself must hold back trials beyond what the cluster fits, or their worker
    groups wait for CPUs until Ray Train times them out.
    """
    spec = base.tune
    seed = spec.sampler_seed(base.train.seed)
    if spec.search == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(
            space=partial(_optuna_space, spec.space),
            metric=spec.metric_key,
            mode=spec.mode,
            seed=seed,
        )
        return None, ConcurrencyLimiter(searcher, max_concurrent=concurrency)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    space = {path: _tune_domain(domain) for path, domain in spec.space.items()}
    return space, BasicVariantGenerator(random_state=seed, max_concurrent=concurrency)


def _tune_domain(domain: SearchDomain):
    values = domain.candidates()
    if domain.kind in ("choice", "grid"):
        return ray_tune.choice(values) if domain.kind == "choice" else ray_tune.grid_search(values)
    if domain.kind == "randint":
        return ray_tune.randint(values[0], values[1] + 1)  # Tune's high is exclusive
    return getattr(ray_tune, domain.kind)(*values)  # uniform, loguniform


def _optuna_space(space: dict[str, SearchDomain], trial) -> None:
    """Define-by-run space for Optuna: a conditional parameter is suggested only when it applies."""
    chosen: dict[str, Any] = {}
    for path, domain in space.items():
        if not domain.applies(chosen):
            continue
        values = domain.candidates()
        if domain.kind == "choice":
            chosen[path] = trial.suggest_categorical(path, values)
        elif domain.kind == "randint":
            chosen[path] = trial.suggest_int(path, *values)
        else:
            chosen[path] = trial.suggest_float(path, *values, log=domain.kind == "loguniform")


def _scheduler(base: ExperimentSpec, max_steps: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    spec = base.tune
    if spec.scheduler == "fifo":
        return FIFOScheduler()
    if spec.scheduler == "pbt":
        return _population_based(base)
    return ASHAScheduler(
        time_attr="step",
        max_t=max_steps,
        grace_period=min(spec.grace_period or base.train.eval_every, max_steps),
        reduction_factor=spec.reduction_factor,
        # A trial that reaches its last step ends by itself (its final checkpoint and export
        # intact) rather than being stopped by Tune while it reports.
        stop_last_trials=False,
    )


class _SideBySidePBT(PopulationBasedTraining):
    """Ray Tune's PBT, except that it never pauses a running trial because another waits.

    Ray's asynchronous PBT pauses every trial at a perturbation step while any trial is
    pending or paused, to share the cluster among more trials than it fits. Here each restart
    rebuilds a trial's Ray Train worker group and reloads its model (tens of seconds, more
    than an interval of steps), and a trial being restored after an exploit counts as paused:
    every other trial would be stopped and restarted along with it. Trials run side by side
    instead; those beyond what runs at once wait for one to end.
    """

    def on_trial_result(self, tune_controller, trial, result) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        return TrialScheduler.CONTINUE if decision == TrialScheduler.PAUSE else decision


def _population_based(base: ExperimentSpec) -> _SideBySidePBT:
    """Ray Tune's PBT over ``tune.space``, deciding at evaluations that are checkpoint steps.

    A list (choice, grid) mutates to a neighbouring value, a range by a factor of 0.8 or 1.2
    (kept inside the range), either one resampled at ``resample_probability``.
    """
    spec, train = base.tune, base.train
    return _SideBySidePBT(
        time_attr="step",
        perturbation_interval=spec.pbt_interval(train.eval_every, train.checkpoint_every),
        hyperparam_mutations={path: _mutation(domain) for path, domain in spec.space.items()},
        quantile_fraction=spec.quantile_fraction,
        resample_probability=spec.resample_probability,
        custom_explore_fn=partial(_within_bounds, spec.space),
    )


def _mutation(domain: SearchDomain):
    """What PBT mutates a dimension within: the listed values, or the range's Tune domain."""
    if domain.kind in ("choice", "grid"):
        return domain.candidates()
    return _tune_domain(domain)


def _within_bounds(space: dict[str, SearchDomain], config: dict[str, Any]) -> dict[str, Any]:
    """PBT scales a value regardless of its range: clip it back in (a τ stays within (0, 1])."""
    for path, domain in space.items():
        bounds = domain.uniform or domain.loguniform or domain.randint
        if bounds and path in config:
            config[path] = min(max(config[path], bounds[0]), bounds[1])
    return config


def _concurrency(base: ExperimentSpec, candidates: list[ExperimentSpec]) -> int:
    """tune.max_concurrent_trials, or as many of the largest trial as the cluster holds now."""
    if base.tune.max_concurrent_trials:
        return base.tune.max_concurrent_trials
    cluster = ray.cluster_resources()
    cpus = max(s.scaling.num_workers * s.scaling.cpus_per_worker for s in candidates)
    gpus = max(s.scaling.num_workers * s.scaling.gpus_per_worker for s in candidates)
    fits = int(cluster.get("CPU", 1) // cpus)
    if gpus:
        fits = min(fits, int(cluster.get("GPU", 0) // gpus))
    return max(1, fits)


def _trial_dirname(trial) -> str:
    return f"trial-{trial.trial_id}"
