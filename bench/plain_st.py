"""The plain sentence-transformers reference of the benchmarks: its trainer's arguments for a
spec's budget, so that `quality.py` and `throughput.py` compare against the same settings."""

from __future__ import annotations

from typing import Any


def training_arguments(spec, output_dir: str, max_steps: int, **extra: Any):
    """``SentenceTransformerTrainingArguments`` matching the spec's training section."""
    import torch
    from sentence_transformers import SentenceTransformerTrainingArguments

    train = spec.train
    return SentenceTransformerTrainingArguments(
        output_dir=output_dir,
        max_steps=max_steps,
        per_device_train_batch_size=train.batch_size,
        learning_rate=train.lr,
        weight_decay=train.weight_decay,
        lr_scheduler_type=train.schedule,
        warmup_steps=train.warmup_ratio,  # a float < 1 is a ratio (transformers 5)
        max_grad_norm=train.max_grad_norm or 0.0,
        seed=train.seed,
        bf16=train.precision == "bf16",
        gradient_checkpointing=train.gradient_checkpointing,
        dataloader_drop_last=True,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        **extra,
    )
