"""Training-step time with and without attention-probability dropout, same process, same batch.

With dropout > 0 in training mode, PyTorch's scaled-dot-product attention cannot use its fused
CPU kernel and falls back to the math path. This measures what `model.attention_dropout: 0`
buys per step.

    .venv/bin/python bench/attention_dropout.py [--steps 5] [--batch 32] [--seq 256]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from sentence_transformers import SentenceTransformer

from orchestrator.assets import data_home, resolve_model


def step_times(dropout: float | None, rows: list[dict], args) -> list[float]:
    kwargs = {"attention_probs_dropout_prob": dropout} if dropout is not None else None
    model = SentenceTransformer(
        resolve_model("all-MiniLM-L6-v2"), device="cpu", config_kwargs=kwargs
    )
    model.max_seq_length = args.seq
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    queries = model.preprocess([r["anchor"] for r in rows])
    passages = model.preprocess([r["positive"] for r in rows])
    times = []
    for _ in range(args.steps + 1):  # the first step warms up and is dropped
        start = time.perf_counter()
        q = torch.nn.functional.normalize(model(dict(queries))["sentence_embedding"], dim=-1)
        p = torch.nn.functional.normalize(model(dict(passages))["sentence_embedding"], dim=-1)
        loss = torch.nn.functional.cross_entropy(q @ p.T * 20, torch.arange(len(rows)))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=256)
    args = parser.parse_args()
    with open(data_home() / "squad" / "train.jsonl") as f:
        rows = [json.loads(next(f)) for _ in range(args.batch)]
    base = statistics.median(step_times(None, rows, args))
    fused = statistics.median(step_times(0.0, rows, args))
    print(
        f"MiniLM train step, batch {args.batch}, max_seq {args.seq}, "
        f"{torch.get_num_threads()} threads, median of {args.steps}:"
    )
    print(f"  attention dropout 0.1 (model default): {base:.2f} s")
    print(f"  attention dropout 0.0:                 {fused:.2f} s  ({base / fused:.2f}x faster)")


if __name__ == "__main__":
    main()
