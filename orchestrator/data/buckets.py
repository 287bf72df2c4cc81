"""Length bucketing: regroup a window of shuffled batches into batches of similar lengths.

Each batch is padded to its longest text, so a batch mixing a 40-token and a 256-token
paragraph pays for 256 tokens twice. Sorting a window of ``window`` consecutive (already
shuffled) global batches by row length and cutting it into batches again removes most of that
padding; the new batches are emitted in a seeded random order so that short and long ones
alternate. Ray Data has no length-aware batching, hence this module.

Everything is a pure function of the incoming batches and the seed, so a resumed run that
replays the same shuffled stream gets the same bucketed batches and skips exactly the ones
already trained on. Rows never leave their window: the shuffle stays nearly as random.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from orchestrator.data.tokenize import IDS_SUFFIX
from orchestrator.spec import ANCHOR

Rows = dict[str, np.ndarray]


def row_lengths(rows: Rows) -> np.ndarray:
    """Tokens of each row over all its text columns (what its padding cost grows with)."""
    columns = [c for c in rows if c.endswith(IDS_SUFFIX)]
    return sum(np.fromiter(map(len, rows[c]), np.int64, len(rows[c])) for c in columns)


def bucketed(batches: Iterable[Rows], window: int, seed: list[int]) -> Iterator[Rows]:
    """Batches of the same size and rows, regrouped by length within windows of ``window``."""
    rng = np.random.default_rng(seed)
    pending: list[Rows] = []
    for rows in batches:
        pending.append(rows)
        if len(pending) == window:
            yield from _regroup(pending, rng)
            pending = []
    if pending:
        yield from _regroup(pending, rng)


def _regroup(batches: list[Rows], rng: np.random.Generator) -> Iterator[Rows]:
    size = len(next(iter(batches[0].values())))
    merged = {c: np.concatenate([b[c] for b in batches]) for c in batches[0]}
    order = np.argsort(row_lengths(merged), kind="stable")
    groups = [order[start : start + size] for start in range(0, len(order), size)]
    for index in rng.permutation(len(groups)):
        yield {c: values[groups[index]] for c, values in merged.items()}


def token_counts(rows: Rows, group_rows: int | None = None) -> tuple[int, int]:
    """(non-padding tokens, tokens after padding) of a batch, padded as it is embedded.

    Queries are padded to the longest query, all passage columns together to the longest
    passage (:func:`orchestrator.data.tokenize.collate`); with ``group_rows`` each
    length-sorted group of that many to its own longest
    (:class:`orchestrator.modeling.PairEncoder`).
    """
    queries = [len(ids) for ids in rows[ANCHOR + IDS_SUFFIX]]
    passages = [
        len(ids)
        for c in rows
        if c.endswith(IDS_SUFFIX) and c != ANCHOR + IDS_SUFFIX
        for ids in rows[c]
    ]
    real = sum(queries) + sum(passages)
    return real, _padded(queries, group_rows) + _padded(passages, group_rows)


def _padded(lengths: list[int], group_rows: int | None) -> int:
    ordered = sorted(lengths)
    size = group_rows or len(ordered)
    groups = [ordered[start : start + size] for start in range(0, len(ordered), size)]
    return sum(group[-1] * len(group) for group in groups)
