"""Streaming at scale: compile once, each rank reads its share, a resume reads one window.

    .venv/bin/python bench/streaming.py                  # 100k, 1M and 3M rows
    .venv/bin/python bench/streaming.py --rows 100000    # one case

Each case: three synthetic pair sources (queries of ~10 words, passages of ~60, words drawn
from MiniLM's vocabulary) with ``--rows`` rows in all, a fresh local Ray with 2 CPUs and an
object store capped at ``--object-store-mib``, all-MiniLM-L6-v2, 2 training workers. It
measures, in a subprocess of its own:

- ``compile_s``: compiling the three sources (a Ray Data job each);
- ``first_step_s``: from ``ray.init`` to the first training step's report, the sources found
  compiled (what a rerun, a resume or a trial waits for);
- ``peak_object_store_mib`` (sampled every 0.2 s over compile and training) and
  ``spilled_mib``; ``peak_worker_rss_mib`` (the training workers' peak RSS at step 1);
- ``rows_decoded_per_epoch``: rows both ranks decode reading one epoch of every source,
  divided by nothing (compare with ``rows``);
- ``resume_at_0pct_s`` / ``resume_at_90pct_s``: the data side of a resume, rank 0's first
  batch of the largest source at batch 0 and at 90 % of its epoch (model and optimizer state
  load the same either way).

Writes ``bench/streaming.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SOURCES = 3
FILE_ROWS = 200_000


def synthetic_source(folder: Path, rows: int, seed: int) -> Path:
    """``rows`` pairs in JSONL files of at most FILE_ROWS rows (made once, then kept)."""
    import numpy as np

    from orchestrator.assets import resolve_model
    from orchestrator.data.tokenize import load_tokenizer

    done = folder / "done"
    if done.exists():
        return folder
    vocab = load_tokenizer(resolve_model("all-MiniLM-L6-v2")).get_vocab()
    words = np.array(sorted(w for w in vocab if w.isalpha() and len(w) > 2))
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for part, start in enumerate(range(0, rows, FILE_ROWS)):
        n = min(FILE_ROWS, rows - start)
        query_lengths = np.clip(rng.lognormal(2.2, 0.4, n).astype(int), 3, 40)
        passage_lengths = np.clip(rng.lognormal(4.0, 0.5, n).astype(int), 10, 250)
        with (folder / f"part{part:03d}.jsonl").open("w") as out:
            for q, p in zip(query_lengths, passage_lengths, strict=True):
                query = " ".join(words[rng.integers(0, len(words), q)])
                passage = " ".join(words[rng.integers(0, len(words), p)])
                out.write(json.dumps({"query": query, "passage": passage}) + "\n")
    done.touch()
    return folder


def bench_spec(rows: int, work: Path):
    from orchestrator.spec import load_spec

    per_source = rows // SOURCES
    sources = {
        f"s{i}": {
            "format": "jsonl",
            "path": str(synthetic_source(work / "data" / f"{rows}" / f"s{i}", per_source, i)),
            "columns": {"anchor": "query", "positive": "passage"},
        }
        for i in range(SOURCES)
    }
    squad = ROOT / "data" / "squad" / "eval"
    return load_spec(
        {
            "name": f"streaming-{rows}",
            "model": {"base": "all-MiniLM-L6-v2", "max_seq_length": 128},
            "data": {
                "sources": sources,
                "bucket_window": 16,
                "eval": {
                    "corpus": str(squad / "corpus.jsonl"),
                    "queries": str(squad / "queries.jsonl"),
                    "qrels": str(squad / "qrels.tsv"),
                },
            },
            "loss": {"kind": "infonce", "temperature": 0.05},
            "train": {"max_steps": 1, "batch_size": 32, "checkpoint_every": 1, "log_every": 1},
            "scaling": {"num_workers": 2, "cpus_per_worker": 1, "cpus_per_data_task": 1},
            "storage": {"uri": str(work / f"runs-{rows}")},
        }
    )


class ObjectStoreSampler:
    """Peak object-store use and bytes spilled, sampled from the raylet in a thread."""

    def __init__(self) -> None:
        self.peak = self.spilled = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        from orchestrator.ray_compat import object_store_reader

        read = object_store_reader()
        while not self._stop.wait(0.2):
            used, spilled = read()
            self.peak = max(self.peak, used)
            self.spilled = max(self.spilled, spilled)

    def __enter__(self) -> ObjectStoreSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_case(rows: int, object_store_mib: int, work: Path) -> dict[str, Any]:
    import ray

    from orchestrator.assets import resolve_model
    from orchestrator.data.rank import source_feeds
    from orchestrator.layout import run_location
    from orchestrator.monitor import read_history
    from orchestrator.ray_init import ensure_ray
    from orchestrator.runner import prepare_data
    from orchestrator.trainer import build_trainer

    spec = bench_spec(rows, work)
    shutil.rmtree(spec.storage.uri, ignore_errors=True)  # compile and train from scratch
    model_path = resolve_model(spec.model.base)
    init = {"num_cpus": 2, "object_store_memory": object_store_mib << 20}

    ray.init(**init)
    ensure_ray()
    with ObjectStoreSampler() as compile_store:
        t0 = time.perf_counter()
        data = prepare_data(spec, model_path)
        compile_s = time.perf_counter() - t0
    ray.shutdown()

    started = time.time()  # wall clock: the first report's time comes from another process
    ray.init(**init)
    ensure_ray()
    with ObjectStoreSampler() as train_store:
        again = prepare_data(spec, model_path)
        assert all(s.reused for s in again.sources.values())
        build_trainer(spec, model_path, 1, again, None).fit()
    ray.shutdown()
    (first, *_) = read_history(run_location(spec))

    folders = {name: source.location for name, source in data.sources.items()}
    decoded = 0
    for rank in range(spec.scaling.num_workers):
        for feed in source_feeds(spec, folders, rank, spec.scaling.num_workers).values():
            for _ in feed.batches(0):
                pass
            decoded += feed.reader.rows_decoded
    largest = max(data.sources, key=lambda n: data.sources[n].report.rows)
    resume = {}
    for share in (0.0, 0.9):
        (feed,) = [
            f
            for name, f in source_feeds(spec, folders, 0, spec.scaling.num_workers).items()
            if name == largest
        ]
        t1 = time.perf_counter()
        next(feed.batches(0, int(share * feed.batches_per_epoch)))
        resume[share] = time.perf_counter() - t1
    total_rows = sum(data.rows.values())
    return {
        "rows": total_rows,
        "compile_s": round(compile_s, 2),
        "compile_rows_per_s": round(total_rows / compile_s),
        "first_step_s": round(first.time - started, 2),
        "peak_object_store_mib": round(max(compile_store.peak, train_store.peak) / 2**20, 1),
        "spilled_mib": round(max(compile_store.spilled, train_store.spilled) / 2**20, 1),
        "peak_worker_rss_mib": round(first.peak_memory_mib),
        "rows_decoded_per_epoch": decoded,
        "resume_at_0pct_s": round(resume[0.0], 3),
        "resume_at_90pct_s": round(resume[0.9], 3),
        "fragments": sum(len(s.manifest["fragments"]) for s in data.sources.values()),
        "compiled_mib": round(
            sum(
                p.stat().st_size
                for s in data.sources.values()
                for p in s.location.path.rglob("*.parquet")
            )
            / 2**20,
            1,
        ),
    }


def run_cases(script: str, args: argparse.Namespace, cwd: Path = ROOT) -> list[dict[str, Any]]:
    """``script --case N`` for every ``--rows`` value, each in a fresh process (and Ray) in
    ``cwd`` (Ray's workers import the project from the driver's working directory)."""
    cases = []
    for rows in args.rows:
        command = [sys.executable, script, "--case", str(rows), "--work", args.work]
        command += ["--object-store-mib", str(args.object_store_mib)]
        out = subprocess.run(command, capture_output=True, text=True, cwd=cwd, check=False)
        result = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if result is None:
            cases.append({"rows": rows, "failed": (out.stdout + out.stderr)[-3000:]})
        else:
            cases.append(json.loads(result.removeprefix("RESULT ")))
        print(json.dumps(cases[-1]), flush=True)
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000, 3_000_000])
    parser.add_argument("--object-store-mib", type=int, default=512)
    parser.add_argument("--work", default="/tmp/streaming-bench")
    parser.add_argument("--out", default=str(ROOT / "bench" / "streaming.json"))
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)  # one case, in a subprocess
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.case:
        print("RESULT " + json.dumps(run_case(args.case, args.object_store_mib, Path(args.work))))
        return
    cases = run_cases(__file__, args)
    if failed := [c for c in cases if "failed" in c]:
        sys.exit(f"case {failed[0]['rows']} failed:\n{failed[0]['failed']}")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    report = {
        "cases": cases,
        "object_store_mib": args.object_store_mib,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Ray capped at 2",
        "commit": commit,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
