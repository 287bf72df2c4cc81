"""The optimizer (AdamW) and its learning-rate schedule; what a resume does with a changed one."""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

import torch
from transformers import get_scheduler

if TYPE_CHECKING:
    from orchestrator.checkpoints import CheckpointMeta
    from orchestrator.spec import ExperimentSpec

log = logging.getLogger("orchestrator")


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
    # The fused kernel updates every parameter in one pass: faster optimizer steps than the
    # default, on CPU too (bench/fused_adamw.py, bench/RESULTS.md); Hugging Face's Trainer
    # defaults to it.
    return torch.optim.AdamW(groups, lr=spec.train.lr, fused=True)


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


def restore_schedule(
    optimizer, scheduler, state, meta: CheckpointMeta, spec, total_steps: int, rank: int = 0
):
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
