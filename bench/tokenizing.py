"""Tokenizing a spec's training rows: every text encoded vs each distinct text once.

What a Ray Data tokenizing process does with its batches of 256 rows, here in one process:
the model's Rust tokenizer (``tokenize.text_encoder``) with and without the per-process memo
(``tokenize.memoized``), fresh for each repeat, alternating; medians of 5 repeats.

    .venv/bin/python bench/tokenizing.py [--spec experiments/quickstart.yaml]
"""

from __future__ import annotations

import argparse
import statistics
import time

from orchestrator.assets import resolve_model
from orchestrator.data.sources import local_rows
from orchestrator.data.tokenize import memoized, text_encoder
from orchestrator.spec import load_spec

BATCH = 256  # runner._tokenized's batch size


def columns_of(spec) -> dict[str, list[str]]:
    """Every usable row's texts, by column, over all sources (as the tokenizing tasks see them)."""
    texts: dict[str, list[str]] = {}
    for source in spec.data.sources.values():
        for row, _ in local_rows(source):
            if row is not None:
                for column, value in row.items():
                    if isinstance(value, str):
                        texts.setdefault(column, []).append(value)
    return texts


def seconds(encode, texts: list[str]) -> float:
    start = time.perf_counter()
    for i in range(0, len(texts), BATCH):
        encode(texts[i : i + BATCH])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default="experiments/quickstart.yaml")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    spec = load_spec(args.spec)
    model_path = resolve_model(spec.model.base)
    texts = columns_of(spec)
    raw = text_encoder(model_path, spec.model.max_seq_length)
    print(f"{spec.name}: {spec.model.base}, max_seq_length {spec.model.max_seq_length}")
    print("| column | texts | distinct | every text s | distinct once s | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for column, values in texts.items():
        every, once = [], []
        for _ in range(args.repeats):
            every.append(seconds(raw, values))
            once.append(seconds(memoized(raw), values))
        a, b = statistics.median(every), statistics.median(once)
        distinct = len(set(values))
        print(f"| {column} | {len(values)} | {distinct} | {a:.2f} | {b:.2f} | {a / b:.1f}x |")


if __name__ == "__main__":
    main()
