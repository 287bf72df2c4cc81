"""Build the encoder: a SentenceTransformer from a local folder, pooling, prompts, LoRA.

Everything here works on a plain ``SentenceTransformer`` so the exported folder loads with
``SentenceTransformer(path)`` and nothing from this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling

if TYPE_CHECKING:
    from orchestrator.spec import LoraSpec, ModelSpec

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
