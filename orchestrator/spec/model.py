"""The ``model``, ``lora`` and ``merge`` sections: the encoder, its adapters, the merged weights."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator

from orchestrator.spec.base import PathText, Section


class ModelSpec(Section):
    """Which encoder to start from and how texts reach it."""

    base: PathText = Field(
        description="A local SentenceTransformer/transformers folder, a known offline name "
        "(all-MiniLM-L6-v2, all-mpnet-base-v2, sre-MiniLM: `orchestrator prepare --list`), "
        "spec:<path> (the model another spec's run exported), or a Hub id where a network "
        "allows it."
    )
    max_seq_length: PositiveInt = Field(
        default=256, description="Longest text in tokens; longer texts are truncated."
    )
    pooling: Literal["mean", "cls", "lasttoken"] | None = Field(
        default=None, description="Override the model's own pooling; None keeps it."
    )
    attention_dropout: float | None = Field(
        default=None,
        ge=0.0,
        lt=1.0,
        description="Override the attention-probability dropout (None keeps the model's). "
        "0 lets PyTorch use its fused attention kernel while training: faster steps on CPU "
        "(measured in bench/RESULTS.md), at the cost of that regularizer.",
    )
    query_prompt: str = Field(
        default="",
        description="Prefix for anchors/queries, e.g. 'query: ' for e5; applied in training "
        "and evaluation alike.",
    )
    passage_prompt: str = Field(
        default="",
        description="Prefix for positives/negatives/corpus, e.g. 'passage: ' for e5; applied "
        "in training and evaluation alike.",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Let transformers run the model's own code from its folder or Hub repo; "
        "off unless a spec turns it on.",
    )


class LoraSpec(Section):
    r: PositiveInt = Field(default=8, description="Rank of the adapter matrices.")
    alpha: PositiveFloat = Field(
        default=16, description="The adapters' update is scaled by alpha / r."
    )
    dropout: float = Field(
        default=0.05, ge=0.0, lt=1.0, description="Dropout on the adapters' input."
    )
    target_modules: list[str] = Field(
        default_factory=lambda: ["query", "value"],
        min_length=1,
        description="Names of the modules that get adapters (peft's target_modules).",
    )
    merge: bool = Field(default=True, description="Merge into the base weights on export.")


class MergeSpec(Section):
    """Weight-space interpolation of base and fine-tuned (WiSE-FT, Wortsman et al. 2022).

    θ = θ_base + alpha·(θ_tuned - θ_base), for full fine-tuning and (merged) LoRA alike. Each
    alpha is evaluated on the validation sets, in-domain and guard; the chosen one has
    the best in-domain figure among those that keep the guard within ``eval.guard.max_drop``
    (the smallest guard drop if none does). Only the chosen model is exported.
    """

    alphas: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(
        min_length=1,
        description="Weights of the fine-tuned model to try, 0 < alpha ≤ 1 (1 = no merge): "
        "the exported model is base + alpha·(fine-tuned - base), LoRA merged first. Several: "
        "each is evaluated on the validation splits, in-domain and guard, and the best "
        "in-domain one that keeps the guard within eval.guard.max_drop is exported (the "
        "smallest guard drop if none does); one: applied as is.",
    )

    @field_validator("alphas")
    @classmethod
    def _distinct(cls, alphas: list[float]) -> list[float]:
        if len(set(alphas)) != len(alphas):
            raise ValueError("alphas must not repeat")
        return sorted(alphas)
