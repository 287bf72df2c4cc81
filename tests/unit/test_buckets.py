"""Length bucketing: same rows, same batch sizes, less padding, deterministic for resume."""

from __future__ import annotations

import numpy as np

from orchestrator.data.buckets import bucketed, token_counts


def ids(length: int) -> np.ndarray:
    return np.arange(length, dtype=np.int32)


def batches(lengths: list[list[int]]) -> list[dict[str, np.ndarray]]:
    """Batches whose row i has an anchor of 3 tokens and a positive of lengths[b][i] tokens."""
    out = []
    for batch in lengths:
        anchors = np.empty(len(batch), dtype=object)
        positives = np.empty(len(batch), dtype=object)
        anchors[:] = [ids(3) for _ in batch]
        positives[:] = [ids(n) for n in batch]
        out.append({"anchor__ids": anchors, "positive__ids": positives, "row": np.array(batch)})
    return out


LENGTHS = [[40, 5, 38, 6], [7, 39, 4, 41], [20, 21, 3, 60]]


def test_token_counts_pad_queries_and_passages_separately():
    (rows,) = batches([[40, 5, 38, 6]])
    real, padded = token_counts(rows)
    assert real == 4 * 3 + (40 + 5 + 38 + 6)
    assert padded == 4 * 3 + 4 * 40


def test_token_counts_with_length_groups_pad_each_sorted_group_to_its_longest():
    (rows,) = batches([[40, 5, 38, 6]])
    real, padded = token_counts(rows, group_rows=2)
    assert real == 4 * 3 + (40 + 5 + 38 + 6)
    assert padded == 4 * 3 + 2 * 6 + 2 * 40  # passages sorted: (5, 6) and (38, 40)


def test_bucketing_keeps_rows_and_sizes_within_each_window():
    out = list(bucketed(batches(LENGTHS), window=2, seed=[1, 0]))
    assert [len(b["row"]) for b in out] == [4, 4, 4]
    first_window = sorted(r for b in out[:2] for r in b["row"])
    assert first_window == sorted(LENGTHS[0] + LENGTHS[1])  # rows never leave their window
    assert sorted(out[2]["row"]) == sorted(LENGTHS[2])  # the last, partial window
    for batch in out:  # every column of a row moved together
        assert [len(p) for p in batch["positive__ids"]] == list(batch["row"])


def test_bucketing_groups_similar_lengths_and_cuts_padding():
    before = sum(token_counts(b)[1] for b in batches(LENGTHS[:2]))
    out = list(bucketed(batches(LENGTHS[:2]), window=2, seed=[1, 0]))
    assert sorted(sorted(b["row"]) for b in out) == [[4, 5, 6, 7], [38, 39, 40, 41]]
    after = sum(token_counts(b)[1] for b in out)
    assert (before, after) == (2 * 12 + 4 * 40 + 4 * 41, 2 * 12 + 4 * 7 + 4 * 41)


def test_bucketing_is_a_function_of_the_stream_and_the_seed():
    def rows_of(seed):
        return [list(b["row"]) for b in bucketed(batches(LENGTHS), window=3, seed=seed)]

    assert rows_of([7, 1]) == rows_of([7, 1])
    orders = {tuple(map(tuple, rows_of([7, epoch]))) for epoch in range(8)}
    assert len(orders) > 1  # the order of the regrouped batches is shuffled by the seed
