"""The ``model``, ``lora`` and ``merge`` sections: the encoder, its adapters, the merged weights."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator

from orchestrator.spec.base import PathText, Section


class ModelSpec(Section):
    """Which encoder to start from and how texts reach it."""

    base: PathText = Field(
        description="A local SentenceTransformer/transformers folder, a known offline name "
        "(see `orchestrator prepare --list`), or a Hub id where a network allows it."
    )
    max_seq_length: PositiveInt = 256
    pooling: Literal["mean", "cls", "lasttoken"] | None = Field(
        default=None, description="Override the model's own pooling; None keeps it."
    )
    attention_dropout: float | None = Field(
        default=None,
        ge=0.0,
        lt=1.0,
        description="Override the attention-probability dropout (None keeps the model's). "
        "0 lets PyTorch use its fused attention kernel while training: 1.5x faster steps "
        "on CPU (bench/), at the cost of that regularizer.",
    )
    query_prompt: str = Field(default="", description="Prefix for anchors/queries, e.g. 'query: '.")
    passage_prompt: str = Field(default="", description="Prefix for positives/negatives/corpus.")
    trust_remote_code: bool = False


class LoraSpec(Section):
    r: PositiveInt = 8
    alpha: PositiveFloat = 16
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["query", "value"], min_length=1)
    merge: bool = Field(default=True, description="Merge into the base weights on export.")


class MergeSpec(Section):
    """Weight-space interpolation of base and fine-tuned (WiSE-FT, Wortsman et al. 2022).

    θ = θ_base + alpha·(θ_tuned - θ_base), for full fine-tuning and (merged) LoRA alike. Each
    alpha is evaluated on the validation sets, in-domain and guard; the chosen one has
    the best in-domain figure among those that keep the guard within ``eval.guard.max_drop``
    (the smallest guard drop if none does). Only the chosen model is exported.
    """

    alphas: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(
        min_length=1, description="Weights of the fine-tuned model to try (1 = no merge)."
    )

    @field_validator("alphas")
    @classmethod
    def _distinct(cls, alphas: list[float]) -> list[float]:
        if len(set(alphas)) != len(alphas):
            raise ValueError("alphas must not repeat")
        return sorted(alphas)
