"""Build the encoder: a SentenceTransformer from a local folder, pooling, prompts, LoRA; the
training forward (:class:`PairEncoder`) and a loss's frozen guide model.

Everything here works on a plain ``SentenceTransformer`` so the exported folder loads with
``SentenceTransformer(path)`` and nothing from this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling

if TYPE_CHECKING:
    from orchestrator.spec import ExperimentSpec, LoraSpec, ModelSpec

QUERY, PASSAGE = "query", "passage"


def load_encoder(model_path: str, spec: ModelSpec, device: str | torch.device = "cpu"):
    """Load the base encoder with the spec's sequence length, pooling, dropout and prompts."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per task floods Ray's log
    model = SentenceTransformer(
        model_path,
        device=str(device),
        trust_remote_code=spec.trust_remote_code,
        local_files_only=True,
        config_kwargs=_attention_dropout_kwargs(model_path, spec.attention_dropout),
    )
    model.max_seq_length = spec.max_seq_length
    if spec.pooling is not None:
        for idx, module in enumerate(model):
            if isinstance(module, Pooling):
                dim = model.get_embedding_dimension()
                model[idx] = Pooling(dim, pooling_mode=spec.pooling)
    prompts = {QUERY: spec.query_prompt, PASSAGE: spec.passage_prompt}
    model.prompts = {**model.prompts, **{k: v for k, v in prompts.items() if v}}
    return model


def load_guide(spec: ExperimentSpec, base_path: str, device: torch.device):
    """The frozen ``loss.guide`` model (None without one): the base as trained, or a named one."""
    guide = getattr(spec.loss, "guide", None)
    if guide is None:
        return None
    if guide.model == "base":  # as the run loads it: same pooling, length, prompts
        model = load_encoder(base_path, spec.model, device)
    else:  # another model as its authors saved it, reading at least the run's length
        from orchestrator.assets import resolve_model

        model = SentenceTransformer(
            resolve_model(guide.model), device=str(device), local_files_only=True
        )
        model.max_seq_length = max(model.max_seq_length or 0, spec.model.max_seq_length)
    return model.eval().requires_grad_(False)


#: Config keys that hold the attention-probability dropout, by model family.
_ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout")


def _attention_dropout_kwargs(model_path: str, dropout: float | None) -> dict | None:
    """Config overrides that set the attention dropout under the key this model uses."""
    if dropout is None:
        return None
    from transformers import AutoConfig

    from orchestrator.assets import transformer_folder

    config = AutoConfig.from_pretrained(transformer_folder(model_path), local_files_only=True)
    keys = [k for k in _ATTENTION_DROPOUT_KEYS if hasattr(config, k)]
    return dict.fromkeys(keys, dropout) or None


def transformer_of(model: SentenceTransformer) -> torch.nn.Module:
    """The Hugging Face model inside the first (Transformer) module."""
    return model[0].auto_model


def attach_lora(model: SentenceTransformer, spec: LoraSpec) -> None:
    """Wrap the transformer in a peft LoRA model; only the adapter weights train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        bias="none",
    )
    model[0].model = get_peft_model(transformer_of(model), config)


def is_lora(model: SentenceTransformer) -> bool:
    from peft import PeftModel

    return isinstance(transformer_of(model), PeftModel)


def merge_lora(model: SentenceTransformer) -> None:
    """Fold the adapter into the base weights so the export is a plain transformer."""
    if is_lora(model):
        model[0].model = transformer_of(model).merge_and_unload()


def trainable_state(model: SentenceTransformer) -> dict[str, torch.Tensor]:
    """What a checkpoint must hold: the adapter alone for LoRA, all weights otherwise."""
    if is_lora(model):
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(transformer_of(model))
    return model.state_dict()


def load_trainable_state(model: SentenceTransformer, state: dict[str, torch.Tensor]) -> None:
    if is_lora(model):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(transformer_of(model), state)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise RuntimeError(f"checkpoint adapter does not match the model: {unexpected[:3]}")
    else:
        model.load_state_dict(state)


def enable_gradient_checkpointing(model: SentenceTransformer) -> None:
    inner = transformer_of(model)
    inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if is_lora(model):  # frozen embeddings give checkpointed blocks no grad-requiring input
        inner.enable_input_require_grads()


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


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def interpolated(
    base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """θ_base + alpha·(θ_tuned - θ_base) for every floating-point tensor (WiSE-FT)."""
    if base.keys() != tuned.keys():
        raise ValueError("base and fine-tuned weights have different tensors; cannot merge")
    return {
        name: base[name] + alpha * (value - base[name]) if value.is_floating_point() else value
        for name, value in tuned.items()
    }
