"""Weighted per-step source choice and resumable per-source streams."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest

from orchestrator.data.mixture import (
    MixedStream,
    Mixture,
    Position,
    SourceStream,
    positions_from,
)

# --------------------------------------------------------------------------- Mixture


def test_weights_are_honoured():
    mixture = Mixture({"big": 3.0, "small": 1.0}, seed=0)
    counts = Counter(mixture.source_at(step) for step in range(20_000))
    assert counts["big"] / counts["small"] == pytest.approx(3.0, rel=0.05)


def test_every_rank_makes_the_same_choices():
    # Independent instances stand in for ranks: no communication, same answers.
    ranks = [Mixture({"a": 2.0, "b": 1.0, "c": 1.0}, seed=5) for _ in range(3)]
    for step in range(500):
        assert len({rank.source_at(step) for rank in ranks}) == 1


def test_choice_is_a_pure_function_of_seed_and_step():
    mixture = Mixture({"a": 1.0, "b": 1.0}, seed=11)
    forward = [mixture.source_at(step) for step in range(200)]
    backward = [mixture.source_at(step) for step in reversed(range(200))][::-1]
    resumed = Mixture({"a": 1.0, "b": 1.0}, seed=11)
    assert forward == backward == [resumed.source_at(step) for step in range(200)]


def test_different_seeds_choose_differently():
    weights = {"a": 1.0, "b": 1.0}
    first = [Mixture(weights, seed=1).source_at(step) for step in range(200)]
    second = [Mixture(weights, seed=2).source_at(step) for step in range(200)]
    assert first != second


def test_a_single_source_is_always_chosen():
    mixture = Mixture({"only": 0.3}, seed=0)
    assert {mixture.source_at(step) for step in range(100)} == {"only"}


@pytest.mark.parametrize(
    "weights", [{}, {"a": 0.0}, {"a": 1.0, "b": -1.0}], ids=["empty", "zero", "negative"]
)
def test_invalid_weights_raise(weights):
    with pytest.raises(ValueError, match="positive"):
        Mixture(weights, seed=0)


def test_choice_does_not_depend_on_the_order_of_sources():
    listed = Mixture({"a": 3.0, "b": 1.0}, seed=7)
    reordered = Mixture({"b": 1.0, "a": 3.0}, seed=7)
    assert [listed.source_at(s) for s in range(200)] == [reordered.source_at(s) for s in range(200)]


# --------------------------------------------------------------------------- SourceStream


def numbered(batches_per_epoch: int):
    """An ``open_epoch`` whose batches are numbered ``epoch * 100 + index`` (as a feed's:
    starting past the end raises)."""

    def open_epoch(epoch: int, start: int) -> Iterator[dict[str, np.ndarray]]:
        if start > batches_per_epoch:
            raise RuntimeError(f"checkpoint is at batch {start} of epoch {epoch}")
        for index in range(start, batches_per_epoch):
            yield {"id": np.array([epoch * 100 + index])}

    return open_epoch


def take(stream: SourceStream, n: int) -> list[int]:
    return [int(stream.next()["id"][0]) for _ in range(n)]


def test_epochs_roll_over_and_positions_advance():
    stream = SourceStream("s", numbered(3), Position())
    assert take(stream, 4) == [0, 1, 2, 100]
    assert stream.position == Position(epoch=1, batch=1)
    assert take(stream, 3) == [101, 102, 200]
    assert stream.position == Position(epoch=2, batch=1)


@pytest.mark.parametrize("stop_after", [0, 1, 3, 5, 6, 7])
def test_resume_continues_with_the_next_batch(stop_after):
    uninterrupted = take(SourceStream("s", numbered(3), Position()), 10)

    first = SourceStream("s", numbered(3), Position())
    before = take(first, stop_after)
    saved = Position(first.position.epoch, first.position.batch)
    after = take(SourceStream("s", numbered(3), saved), 10 - stop_after)
    assert before + after == uninterrupted


def test_stream_copies_the_position_it_starts_from():
    start = Position()
    SourceStream("s", numbered(3), start).next()
    assert start == Position()


def test_a_source_that_cannot_fill_a_batch_raises():
    stream = SourceStream("tiny", numbered(0), Position())
    with pytest.raises(RuntimeError, match="'tiny' cannot fill a single batch"):
        stream.next()


def test_resume_past_the_end_of_the_data_raises():
    stream = SourceStream("s", numbered(3), Position(epoch=2, batch=5))
    with pytest.raises(RuntimeError, match=r"batch 5 of epoch 2"):
        stream.next()


# --------------------------------------------------------------------------- MixedStream


def mixed(positions: dict[str, Position]) -> MixedStream:
    mixture = Mixture({"a": 1.0, "b": 1.0}, seed=3)
    streams = {
        "a": SourceStream("a", numbered(2), positions["a"]),
        "b": SourceStream("b", numbered(5), positions["b"]),
    }
    return MixedStream(mixture, streams)


def test_mixed_stream_draws_from_the_chosen_source():
    stream = mixed(positions_from(None, ["a", "b"]))
    for step in range(20):
        name, _ = stream.next(step)
        assert name == stream.mixture.source_at(step)


def test_mixed_positions_round_trip_through_positions_from():
    names = ["a", "b"]
    uninterrupted = mixed(positions_from(None, names))
    expected = [(n, int(rows["id"][0])) for n, rows in map(uninterrupted.next, range(30))]

    first = mixed(positions_from(None, names))
    got = [(n, int(rows["id"][0])) for n, rows in map(first.next, range(13))]
    saved = first.positions()
    assert saved == {
        n: {"epoch": s.position.epoch, "batch": s.position.batch} for n, s in first.streams.items()
    }
    resumed = mixed(positions_from(saved, names))
    got += [(n, int(rows["id"][0])) for n, rows in map(resumed.next, range(13, 30))]
    assert got == expected


def test_positions_from_starts_unknown_sources_at_the_beginning():
    positions = positions_from({"a": {"epoch": 2, "batch": 1}}, ["a", "new"])
    assert positions == {"a": Position(2, 1), "new": Position()}
