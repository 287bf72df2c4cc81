"""Export: the trained weights as a plain SentenceTransformer folder with spec, metrics and card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.spec import ExperimentSpec


def export_model(spec: ExperimentSpec, base_path: str, checkpoint_dir: str, out_dir: str) -> str:
    """Rebuild the model from the base and a checkpoint, merge LoRA, save a loadable folder."""
    from orchestrator.modeling import attach_lora, load_encoder, load_trainable_state, merge_lora
    from orchestrator.train_loop import load_state

    model = load_encoder(base_path, spec.model, "cpu")
    if spec.lora:
        attach_lora(model, spec.lora)
    state, _ = load_state(checkpoint_dir)
    load_trainable_state(model, state["model"])
    out = Path(out_dir)
    if spec.lora and not spec.lora.merge:
        model[0].auto_model.save_pretrained(out / "adapter")
    merge_lora(model)
    model.save(str(out))
    (out / "experiment_spec.yaml").write_text(spec.to_yaml())
    return str(out)


def comparison_table(summary: dict[str, Any]) -> str:
    base, tuned = summary["baseline"], summary["finetuned"]
    rows = ["| metric | base | fine-tuned | Δ |", "|---|---:|---:|---:|"]
    for name in sorted(base):
        if name in tuned:
            delta = tuned[name] - base[name]
            rows.append(f"| {name} | {base[name]:.4f} | {tuned[name]:.4f} | {delta:+.4f} |")
    return "\n".join(rows)


def write_model_card(model_dir: Path, spec: ExperimentSpec, summary: dict[str, Any]) -> None:
    """README.md (model card) plus metrics.json next to the exported weights."""
    (model_dir / "metrics.json").write_text(
        json.dumps({k: summary[k] for k in ("baseline", "finetuned", "verdict")}, indent=2)
    )
    loss = spec.loss
    tau = getattr(loss, "temperature", None)
    sources = "\n".join(
        f"- `{name}` ({src.format}, weight {src.weight}): {summary['sources'][name]['rows']} "
        f"usable pairs, {summary['source_steps'].get(name, 0) if summary.get('source_steps') else 0} steps"
        for name, src in spec.data.sources.items()
    )
    verdict = summary["verdict"]
    outcome = (
        f"improved {verdict['metric']} by {verdict['delta']:+.4f}"
        if verdict["improved"]
        else f"**did not improve** {verdict['metric']} ({verdict['delta']:+.4f}): prefer the base model"
    )
    lora = (
        f"LoRA r={spec.lora.r}, alpha={spec.lora.alpha} on {', '.join(spec.lora.target_modules)} (merged)"
        if spec.lora
        else "full fine-tuning"
    )
    card = f"""---
library_name: sentence-transformers
pipeline_tag: sentence-similarity
base_model: {spec.model.base}
tags: [sentence-transformers, sentence-similarity, embedding-orchestrator]
---

# {spec.name}

Fine-tuned from `{spec.model.base}` by embedding-orchestrator (run `{summary['run_id']}`).
Fine-tuning {outcome} on the held-out set.

## Training
- Data sources (one source per global batch, by weight):
{sources}
- Loss: `{loss.kind}`{f", τ = {tau}" if tau else ""}{", symmetric" if getattr(loss, "symmetric", False) else ""}; \
{summary['negatives_per_query']} negatives per query per step
- {lora}; {summary['steps']} steps, global batch {spec.train.batch_size} over \
{spec.scaling.num_workers} worker(s); {summary['pairs_seen']} pairs seen
- Prompts: query `{spec.model.query_prompt!r}`, passage `{spec.model.passage_prompt!r}`

## Held-out evaluation (base vs fine-tuned)
{comparison_table(summary)}

## Use
```python
from sentence_transformers import SentenceTransformer
model = SentenceTransformer("path/to/this/folder")
queries = model.encode(["..."], prompt_name="query") if "query" in model.prompts else model.encode(["..."])
```
"""
    (model_dir / "README.md").write_text(card)
