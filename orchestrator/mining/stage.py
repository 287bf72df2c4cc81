"""The mining stage: a source's pairs → mined JSONL rows and their provenance (see the package)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from orchestrator.assets import resolve_model
from orchestrator.data.sources import read_sources
from orchestrator.mining.embedding import embed, retrieve
from orchestrator.spec import ANCHOR, PAIRS, POSITIVE, TRIPLETS

if TYPE_CHECKING:
    from orchestrator.data.sources import SourceReport
    from orchestrator.spec import ExperimentSpec

#: Pairs filtered at once: bounds the pairs x candidates tensors.
PAIR_CHUNK = 1 << 16


@dataclass
class MiningConfig:
    """How many negatives to keep and which candidates count as likely false negatives.

    ``relative_margin`` drops a candidate scoring above ``pos - |pos| * relative_margin``
    (``pos * (1 - relative_margin)`` for a positive score; the ``|pos|`` form, as in
    sentence-transformers, does not loosen the rule when the positive score is negative).
    ``absolute_margin`` drops one scoring above ``pos - absolute_margin``.
    ``consistency_top_k`` keeps a pair only if its positive ranks within the anchor's top-k
    over the corpus (a cheap filter of noisy pairs, as in the BGE/E5 data recipes).
    """

    k: int = 4
    candidates: int = 30
    relative_margin: float | None = 0.05
    absolute_margin: float | None = None
    consistency_top_k: int | None = None
    model: str | None = None
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.k < 1 or self.candidates < 1 or self.batch_size < 1:
            raise ValueError("k, candidates and batch_size must be positive")
        if self.k > self.candidates:
            raise ValueError(f"k={self.k} negatives need candidates >= k, got {self.candidates}")
        if self.consistency_top_k is not None and not 1 <= self.consistency_top_k <= (
            self.candidates
        ):
            raise ValueError("consistency_top_k must lie in 1..candidates (ranks are retrieved)")
        for name in ("relative_margin", "absolute_margin"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")


@dataclass
class MiningCounts:
    """What the filters did: every pair read ends up kept or in one of the dropped counts."""

    pairs: int = 0
    unique_anchors: int = 0
    corpus: int = 0
    kept: int = 0
    dropped_too_few_negatives: int = 0
    dropped_inconsistent: int = 0
    removed_false_negatives: int = 0

    def add(self, chunk: MiningCounts) -> None:
        """Add a chunk's filter counts (the totals are set once, up front)."""
        for name in _FILTER_COUNTS:
            setattr(self, name, getattr(self, name) + getattr(chunk, name))


_FILTER_COUNTS = (
    "kept",
    "dropped_too_few_negatives",
    "dropped_inconsistent",
    "removed_false_negatives",
)


@dataclass
class MiningReport:
    """The counts of one mining run and where its rows and provenance were written."""

    source: str
    out_path: str
    provenance_path: str
    counts: MiningCounts
    bad_rows: int

    def lines(self) -> list[str]:
        c = self.counts
        return [
            f"mined {self.source}: {c.kept}/{c.pairs} pairs kept → {self.out_path}",
            f"  corpus: {c.corpus} unique positives, {c.unique_anchors} unique anchors, "
            f"{self.bad_rows} broken row(s) skipped by the reader",
            f"  dropped: {c.dropped_too_few_negatives} with too few negatives, "
            f"{c.dropped_inconsistent} whose positive ranks too low (consistency)",
            f"  removed {c.removed_false_negatives} candidate(s) as likely false negatives",
            f"  provenance: {self.provenance_path}",
        ]


@dataclass
class Pairs:
    """The source's pairs as indices: anchor → unique anchors, positive → corpus."""

    anchor: torch.Tensor  # (P,) int64
    positive: torch.Tensor  # (P,) int64
    positive_score: torch.Tensor  # (P,) float

    def __len__(self) -> int:
        return len(self.anchor)

    def chunk(self, start: int, stop: int) -> Pairs:
        return Pairs(
            self.anchor[start:stop], self.positive[start:stop], self.positive_score[start:stop]
        )


def known_positive_keys(pairs: Pairs, corpus_size: int) -> torch.Tensor:
    """``anchor * corpus_size + positive`` for every labelled pair, for ``torch.isin``.

    A text that is the labelled positive of the same anchor in another row is never one of its
    negatives (real corpora repeat questions with different answers).
    """
    return torch.unique(pairs.anchor * corpus_size + pairs.positive)


@dataclass
class Candidates:
    """The retrieval of every unique anchor, best first, and the labelled pairs to exclude."""

    scores: torch.Tensor  # (anchors, N) float
    indices: torch.Tensor  # (anchors, N) int64 corpus positions
    known: torch.Tensor  # keys of known_positive_keys
    corpus_size: int


@dataclass
class Selection:
    """One chunk's outcome: which pairs were kept, their negatives and the counts."""

    kept: torch.Tensor  # (P,) bool
    negatives: torch.Tensor  # (kept, k) int64 corpus positions
    negative_scores: torch.Tensor  # (kept, k) float
    counts: MiningCounts


def margin_mask(
    candidate_scores: torch.Tensor, positive_score: torch.Tensor, config: MiningConfig
) -> torch.Tensor:
    """True where a candidate scores too close to its positive (sentence-transformers' rules)."""
    pos = positive_score[:, None]
    removed = torch.zeros_like(candidate_scores, dtype=torch.bool)
    if config.absolute_margin is not None:
        removed |= candidate_scores > pos - config.absolute_margin
    if config.relative_margin is not None:
        removed |= candidate_scores > pos - pos.abs() * config.relative_margin
    return removed


def select_negatives(pairs: Pairs, candidates: Candidates, config: MiningConfig) -> Selection:
    """The hardest ``k`` surviving negatives of each pair of a chunk.

    Order of the filters: consistency drops a pair; known positives and margin failures drop
    candidates; pairs with fewer than ``k`` survivors are dropped, never padded.
    """
    scores, indices = candidates.scores[pairs.anchor], candidates.indices[pairs.anchor]
    keys = pairs.anchor[:, None] * candidates.corpus_size + indices
    positive = torch.isin(keys, candidates.known)
    consistent = torch.ones(len(pairs), dtype=torch.bool)
    if config.consistency_top_k is not None:
        top = indices[:, : config.consistency_top_k]
        consistent = (top == pairs.positive[:, None]).any(dim=1)
    margin = margin_mask(scores, pairs.positive_score, config) & ~positive
    survivors = ~positive & ~margin
    enough = survivors.sum(dim=1) >= config.k
    kept = consistent & enough
    # A stable sort on "not a survivor" puts the survivors first, still in score order.
    order = torch.sort((~survivors[kept]).to(torch.int8), dim=1, stable=True).indices
    first = order[:, : config.k]
    return Selection(
        kept=kept,
        negatives=indices[kept].gather(1, first),
        negative_scores=scores[kept].gather(1, first),
        counts=MiningCounts(
            kept=int(kept.sum()),
            dropped_inconsistent=int((~consistent).sum()),
            dropped_too_few_negatives=int((consistent & ~enough).sum()),
            removed_false_negatives=int(margin[consistent].sum()),
        ),
    )


# --------------------------------------------------------------------------- the stage


def unique_index(texts: list[str]) -> tuple[list[str], torch.Tensor]:
    """Unique texts in first-seen order, and each text's position among them.

    Identical texts map to one position: a repeated answer is one corpus entry, so it can be
    neither its own negative nor a duplicate negative.
    """
    positions: dict[str, int] = {}
    index = [positions.setdefault(t, len(positions)) for t in texts]
    return list(positions), torch.tensor(index, dtype=torch.int64)


def mined_rows(
    pairs: Pairs,
    candidates: Candidates,
    texts: tuple[list[str], list[str]],
    config: MiningConfig,
    counts: MiningCounts,
) -> Iterator[dict[str, Any]]:
    """Output rows, chunk by chunk; adds each chunk's counts to ``counts``."""
    anchors, corpus = texts
    for start in range(0, len(pairs), PAIR_CHUNK):
        chunk = pairs.chunk(start, start + PAIR_CHUNK)
        selection = select_negatives(chunk, candidates, config)
        counts.add(selection.counts)
        rows = selection.kept.nonzero().flatten().tolist()
        negatives = selection.negatives.tolist()
        negative_scores = selection.negative_scores.tolist()
        for row, negs, neg_scores in zip(rows, negatives, negative_scores, strict=True):
            yield {
                ANCHOR: anchors[int(chunk.anchor[row])],
                POSITIVE: corpus[int(chunk.positive[row])],
                **{f"negative_{i}": corpus[n] for i, n in enumerate(negs, start=1)},
                "positive_score": round(float(chunk.positive_score[row]), 6),
                "negative_scores": [round(s, 6) for s in neg_scores],
            }


def write_jsonl(path: Path, rows: Iterator[dict[str, Any]]) -> None:
    """Write rows to ``path`` through a ``.partial`` file: a crash leaves no half-mined file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(partial, path)


def read_pairs(spec: ExperimentSpec, source: str) -> tuple[list[dict[str, str]], SourceReport]:
    """The source's usable (anchor, positive) rows, read by the project's reader.

    Only this source is read; ``on_bad_rows: fail`` stops here as it would before training.
    """
    if source not in spec.data.sources:
        raise KeyError(f"no source {source!r} in data.sources ({sorted(spec.data.sources)})")
    row_format = spec.data.sources[source].columns.format
    if row_format not in (PAIRS, TRIPLETS):
        raise ValueError(
            f"data.sources.{source}: mining needs (anchor, positive) pairs; {row_format} pair "
            "texts that are not all positives"
        )
    data = spec.data.model_copy(update={"sources": {source: spec.data.sources[source]}})
    datasets, reports = read_sources(data, spec.scaling.cpus_per_data_task)
    rows = datasets[source].select_columns([ANCHOR, POSITIVE]).take_all()
    return rows, reports[0]


def provenance(
    spec: ExperimentSpec,
    source: str,
    model: str,
    config: MiningConfig,
    counts: MiningCounts,
    reader: SourceReport,
) -> dict[str, Any]:
    """Everything needed to trust or redo a mined file: inputs, settings, counts, time."""
    return {
        "model": model,
        "prompts": {"query": spec.model.query_prompt, "passage": spec.model.passage_prompt},
        "source": {
            "name": source,
            **spec.data.sources[source].model_dump(mode="json"),
            "rows": reader.rows,
            "bad_rows": reader.bad_rows,
        },
        "spec": {"name": spec.name, "run_id": spec.run_id, "hash": spec.hash()},
        "settings": asdict(config),
        "counts": asdict(counts),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def mine(spec: ExperimentSpec, source: str, out_path: str, config: MiningConfig) -> MiningReport:
    """Mine ``k`` hard negatives per pair of ``source``; write JSONL rows and provenance.

    The corpus is the source's unique positives. Rows are ``anchor``, ``positive``,
    ``negative_1..k`` (hardest first), ``positive_score`` and ``negative_scores``: a source
    for training with ``columns.negatives: [negative_1, ...]``.
    """
    from orchestrator.ray_init import ensure_ray

    ensure_ray()
    model = resolve_model(config.model or spec.model.base)
    rows, reader = read_pairs(spec, source)
    if not rows:
        raise ValueError(f"source {source!r} has no usable pairs to mine")
    anchors, anchor_index = unique_index([r[ANCHOR] for r in rows])
    corpus, positive_index = unique_index([r[POSITIVE] for r in rows])
    anchor_vectors, corpus_vectors = embed(spec, model, anchors, corpus, config.batch_size)
    scores, indices = retrieve(anchor_vectors, corpus_vectors, config.candidates)
    positive_score = (anchor_vectors[anchor_index] * corpus_vectors[positive_index]).sum(dim=1)
    pairs = Pairs(anchor_index, positive_index, positive_score)
    known = known_positive_keys(pairs, len(corpus))
    candidates = Candidates(scores, indices, known, len(corpus))
    counts = MiningCounts(pairs=len(rows), unique_anchors=len(anchors), corpus=len(corpus))
    out = Path(out_path)
    write_jsonl(out, mined_rows(pairs, candidates, (anchors, corpus), config, counts))
    record = provenance(spec, source, model, config, counts, reader)
    meta = out.with_name(out.name + ".provenance.json")
    meta.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return MiningReport(source, str(out), str(meta), counts, reader.bad_rows)
