"""Export: the trained weights as a plain SentenceTransformer folder with spec, metrics and card."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.published import without_home
from orchestrator.quantized import BITS, bytes_per_vector
from orchestrator.spec import METRIC_NAME, ExperimentSpec
from orchestrator.verdict import headline

if TYPE_CHECKING:
    from orchestrator.summary import Judgement, RunSummary


def export_model(spec: ExperimentSpec, base_path: str, checkpoint: Any, out_dir: str) -> str:
    """Rebuild the model from the base and a checkpoint, merge LoRA, save a loadable folder.

    ``checkpoint`` is a ``ray.train.Checkpoint``, local or in object storage.
    """
    from orchestrator.checkpoints import load_state
    from orchestrator.modeling import attach_lora, load_encoder, load_trainable_state, merge_lora

    model = load_encoder(base_path, spec.model, "cpu")
    if spec.lora:
        attach_lora(model, spec.lora)
    state, _ = load_state(checkpoint)
    load_trainable_state(model, state["model"])
    out = Path(out_dir)
    if spec.lora and not spec.lora.merge:
        model[0].auto_model.save_pretrained(out / "adapter")
    merge_lora(model)
    model.save(str(out))
    (out / "experiment_spec.yaml").write_text(spec.published_yaml())
    return str(out)


#: The metrics shown in tables and model cards; summary.json keeps every metric.
HEADLINE = ("ndcg@10", "mrr@10", "map@100", "recall@1", "recall@10")
#: The headline metric of each kind of named held-out set (``<set>/<metric>``).
SET_HEADLINE = ("accuracy", "roc_auc", "spearman")


def compared(
    judgement: Judgement, metrics: tuple[str, ...] = HEADLINE
) -> list[tuple[str, float, float, float]]:
    """(metric, base, fine-tuned, Δ): the verdict's, ``metrics``, each named set's headline,
    and the guard's."""
    base, tuned, main = judgement.baseline, judgement.finetuned, judgement.verdict.metric
    headline = (*SET_HEADLINE, _metric(main))  # retrieval sets: the main metric
    guard = judgement.verdict.guard.metric if judgement.verdict.guard else None
    # A named set's metric is <set>/<metric>; dim64/..., int8/... are widths and precisions.
    sets = [
        n
        for n in base
        if "/" in n and not METRIC_NAME.fullmatch(n) and _metric(n) in headline and n != guard
    ]
    names = dict.fromkeys((main, *metrics, *sets, *([guard] * bool(guard))))
    return [(n, base[n], tuned[n], tuned[n] - base[n]) for n in names if n in base and n in tuned]


def _metric(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def comparison_table(judgement: Judgement, metrics: tuple[str, ...] = HEADLINE) -> str:
    """Markdown table of base vs fine-tuned: the verdict's metric first, then ``metrics``."""
    rows = ["| metric | base | fine-tuned | Δ |", "|---|---:|---:|---:|"]
    for name, base, tuned, delta in compared(judgement, metrics):
        rows.append(f"| {name} | {base:.4f} | {tuned:.4f} | {delta:+.4f} |")
    return "\n".join(rows)


def precision_rows(judgement: Judgement) -> list[tuple[int, str, int, float, float, float]]:
    """(width, precision, bytes per vector, base, fine-tuned, Δ) of the main retrieval metric at
    every Matryoshka width and embedding precision evaluated; widest and most precise first.

    Empty unless quantized or truncated embeddings were evaluated (``eval.quantization``,
    ``eval.matryoshka_dims``) and the model's width is known.
    """
    main = METRIC_NAME.fullmatch(judgement.verdict.metric)
    wanted = f"{main['kind']}@{main['k']}" if main else "ndcg@10"
    full = judgement.embedding_dim
    if full is None:  # a summary from before the width was recorded
        return []
    rows = []
    for name, tuned in judgement.finetuned.items():
        found = METRIC_NAME.fullmatch(name)
        if not found or f"{found['kind']}@{found['k']}" != wanted or name not in judgement.baseline:
            continue
        width = int(found["dim"]) if found["dim"] else full
        precision = found["precision"] or "float32"
        base = judgement.baseline[name]
        rows.append(
            (width, precision, bytes_per_vector(width, precision), base, tuned, tuned - base)
        )
    if len(rows) < 2:
        return []
    return sorted(rows, key=lambda r: (-r[0], list(BITS).index(r[1])))


@dataclass(frozen=True)
class Table:
    """A table of the card and the report: text cells, numbers formatted; the columns from
    ``numeric_from`` on are figures (right-aligned), a header starting with Δ holds deltas."""

    name: str  # its class in the report page
    title: str
    header: list[str]
    rows: list[list[str]]
    numeric_from: int

    def markdown(self) -> str:
        align = ["---"] * self.numeric_from + ["---:"] * (len(self.header) - self.numeric_from)
        lines = [self.header, align, *self.rows]
        return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def precision_table(judgement: Judgement) -> Table | None:
    """:func:`precision_rows` as a table; None when there is nothing to compare."""
    rows = precision_rows(judgement)
    if not rows:
        return None
    metric = METRIC_NAME.fullmatch(judgement.verdict.metric)
    name = f"{metric['kind']}@{metric['k']}" if metric else "ndcg@10"
    return Table(
        name="precision",
        title="Embedding width and precision (what an index of such vectors would retrieve)",
        header=["width", "precision", "bytes/vector", f"base {name}", "fine-tuned", "Δ"],
        rows=[
            [str(w), p, f"{size:,}", f"{base:.4f}", f"{tuned:.4f}", f"{delta:+.4f}"]
            for w, p, size, base, tuned, delta in rows
        ],
        numeric_from=2,
    )


def formats_table(judgement: Judgement) -> Table | None:
    """Each exported format, PyTorch first: its file, size, the verdict's metric and the
    guard's (each with its Δ vs PyTorch: a format that forgets shows here too) and the seconds
    its evaluation took; None without ``export.formats``."""
    if not judgement.formats:
        return None
    guard = judgement.verdict.guard
    metrics = [judgement.verdict.metric, *([guard.metric] if guard else [])]
    header = ["format", "file", "size"]
    for metric in metrics:
        header += [metric, "Δ vs PyTorch"]
    rows = []
    for exported in judgement.formats:
        row = [exported.format, f"`{exported.file}`", f"{exported.size_bytes / 2**20:,.1f} MiB"]
        for metric in metrics:
            value = exported.metrics.get(metric, math.nan)
            row += [f"{value:.4f}", f"{value - judgement.finetuned.get(metric, math.nan):+.4f}"]
        rows.append([*row, f"{exported.eval_s:,.1f} s"])
    return Table(
        name="formats",
        title="Exported formats (each evaluated through its own runtime)",
        header=[*header, "time to evaluate"],
        rows=rows,
        numeric_from=2,
    )


def _training_lines(spec: ExperimentSpec, summary: RunSummary) -> list[str]:
    from orchestrator.estimate import negatives_phrase

    lines = [
        f"- `{name}` ({src.format}, {src.columns.format}, weight {src.weight}): "
        f"{summary.sources[name].rows} usable rows, {summary.source_steps.get(name, 0)} steps"
        for name, src in spec.data.sources.items()
    ]
    loss = spec.loss
    tau = f", τ = {loss.temperature}" if hasattr(loss, "temperature") else ""
    symmetric = ", symmetric" if getattr(loss, "symmetric", False) else ""
    lines.append(
        f"- Loss: `{loss.kind}`{tau}{symmetric}; "
        f"{negatives_phrase(summary.negatives_per_query)} per step"
    )
    if spec.lora:
        modules = ", ".join(spec.lora.target_modules)
        lines.append(f"- LoRA r={spec.lora.r}, alpha={spec.lora.alpha} on {modules} (merged)")
    else:
        lines.append("- Full fine-tuning")
    lines.append(
        f"- {summary.steps} steps, global batch {spec.train.batch_size} over "
        f"{spec.scaling.num_workers} worker(s), {summary.pairs_seen} pairs seen"
    )
    lines.append(
        f"- Prompts: query {spec.model.query_prompt!r}, passage {spec.model.passage_prompt!r}"
    )
    return lines


def _runtime_use(summary: RunSummary) -> str:
    """How to load the exported runtime formats, when there are any."""
    files = {f.format: f.file for f in summary.formats if f.format != "pytorch"}
    if not files:
        return ""
    lines = [
        "The runtime formats are in the folders sentence-transformers' backends read "
        "(with `sentence-transformers[onnx]` or `[openvino]` installed):",
        "```python",
    ]
    for fmt, file in files.items():
        backend = "openvino" if fmt == "openvino" else "onnx"
        # The fp32 graphs are where the backends look by default; int8 is named.
        named = f', model_kwargs={{"file_name": "{file}"}}' if fmt == "onnx_int8" else ""
        lines.append(
            f'model = SentenceTransformer("path/to/this/folder", backend="{backend}"{named})'
        )
    return "\n".join([*lines, "```", ""])


def write_model_card(model_dir: Path, spec: ExperimentSpec, summary: RunSummary) -> None:
    """README.md (model card) plus metrics.json next to the exported weights."""
    figures = {"baseline": summary.baseline, "finetuned": summary.finetuned}
    verdict = asdict(summary.verdict)
    (model_dir / "metrics.json").write_text(json.dumps({**figures, "verdict": verdict}, indent=2))
    _, outcome = headline(summary.verdict, summary.rejected)
    training = "\n".join(_training_lines(spec, summary))
    tables = "".join(
        f"\n## {table.title}\n{table.markdown()}\n"
        for table in (precision_table(summary), formats_table(summary))
        if table
    )
    card = f"""---
library_name: sentence-transformers
pipeline_tag: sentence-similarity
base_model: {spec.model.base}
tags: [sentence-transformers, sentence-similarity, embedding-orchestrator]
---

# {spec.name}

Fine-tuned from `{spec.model.base}` by embedding-orchestrator (run `{summary.run_id}`).
{outcome} (held-out test set; the interval is a paired bootstrap 95 % interval over its
queries).

## Training
Data sources (each global batch is drawn from one source, chosen by weight):
{training}

## Held-out evaluation (base vs fine-tuned, same data, same evaluator)
{comparison_table(summary)}
{tables}
## Use
```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("path/to/this/folder")
embeddings = model.encode(["first text", "second text"])
```
{_runtime_use(summary)}"""
    (model_dir / "README.md").write_text(without_home(card))
