"""A checkpoint read back from storage holds data, never code."""

from __future__ import annotations

import json

import pytest
import torch

from orchestrator.checkpoints import META_FILE, STATE_FILE


class Planted:
    """What an attacker with write access to the bucket would put in state.pt."""

    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('ran')",))


def checkpoint_with(folder, state):
    from ray.train import Checkpoint

    folder.mkdir()
    torch.save(state, folder / STATE_FILE)
    (folder / META_FILE).write_text(json.dumps({"step": 3}))
    return Checkpoint.from_directory(str(folder))


def test_a_training_state_loads(tmp_path):
    from orchestrator.train_loop import load_state

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), fused=False)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": [torch.get_rng_state()],
    }
    loaded, meta = load_state(checkpoint_with(tmp_path / "good", state))
    assert meta == {"step": 3}
    torch.testing.assert_close(loaded["model"]["weight"], model.weight.detach())
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)


def test_a_planted_object_is_refused_and_never_runs(tmp_path, monkeypatch):
    from orchestrator.train_loop import load_state

    monkeypatch.chdir(tmp_path)
    checkpoint = checkpoint_with(tmp_path / "planted", {"model": Planted()})
    with pytest.raises(Exception, match="Weights only load failed"):
        load_state(checkpoint)
    assert not (tmp_path / "PWNED").exists()


def _trained(spec, steps_done: int, total: int):
    from orchestrator.train_loop import build_scheduler

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.train.lr)
    scheduler = build_scheduler(optimizer, spec, total)
    for _ in range(steps_done):
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler


@pytest.mark.parametrize("new_lr", [1e-3, 1e-4], ids=["same", "changed"])
def test_resuming_keeps_or_reapplies_the_schedule_and_says_which(tiny_spec, new_lr, caplog):
    from orchestrator.spec import load_spec
    from orchestrator.train_loop import build_scheduler, restore_schedule, schedule_of

    old = load_spec({**tiny_spec, "train": {**tiny_spec["train"], "lr": 1e-3, "warmup_ratio": 0}})
    _, optimizer, scheduler = _trained(old, 4, 10)
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    meta = {"step": 4, "schedule": schedule_of(old, 10)}

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
