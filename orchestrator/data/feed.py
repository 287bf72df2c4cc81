"""Each worker's share of a compiled source, epoch by epoch: read once, shuffled, resumable.

The epoch plan is a pure function of (the manifest's fragments, seed, source, epoch, world
size): the fragments in a seeded permutation, concatenated and cut into ``world`` runs of equal
rows; rank *r* reads only run *r*, so over all ranks an epoch decodes each row once (plus the
fragments two runs share). A run is read in windows of ``data.shuffle_window`` rows, whole
batches each; a window is shuffled with its own seed, regrouped by length, and cut into this
rank's local batches. Global batch *k* of a source is the ranks' local batches *k*.

So a batch's position — (epoch, batch index) in a checkpoint — names its window and its place
in it: a resume reads that one window, whatever the epoch's length (no replay of the batches
before it), and trains on exactly the rows an undisturbed run would have.

Why not Ray Data here: a training worker's share is a short list of fragments read in a
fixed order, starting at any row; Ray Data's iterators start a streaming executor per epoch,
need CPUs that the training workers' placement leaves none of on a small node, and hand out
blocks in the order tasks finish (``streaming_split``), which would make a resume skip other
rows. A thread reading the next window ahead is the whole prefetch this needs, and nothing
of the corpus enters the object store.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.data.buckets import bucketed
from orchestrator.errors import DamagedDataError
from orchestrator.storage import Location, read_bytes

Rows = dict[str, np.ndarray]


@dataclass(frozen=True)
class Fragment:
    """A compiled fragment: its path in the compiled folder, rows used and checksum."""

    path: str
    rows: int
    sha256: str


@dataclass(frozen=True)
class Piece:
    """Rows ``[start, stop)`` of one fragment."""

    fragment: Fragment
    start: int
    stop: int


@dataclass(frozen=True)
class FeedSettings:
    """How a rank turns its share into batches (the spec's data and train settings)."""

    local_batch: int
    window_rows: int
    bucket_window: int
    shuffle: bool
    seed: int


def fragments_of(manifest: dict[str, Any], max_rows: int | None = None) -> list[Fragment]:
    """The manifest's fragments in file order; ``max_rows`` keeps the first N rows only."""
    out, left = [], max_rows if max_rows is not None else manifest["rows"]
    for entry in manifest["fragments"]:
        if left <= 0:
            break
        rows = min(entry["rows"], left)
        out.append(Fragment(entry["path"], rows, entry["sha256"]))
        left -= rows
    return out


def _source_salt(source: str) -> int:
    return zlib.crc32(source.encode())


def epoch_share(
    fragments: list[Fragment],
    seed: int,
    source: str,
    epoch: int,
    world: int,
    rank: int,
    shuffle: bool = True,
) -> list[Piece]:
    """Rank ``rank``'s rows of an epoch: its run of the seeded fragment order.

    Every rank gets ``rows // world`` rows (the remainder of the division is not trained on
    that epoch; another epoch's permutation leaves other rows out).
    """
    order = range(len(fragments))
    if shuffle:
        rng = np.random.default_rng([seed, _source_salt(source), epoch])
        order = rng.permutation(len(fragments)).tolist()
    share = sum(f.rows for f in fragments) // world
    lo, hi = rank * share, (rank + 1) * share
    pieces, offset = [], 0
    for index in order:
        fragment = fragments[index]
        start, stop = max(lo - offset, 0), min(hi - offset, fragment.rows)
        if start < stop:
            pieces.append(Piece(fragment, start, stop))
        offset += fragment.rows
        if offset >= hi:
            break
    return pieces


def _rows_between(pieces: list[Piece], lo: int, hi: int) -> list[Piece]:
    """The pieces of rows ``[lo, hi)`` of a share."""
    out, offset = [], 0
    for piece in pieces:
        size = piece.stop - piece.start
        start, stop = max(lo - offset, 0), min(hi - offset, size)
        if start < stop:
            out.append(Piece(piece.fragment, piece.start + start, piece.start + stop))
        offset += size
        if offset >= hi:
            break
    return out


def table_rows(table: pa.Table) -> Rows:
    """A fragment's columns as numpy: token-id lists as object arrays of int32 arrays."""
    return {
        name: column.combine_chunks().to_numpy(zero_copy_only=False)
        for name, column in zip(table.column_names, table.columns, strict=True)
    }


class FragmentReader:
    """Verified fragments of one compiled folder; the last one is kept (two windows share it)."""

    def __init__(self, folder: Location) -> None:
        self.folder = folder
        self.rows_decoded = 0
        self._last: tuple[str, Rows] | None = None

    def read(self, fragment: Fragment) -> Rows:
        if self._last and self._last[0] == fragment.path:
            return self._last[1]
        location = self.folder.join(fragment.path)
        data = read_bytes(location)
        if hashlib.sha256(data).hexdigest() != fragment.sha256:
            raise DamagedDataError(
                f"{location.uri} does not match the sha256 in its manifest: delete "
                f"{self.folder.uri} to compile the source again"
            )
        rows = table_rows(pq.read_table(pa.BufferReader(data)))
        self.rows_decoded += len(next(iter(rows.values())))
        self._last = (fragment.path, rows)
        return rows

    def rows(self, pieces: list[Piece]) -> Rows:
        parts = []
        for piece in pieces:
            rows = self.read(piece.fragment)
            parts.append({c: v[piece.start : piece.stop] for c, v in rows.items()})
        return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}


class RankFeed:
    """This rank's local batches of one compiled source, from any (epoch, batch) on."""

    def __init__(
        self,
        name: str,
        folder: Location,
        fragments: list[Fragment],
        settings: FeedSettings,
        rank: int,
        world: int,
    ) -> None:
        self.name, self.fragments, self.settings = name, fragments, settings
        self.rank, self.world = rank, world
        self.reader = FragmentReader(folder)
        self.batches_per_epoch = sum(f.rows for f in fragments) // world // settings.local_batch
        self.window_batches = max(1, settings.window_rows // settings.local_batch)

    def share(self, epoch: int) -> list[Piece]:
        s = self.settings
        return epoch_share(
            self.fragments, s.seed, self.name, epoch, self.world, self.rank, s.shuffle
        )

    def batches(self, epoch: int, start: int = 0) -> Iterator[Rows]:
        """Local batches ``start, start+1, ...`` of ``epoch``; reads from ``start``'s window."""
        if start > self.batches_per_epoch:
            raise RuntimeError(
                f"source {self.name!r}: checkpoint is at batch {start} of epoch {epoch}, but "
                f"the data now has {self.batches_per_epoch} batches per epoch on this worker"
            )
        share = self.share(epoch)
        windows = range(
            start // self.window_batches, -(-self.batches_per_epoch // self.window_batches)
        )
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"feed-{self.name}") as pool:
            ahead: Future | None = None
            for window in windows:
                rows = (ahead or pool.submit(self._window, share, window)).result()
                ahead = (
                    pool.submit(self._window, share, window + 1) if window + 1 in windows else None
                )
                first = window * self.window_batches
                for index, batch in enumerate(self._batches(rows, epoch, window)):
                    if first + index >= start:
                        yield batch

    def _window(self, share: list[Piece], window: int) -> Rows:
        b = self.settings.local_batch
        first = window * self.window_batches
        last = min(first + self.window_batches, self.batches_per_epoch)
        return self.reader.rows(_rows_between(share, first * b, last * b))

    def _batches(self, rows: Rows, epoch: int, window: int) -> Iterator[Rows]:
        s = self.settings
        seed = [s.seed, _source_salt(self.name), epoch, self.rank, window]
        size = len(next(iter(rows.values())))
        if s.shuffle:
            order = np.random.default_rng(seed).permutation(size)
            rows = {c: v[order] for c, v in rows.items()}
        batches = (
            {c: v[at : at + s.local_batch] for c, v in rows.items()}
            for at in range(0, size, s.local_batch)
        )
        if s.bucket_window > 1:
            batches = bucketed(batches, s.bucket_window, seed)
        yield from batches
