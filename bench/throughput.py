"""Training throughput: the orchestrator vs plain sentence-transformers vs a bare torch loop.

One invocation runs, on the same model, rows, batch size, max_seq_length, loss, optimizer
settings and CPU threads, each in its own process (so peak memory is its own):

* ``plain``: sentence-transformers' ``SentenceTransformerTrainer`` (tokenizes in its collator);
* ``ours``: ``orchestrator.run`` (Ray Data tokenization, Ray Train worker, DDP, checkpoints),
  also with length bucketing (``data.bucket_window``) and with 2 workers x 1 CPU;
* ``bare``: the recipe's own setup and step (``orchestrator.train_loop.build_learner`` and
  ``train_step``: encoder, loss, AdamW, schedule) in a plain loop over the very batches
  ``ours`` trains on (read from the same compiled fragments beforehand, checked by their
  digest), pre-collated: the floor that Ray's per-step overhead is measured against.

and prints pairs/s, non-padding tokens/s, padding, data wait, peak memory, the ratio
ours/plain (medians over ``--repeats`` runs of the mean of ``--steps`` measured steps after
``--warmup`` steps; the runners draw their batches differently, so non-padding tokens/s is
the fair rate and pairs/s depends on the lengths drawn),
Ray start-up to the first step, and the memory levers (gradient checkpointing, cached loss).
With ``--peak-tflops`` (the accelerator's dense peak at the precision used) it also prints
the model FLOPs utilization, MFU = 6 x parameters x non-padding tokens/s / peak.

    .venv/bin/pip install -c constraints/cpu.txt -e '.[bench]'   # the plain trainer's needs
    .venv/bin/python bench/throughput.py [--steps 8] [--warmup 4] [--repeats 3] [--json out.json]
    # on a GPU (H100/H200 bf16 dense peak: 989 TFLOPS), for every case:
    .venv/bin/python bench/throughput.py --set scaling.use_gpu=true train.precision=bf16 \
        --batch 256 --peak-tflops 989
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SPEC = "experiments/quickstart.yaml"


def bench_spec(args: argparse.Namespace, *overrides: str):
    """The quickstart at the benchmark's budget, small eval; ours reports after the warm-up
    steps and after the measured ones (so one report per measured window, as in a run that
    reports every ``steps`` steps)."""
    from orchestrator.spec import load_spec

    return load_spec(
        args.spec,
        [
            f"train.max_steps={args.warmup + args.steps}",
            f"train.batch_size={args.batch}",
            f"model.max_seq_length={args.seq}",
            f"train.log_every={math.gcd(args.warmup, args.steps)}",
            f"train.checkpoint_every={args.warmup + args.steps}",
            "data.eval.max_queries=32",
            f"storage.uri={tempfile.mkdtemp(prefix='bench-runs-')}",
            "data.bucket_window=1",  # the quickstart buckets; the cases say when to
            *args.set,
            *overrides,
        ],
    )


def rows_for(spec, count: int) -> list[dict[str, Any]]:
    """The first ``count`` usable rows of the spec's (single) source, as training reads them."""
    from orchestrator.data.sources import local_rows

    (source,) = spec.data.sources.values()
    rows = []
    for row, _ in local_rows(source):
        if row is not None:
            rows.append(row)
            if len(rows) == count:
                break
    return rows


# --------------------------------------------------------------------------- runners


def run_ours(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    """One orchestrator run; per-window figures from its reports, the first window dropped.

    Start-up is timed from this process's start (what ``orchestrator run`` costs: imports,
    ``ray.init``, data, trainer) and from ``ray.init`` on.
    """
    import psutil

    from orchestrator import run
    from orchestrator.layout import run_location
    from orchestrator.monitor import read_history
    from orchestrator.ray_init import ensure_ray

    spec = bench_spec(args, *overrides)
    ensure_ray()
    ready = time.time()
    result = run(spec)
    history = read_history(run_location(spec))
    window = math.gcd(args.warmup, args.steps)  # steps per report
    measured = [r for r in history if r.step > args.warmup]
    data_s = result.summary.timings_s["data"]
    first_step_start = history[0].time - window * history[0].step_time_s
    return {
        "step_s": statistics.mean(r.step_time_s for r in measured),
        "tokens_per_s": statistics.mean(r.tokens_per_s for r in measured),
        "data_wait_fraction": statistics.mean(r.data_wait_fraction for r in measured),
        "padding_fraction": statistics.mean(r.padding_fraction for r in measured),
        "peak_memory_mib": max(r.peak_memory_mib for r in history),
        "process_to_first_step_s": first_step_start - psutil.Process().create_time(),
        "ray_init_to_first_step_s": first_step_start - ready,
        "data_s": data_s,
        "trainer_start_s": first_step_start - ready - data_s,
        "stream_digest": result.summary.stream_digests[0],
        "params": result.summary.total_params,
    }


def run_plain(args: argparse.Namespace) -> dict[str, Any]:
    """SentenceTransformerTrainer on the same rows; step times from a callback."""
    import torch
    from datasets import Dataset
    from plain_st import training_arguments
    from sentence_transformers import SentenceTransformerTrainer
    from transformers import TrainerCallback

    from orchestrator.assets import resolve_model
    from orchestrator.losses import library_loss
    from orchestrator.modeling import count_parameters, load_encoder
    from orchestrator.train_loop import peak_memory_mib

    spec = bench_spec(args)
    torch.set_num_threads(math.ceil(spec.scaling.cpus_per_worker))
    device = _device(spec)
    model = load_encoder(resolve_model(spec.model.base), spec.model, device)
    total = args.warmup + args.steps
    rows = rows_for(spec, total * args.batch)
    tokens: list[int] = []
    starts: list[float] = []
    ends: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_begin(self, *_, **__):
            starts.append(time.perf_counter())

        def on_step_end(self, *_, **__):
            ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as scratch:
        trainer = SentenceTransformerTrainer(
            model=model,
            args=training_arguments(spec, scratch, total),
            train_dataset=Dataset.from_list(rows),
            loss=library_loss(spec.loss, model),
            callbacks=[StepTimes()],
        )

        class CountingCollator(type(trainer.data_collator)):  # + non-padding tokens per batch
            def __call__(self, features):
                batch = super().__call__(features)
                tokens.append(int(sum(v.sum() for k, v in batch.items() if k.endswith("mask"))))
                return batch

        trainer.data_collator.__class__ = CountingCollator
        trainer.train()
    # A step's time runs from the end of the previous one: the next batch's collation is in it.
    steps = [b - a for a, b in zip(ends[args.warmup - 1 : -1], ends[args.warmup :], strict=True)]
    step_s = statistics.mean(steps)
    return {
        "step_s": step_s,
        "tokens_per_s": statistics.mean(tokens[args.warmup :]) / step_s,
        "peak_memory_mib": peak_memory_mib(device),
        "params": count_parameters(model)[1],
    }


def run_bare(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    """The orchestrator's own step in a plain loop, over the batches ``ours`` trains on.

    The batches are drawn first, compiled and read as the run's rank 0 reads them, then Ray
    is shut down, so the timed loop runs in a process with nothing else in it.
    """
    import numpy as np
    import ray
    import torch

    from orchestrator.assets import resolve_model
    from orchestrator.data.buckets import token_counts
    from orchestrator.data.rank import chain_digest, source_feeds, to_device
    from orchestrator.data.tokenize import collate
    from orchestrator.modeling import count_parameters
    from orchestrator.ray_init import ensure_ray
    from orchestrator.runner import prepare_data
    from orchestrator.train_loop import build_learner, peak_memory_mib, train_step

    spec = bench_spec(args, *overrides)
    path = resolve_model(spec.model.base)
    total = args.warmup + args.steps
    ensure_ray()
    data = prepare_data(spec, path)
    folders = {name: source.location for name, source in data.sources.items()}
    (feed,) = source_feeds(spec, folders, rank=0, world=spec.scaling.num_workers).values()
    stream = feed.batches(0)
    rows = [next(stream) for _ in range(total)]
    stream.close()  # stops the feed's reading thread
    ray.shutdown()
    digest = ""
    for batch_rows in rows:
        digest = chain_digest(digest, batch_rows)

    torch.manual_seed(spec.train.seed)
    torch.set_num_threads(math.ceil(spec.scaling.cpus_per_worker))
    device = _device(spec)
    learner = build_learner(spec, path, device, world=1, total_steps=total)  # no DDP
    learner.encoder.train()
    pad_id = learner.model.tokenizer.pad_token_id or 0
    batches = [to_device(collate(batch_rows, pad_id), device) for batch_rows in rows]
    times = []
    for batch in batches:
        start = time.perf_counter()
        train_step(learner, batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the step's kernels, not only their launches
        times.append(time.perf_counter() - start)
    step_s = float(np.mean(times[args.warmup :]))
    counts = [token_counts(r, spec.train.embed_group_rows) for r in rows[args.warmup :]]
    real, padded = (sum(column) for column in zip(*counts, strict=True))
    return {
        "step_s": step_s,
        "tokens_per_s": real / args.steps / step_s,
        "padding_fraction": 1 - real / padded,
        "peak_memory_mib": peak_memory_mib(device),
        "stream_digest": digest,
        "params": count_parameters(learner.model)[1],
    }


def _device(spec):
    import torch

    cuda = spec.scaling.use_gpu and torch.cuda.is_available()
    return torch.device("cuda" if cuda else "cpu")


# --------------------------------------------------------------------------- driver

CASES = {
    "plain": ("plain", []),
    "ours": ("ours", []),
    "ours_bucketed": ("ours", ["data.bucket_window=16"]),
    "bare": ("bare", []),
    # Each step's texts embedded in length-sorted groups of 16, each padded to its own longest.
    "ours_grouped16": ("ours", ["train.embed_group_rows=16"]),
    "bare_grouped16": ("bare", ["train.embed_group_rows=16"]),
    # One torch thread on the two cores: Ray's own processes get a core to themselves.
    "ours_1_thread": ("ours", ["scaling.cpus_per_worker=1"]),
    "bare_1_thread": ("bare", ["scaling.cpus_per_worker=1"]),
    "ours_2_workers": ("ours", ["scaling.num_workers=2", "scaling.cpus_per_worker=1"]),
    "ours_checkpointing": ("ours", ["train.gradient_checkpointing=true"]),
    "ours_cached_mb8": ("ours", ["loss.kind=cached_mnrl", "loss.mini_batch_size=8"]),
}
REPEATED = (
    "plain",
    "ours",
    "ours_bucketed",
    "ours_grouped16",
    "bare",
    "bare_grouped16",
    "ours_1_thread",
    "bare_1_thread",
)


def in_subprocess(case: str, args: argparse.Namespace) -> dict[str, Any]:
    from orchestrator.trainer import WORKER_ENV

    command = [sys.executable, __file__, "--case", case, *sys.argv[1:]]
    env = {**os.environ, **WORKER_ENV}  # the bare loop's allocator as a training worker's
    out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=SPEC)
    parser.add_argument("--steps", type=int, default=8, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=4, help="steps run first, not measured")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one measurement, in a subprocess
    parser.add_argument("--json", type=Path)
    parser.add_argument("--set", nargs="*", default=[], help="spec overrides for every case")
    parser.add_argument("--peak-tflops", type=float, help="accelerator peak, for MFU")
    args = parser.parse_args()

    if args.case:
        runner, overrides = CASES[args.case]
        measure = {"ours": lambda: run_ours(args, overrides), "plain": lambda: run_plain(args)}
        result = measure.get(runner, lambda: run_bare(args, overrides))()
        print(json.dumps(result))
        return

    results: dict[str, list[dict[str, Any]]] = {}
    for repeat in range(args.repeats):
        for case in args.cases:
            if repeat and case not in REPEATED:
                continue
            results.setdefault(case, []).append(in_subprocess(case, args))
            print(f"{case} #{repeat + 1}: {results[case][-1]}", file=sys.stderr)
    summary = {case: _median(runs) for case, runs in results.items()}
    if args.json:
        record = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": results}
        args.json.write_text(json.dumps({**record, "median": summary}, indent=2))
    print(_table(summary, args))


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        k: statistics.median(r[k] for r in runs) if isinstance(v, float) else v
        for k, v in runs[0].items()
    }


def _table(summary: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    plain = summary.get("plain")
    lines = [
        "| case | s/step | pairs/s | tokens/s | vs plain | padding | data wait | peak MiB | MFU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case, m in summary.items():
        ratio = f"{m['tokens_per_s'] / plain['tokens_per_s']:.2f}x" if plain else "-"
        padding = f"{m['padding_fraction']:.0%}" if "padding_fraction" in m else "-"
        wait = f"{m['data_wait_fraction']:.1%}" if "data_wait_fraction" in m else "-"
        peak = args.peak_tflops
        mfu = f"{6 * m['params'] * m['tokens_per_s'] / (peak * 1e12):.1%}" if peak else "-"
        lines.append(
            f"| {case} | {m['step_s']:.2f} | {args.batch / m['step_s']:.2f} | "
            f"{m['tokens_per_s']:.0f} | {ratio} | {padding} | {wait} | "
            f"{m['peak_memory_mib']:.0f} | {mfu} |"
        )
    lines.append("")
    for suffix in ("", "_1_thread"):
        ours, bare = summary.get("ours" + suffix), summary.get("bare" + suffix)
        if ours and bare:
            overhead = ours["step_s"] / bare["step_s"] - 1
            same = "the same" if ours["stream_digest"] == bare["stream_digest"] else "DIFFERENT"
            lines.append(
                f"Ray per-step overhead, ours{suffix} vs bare{suffix} (s/step, {same} batches): "
                f"{overhead:+.1%}"
            )
    if "ours" in summary:
        ours = summary["ours"]
        lines.append(
            f"process start → first step: {ours['process_to_first_step_s']:.1f} s; "
            f"ray.init → first step: {ours['ray_init_to_first_step_s']:.1f} s "
            f"(read + tokenize {ours['data_s']:.1f} s, "
            f"trainer start {ours['trainer_start_s']:.1f} s)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
