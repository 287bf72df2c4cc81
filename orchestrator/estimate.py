"""What a run will do, told on the laptop before it is submitted: rows, steps, pairs, tokens.

A local source compiled already into local storage (``orchestrator data compile``, or an
earlier run) is read from its manifest: exact rows, bad rows and tokens. Otherwise the
local sources are read with the same parser and row checks as the compile and a sample is
tokenized with the base model's tokenizer, so a spec that would train for 3 steps or 40 epochs
is noticed before it queues for GPUs; sources in object storage are then not downloaded, and
their rows show as unknown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from orchestrator.assets import resolve_model
from orchestrator.data.sources import local_rows
from orchestrator.spec import ExperimentSpec

SAMPLE_ROWS = 512


@dataclass
class SourceEstimate:
    name: str
    rows: int | None  # usable rows; None for remote sources
    bad_rows: int | None
    share: float  # expected fraction of steps drawn from this source
    tokens_per_row: float | None  # mean non-padding tokens of anchor + positive + negatives


@dataclass
class Estimate:
    sources: list[SourceEstimate]
    steps: int | None
    pairs: int | None
    negatives_per_query: int
    tokens: int | None

    def epochs(self, source: SourceEstimate, batch_size: int) -> float | None:
        """How many times the run goes through ``source`` (a mixture may repeat a source)."""
        if self.steps is None or not source.rows:
            return None
        return self.steps * source.share * batch_size / source.rows

    def lines(self, batch_size: int) -> list[str]:
        """Human-readable lines, e.g. for ``orchestrator submit``."""

        def fmt(value: float | None, spec: str = ",") -> str:
            return "unknown" if value is None else format(value, spec)

        out = [
            f"steps {fmt(self.steps)} x batch {batch_size} = {fmt(self.pairs)} pairs, "
            f"~{fmt(self.tokens)} tokens, {negatives_phrase(self.negatives_per_query)}"
        ]
        for s in self.sources:
            out.append(
                f"  {s.name}: {fmt(s.rows)} rows ({fmt(s.bad_rows)} bad), "
                f"{s.share:.0%} of steps, {fmt(self.epochs(s, batch_size), '.2f')} epochs, "
                f"~{fmt(s.tokens_per_row, '.0f')} tokens/row"
            )
        return out


def total_steps(spec: ExperimentSpec, rows: dict[str, int]) -> int:
    """``train.max_steps``, or enough steps for ``train.epochs`` over all usable rows."""
    if spec.train.max_steps:
        return spec.train.max_steps
    return max(1, math.ceil(spec.train.epochs * sum(rows.values()) / spec.train.batch_size))


def estimate(spec: ExperimentSpec) -> Estimate:
    encode = _token_encoder(spec)
    weights = {name: source.weight for name, source in spec.data.sources.items()}
    sources = []
    for name, source in spec.data.sources.items():
        share = weights[name] / sum(weights.values())
        if manifest := _compiled(spec, source):
            rows = (
                manifest["rows"]
                if source.max_rows is None
                else min(manifest["rows"], source.max_rows)
            )
            tokens = manifest["tokens"] / max(manifest["rows"], 1)
            sources.append(SourceEstimate(name, rows, manifest["bad_rows"], share, tokens))
            continue
        if source.path.startswith("s3://"):
            sources.append(SourceEstimate(name, None, None, share, None))
            continue
        rows, bad, sample = _count(source)
        tokens = _mean_tokens(spec, encode, sample)
        sources.append(SourceEstimate(name, rows, bad, share, tokens))
    known = all(s.rows is not None for s in sources)
    steps = (
        total_steps(spec, {s.name: s.rows for s in sources})
        if known or spec.train.max_steps
        else None
    )
    batch = spec.train.batch_size
    tokens = None
    if steps is not None and all(s.tokens_per_row is not None for s in sources):
        tokens = round(sum(steps * s.share * batch * s.tokens_per_row for s in sources))
    hard = len(next(iter(spec.data.sources.values())).columns.negatives)
    return Estimate(
        sources=sources,
        steps=steps,
        pairs=steps * batch if steps is not None else None,
        negatives_per_query=spec.loss.negatives_per_query(
            spec.per_worker_batch_size, spec.scaling.num_workers, hard
        ),
        tokens=tokens,
    )


def _compiled(spec: ExperimentSpec, source) -> dict | None:
    """The source's compiled manifest, for a local source compiled into local storage with
    the model here; None otherwise (an estimate makes no network calls)."""
    from orchestrator.data.compile import find_compiled

    path = resolve_model(spec.model.base, fetch=False)
    remote = source.path.startswith("s3://") or spec.storage.uri.startswith("s3://")
    if remote or not Path(path).is_dir():
        return None
    try:
        return find_compiled(spec, source, path)
    except FileNotFoundError:  # a file that vanished: counting says which
        return None


def _count(source) -> tuple[int, int, list[list[str]]]:
    """(usable rows, bad rows, the texts of the first usable rows) of a local source."""
    rows = bad = 0
    sample: list[list[str]] = []
    for row, _problem in local_rows(source):
        if row is None:
            bad += 1
            continue
        rows += 1
        if len(sample) < SAMPLE_ROWS:
            sample.append([v for v in row.values() if isinstance(v, str)])
    if source.max_rows:
        rows = min(rows, source.max_rows)
    return rows, bad, sample


def _token_encoder(spec: ExperimentSpec):
    """The base model's token encoder, if the model is on this machine (else no token counts)."""
    from orchestrator.data.tokenize import token_encoder

    path = resolve_model(spec.model.base, fetch=False)
    return token_encoder(path, spec.model.max_seq_length) if Path(path).is_dir() else None


def _mean_tokens(spec: ExperimentSpec, encode, sample: list[list[str]]) -> float | None:
    if encode is None or not sample:
        return None
    prompts = [spec.model.query_prompt] + [spec.model.passage_prompt] * (len(sample[0]) - 1)
    texts = [prompt + text for row in sample for prompt, text in zip(prompts, row, strict=True)]
    return sum(map(len, encode(texts))) / len(sample)


def negatives_phrase(count: int) -> str:
    """``31 negatives per query``, or what a pair loss does instead."""
    return f"{count} negatives per query" if count else "each pair scored on its own"
