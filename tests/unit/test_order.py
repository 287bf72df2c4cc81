"""Epoch orders: seeded, whole-source, and the same whatever the blocks look like."""

from __future__ import annotations

import numpy as np

from orchestrator.data.order import epochs_needed, order_keys, row_ids


def test_row_ids_put_the_file_above_the_line():
    ids = row_ids(np.array([0, 0, 2]), np.array([1, 7, 1]))
    assert ids.tolist() == [1, 7, (2 << 32) | 1]


def test_keys_are_a_seeded_permutation_of_the_whole_source():
    ids = row_ids(np.repeat(np.arange(4), 250), np.tile(np.arange(1, 251), 4))
    order = np.argsort(order_keys(ids, seed=42, epoch=0))
    assert np.array_equal(order, np.argsort(order_keys(ids, seed=42, epoch=0)))
    assert len(set(order_keys(ids, 42, 0).tolist())) == len(ids)
    # Another epoch or seed: another order. The first 64 rows span all four files.
    assert not np.array_equal(order, np.argsort(order_keys(ids, 42, 1)))
    assert not np.array_equal(order, np.argsort(order_keys(ids, 43, 0)))
    assert set((ids[order[:64]] >> np.uint64(32)).tolist()) == {0, 1, 2, 3}
    # A row's key depends on that row only: a subset (another block layout) keeps its order.
    subset = ids[::3]
    sub_order = subset[np.argsort(order_keys(subset, 42, 0))]
    assert np.array_equal(sub_order, [i for i in ids[order] if i in set(subset.tolist())])


def test_epochs_needed_counts_full_batches_only():
    assert epochs_needed(rows=100, batch_size=32, steps=3) == 1  # 3 batches per epoch
    assert epochs_needed(rows=100, batch_size=32, steps=4) == 2
    assert epochs_needed(rows=9183, batch_size=32, steps=40) == 1
