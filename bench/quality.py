"""Quality table: each experiment run by the orchestrator and by plain sentence-transformers.

For every spec given, in one process:

* **ours**: ``orchestrator.run(spec, fresh=True)``: Ray Data, Ray Train, export, evaluation;
* **plain**: sentence-transformers' own ``SentenceTransformerTrainer`` on the same base model
  (same max_seq_length, pooling, prompts, attention dropout, LoRA), the same training rows,
  the same library loss with the same arguments, batch size, steps, learning rate, schedule,
  warm-up, weight decay, clipping, seed and CPU threads; then the same held-out evaluation
  (:func:`orchestrator.evaluation.evaluate`) on the same base-model baseline.

Each result is appended to ``bench/quality.jsonl`` (one JSON object per runner) and printed
as a markdown row for ``bench/RESULTS.md``:

    .venv/bin/pip install -c constraints/cpu.txt -e '.[bench]'   # the plain trainer's needs
    .venv/bin/python bench/quality.py experiments/quickstart.yaml [...] [--only ours|plain] \
        [--set data.bucket_window=16 ...]

``--seeds 42 43 44 --alphas 1.0 0.5 0.3`` (ours only) trains once per seed with the spec's
``merge`` removed and then evaluates each weight-space interpolation alpha of base and
fine-tuned on the *test* split, in-domain and guard, each with its paired interval; the last
lines are the mean ± sd over the seeds per alpha (``--seeds-out``, default
``bench/seeds.jsonl``).

Differences that remain, by design: sentence-transformers samples several sources in
proportion to their sizes (``multi_dataset_batch_sampler="proportional"``), the spec by its
weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).with_name("quality.jsonl")


def training_rows(spec) -> dict[str, list[dict[str, Any]]]:
    """Canonical rows of each source, as the project's reader cleans them (bad rows dropped)."""
    from orchestrator.data.sources import local_rows

    out = {}
    for name, source in spec.data.sources.items():
        rows = [row for row, _ in local_rows(source) if row is not None]
        out[name] = rows[: source.max_rows] if source.max_rows else rows
    return out


def plain_run(spec, steps: int) -> dict[str, Any]:
    """Train with SentenceTransformerTrainer at the spec's budget; evaluate like ours."""
    import torch
    from datasets import Dataset, DatasetDict
    from plain_st import training_arguments
    from sentence_transformers import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer import losses as st_losses

    from orchestrator.assets import resolve_model
    from orchestrator.evaluation import evaluate
    from orchestrator.losses import library_loss
    from orchestrator.modeling import attach_lora, load_encoder, merge_lora

    torch.set_num_threads(math.ceil(spec.scaling.cpus_per_worker))
    model = load_encoder(resolve_model(spec.model.base), spec.model)
    if spec.lora:
        attach_lora(model, spec.lora)
    loss = library_loss(spec.loss, model)
    if spec.loss.matryoshka_dims:
        dims = spec.loss.matryoshka_dims
        weights = spec.loss.matryoshka_weights or [1.0] * len(dims)
        loss = st_losses.MatryoshkaLoss(model, loss, dims, weights)
    sources = {name: Dataset.from_list(rows) for name, rows in training_rows(spec).items()}
    dataset = sources[next(iter(sources))] if len(sources) == 1 else DatasetDict(sources)
    prompts = {"anchor": spec.model.query_prompt} if spec.model.query_prompt else {}
    passage = spec.model.passage_prompt
    if passage:
        text_columns = {c for d in sources.values() for c in d.column_names if c != "anchor"}
        prompts.update({c: passage for c in text_columns if c not in ("score", "label")})
    with tempfile.TemporaryDirectory() as scratch:
        args = training_arguments(
            spec,
            scratch,
            steps,
            multi_dataset_batch_sampler="proportional",
            prompts=prompts or None,
            logging_steps=spec.train.log_every,
        )
        trainer = SentenceTransformerTrainer(
            model=model, args=args, train_dataset=dataset, loss=loss
        )
        start = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - start
    merge_lora(model)
    model.eval()
    return {"finetuned": evaluate(model, spec), "train_s": train_s}


def ours_run(spec) -> dict[str, Any]:
    from orchestrator import run

    result = run(spec, fresh=True)
    timings = result.summary.timings_s
    return {
        "baseline": result.baseline,
        "finetuned": result.finetuned,
        "train_s": timings["train"],
        "total_s": timings["total"],
    }


def domain_verdicts(spec, main: str, base, figures) -> dict[str, dict]:
    """The main metric's verdict (Δ, paired interval) on each named retrieval set
    (``data.eval_sets``: other domains)."""
    from orchestrator.verdict import verdict

    names = [n for n, held_out in spec.data.eval_sets.items() if held_out.kind == "retrieval"]
    return {n: verdict(f"{n}/{main}", base, figures) for n in names}


def with_domains(spec, domains: list[str]):
    """``spec`` judged also on the *test* split of each prepared domain (``data/<name>/eval``),
    as named retrieval sets: per-domain figures without changing what (or which run) trains."""
    from orchestrator.assets import data_home
    from orchestrator.spec import load_spec

    raw = spec.model_dump(mode="json")
    for name in domains:
        folder = data_home() / name / "eval"
        raw["data"]["eval_sets"][name] = {
            "kind": "retrieval",
            "corpus": str(folder / "corpus.jsonl"),
            "queries": str(folder / "queries.jsonl"),
            "qrels": str(folder / "qrels.tsv"),
        }
    return load_spec(raw)


def seeded_runs(
    spec,
    seeds: list[int],
    alphas: list[float],
    out: Path,
    overrides: list[str],
    reuse: bool = False,
    domains: list[str] | None = None,
) -> None:
    """Per seed: train (no merge), then every alpha on the test split; mean ± sd per alpha.

    Each alpha is also evaluated on the validation split, and the alpha the run itself would
    choose there (:func:`orchestrator.finalize.pick_alpha`) is marked ``chosen``: the
    figures of ``merge: {alphas: [...]}`` without training once per list. ``reuse`` keeps
    a seed's finished run instead of training it again. ``domains``: also judged on those
    prepared domains' test splits (:func:`with_domains`), per domain with its interval.
    """
    import numpy as np
    import torch

    from orchestrator import run
    from orchestrator.assets import resolve_model
    from orchestrator.evaluation import evaluate_split
    from orchestrator.finalize import guard_drop_of, pick_alpha
    from orchestrator.modeling import interpolated, load_encoder
    from orchestrator.spec import load_spec
    from orchestrator.verdict import guard_verdict, verdict

    torch.set_num_threads(math.ceil(spec.scaling.cpus_per_worker))
    trained, spec = spec, with_domains(spec, domains or [])
    main, guard = spec.eval.main_metric, spec.eval.guard
    base_model = load_encoder(resolve_model(spec.model.base), spec.model).eval()
    base_state = {k: v.clone() for k, v in base_model.state_dict().items()}
    base = evaluate_split(base_model, spec, "test")
    base_validation = evaluate_split(base_model, spec, "validation")
    rows = []
    for seed in seeds:
        raw = trained.model_dump(mode="json", exclude={"merge"})
        raw["train"]["seed"] = seed
        result = run(load_spec(raw), fresh=not reuse)
        tuned_model = load_encoder(str(result.model_dir), spec.model).eval()
        tuned_state = {k: v.clone() for k, v in tuned_model.state_dict().items()}
        seed_rows = []
        for alpha in alphas:
            tuned_model.load_state_dict(interpolated(base_state, tuned_state, alpha))
            figures = evaluate_split(tuned_model, spec, "test")
            validation = evaluate_split(tuned_model, spec, "validation")
            judged = verdict(main, base, figures)
            record = {
                "seed": seed,
                "alpha": alpha,
                "verdict": asdict(judged),
                "validation": {main: validation.metrics[main]},
                "steps": result.summary.steps,
                "train_s": result.summary.timings_s["train"],
            }
            if guard:
                judged_guard = guard_verdict(guard.metric_key, guard.max_drop, base, figures)
                record["guard"] = asdict(judged_guard)
                drop = guard_drop_of(base_validation, validation, guard.metric_key)
                record["validation"].update(drop)
            if verdicts := domain_verdicts(spec, main, base, figures):
                record["domains"] = {n: v.delta for n, v in verdicts.items()}
                record["domain_intervals"] = {n: v.interval for n, v in verdicts.items()}
            seed_rows.append(record)
        if guard:
            choice = [{"alpha": r["alpha"], **r["validation"]} for r in seed_rows]
            chosen = pick_alpha(choice, main, guard.max_drop)["alpha"]
            for record in seed_rows:
                record["chosen"] = record["alpha"] == chosen
        for record in seed_rows:
            rows.append(record)
            with out.open("a") as f:
                line = {"experiment": spec.name, "overrides": overrides, **record}
                f.write(json.dumps(line) + "\n")
            judged = record["verdict"]
            guard_text = f", guard {record['guard']['delta']:+.4f}" if guard else ""
            guard_text += "".join(f", {n} {d:+.4f}" for n, d in record.get("domains", {}).items())
            guard_text += " (chosen)" if record.get("chosen") else ""
            low, high = judged["interval"] or (math.nan, math.nan)
            print(
                f"seed {seed} alpha {record['alpha']}: {main} {judged['delta']:+.4f} "
                f"[{low:+.4f}, {high:+.4f}]{guard_text}",
                flush=True,
            )
    print(f"| alpha | {main} Δ (mean ± sd) | every interval > 0 | guard Δ (mean ± sd) |")
    print("|---:|---:|:---:|---:|")
    for alpha in [*alphas, "chosen"]:
        mine = [r for r in rows if r["alpha"] == alpha or (alpha == "chosen" and r.get("chosen"))]
        if not mine:
            continue
        deltas = np.array([r["verdict"]["delta"] for r in mine])
        above = all(r["verdict"]["interval"][0] > 0 for r in mine)
        guards = np.array([r["guard"]["delta"] for r in mine]) if guard else np.array([np.nan])
        print(
            f"| {alpha} | {deltas.mean():+.4f} ± {deltas.std(ddof=1):.4f} | "
            f"{'yes' if above else 'no'} | {guards.mean():+.4f} ± {guards.std(ddof=1):.4f} |"
        )
        if per_set := [r["domains"] for r in mine if "domains" in r]:
            names = list(per_set[0])
            each = ", ".join(f"{n} {np.mean([d[n] for d in per_set]):+.4f}" for n in names)
            # per seed: the mean Δ over the main set and every named set; then over seeds
            overall = np.mean(
                [
                    (r["verdict"]["delta"] + sum(r["domains"].values())) / (len(names) + 1)
                    for r in mine
                ]
            )
            print(f"  {alpha}: per set, mean over seeds: {each}; over all sets: {overall:+.4f}")


def row(experiment: str, runner: str, main: str, base: float, tuned: float, seconds: float):
    return (
        f"| {experiment} | {runner} | {base:.4f} | {tuned:.4f} | {tuned - base:+.4f} | "
        f"{seconds:.0f} s |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="+")
    parser.add_argument("--only", choices=["ours", "plain"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="spec override"
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="train once per seed (ours)")
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.0])
    parser.add_argument(
        "--reuse", action="store_true", help="--seeds: keep a seed's finished run (no training)"
    )
    parser.add_argument("--seeds-out", type=Path, default=Path(__file__).with_name("seeds.jsonl"))
    parser.add_argument(
        "--domains",
        nargs="+",
        default=[],
        help="--seeds: also judge on these prepared domains' test splits (e.g. new_wiki nyt)",
    )
    args = parser.parse_args()
    if args.seeds:
        from orchestrator.spec import load_spec

        for path in args.specs:
            spec = load_spec(path, args.set)
            seeded_runs(
                spec, args.seeds, args.alphas, args.seeds_out, args.set, args.reuse, args.domains
            )
        return

    import platform

    import sentence_transformers
    import torch

    from orchestrator.estimate import estimate
    from orchestrator.spec import load_spec

    for path in args.specs:
        spec = load_spec(path, args.set)
        label = " ".join([spec.name, *args.set])
        steps = estimate(spec).steps
        main_metric = spec.eval.main_metric
        record = {
            "experiment": spec.name,
            "spec": path,
            "overrides": args.set,
            "main_metric": main_metric,
            "steps": steps,
            "batch_size": spec.train.batch_size,
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "versions": {"torch": torch.__version__, "st": sentence_transformers.__version__},
        }
        ours = None
        if args.only != "plain":
            ours = ours_run(spec)
            record_ours = {**record, "runner": "ours", **ours}
            with args.out.open("a") as f:
                f.write(json.dumps(record_ours) + "\n")
            base, tuned = ours["baseline"][main_metric], ours["finetuned"][main_metric]
            print(row(label, "orchestrator", main_metric, base, tuned, ours["train_s"]))
        if args.only != "ours":
            plain = plain_run(spec, steps)
            if ours is None:  # the same baseline evaluation, on the base model
                from orchestrator.assets import resolve_model
                from orchestrator.evaluation import evaluate
                from orchestrator.modeling import load_encoder

                base_model = load_encoder(resolve_model(spec.model.base), spec.model).eval()
                plain["baseline"] = evaluate(base_model, spec)
            else:
                plain["baseline"] = ours["baseline"]
            with args.out.open("a") as f:
                f.write(json.dumps({**record, "runner": "plain", **plain}) + "\n")
            base, tuned = plain["baseline"][main_metric], plain["finetuned"][main_metric]
            print(row(label, "plain ST trainer", main_metric, base, tuned, plain["train_s"]))


if __name__ == "__main__":
    main()
