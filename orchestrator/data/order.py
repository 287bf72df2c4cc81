"""The order in which a source's rows are trained on: a pure function of the spec and the epoch.

Each usable row carries a stable identity, ``ROW_ID`` = (index of its file among the source's
sorted files, line number), set where the row is read. An epoch's order is the rows sorted by
a seeded hash of that identity: a permutation of the *whole* source, different each epoch, that
depends on nothing but (seed, epoch, the rows) — not on which Ray Data task finished first,
how many blocks the cluster's size made, which Ray instance or which driver process ran it.

Ray Data's own ``random_shuffle(seed=...)`` is seeded per input block, so its output changes
with the block layout (which follows the cluster's CPU count); a local shuffle buffer only
mixes neighbouring rows, so a short run sees the first files only. Sorting by a keyed hash is
the shuffle that is both global and layout-independent, hence this module.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    import ray.data

#: Column of every usable row: ``file index << 32 | line``; dropped before training.
ROW_ID = "_row"
_KEY = "_order"
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def row_ids(file_index: np.ndarray, line: np.ndarray) -> np.ndarray:
    """The stable identity of rows: their file's index among the source's files, and line."""
    return (file_index.astype(np.uint64) << np.uint64(32)) | line.astype(np.uint64)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer: a bijection of uint64 whose outputs look uniformly random."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def order_keys(ids: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """Sort keys of rows for (seed, epoch): distinct rows get independent-looking keys."""
    with np.errstate(over="ignore"):
        salt = _mix(np.uint64(seed & 0xFFFFFFFF) * _GOLDEN + np.uint64(epoch))
        return _mix(ids.astype(np.uint64) ^ salt)


def _with_keys(batch: pa.Table, seed: int, epoch: int) -> pa.Table:
    ids = batch[ROW_ID].to_numpy()
    return batch.append_column(_KEY, pa.array(order_keys(ids, seed, epoch)))


def epoch_order(
    dataset: ray.data.Dataset, seed: int, epoch: int, shuffle: bool, num_cpus: float
) -> ray.data.Dataset:
    """The rows of one epoch, in training order (lazy: runs when a worker reads the epoch).

    ``shuffle=False`` keeps the file order (for debugging, or data already shuffled).
    """
    if shuffle:
        keyed = dataset.map_batches(
            _with_keys,
            batch_format="pyarrow",
            fn_kwargs={"seed": seed, "epoch": epoch},
            num_cpus=num_cpus,
        )
        dataset = keyed.sort([_KEY, ROW_ID]).drop_columns([_KEY])
    return dataset.drop_columns([ROW_ID])


def epochs_needed(rows: int, batch_size: int, steps: int) -> int:
    """Epochs of a source that ``steps`` global batches can reach at most (full batches only)."""
    return max(1, math.ceil(steps / max(1, rows // batch_size)))


def epoch_name(source: str, epoch: int) -> str:
    """The name under which a source's epoch reaches the training workers."""
    return f"{source}.epoch{epoch}"
