"""Weighted single-source batches: every global step draws one source, identically on all ranks.

Ray Data has no notion of "each global batch comes from one dataset, chosen by weight" (the
Jina/BGE practice that keeps gathered in-batch negatives in one domain), so it lives here.
The choice for step *s* is a pure function of ``(seed, s)``: every rank computes it without
communication, and a resumed run makes the same choices it would have made uninterrupted.
Each source keeps its own position (epoch, batches consumed): a resume starts each source
exactly there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

Rows = dict[str, np.ndarray]


class Mixture:
    """Source chosen for each global step, with probabilities proportional to the weights."""

    def __init__(self, weights: Mapping[str, float], seed: int) -> None:
        if not weights or any(w <= 0 for w in weights.values()):
            raise ValueError(f"mixture weights must be positive: {dict(weights)}")
        self.names = sorted(weights)  # the spec hash ignores source order; so must the choice
        total = float(sum(weights.values()))
        self.probabilities = np.array([weights[n] / total for n in self.names])
        self.seed = seed

    def source_at(self, step: int) -> str:
        if len(self.names) == 1:
            return self.names[0]
        rng = np.random.default_rng([self.seed, step])
        return self.names[int(rng.choice(len(self.names), p=self.probabilities))]


@dataclass
class Position:
    """Where a source stands: its current epoch and the batches already taken from it."""

    epoch: int = 0
    batch: int = 0


def positions_from(saved: Mapping[str, Any] | None, names: list[str]) -> dict[str, Position]:
    """Positions from a checkpoint's ``meta.json`` (missing sources start at the beginning)."""
    saved = saved or {}
    return {name: Position(**saved[name]) if name in saved else Position() for name in names}


class SourceStream:
    """Endless batches of one source, epoch after epoch, from a saved position on.

    ``open_epoch(epoch, batch)`` returns that epoch's batches from index ``batch`` on (each
    epoch in an order of its own, the same on every call: a resumed epoch starts exactly at
    the batch where the checkpoint stopped, without reading the ones before).
    """

    def __init__(
        self, name: str, open_epoch: Callable[[int, int], Iterator[Rows]], position: Position
    ) -> None:
        self.name = name
        self._open_epoch = open_epoch
        self.position = Position(position.epoch, position.batch)
        self._batches: Iterator[Rows] | None = None

    def _open(self) -> Iterator[Rows]:
        return self._open_epoch(self.position.epoch, self.position.batch)

    def next(self) -> Rows:
        for _ in range(2):  # the current epoch, then at most one fresh one
            if self._batches is None:
                self._batches = self._open()
            rows = next(self._batches, None)
            if rows is not None:
                self.position.batch += 1
                return rows
            self._batches = None
            if self.position.batch == 0:
                break
            self.position = Position(self.position.epoch + 1, 0)
        raise RuntimeError(f"source {self.name!r} cannot fill a single batch on this worker")


class MixedStream:
    """Step → (source name, that source's next batch on this rank)."""

    def __init__(self, mixture: Mixture, streams: Mapping[str, SourceStream]) -> None:
        self.mixture = mixture
        self.streams = dict(streams)

    def next(self, step: int) -> tuple[str, Rows]:
        name = self.mixture.source_at(step)
        return name, self.streams[name].next()

    def positions(self) -> dict[str, dict[str, int]]:
        return {name: asdict(stream.position) for name, stream in self.streams.items()}
