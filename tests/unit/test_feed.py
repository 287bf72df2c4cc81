"""Each rank's share of a compiled source: an epoch plan, windows, exact resume, checksums."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.data.feed import (
    FeedSettings,
    Fragment,
    RankFeed,
    epoch_share,
    fragments_of,
)
from orchestrator.data.rank import chain_digest
from orchestrator.errors import DamagedDataError
from orchestrator.storage import Location


def write_fragments(root: Path, sizes: list[int]) -> list[Fragment]:
    """Fragments whose row *i* overall has anchor ids ``[i]`` and a positive of length 1 + i % 7."""
    fragments, first = [], 0
    for index, size in enumerate(sizes):
        ids = list(range(first, first + size))
        table = pa.table(
            {
                "anchor__ids": pa.array([[i] for i in ids], type=pa.list_(pa.int32())),
                "positive__ids": pa.array([[i] * (1 + i % 7) for i in ids], pa.list_(pa.int32())),
            }
        )
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        path = root / "fragments" / f"{index:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue())
        sha = hashlib.sha256(buffer.getvalue()).hexdigest()
        fragments.append(Fragment(f"fragments/{index:06d}.parquet", size, sha))
        first += size
    return fragments


def row_ids(batch: dict[str, np.ndarray]) -> list[int]:
    return [int(ids[0]) for ids in batch["anchor__ids"]]


def feed(root, fragments, rank=0, world=2, **settings) -> RankFeed:
    values = {"local_batch": 4, "window_rows": 16, "bucket_window": 0, "shuffle": True, "seed": 7}
    values.update(settings)
    return RankFeed("s", Location(str(root)), fragments, FeedSettings(**values), rank, world)


SIZES = [10, 3, 25, 8, 17, 1, 30, 6]  # 100 rows of uneven fragments


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_an_epochs_shares_cover_each_row_at_most_once_and_are_equal(world):
    fragments = [Fragment(f"f{i}", n, "") for i, n in enumerate(SIZES)]
    shares = [epoch_share(fragments, 7, "s", 0, world, r) for r in range(world)]
    rows = [sum(p.stop - p.start for p in share) for share in shares]
    assert rows == [100 // world] * world
    taken = [
        (p.fragment.path, i) for share in shares for p in share for i in range(p.start, p.stop)
    ]
    assert len(taken) == len(set(taken)) == 100 // world * world


def test_the_plan_is_a_pure_function_and_changes_with_the_epoch():
    fragments = [Fragment(f"f{i}", n, "") for i, n in enumerate(SIZES)]
    plan = [epoch_share(fragments, 7, "s", e, 2, 0) for e in (0, 1)]
    assert plan[0] == epoch_share(fragments, 7, "s", 0, 2, 0)
    assert plan[0] != plan[1]
    assert epoch_share(fragments, 7, "s", 0, 2, 0, shuffle=False)[0].fragment.path == "f0"


def test_max_rows_keeps_the_first_rows_in_file_order():
    manifest = {"rows": 20, "fragments": [{"path": p, "rows": 10, "sha256": ""} for p in "ab"]}
    assert [(f.path, f.rows) for f in fragments_of(manifest, 13)] == [("a", 10), ("b", 3)]
    assert sum(f.rows for f in fragments_of(manifest)) == 20


def test_ranks_read_disjoint_rows_and_an_epoch_reads_each_row_once(tmp_path):
    fragments = write_fragments(tmp_path, SIZES)
    feeds = [feed(tmp_path, fragments, rank) for rank in (0, 1)]
    seen = [[i for b in f.batches(0) for i in row_ids(b)] for f in feeds]
    assert not set(seen[0]) & set(seen[1])
    assert len(seen[0]) == len(seen[1]) == feeds[0].batches_per_epoch * 4 == 48
    # Over both ranks an epoch decodes the corpus once, plus the one fragment they share.
    decoded = sum(f.reader.rows_decoded for f in feeds)
    assert 100 <= decoded <= 100 + max(SIZES)


def test_the_first_window_draws_from_several_fragments(tmp_path):
    fragments = write_fragments(tmp_path, [20] * 10)  # 200 rows, fragment = ids // 20
    first = next(feed(tmp_path, fragments, window_rows=64, world=1).batches(0))
    assert len({i // 20 for i in row_ids(first)}) >= 3


@pytest.mark.parametrize("bucket_window", [0, 3])
@pytest.mark.parametrize("start", [0, 1, 3, 4, 5, 11])
def test_resuming_at_any_batch_gives_the_rest_of_the_epoch_exactly(tmp_path, start, bucket_window):
    fragments = write_fragments(tmp_path, SIZES)
    whole = list(feed(tmp_path, fragments, bucket_window=bucket_window).batches(0))
    resumed = feed(tmp_path, fragments, bucket_window=bucket_window)
    rest = list(resumed.batches(0, start))
    digest = ""
    for batch in rest:
        digest = chain_digest(digest, batch)
    expected = ""
    for batch in whole[start:]:
        expected = chain_digest(expected, batch)
    assert digest == expected and len(rest) == len(whole) - start


def test_a_resume_reads_from_its_window_not_from_the_start_of_the_epoch(tmp_path):
    fragments = write_fragments(tmp_path, [8] * 50)  # 400 rows: 100 batches of 4 on one rank
    late = feed(tmp_path, fragments, world=1, window_rows=32)
    next(late.batches(0, 90))
    assert late.reader.rows_decoded <= 32 + 2 * 8  # its window, and the fragments at its ends


def test_length_buckets_keep_a_window_rows_and_sort_by_length(tmp_path):
    fragments = write_fragments(tmp_path, SIZES)
    plain = list(feed(tmp_path, fragments, world=1).batches(0))
    bucketed = list(feed(tmp_path, fragments, world=1, bucket_window=4).batches(0))
    assert sorted(i for b in plain for i in row_ids(b)) == sorted(
        i for b in bucketed for i in row_ids(b)
    )
    spread = [np.ptp([len(p) for p in b["positive__ids"]]) for b in bucketed]
    assert np.mean(spread) < np.mean([np.ptp([len(p) for p in b["positive__ids"]]) for b in plain])


def test_a_fragment_that_does_not_match_its_checksum_is_refused(tmp_path):
    fragments = write_fragments(tmp_path, [12])
    path = tmp_path / fragments[0].path
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(DamagedDataError, match="does not match the sha256"):
        next(feed(tmp_path, fragments, world=1).batches(0))


def test_a_checkpoint_past_the_epoch_is_refused(tmp_path):
    fragments = write_fragments(tmp_path, SIZES)
    with pytest.raises(RuntimeError, match="batch 99 of epoch 0"):
        next(feed(tmp_path, fragments).batches(0, 99))
