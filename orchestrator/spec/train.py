"""The ``train`` (optimizer, budget, precision, cadence) and ``scaling`` (workers) sections."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from orchestrator.spec.base import Section, Seed


class TrainSpec(Section):
    lr: PositiveFloat = Field(default=2e-5, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(
        default=0.01, ge=0.0, description="AdamW weight decay, not on biases and LayerNorms."
    )
    schedule: Literal["linear", "cosine", "constant"] = Field(
        default="linear", description="The learning rate after warmup."
    )
    warmup_ratio: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="Share of the steps that warm up from 0."
    )
    epochs: PositiveFloat | None = Field(
        default=1.0, description="Passes over all usable rows; max_steps overrides it."
    )
    max_steps: PositiveInt | None = Field(default=None, description="Overrides epochs when set.")
    batch_size: PositiveInt = Field(
        default=32,
        description="Global batch: pairs per step over all workers (the in-batch negative "
        "pool); divides evenly over scaling.num_workers.",
    )
    max_grad_norm: PositiveFloat | None = Field(
        default=1.0, description="Clip the gradient norm to this; None: no clipping."
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32",
        description="Autocast dtype on GPU; bf16 also works on CPU; fp16 needs GPUs.",
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in the backward pass: less memory."
    )
    embed_group_rows: PositiveInt | None = Field(
        default=None,
        description="Embed a step's texts in length-sorted groups of at most this many rows, "
        "each padded to its own longest text: less padding, faster steps on CPU (the same "
        "embeddings); none: one padded batch per kind of text.",
    )
    seed: Seed = Field(default=42, description="Seeds torch, the data order and the mixture.")
    eval_every: int = Field(default=0, ge=0, description="Steps between evaluations; 0 = at end.")
    checkpoint_every: PositiveInt = Field(default=50, description="Steps between checkpoints.")
    log_every: PositiveInt = Field(
        default=10, description="Steps between training reports (loss, throughput, ...)."
    )

    @model_validator(mode="after")
    def _has_budget(self) -> TrainSpec:
        if self.max_steps is None and self.epochs is None:
            raise ValueError("set train.epochs or train.max_steps")
        return self


class ScalingSpec(Section):
    num_workers: PositiveInt = Field(
        default=1, description="Data-parallel training workers (Ray Train)."
    )
    cpus_per_worker: PositiveFloat = Field(
        default=1.0, description="Fractions leave CPU for Ray Data on small machines."
    )
    gpus_per_worker: float = Field(
        default=0.0, ge=0.0, description="GPUs per worker; more than 0 trains on GPUs (NCCL)."
    )
    cpus_per_data_task: PositiveFloat = Field(
        default=0.5,
        description="CPU per Ray Data read/tokenize task (fractions overlap with training).",
    )
    max_failures: int = Field(
        default=0,
        ge=-1,
        description="Worker-group restarts after a worker or node dies (-1: unlimited); each "
        "restart resumes from the latest checkpoint.",
    )

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0
