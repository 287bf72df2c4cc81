"""AdamW step time: the default (foreach) implementation vs the fused kernel, on CPU.

The parameter shapes of all-MiniLM-L6-v2 (22.7M), random gradients, 2 threads; both variants
alternate in one process, median of 10 steps each after one warm-up step.

    .venv/bin/python bench/fused_adamw.py
"""

from __future__ import annotations

import statistics
import time

import torch

from orchestrator.assets import resolve_model


def step_times(params: list[torch.nn.Parameter], fused: bool | None) -> list[float]:
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, fused=fused)
    optimizer.step()
    times = []
    for _ in range(10):
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    model = SentenceTransformer(resolve_model("all-MiniLM-L6-v2"), device="cpu")
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)
    results: dict[str, list[float]] = {"default": [], "fused": []}
    for _ in range(2):
        results["default"] += step_times(params, None)
        results["fused"] += step_times(params, True)
    default, fused = (statistics.median(results[k]) * 1000 for k in ("default", "fused"))
    count = sum(p.numel() for p in params) / 1e6
    print(
        f"AdamW over {count:.1f}M parameters: default {default:.0f} ms, fused {fused:.0f} ms "
        f"({default / fused:.1f}x)"
    )


if __name__ == "__main__":
    main()
