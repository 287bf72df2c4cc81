"""A checkpoint read back from storage holds data, never code."""

from __future__ import annotations

import json

import pytest
import torch

from orchestrator.checkpoints import META_FILE, STATE_FILE, CheckpointMeta


class Planted:
    """What an attacker with write access to the bucket would put in state.pt."""

    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('ran')",))


def checkpoint_with(folder, state, step: int = 3):
    """A checkpoint folder as the train loop publishes one: state, meta, manifest last."""
    from ray.train import Checkpoint

    from orchestrator.storage import MANIFEST, build_manifest

    folder.mkdir(parents=True)
    torch.save(state, folder / STATE_FILE)
    (folder / META_FILE).write_text(json.dumps({"step": step}))
    (folder / MANIFEST).write_text(json.dumps(build_manifest(folder)))
    return Checkpoint.from_directory(str(folder))


def training_state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), fused=False)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": [torch.get_rng_state()],
    }


def test_a_training_state_loads(tmp_path):
    from orchestrator.checkpoints import load_state

    state = training_state()
    loaded, meta = load_state(checkpoint_with(tmp_path / "good", state))
    assert meta == CheckpointMeta(step=3)  # the keys it lacks take their defaults
    torch.testing.assert_close(loaded["model"]["weight"], state["model"]["weight"])
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda f: truncate(f / STATE_FILE), "state.pt does not match manifest.json"),
        (lambda f: (f / STATE_FILE).unlink(), "state.pt does not match manifest.json"),
        (lambda f: (f / "manifest.json").unlink(), "no manifest.json: an incomplete"),
        (lambda f: (f / "manifest.json").write_text("{"), "manifest.json is torn or not JSON"),
        (
            lambda f: (f / "manifest.json").write_text(
                json.dumps({"files": [{"path": "../outside", "size": 1, "sha256": "x"}]})
            ),
            "refusing the entry '../outside'",
        ),
        (
            lambda f: (f / "manifest.json").write_text(json.dumps({"files": [{"path": "x"}]})),
            "an entry without size or sha256",
        ),
    ],
    ids=["truncated", "missing-file", "no-manifest", "torn-manifest", "entry-outside", "no-sha"],
)
def test_a_damaged_checkpoint_is_refused_before_torch_reads_it(tmp_path, damage, problem):
    from orchestrator.checkpoints import load_state
    from orchestrator.errors import DamagedCheckpointError

    checkpoint = checkpoint_with(tmp_path / "checkpoint_1", training_state())
    damage(tmp_path / "checkpoint_1")
    with pytest.raises(DamagedCheckpointError, match=problem):
        load_state(checkpoint)


def test_a_resume_passes_over_damaged_checkpoints_to_the_newest_good_one(tmp_path, caplog):
    """The newest checkpoint was cut short; the one before it is planted: the resume takes
    the oldest, the only good one, and says which it passed over. A run whose every
    checkpoint is damaged starts over instead of failing at each restart."""
    from orchestrator.checkpoints import resume_state

    run = tmp_path / "run"
    names = ["checkpoint_2026-12-01_10-00-00.000001", "checkpoint_2026-12-01_10-00-01.000001"]
    good = checkpoint_with(run / names[0], training_state(seed=1), step=2)
    checkpoint_with(run / names[1], {"model": Planted()}, step=4)
    newest = checkpoint_with(run / "checkpoint_2026-12-01_10-00-02.000001", training_state(), 6)
    truncate(run / "checkpoint_2026-12-01_10-00-02.000001" / STATE_FILE)
    (run / "checkpoint_manager_snapshot.json").write_text("{}")

    state, meta = resume_state(newest)
    assert meta.step == 2
    torch.testing.assert_close(state["model"]["weight"], training_state(seed=1)["model"]["weight"])
    assert "state.pt does not match manifest.json (missing, truncated or changed)" in caplog.text
    assert "state.pt holds more than tensors and plain containers" in caplog.text
    assert f"resuming from the earlier checkpoint {good.path} (step 2)" in caplog.text

    truncate(run / names[0] / STATE_FILE)
    assert resume_state(newest) == (None, CheckpointMeta())
    assert "no checkpoint of this run verifies: training starts over at step 0" in caplog.text


def test_a_checkpoint_without_its_manifest_is_never_the_latest(tmp_path):
    from orchestrator.checkpoints import latest_checkpoint
    from orchestrator.storage import Location

    checkpoint_with(tmp_path / "checkpoint_a", training_state(), step=2)
    checkpoint_with(tmp_path / "checkpoint_b", training_state(), step=4)
    (tmp_path / "checkpoint_b" / "manifest.json").unlink()  # cut off before its manifest
    folder, meta = latest_checkpoint(Location(str(tmp_path)))
    assert meta.step == 2 and folder.uri.endswith("checkpoint_a")


def test_a_planted_object_is_refused_and_never_runs(tmp_path, monkeypatch):
    """The attacker can write a manifest that matches: weights-only loading still stops it."""
    from orchestrator.checkpoints import load_state
    from orchestrator.errors import DamagedCheckpointError

    monkeypatch.chdir(tmp_path)
    checkpoint = checkpoint_with(tmp_path / "planted", {"model": Planted()})
    with pytest.raises(DamagedCheckpointError, match="Unsupported global: GLOBAL exec"):
        load_state(checkpoint)
    assert not (tmp_path / "PWNED").exists()


def _trained(spec, steps_done: int, total: int):
    from orchestrator.optimizer import build_scheduler

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.train.lr)
    scheduler = build_scheduler(optimizer, spec, total)
    for _ in range(steps_done):
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler


@pytest.mark.parametrize("new_lr", [1e-3, 1e-4], ids=["same", "changed"])
def test_resuming_keeps_or_reapplies_the_schedule_and_says_which(tiny_spec, new_lr, caplog):
    from orchestrator.optimizer import build_scheduler, restore_schedule, schedule_of
    from orchestrator.spec import load_spec

    old = load_spec({**tiny_spec, "train": {**tiny_spec["train"], "lr": 1e-3, "warmup_ratio": 0}})
    _, optimizer, scheduler = _trained(old, 4, 10)
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    meta = CheckpointMeta(step=4, schedule=schedule_of(old, 10))

    new = load_spec({**tiny_spec, "train": {**old.train.model_dump(), "lr": new_lr}})
    model = torch.nn.Linear(2, 2)
    resumed_optimizer = torch.optim.AdamW(model.parameters(), lr=new_lr)
    resumed = build_scheduler(resumed_optimizer, new, 10)
    resumed_optimizer.load_state_dict(state["optimizer"])
    resumed = restore_schedule(resumed_optimizer, resumed, state, meta, new, 10)
    # linear decay from the spec's lr: at step 4 of 10, 60 % of it
    assert resumed.get_last_lr()[0] == pytest.approx(new_lr * 0.6)
    assert resumed_optimizer.param_groups[0]["lr"] == pytest.approx(new_lr * 0.6)
    if new_lr == 1e-3:  # the checkpoint's own scheduler state, silently
        assert "changed schedule" not in caplog.text
    else:
        assert "changed schedule (lr 0.001 -> 0.0001)" in caplog.text
        assert "keeping the weights, optimizer moments and data positions" in caplog.text


def test_checkpoint_meta_keeps_its_json_keys_and_reads_older_files():
    from orchestrator.step_report import StepReport

    report = StepReport(step=4, total_steps=4, loss=1.5, lr=1e-3, time=0.0, restores=1)
    meta = CheckpointMeta(
        step=4,
        schedule={"lr": 1e-3, "schedule": "linear", "warmup_ratio": 0.1, "total_steps": 4},
        pairs_seen=32,
        negatives_per_query=7,
        positions={"colors": {"epoch": 0, "batch": 3}},
        source_steps={"colors": 3, "more": 1},
        restores=1,
        stream_digests=["a", "b"],
        metrics=report,
    )
    data = json.loads(meta.to_json())
    assert list(data) == [
        "step",
        "schedule",
        "pairs_seen",
        "negatives_per_query",
        "positions",
        "source_steps",
        "restores",
        "stream_digests",
        "metrics",
    ]
    assert data["metrics"] == report.to_metrics() == meta.reported
    assert CheckpointMeta.from_json(meta.to_json()) == meta
    # A checkpoint of an earlier version: what it lacks takes the defaults.
    older = CheckpointMeta.from_json(json.dumps({"step": 2, "positions": {}, "future": 1}))
    assert (older.step, older.restores, older.source_steps, older.schedule) == (2, 0, {}, None)
    assert older.metrics is None and older.reported == {}
