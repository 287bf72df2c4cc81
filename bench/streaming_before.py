"""``bench/streaming.py``'s cases on the path before compiled corpora (commit 9d07d72).

That path read, cleaned and tokenized every source and materialized it in the object store
at every start (no cache), ordered and materialized each epoch on the driver, and had every
rank read each epoch in full: so its ``first_step_s`` includes the reading and tokenizing,
and its rows decoded per epoch are world size x rows by construction. Run it against a
checkout of that commit:

    git worktree add /tmp/before 9d07d72
    PYTHONPATH=/tmp/before .venv/bin/python bench/streaming_before.py --tree /tmp/before

Writes ``bench/streaming_before.json``. The synthetic sources are ``bench/streaming.py``'s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from streaming import ROOT, ObjectStoreSampler, bench_spec, run_cases


def run_case(rows: int, object_store_mib: int, work: Path) -> dict[str, Any]:
    import ray

    from orchestrator.assets import resolve_model
    from orchestrator.monitor import read_history
    from orchestrator.runner import (
        build_trainer,
        ensure_ray,
        epoch_datasets,
        prepare_data,
        run_location,
    )

    spec = bench_spec(rows, work)
    shutil.rmtree(spec.storage.uri, ignore_errors=True)
    model_path = resolve_model(spec.model.base)
    started = time.time()
    ray.init(num_cpus=2, object_store_memory=object_store_mib << 20)
    ensure_ray()
    with ObjectStoreSampler() as store:
        data = prepare_data(spec, model_path)
        epochs = epoch_datasets(spec, data.datasets, 1)
        build_trainer(spec, model_path, 1, epochs, None).fit()
    ray.shutdown()
    (first, *_) = read_history(run_location(spec))
    total = sum(data.rows.values())
    return {
        "rows": total,
        "first_step_s": round(first["time"] - started, 2),
        "peak_object_store_mib": round(store.peak / 2**20, 1),
        "spilled_mib": round(store.spilled / 2**20, 1),
        "peak_worker_rss_mib": round(first["peak_memory_mib"]),
        "rows_decoded_per_epoch": spec.scaling.num_workers * total,  # by construction
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--object-store-mib", type=int, default=512)
    parser.add_argument("--work", default="/tmp/streaming-bench")
    parser.add_argument("--out", default=str(ROOT / "bench" / "streaming_before.json"))
    parser.add_argument("--tree", default="/tmp/before", help="the checkout of 9d07d72")
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.case:
        print("RESULT " + json.dumps(run_case(args.case, args.object_store_mib, Path(args.work))))
        return
    # A corpus that does not fit is recorded as failed.
    cases = run_cases(str(Path(__file__).resolve()), args, Path(args.tree))
    report = {"cases": cases, "object_store_mib": args.object_store_mib, "commit": "9d07d72"}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
