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
