"""After training: export, merge, judge, publish — the body of the run's export task.

One task, so the folder that is judged is the one that is published, and the base and the
fine-tuned model are evaluated one after the other by the same code on the same node:

1. the base model on the test split (in-domain and guard), unless the caller knows it;
2. the checkpoint exported as a plain SentenceTransformer folder (LoRA merged);
3. with ``merge:``, each alpha of base/fine-tuned interpolation evaluated on the
   *validation* split, and the chosen one written over the export;
4. the exported model on the test split; the verdict (Δ with its interval) and the guard's;
5. with ``export.formats``, each runtime format written into the folder and evaluated on the
   test split through its runtime;
6. the model card, then the folder published with its manifest last — as ``model/``, or as
   ``model.rejected/`` when the guard says the model forgot (unless the spec accepts that).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from orchestrator.evaluation import Split, evaluate_split
from orchestrator.export import export_model, write_model_card
from orchestrator.layout import MODEL_DIR, REJECTED_DIR
from orchestrator.modeling import interpolated, load_encoder
from orchestrator.preflight import embedding_dim
from orchestrator.runtimes import runtime_encoder, write_formats
from orchestrator.spec import ExperimentSpec
from orchestrator.storage import Location, publish
from orchestrator.summary import FormatFigures, Judgement, MergeChoice, RunSummary, Trained
from orchestrator.verdict import Evaluation, guard_verdict, standard_error, verdict

log = logging.getLogger("orchestrator")

#: The transformer's weights in the exported SentenceTransformer folder.
TORCH_WEIGHTS = "model.safetensors"


def evaluate_model(spec: ExperimentSpec, model_path: str, split: Split = "test") -> Evaluation:
    """One saved model on one split, with a training worker's threads and device."""
    torch.set_num_threads(max(1, math.ceil(spec.scaling.cpus_per_worker)))
    device = "cuda" if spec.scaling.use_gpu and torch.cuda.is_available() else "cpu"
    return evaluate_split(load_encoder(model_path, spec.model, device), spec, split)


def choose_alpha(spec: ExperimentSpec, base_path: str, tuned_dir: Path) -> MergeChoice:
    """Evaluate every ``merge.alphas`` on the validation split; write the chosen model.

    See :func:`pick_alpha` for the choice. A single alpha is applied without evaluating
    anything.
    """
    main, guard = spec.eval.main_metric, spec.eval.guard
    model = load_encoder(str(tuned_dir), spec.model, "cpu")
    tuned = {k: v.clone() for k, v in model.state_dict().items()}
    base = load_encoder(base_path, spec.model, "cpu").state_dict()
    if len(spec.merge.alphas) == 1:  # nothing to choose: apply it (bench/quality.py chose it)
        (alpha,) = spec.merge.alphas
        model_with(model, interpolated(base, tuned, alpha)).save(str(tuned_dir))
        return MergeChoice(chosen=alpha, split=None, alphas=[{"alpha": alpha}])
    key = guard.metric_key
    base_figures = evaluate_split(model_with(model, base), spec, "validation")
    rows = []
    for alpha in spec.merge.alphas:
        figures = evaluate_split(
            model_with(model, interpolated(base, tuned, alpha)), spec, "validation"
        )
        rows.append({"alpha": alpha, main: figures.metrics[main], key: figures.metrics[key]})
        rows[-1].update(guard_drop_of(base_figures, figures, key))
        log.info(
            "merge alpha=%.2f: %s %.4f, guard drop %+.4f ± %.4f",
            alpha,
            main,
            rows[-1][main],
            rows[-1]["guard_drop"],
            rows[-1]["guard_drop_se"],
        )
    chosen = pick_alpha(rows, main, guard.max_drop)
    if chosen["alpha"] != 1.0:
        model_with(model, interpolated(base, tuned, chosen["alpha"])).save(str(tuned_dir))
    split = "validation" if spec.data.validation and guard.validation else "test"
    return MergeChoice(chosen=chosen["alpha"], split=split, alphas=rows, base=base_figures.metrics)


def guard_drop_of(base: Evaluation, figures: Evaluation, key: str) -> dict[str, float]:
    """How far below the base the guard metric fell, and the standard error of that drop."""
    drop = base.metrics[key] - figures.metrics[key]
    se = (
        standard_error(base.per_query[key], figures.per_query[key])
        if key in base.per_query
        else 0.0
    )
    return {"guard_drop": drop, "guard_drop_se": se}


def pick_alpha(rows: list[dict[str, Any]], main: str, max_drop: float) -> dict[str, Any]:
    """The row (``alpha``, ``main``, ``guard_drop``, ``guard_drop_se``) to export.

    The best ``main`` among the alphas whose guard drop stays within ``max_drop`` by one
    standard error (drop + se <= max_drop); if none does, the one that forgets least. The
    margin is the one-standard-error rule: taking the best alpha just inside the tolerance on
    a few hundred validation queries picks, half the time, one just outside it on test.
    """
    kept = [r for r in rows if r["guard_drop"] + r.get("guard_drop_se", 0.0) <= max_drop]
    return max(kept, key=lambda r: r[main]) if kept else min(rows, key=lambda r: r["guard_drop"])


def timed(fn, *args: Any) -> tuple[Any, float]:
    """``fn(*args)`` and the seconds it took."""
    started = time.perf_counter()
    return fn(*args), time.perf_counter() - started


def evaluate_formats(
    spec: ExperimentSpec, folder: Path, finetuned: Evaluation, torch_s: float
) -> list[FormatFigures]:
    """Write ``export.formats`` into the exported folder; evaluate each through its runtime.

    The PyTorch weights come first, as the reference the formats are compared with.
    """
    if not spec.export.formats:
        return []
    weights = folder / TORCH_WEIGHTS
    figures = [
        FormatFigures(
            format="pytorch",
            file=TORCH_WEIGHTS,
            size_bytes=weights.stat().st_size if weights.exists() else 0,
            metrics=finetuned.metrics,
            eval_s=round(torch_s, 2),
        )
    ]
    for exported in write_formats(folder, spec.export.formats, spec.model):
        model = runtime_encoder(str(folder), exported.format, spec.model)
        evaluation, seconds = timed(evaluate_split, model, spec, "test")
        figures.append(
            FormatFigures(
                format=exported.format,
                file=exported.file,
                size_bytes=exported.size_bytes,
                metrics=evaluation.metrics,
                eval_s=round(seconds, 2),
            )
        )
        log.info(
            "export %s: %s %.4f",
            exported.format,
            spec.eval.main_metric,
            evaluation.metrics[spec.eval.main_metric],
        )
    return figures


def model_with(model, state: dict[str, torch.Tensor]):
    model.load_state_dict(state)
    return model


def finalize(
    spec: ExperimentSpec,
    base_path: str,
    checkpoint: Any,
    run: Location,
    trained: Trained,
    baseline: Evaluation | None,
) -> tuple[Judgement, dict[str, float]]:
    """Steps 1-6 above: the judgement, and the seconds its phases took."""
    timings = {}
    if baseline is None:
        started = time.time()
        baseline = evaluate_model(spec, base_path)
        timings["baseline_eval"] = time.time() - started
    started = time.time()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / MODEL_DIR
        export_model(spec, base_path, checkpoint, str(folder))
        merge = choose_alpha(spec, base_path, folder) if spec.merge else None
        finetuned, torch_s = timed(evaluate_model, spec, str(folder))
        formats = evaluate_formats(spec, folder, finetuned, torch_s)
        judged = verdict(spec.eval.main_metric, baseline, finetuned)
        guard = spec.eval.guard
        if guard:
            judged = judged.with_guard(
                guard_verdict(guard.metric_key, guard.max_drop, baseline, finetuned)
            )
        forgot = judged.guard is not None and judged.guard.forgot
        rejected = forgot and not spec.eval.accept_forgetting
        target = run.join(REJECTED_DIR if rejected else MODEL_DIR)
        judgement = Judgement(
            baseline=baseline.metrics,
            finetuned=finetuned.metrics,
            verdict=judged,
            model_uri=target.uri,
            rejected=rejected,
            merge=merge,
            embedding_dim=embedding_dim(str(folder)),
            formats=formats,
        )
        write_model_card(folder, spec, RunSummary.of(trained, judgement, timings_s={}))
        metrics = {"baseline": baseline.metrics, "finetuned": finetuned.metrics}
        publish(folder, target, run_id=spec.run_id, spec_hash=spec.hash(), metrics=metrics)
    timings["export_and_eval"] = time.time() - started
    return judgement, timings
