"""The training recipe that every Ray Train worker runs, top to bottom.

One step: the mixture names a source (identically on every rank) → each rank takes its next
batch of that source, from its own share of the compiled fragments
(:mod:`orchestrator.data.feed`) → queries and passages are embedded in one DDP forward → the
sentence-transformers loss (negatives gathered across ranks) → backward, clip, step.
Every ``checkpoint_every`` steps rank 0 saves what a resume needs, and all ranks report.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import resource
import signal
import tempfile
import time
import warnings
from functools import partial
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
from transformers import get_scheduler

from orchestrator.assets import resolve_model
from orchestrator.checkpoints import CheckpointMeta, resume_state, save_state, upload_verified
from orchestrator.data.buckets import token_counts
from orchestrator.data.compile import read_manifest
from orchestrator.data.feed import FeedSettings, RankFeed, fragments_of
from orchestrator.data.mixture import MixedStream, Mixture, SourceStream, positions_from
from orchestrator.data.tokenize import IDS_SUFFIX, Batch, collate
from orchestrator.estimate import negatives_per_query
from orchestrator.losses import build_loss
from orchestrator.modeling import (
    attach_lora,
    count_parameters,
    enable_gradient_checkpointing,
    load_encoder,
    load_trainable_state,
    trainable_state,
)
from orchestrator.ray_compat import quiet_train_report_lines
from orchestrator.spec import ExperimentSpec
from orchestrator.step_report import StepReport
from orchestrator.storage import Location

log = logging.getLogger("orchestrator")


class PairEncoder(torch.nn.Module):
    """Embeds several padded groups in one forward call, so DDP sees one forward per step.

    Autocast (bf16/fp16) is applied here, inside the module, so that a cached loss replaying
    mini-batches during backward runs them at the same precision; embeddings come out fp32.
    A single features dict (a cached loss's mini-batch) returns the model's output dict.

    With ``group_rows`` (``train.embed_group_rows``) a padded batch is embedded in
    length-sorted groups of at most that many rows, each cut to its own longest text: a
    step's passages then pay for little padding even where its columns' lengths differ (a
    hard negative is as long as it happens to be, whatever the bucketing sorted by). Masked
    attention and mean pooling make each row's embedding the same either way.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        autocast_dtype: torch.dtype | None = None,
        group_rows: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.autocast_dtype = autocast_dtype
        self.group_rows = group_rows

    def _embed_padded(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        device = features["input_ids"].device.type
        enabled = self.autocast_dtype is not None
        with torch.autocast(device, dtype=self.autocast_dtype, enabled=enabled):
            return self.model(features)["sentence_embedding"].float()

    def _embed(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        rows = features["input_ids"].shape[0]
        if self.group_rows is None or rows <= self.group_rows:
            return self._embed_padded(features)
        lengths = features["attention_mask"].sum(dim=1)
        order = torch.argsort(lengths, stable=True)
        parts = []
        for group in order.split(self.group_rows):
            longest = int(lengths[group[-1]])  # right-padded: columns past it are padding
            parts.append(self._embed_padded({k: v[group, :longest] for k, v in features.items()}))
        return torch.cat(parts)[torch.argsort(order)]

    def forward(
        self, groups: list[dict[str, torch.Tensor]] | dict[str, torch.Tensor]
    ) -> list[torch.Tensor] | dict[str, torch.Tensor]:
        if isinstance(groups, dict):
            return {"sentence_embedding": self._embed(groups)}
        return [self._embed(features) for features in groups]


def autocast_dtype(precision: str) -> torch.dtype | None:
    """``train.precision`` → the dtype the forward runs in under autocast (None: fp32)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def to_device(batch: Batch, device: torch.device) -> Batch:
    def move(features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(device, non_blocking=True) for k, v in features.items()}

    labels = None if batch.labels is None else batch.labels.to(device, non_blocking=True)
    keys = None if batch.passage_keys is None else batch.passage_keys.to(device)
    return batch._replace(
        queries=move(batch.queries), passages=move(batch.passages), labels=labels, passage_keys=keys
    )


def build_optimizer(model: torch.nn.Module, spec: ExperimentSpec) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and LayerNorm weights."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": spec.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused kernel updates every parameter in one pass: 4.5x faster optimizer steps than
    # the default on CPU too (bench/RESULTS.md); Hugging Face's Trainer defaults to it.
    return torch.optim.AdamW(groups, lr=spec.train.lr, fused=True)


def feed_settings(spec: ExperimentSpec) -> FeedSettings:
    data = spec.data
    return FeedSettings(
        spec.per_worker_batch_size,
        data.shuffle_window,
        data.bucket_window,
        data.shuffle,
        spec.train.seed,
    )


def source_feeds(
    spec: ExperimentSpec, folders: dict[str, Location], rank: int, world: int
) -> dict[str, RankFeed]:
    """This rank's feed of every compiled source (``folders``: name → compiled folder)."""
    feeds = {}
    for name, folder in folders.items():
        manifest = read_manifest(folder)
        if manifest is None:
            raise FileNotFoundError(f"source {name!r}: no compiled manifest in {folder.uri}")
        fragments = fragments_of(manifest, spec.data.sources[name].max_rows)
        feeds[name] = RankFeed(name, folder, fragments, feed_settings(spec), rank, world)
    return feeds


def chain_digest(digest: str, rows: dict[str, np.ndarray]) -> str:
    """Running fingerprint of the token ids (and scores or labels) a rank trained on, in order."""
    h = hashlib.sha256(digest.encode())
    for column in sorted(rows):
        values = rows[column]
        if column.endswith(IDS_SUFFIX):
            h.update(np.fromiter(map(len, values), np.int32, len(values)).tobytes())
            h.update(np.concatenate(values).astype(np.int32, copy=False).tobytes())
        else:
            h.update(np.asarray(values, dtype=np.float64).tobytes())
    return h.hexdigest()


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


def schedule_of(spec: ExperimentSpec, total_steps: int) -> dict[str, Any]:
    """The learning-rate settings a checkpoint records, to tell a changed schedule on resume."""
    train = spec.train
    return {
        "lr": train.lr,
        "schedule": train.schedule,
        "warmup_ratio": train.warmup_ratio,
        "total_steps": total_steps,
    }


def build_scheduler(optimizer: torch.optim.Optimizer, spec: ExperimentSpec, total_steps: int):
    return get_scheduler(
        spec.train.schedule,
        optimizer,
        num_warmup_steps=int(spec.train.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )


def restore_schedule(optimizer, scheduler, state, meta, spec, total_steps: int, rank: int = 0):
    """The scheduler to continue with after loading a checkpoint; says what changed.

    Same settings as the checkpoint's: its scheduler state, exactly where it stopped. Changed
    ones (``--resume-from`` with another lr, schedule, warm-up or length): the weights,
    optimizer moments and data positions are kept, and the spec's schedule applies from the
    checkpoint's step on, as if it had been the schedule from step 0.
    """
    before, now = meta.schedule, schedule_of(spec, total_steps)
    if before is None or before == now:
        scheduler.load_state_dict(state["scheduler"])
        return scheduler
    changed = ", ".join(f"{k} {before.get(k)} -> {v}" for k, v in now.items() if before.get(k) != v)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = spec.train.lr
    fresh = build_scheduler(optimizer, spec, total_steps)
    with warnings.catch_warnings():  # a fast-forward: no optimizer step is skipped
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        for _ in range(meta.step):
            fresh.step()
    if rank == 0:
        log.warning(
            "resuming at step %d with a changed schedule (%s): keeping the weights, optimizer "
            "moments and data positions; the spec's schedule applies from here (lr now %.3g)",
            meta.step,
            changed,
            fresh.get_last_lr()[0],
        )
    return fresh


def load_guide(spec: ExperimentSpec, base_path: str, device: torch.device):
    """The frozen ``loss.guide`` model (None without one): the base as trained, or a named one."""
    guide = getattr(spec.loss, "guide", None)
    if guide is None:
        return None
    if guide.model == "base":  # as the run loads it: same pooling, length, prompts
        model = load_encoder(base_path, spec.model, device)
    else:  # another model as its authors saved it, reading at least the run's length
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(
            resolve_model(guide.model), device=str(device), local_files_only=True
        )
        model.max_seq_length = max(model.max_seq_length or 0, spec.model.max_seq_length)
    return model.eval().requires_grad_(False)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    quiet_train_report_lines()
    spec = ExperimentSpec.model_validate(config["spec"])
    total_steps: int = config["total_steps"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(spec.train.seed)
    if not spec.scaling.use_gpu:  # share the node's cores fairly between co-located workers
        torch.set_num_threads(math.ceil(spec.scaling.cpus_per_worker))

    model = load_encoder(config["model_path"], spec.model, device)
    if spec.lora:
        attach_lora(model, spec.lora)
    if spec.train.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    precision = spec.train.precision
    encoder = ray.train.torch.prepare_model(
        PairEncoder(model, autocast_dtype(precision), spec.train.embed_group_rows),
        parallel_strategy_kwargs={"find_unused_parameters": True},
    )
    optimizer = build_optimizer(model, spec)
    scheduler = build_scheduler(optimizer, spec, total_steps)
    loss_fn = build_loss(spec.loss, model, world, load_guide(spec, config["model_path"], device))

    storage = Location.of(spec.storage)
    restored = ray.train.get_checkpoint()  # set when Ray Train restarts or re-runs this run
    state, meta = resume_state(restored or config.get("resume_from"))
    step = 0
    if state is not None:
        load_trainable_state(model, state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = meta.step
        scheduler = restore_schedule(optimizer, scheduler, state, meta, spec, total_steps, rank)
        # One RNG state per rank: dropout draws differ with each rank's batch shapes.
        torch.set_rng_state(state["rng"][rank])
    resumed_from_step = step
    restores = meta.restores + (restored is not None)
    digest = (meta.stream_digests or [""] * world)[rank]

    local_batch = spec.per_worker_batch_size
    positions = positions_from(meta.positions, list(spec.data.sources))
    feeds = source_feeds(spec, config["compiled"], rank, world)
    streams = {name: SourceStream(name, feeds[name].batches, positions[name]) for name in feeds}
    mixed = MixedStream(
        Mixture({n: s.weight for n, s in spec.data.sources.items()}, spec.train.seed), streams
    )
    pad_id = model.tokenizer.pad_token_id or 0
    trainable, total = count_parameters(model)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    source_steps = dict(meta.source_steps)
    pairs_seen = meta.pairs_seen
    running_loss = torch.zeros((), device=device)
    window_steps, window_tokens, window_padded = 0, 0, 0
    window_masked: int | None = None
    window_start, data_wait = time.perf_counter(), 0.0
    hard = 0
    encoder.train()
    while step < total_steps:
        _chaos(spec, step, rank, restores)
        fetch_start = time.perf_counter()
        source, rows = mixed.next(step)
        digest = chain_digest(digest, rows)
        real, padded = token_counts(rows, spec.train.embed_group_rows)
        window_tokens += real
        window_padded += padded
        batch = to_device(collate(rows, pad_id), device)
        data_wait += time.perf_counter() - fetch_start
        hard = batch.n_docs - 1
        loss = loss_fn.step(encoder, batch)
        masked = loss_fn.masked
        if masked is not None:
            window_masked = (window_masked or 0) + masked
        scaler.scale(loss).backward()
        if spec.train.max_grad_norm:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.train.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        step += 1
        running_loss += loss.detach()
        window_steps += 1
        pairs_seen += local_batch * world
        source_steps[source] = source_steps.get(source, 0) + 1

        checkpoint_now = step % spec.train.checkpoint_every == 0 or step == total_steps
        eval_now = spec.train.eval_every and (
            step % spec.train.eval_every == 0 or step == total_steps
        )
        if not (checkpoint_now or eval_now or step % spec.train.log_every == 0):
            continue
        elapsed = time.perf_counter() - window_start
        metrics = {
            "step": step,
            "total_steps": total_steps,
            "loss": float(running_loss / window_steps),  # one host sync per report
            "lr": scheduler.get_last_lr()[0],
            "pairs_seen": pairs_seen,
            "pairs_per_s": window_steps * local_batch * world / elapsed,
            "tokens_per_s": window_tokens / elapsed,  # this rank's; the monitor sums ranks
            "step_time_s": elapsed / window_steps,
            "data_wait_fraction": data_wait / elapsed,
            "padding_fraction": 1 - window_tokens / window_padded,
            "peak_memory_mib": peak_memory_mib(device),
            "rows_decoded": sum(feed.reader.rows_decoded for feed in feeds.values()),
            "time": time.time(),
            "negatives_per_query": negatives_per_query(spec.loss, local_batch, world, hard),
            "trainable_params": trainable,
            "total_params": total,
            "source_steps": dict(source_steps),
            "resumed_from_step": resumed_from_step,
            "restores": restores,
        }
        if window_masked is not None:  # candidates left out as the anchor's positive, per query
            metrics["false_negatives_masked"] = window_masked / (window_steps * local_batch)
        rng_states = None
        if checkpoint_now:  # collectives: every rank takes part
            metrics["stream_digests"] = _gather(digest, world)
            rng_states = _gather(torch.get_rng_state(), world)
        if eval_now and rank == 0:  # on validation: what a search or early choice reads
            from orchestrator.evaluation import evaluate, in_domain_spec

            model.eval()
            figures = evaluate(model, in_domain_spec(spec, "validation"))
            metrics.update({f"eval/{k}": v for k, v in figures.items()})
            model.train()
        save = rng_states if checkpoint_now and rank == 0 else None
        schedule = schedule_of(spec, total_steps)
        _report(metrics, save, model, optimizer, scheduler, mixed, storage, schedule)
        running_loss.zero_()
        window_steps, window_tokens, window_padded, window_masked = 0, 0, 0, None
        window_start, data_wait = time.perf_counter(), 0.0


def _chaos(spec: ExperimentSpec, step: int, rank: int, restores: int) -> None:
    """``testing.kill_worker_at_step``: SIGKILL this worker once, to rehearse recovery."""
    chaos = spec.testing
    if chaos and step == chaos.kill_worker_at_step and rank == chaos.kill_rank and not restores:
        os.kill(os.getpid(), signal.SIGKILL)


def _report(
    metrics, rng_states, model, optimizer, scheduler, mixed, storage: Location, schedule: dict
) -> None:
    """Report on every rank (Ray Train's barrier); rank 0 attaches the resume state."""
    if rng_states is None:
        ray.train.report(metrics)
        return
    state = {
        "model": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_states,
    }
    meta = CheckpointMeta(
        step=metrics["step"],
        schedule=schedule,
        pairs_seen=metrics["pairs_seen"],
        negatives_per_query=metrics["negatives_per_query"],
        positions=mixed.positions(),
        source_steps=metrics["source_steps"],
        restores=metrics["restores"],
        stream_digests=metrics["stream_digests"],
        metrics=StepReport.from_metrics(metrics),  # what was reported with it, evaluations too
    )
    with tempfile.TemporaryDirectory() as directory:
        save_state(directory, state, meta)
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(directory),
            checkpoint_upload_fn=partial(upload_verified, storage),
        )
