"""One CPU training step in the main thread vs in another thread, per glibc malloc setting.

Ray Train runs the training function in a thread of its own. glibc gives a new thread its own
malloc arena, which returns freed memory to the kernel, so the next step faults it in again.
Each setting runs in a fresh process (glibc reads ``MALLOC_ARENA_MAX`` when the process
starts): all-MiniLM-L6-v2, InfoNCE, fused AdamW, 2 threads, batch 32 (queries of 16 tokens,
passages of 180), attention dropout 0; 2 warm-up steps, then 3 rounds of 4 steps in the main
thread and 4 in a new thread; medians of step time and minor page faults per step.

    .venv/bin/python bench/malloc_arenas.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time

SETTINGS = {"glibc default": {}, "MALLOC_ARENA_MAX=1": {"MALLOC_ARENA_MAX": "1"}}


def minor_faults() -> int:
    with open("/proc/self/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[7])


def measure() -> None:
    """In this process: step times and faults in the main thread and in a new thread."""
    import torch
    from sentence_transformers.sentence_transformer import losses

    from orchestrator.assets import resolve_model
    from orchestrator.modeling import load_encoder
    from orchestrator.spec import ModelSpec

    torch.set_num_threads(2)
    spec = ModelSpec(base="all-MiniLM-L6-v2", attention_dropout=0.0)
    model = load_encoder(resolve_model(spec.base), spec, "cpu")
    model.train()
    loss = losses.MultipleNegativesRankingLoss(model, scale=20.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    generator = torch.Generator().manual_seed(0)

    def batch(length: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(1000, 20000, (32, length), generator=generator)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    queries, passages = batch(16), batch(180)

    def steps(count: int, out: list[tuple[float, int]]) -> None:
        for _ in range(count):
            start, faults = time.perf_counter(), minor_faults()
            embeddings = [model(texts)["sentence_embedding"] for texts in (queries, passages)]
            loss.compute_loss_from_embeddings(embeddings, None).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            out.append((time.perf_counter() - start, minor_faults() - faults))

    results: dict[str, list[tuple[float, int]]] = {"main thread": [], "other thread": []}
    steps(2, [])
    for _ in range(3):
        steps(4, results["main thread"])
        thread = threading.Thread(target=steps, args=(4, results["other thread"]))
        thread.start()
        thread.join()
    for where, values in results.items():
        seconds = statistics.median(s for s, _ in values)
        faults = statistics.median(f for _, f in values)
        print(f"{where}\t{seconds:.2f}\t{faults:.0f}")


def main() -> None:
    print("| malloc | thread | s/step | minor faults/step |")
    print("|---|---|---:|---:|")
    for name, env in SETTINGS.items():
        out = subprocess.run(
            [sys.executable, __file__, "--measure"],
            env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for line in out.strip().splitlines():
            where, seconds, faults = line.split("\t")
            print(f"| {name} | {where} | {seconds} | {int(faults):,} |")


if __name__ == "__main__":
    measure() if sys.argv[1:] == ["--measure"] else main()
