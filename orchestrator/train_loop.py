"""The training recipe that every Ray Train worker runs, in three parts, top to bottom.

1. :func:`setup`: the model (LoRA, gradient checkpointing) in its DDP forward, the loss,
   optimizer and schedule (a :class:`Learner`); the resume state; this rank's feed of each
   source and the mixture over them (a :class:`Recipe`), and where training stands (a
   :class:`TrainingState`).
2. :func:`train_step`: one optimizer step on one batch. The mixture names a source
   (identically on every rank) → each rank takes its next batch of that source, from its
   own share of the compiled fragments (:mod:`orchestrator.data.feed`) → queries and
   passages are embedded in one DDP forward → the sentence-transformers loss (negatives
   gathered across ranks) → backward, clip, step.
3. :func:`report`: every ``log_every`` steps (and at each evaluation or checkpoint) all ranks
   report a :class:`~orchestrator.step_report.StepReport` of the steps since the last one
   (a :class:`ReportWindow`); every ``checkpoint_every`` steps rank 0 attaches what a resume
   needs (:mod:`orchestrator.checkpoints`).
"""

from __future__ import annotations

import math
import os
import resource
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import ray.train
import ray.train.torch
import torch

from orchestrator.checkpoints import CheckpointMeta, resume_state, save_state, upload_verified
from orchestrator.data.buckets import token_counts
from orchestrator.data.feed import RankFeed
from orchestrator.data.mixture import MixedStream, Mixture, SourceStream, positions_from
from orchestrator.data.rank import chain_digest, source_feeds, to_device
from orchestrator.data.tokenize import Batch, collate
from orchestrator.losses import CachedEmbeddingLoss, EmbeddingLoss, build_loss
from orchestrator.modeling import (
    PairEncoder,
    attach_lora,
    autocast_dtype,
    count_parameters,
    enable_gradient_checkpointing,
    load_encoder,
    load_guide,
    load_trainable_state,
    trainable_state,
)
from orchestrator.optimizer import build_optimizer, build_scheduler, restore_schedule, schedule_of
from orchestrator.ray_compat import quiet_train_report_lines
from orchestrator.spec import ExperimentSpec
from orchestrator.step_report import StepReport
from orchestrator.storage import Location


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's function in every worker: setup, then steps, with a report every few."""
    quiet_train_report_lines()
    recipe, state = setup(config)
    train = recipe.spec.train
    window = ReportWindow.on(recipe.device)
    recipe.learner.encoder.train()
    while state.step < recipe.total_steps:
        _chaos(recipe.spec, state.step, recipe.rank, state.restores)
        source, batch = next_batch(recipe, state, window)
        result = train_step(recipe.learner, batch)
        state.advance(source, recipe.global_batch)
        window.add(result)

        final = state.step == recipe.total_steps
        checkpoint = state.step % train.checkpoint_every == 0 or final
        evaluate = bool(train.eval_every) and (state.step % train.eval_every == 0 or final)
        if checkpoint or evaluate or state.step % train.log_every == 0:
            report(recipe, state, window, result, checkpoint=checkpoint, evaluate=evaluate)
            window.reset()


# --------------------------------------------------------------------------- 1. setup


@dataclass
class Learner:
    """The model and all that one optimizer step touches."""

    model: torch.nn.Module  # the SentenceTransformer, as saved and evaluated
    encoder: torch.nn.Module  # its training forward: a PairEncoder (under DDP in a run)
    loss_fn: EmbeddingLoss | CachedEmbeddingLoss  # ``.step(encoder, batch)``, ``.masked``
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a torch LR scheduler
    scaler: torch.amp.GradScaler  # fp16 only; a pass-through otherwise
    max_grad_norm: float | None


def build_learner(
    spec: ExperimentSpec,
    model_path: str,
    device: torch.device,
    world: int,
    total_steps: int,
    wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda encoder: encoder,
) -> Learner:
    """The spec's model, forward, loss, optimizer and schedule; ``wrap`` the forward (DDP)."""
    model = load_encoder(model_path, spec.model, device)
    if spec.lora:
        attach_lora(model, spec.lora)
    if spec.train.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    precision = spec.train.precision
    encoder = wrap(PairEncoder(model, autocast_dtype(precision), spec.train.embed_group_rows))
    optimizer = build_optimizer(model, spec)
    scheduler = build_scheduler(optimizer, spec, total_steps)
    loss_fn = build_loss(spec.loss, model, world, load_guide(spec, model_path, device))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    return Learner(model, encoder, loss_fn, optimizer, scheduler, scaler, spec.train.max_grad_norm)


@dataclass
class TrainingState:
    """Where this rank's training stands: what a checkpoint keeps and a resume restores."""

    step: int = 0
    pairs_seen: int = 0  # over all ranks
    source_steps: dict[str, int] = field(default_factory=dict)
    digest: str = ""  # this rank's running fingerprint of the rows it trained on
    resumed_from_step: int = 0  # where this attempt started
    restores: int = 0  # restarts from a checkpoint so far

    @classmethod
    def resumed(cls, meta: CheckpointMeta, rank: int, world: int, restart: bool) -> TrainingState:
        """Where the checkpoint's meta left off (``restart``: Ray Train restarted the run)."""
        return cls(
            step=meta.step,
            pairs_seen=meta.pairs_seen,
            source_steps=dict(meta.source_steps),
            digest=(meta.stream_digests or [""] * world)[rank],
            resumed_from_step=meta.step,
            restores=meta.restores + restart,
        )

    def advance(self, source: str, pairs: int) -> None:
        """One step of ``source`` done, ``pairs`` pairs over all ranks."""
        self.step += 1
        self.pairs_seen += pairs
        self.source_steps[source] = self.source_steps.get(source, 0) + 1


@dataclass
class Recipe:
    """What this worker trains with and on, built once by :func:`setup`."""

    spec: ExperimentSpec
    total_steps: int
    rank: int
    world: int
    device: torch.device
    learner: Learner
    feeds: dict[str, RankFeed]  # this rank's share of each source
    mixed: MixedStream  # one source per global step, the same on every rank
    storage: Location
    pad_id: int
    trainable_params: int
    total_params: int

    @property
    def local_batch(self) -> int:
        return self.spec.per_worker_batch_size

    @property
    def global_batch(self) -> int:
        return self.local_batch * self.world


def setup(config: dict[str, Any]) -> tuple[Recipe, TrainingState]:
    """The recipe of ``config`` (from :func:`orchestrator.trainer.build_trainer`) on this
    worker, resumed from Ray Train's restored checkpoint or ``config["resume_from"]``."""
    spec = ExperimentSpec.model_validate(config["spec"])
    total_steps: int = config["total_steps"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(spec.train.seed)
    if not spec.scaling.use_gpu:  # share the node's cores fairly between co-located workers
        torch.set_num_threads(math.ceil(spec.scaling.cpus_per_worker))

    ddp = partial(
        ray.train.torch.prepare_model,
        parallel_strategy_kwargs={"find_unused_parameters": True},
    )
    learner = build_learner(spec, config["model_path"], device, world, total_steps, wrap=ddp)
    restored = ray.train.get_checkpoint()  # set when Ray Train restarts or re-runs this run
    saved, meta = resume_state(restored or config.get("resume_from"))
    if saved is not None:
        _restore(learner, saved, meta, spec, total_steps, rank)
    state = TrainingState.resumed(meta, rank, world, restart=restored is not None)

    positions = positions_from(meta.positions, list(spec.data.sources))
    feeds = source_feeds(spec, config["compiled"], rank, world)
    streams = {name: SourceStream(name, feeds[name].batches, positions[name]) for name in feeds}
    mixed = MixedStream(
        Mixture({n: s.weight for n, s in spec.data.sources.items()}, spec.train.seed), streams
    )
    model = learner.model
    recipe = Recipe(
        spec,
        total_steps,
        rank,
        world,
        device,
        learner,
        feeds,
        mixed,
        Location.of(spec.storage),
        model.tokenizer.pad_token_id or 0,
        *count_parameters(model),
    )
    return recipe, state


def _restore(learner: Learner, saved: dict, meta: CheckpointMeta, spec, total_steps, rank):
    load_trainable_state(learner.model, saved["model"])
    learner.optimizer.load_state_dict(saved["optimizer"])
    learner.scheduler = restore_schedule(
        learner.optimizer, learner.scheduler, saved, meta, spec, total_steps, rank
    )
    # One RNG state per rank: dropout draws differ with each rank's batch shapes.
    torch.set_rng_state(saved["rng"][rank])


# --------------------------------------------------------------------------- 2. step


def next_batch(recipe: Recipe, state: TrainingState, window: ReportWindow) -> tuple[str, Batch]:
    """The mixture's next batch on this rank, on the device; fingerprinted and counted."""
    fetch_start = time.perf_counter()
    source, rows = recipe.mixed.next(state.step)
    state.digest = chain_digest(state.digest, rows)
    real, padded = token_counts(rows, recipe.spec.train.embed_group_rows)
    window.tokens += real
    window.padded += padded
    batch = to_device(collate(rows, recipe.pad_id), recipe.device)
    window.data_wait += time.perf_counter() - fetch_start
    return source, batch


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step gives back."""

    loss: torch.Tensor  # detached, still on the device: read once per report
    hard_negatives: int  # hard negatives per query in the batch
    masked: int | None  # in-batch candidates the loss masked as false negatives, if it masks


def train_step(learner: Learner, batch: Batch) -> StepResult:
    """One optimizer step on one batch: loss (forward), backward, clip, step, schedule."""
    loss = learner.loss_fn.step(learner.encoder, batch)
    masked = learner.loss_fn.masked
    learner.scaler.scale(loss).backward()
    if learner.max_grad_norm:
        learner.scaler.unscale_(learner.optimizer)
        torch.nn.utils.clip_grad_norm_(learner.model.parameters(), learner.max_grad_norm)
    learner.scaler.step(learner.optimizer)
    learner.scaler.update()
    learner.scheduler.step()
    learner.optimizer.zero_grad(set_to_none=True)
    return StepResult(loss.detach(), batch.n_docs - 1, masked)


def _chaos(spec: ExperimentSpec, step: int, rank: int, restores: int) -> None:
    """``testing.kill_worker_at_step``: SIGKILL this worker once, to rehearse recovery."""
    chaos = spec.testing
    if chaos and step == chaos.kill_worker_at_step and rank == chaos.kill_rank and not restores:
        os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------- 3. report


@dataclass
class ReportWindow:
    """What the steps since the last report add up to; :meth:`reset` after each report."""

    loss: torch.Tensor  # the steps' losses summed on the device: one host sync per report
    steps: int = 0
    tokens: int = 0  # non-padding tokens of this rank's batches
    padded: int = 0  # their tokens as padded for the forward
    masked: int | None = None  # false negatives masked, if the loss masks them
    data_wait: float = 0.0  # seconds spent fetching batches
    start: float = field(default_factory=time.perf_counter)

    @classmethod
    def on(cls, device: torch.device) -> ReportWindow:
        return cls(torch.zeros((), device=device))

    def add(self, result: StepResult) -> None:
        self.steps += 1
        self.loss += result.loss
        if result.masked is not None:
            self.masked = (self.masked or 0) + result.masked

    def reset(self) -> None:
        self.loss.zero_()
        self.steps = self.tokens = self.padded = 0
        self.masked = None
        self.data_wait = 0.0
        self.start = time.perf_counter()


def report(
    recipe: Recipe,
    state: TrainingState,
    window: ReportWindow,
    last: StepResult,
    checkpoint: bool,
    evaluate: bool,
) -> None:
    """Report the window on every rank (Ray Train's barrier); with ``checkpoint`` rank 0
    attaches the resume state, with ``evaluate`` rank 0 adds the validation metrics."""
    step_report = window_report(recipe, state, window, last)
    rng_states = None
    if checkpoint:  # collectives: every rank takes part
        step_report = replace(step_report, stream_digests=_gather(state.digest, recipe.world))
        rng_states = _gather(torch.get_rng_state(), recipe.world)
    if evaluate and recipe.rank == 0:  # on validation: what a search or early choice reads
        step_report = replace(step_report, evaluation=_validation(recipe))
    metrics = step_report.to_metrics()
    if not (checkpoint and recipe.rank == 0):
        ray.train.report(metrics)
        return
    learner = recipe.learner
    state_dict = {
        "model": trainable_state(learner.model),
        "optimizer": learner.optimizer.state_dict(),
        "scheduler": learner.scheduler.state_dict(),
        "rng": rng_states,
    }
    meta = CheckpointMeta(
        step=state.step,
        schedule=schedule_of(recipe.spec, recipe.total_steps),
        pairs_seen=state.pairs_seen,
        negatives_per_query=step_report.negatives_per_query,
        positions=recipe.mixed.positions(),
        source_steps=step_report.source_steps,
        restores=state.restores,
        stream_digests=step_report.stream_digests,
        metrics=step_report,
    )
    with tempfile.TemporaryDirectory() as directory:
        save_state(directory, state_dict, meta)
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(directory),
            checkpoint_upload_fn=partial(upload_verified, recipe.storage),
        )


def window_report(
    recipe: Recipe, state: TrainingState, window: ReportWindow, last: StepResult
) -> StepReport:
    """This rank's report of the window: its averages and rates, the run's totals so far."""
    elapsed = time.perf_counter() - window.start
    local_batch, world = recipe.local_batch, recipe.world
    masked = window.masked  # candidates left out as the anchor's positive, per query
    return StepReport(
        step=state.step,
        total_steps=recipe.total_steps,
        loss=float(window.loss / window.steps),  # the host sync
        lr=recipe.learner.scheduler.get_last_lr()[0],
        pairs_seen=state.pairs_seen,
        pairs_per_s=window.steps * recipe.global_batch / elapsed,
        tokens_per_s=window.tokens / elapsed,  # this rank's; the monitor sums ranks
        step_time_s=elapsed / window.steps,
        data_wait_fraction=window.data_wait / elapsed,
        padding_fraction=1 - window.tokens / window.padded,
        peak_memory_mib=peak_memory_mib(recipe.device),
        rows_decoded=sum(feed.reader.rows_decoded for feed in recipe.feeds.values()),
        time=time.time(),
        negatives_per_query=recipe.spec.loss.negatives_per_query(
            local_batch, world, last.hard_negatives
        ),
        trainable_params=recipe.trainable_params,
        total_params=recipe.total_params,
        source_steps=dict(state.source_steps),
        resumed_from_step=state.resumed_from_step,
        restores=state.restores,
        false_negatives_masked=None if masked is None else masked / (window.steps * local_batch),
    )


def _validation(recipe: Recipe) -> dict[str, float]:
    from orchestrator.evaluation import evaluate, in_domain_spec

    model = recipe.learner.model
    model.eval()
    figures = evaluate(model, in_domain_spec(recipe.spec, "validation"))
    model.train()
    return figures


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory of this worker so far: the accelerator's allocations, else the process RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def _gather(value: Any, world: int) -> list[Any]:
    if world == 1:
        return [value]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, value)
    return out
