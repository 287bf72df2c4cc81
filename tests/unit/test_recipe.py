"""The recipe's step and report on the tiny model, without Ray: one optimizer step, the
report window, and the flat dict (and checkpoint) every report sends."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from orchestrator.checkpoints import META_FILE, STATE_FILE, CheckpointMeta
from orchestrator.data.buckets import token_counts
from orchestrator.data.tokenize import collate
from orchestrator.storage import Location

#: The keys of every report (as the recipe has always sent them); the optional ones below.
REPORT_KEYS = {
    "step",
    "total_steps",
    "loss",
    "lr",
    "pairs_seen",
    "pairs_per_s",
    "tokens_per_s",
    "step_time_s",
    "data_wait_fraction",
    "padding_fraction",
    "peak_memory_mib",
    "rows_decoded",
    "time",
    "negatives_per_query",
    "trainable_params",
    "total_params",
    "source_steps",
    "resumed_from_step",
    "restores",
}


@pytest.fixture
def recipe(tiny_spec, tiny_model, tmp_path):
    from orchestrator.spec import load_spec
    from orchestrator.train_loop import Recipe, build_learner

    tiny_spec["scaling"]["num_workers"] = 1
    spec = load_spec(tiny_spec)
    torch.manual_seed(0)
    learner = build_learner(spec, tiny_model, torch.device("cpu"), world=1, total_steps=4)
    mixed = SimpleNamespace(positions=lambda: {"colors": {"epoch": 0, "batch": 2}})
    return Recipe(
        spec, 4, 0, 1, torch.device("cpu"), learner, {}, mixed, Location(str(tmp_path)), 0, 7, 9
    )


def batch_of(seed: int):
    """A batch of 8 (query, positive) token-id rows, as a compiled source holds them."""
    rng = np.random.default_rng(seed)
    rows = {
        column: [rng.integers(5, 20, rng.integers(3, 9)) for _ in range(8)]
        for column in ("anchor__ids", "positive__ids")
    }
    return rows, collate(rows, pad_id=0)


def test_a_train_step_steps_the_optimizer_and_the_schedule(recipe):
    from orchestrator.train_loop import train_step

    learner = recipe.learner
    before = [p.detach().clone() for p in learner.model.parameters()]
    result = train_step(learner, batch_of(0)[1])
    assert result.loss.ndim == 0 and not result.loss.requires_grad
    assert result.hard_negatives == 0 and result.masked == 0  # infonce masks equal texts
    assert learner.scheduler.last_epoch == 1
    assert all(p.grad is None for p in learner.model.parameters())
    after = list(learner.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


def test_the_window_adds_steps_and_resets(recipe):
    from orchestrator.train_loop import ReportWindow, StepResult

    window = ReportWindow.on(recipe.device)
    window.add(StepResult(torch.tensor(2.0), 0, None))
    assert window.masked is None
    window.add(StepResult(torch.tensor(1.0), 0, 3))
    window.tokens, window.padded, window.data_wait = 10, 12, 0.5
    assert (window.steps, float(window.loss), window.masked) == (2, 3.0, 3)
    window.reset()
    assert (window.steps, float(window.loss), window.masked) == (0, 0.0, None)
    assert (window.tokens, window.padded, window.data_wait) == (0, 0, 0.0)


@pytest.mark.parametrize("checkpoint", [False, True], ids=["report", "checkpoint"])
def test_a_report_sends_the_same_flat_dict_and_checkpoint(recipe, monkeypatch, checkpoint):
    """The keys every report has always carried; ``false_negatives_masked`` when the loss
    masks, ``stream_digests`` at a checkpoint, ``eval/<metric>`` at an evaluation; and a
    checkpoint's meta.json with its nine keys, its metrics the reported dict."""
    import ray.train

    from orchestrator import train_loop
    from orchestrator.train_loop import ReportWindow, TrainingState, next_batch, train_step

    sent = []

    def fake_report(metrics, checkpoint=None, checkpoint_upload_fn=None):
        files = {}
        if checkpoint is not None:
            folder = Path(checkpoint.path)
            files = {
                "meta": json.loads((folder / META_FILE).read_text()),
                "state": sorted(torch.load(folder / STATE_FILE, weights_only=True)),
            }
        sent.append((metrics, files))

    monkeypatch.setattr(ray.train, "report", fake_report)
    monkeypatch.setattr(train_loop, "_validation", lambda recipe: {"ndcg@10": 0.5})
    rows, _ = batch_of(1)
    recipe.mixed.next = lambda step: ("colors", rows)
    state = TrainingState(source_steps={"more": 1})
    window = ReportWindow.on(recipe.device)
    for _ in range(2):
        source, batch = next_batch(recipe, state, window)
        window.add(train_step(recipe.learner, batch))
        state.advance(source, recipe.global_batch)
    assert state.digest and window.tokens == 2 * token_counts(rows)[0]
    last = train_step(recipe.learner, batch)
    train_loop.report(recipe, state, window, last, checkpoint=checkpoint, evaluate=checkpoint)

    (metrics, files), *_ = sent
    optional = {"false_negatives_masked"} | (
        {"stream_digests", "eval/ndcg@10"} if checkpoint else set()
    )
    assert set(metrics) == REPORT_KEYS | optional
    assert metrics["step"] == 2 and metrics["pairs_seen"] == 16
    assert metrics["source_steps"] == {"more": 1, "colors": 2}
    assert (metrics["trainable_params"], metrics["total_params"]) == (7, 9)
    if not checkpoint:
        assert files == {}
        return
    assert metrics["stream_digests"] == [state.digest]
    meta = files["meta"]
    assert list(meta) == list(json.loads(CheckpointMeta().to_json()))  # the nine keys
    assert meta["metrics"] == metrics and meta["positions"] == recipe.mixed.positions()
    assert files["state"] == ["model", "optimizer", "rng", "scheduler"]
    assert CheckpointMeta.from_json(json.dumps(meta)).reported == metrics
