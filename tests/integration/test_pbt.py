"""Population-based training on the local Ray: a trailing trial continues from the leader.

Two trials start at lr 1e-2 (learns) and 1e-8 (stays at the baseline), so at the first
perturbation both have scores the second trial is the one in the bottom quantile: it is
restored from the first trial's checkpoint with mutated values, and its row says so.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

STEPS = 8


@pytest.fixture(scope="module")
def pbt_search(ray_cluster, tiny_model, corpora, tmp_path_factory):
    from orchestrator import load_spec, tune
    from tests.integration.test_tune import search_spec

    raw = search_spec(tiny_model, corpora, tmp_path_factory.mktemp("pbt"))
    raw["name"] = "tiny-pbt"
    raw["train"].update(max_steps=STEPS, eval_every=2, checkpoint_every=2)
    raw["tune"] = {
        "metric": "ndcg@10",
        "scheduler": "pbt",
        "num_samples": 1,  # one trial per grid value
        "max_concurrent_trials": 2,  # the population trains side by side
        "resample_probability": 0.0,  # mutate by neighbour/factor: a predictable lineage
        "quantile_fraction": 0.5,
        "space": {
            "train.lr": {"grid": [1e-2, 1e-8]},
            "loss.temperature": {"uniform": [0.03, 0.1]},
        },
    }
    return load_spec(raw), tune(raw)


def exploited(result):
    rows = [row for row in result.rows if row.lineage]
    assert rows, [(r.trial, r.params, r.status, r.history) for r in result.rows]
    return rows


def test_a_trailing_trial_continues_from_the_leader_with_mutated_values(pbt_search):
    _, result = pbt_search
    assert len(result.rows) == 2
    assert all(row.status == "completed" and row.steps == STEPS for row in result.rows)
    trials = {row.trial for row in result.rows}
    for row in exploited(result):
        for exploit in row.lineage:
            assert exploit["trial"] in trials - {row.trial}
            assert exploit["step"] in (2, 4, 6)
        old, new = row.lineage[-1]["changes"]["loss.temperature"]
        assert new in (pytest.approx(max(old * 0.8, 0.03)), pytest.approx(min(old * 1.2, 0.1)))
        assert row.params["loss.temperature"] == pytest.approx(new)


def test_the_restored_trial_trains_with_its_new_learning_rate(pbt_search):
    """After an exploit the schedule restarts from the new base lr, at the donor's step."""
    import torch

    from orchestrator.layout import HISTORY_FILE, run_location
    from orchestrator.optimizer import build_scheduler
    from orchestrator.tuning import trial_run_spec

    base, result = pbt_search
    row = exploited(result)[0]
    spec = trial_run_spec(base, row)
    history = (run_location(spec).path / HISTORY_FILE).read_text().splitlines()
    first = json.loads(history[0])
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=spec.train.lr)
    schedule = build_scheduler(optimizer, spec, STEPS)
    for _ in range(first["step"]):
        optimizer.step()
        schedule.step()
    assert first["step"] == row.lineage[-1]["step"] + 2  # the donor's step, then onwards
    assert first["lr"] == pytest.approx(schedule.get_last_lr()[0])


def test_pbt_trials_never_share_a_folder_with_a_plain_run(pbt_search):
    from orchestrator.layout import run_location, tune_location
    from orchestrator.search_space import trial_spec
    from orchestrator.tuning import trial_run_spec

    base, result = pbt_search
    search = Path(tune_location(base).uri)
    for row in result.rows:
        folder = Path(run_location(trial_run_spec(base, row)).uri)
        assert folder.is_relative_to(search / "pbt" / f"trial-{row.trial}")
        assert (folder / "spec.yaml").is_file()
        assert not Path(run_location(trial_spec(base, row.params)).uri).exists()
    assert Path(result.best.run_uri).is_relative_to(search)
    assert (result.best.model_dir / "manifest.json").is_file()


def test_the_results_table_shows_each_trials_lineage(pbt_search):
    _, result = pbt_search
    folder = Path(result.tune_uri)
    markdown = (folder / "results.md").read_text()
    assert "| lineage |" in markdown.splitlines()[4]
    rows = {r["trial"]: r for r in csv.DictReader((folder / "results.csv").open())}
    for row in exploited(result):
        donor, step = row.lineage[-1]["trial"], row.lineage[-1]["step"]
        assert f"trial-{donor}@step {step} (" in row.lineage_text
        assert "loss.temperature " in row.lineage_text and "→" in row.lineage_text
        assert row.lineage_text in markdown
        assert rows[row.trial]["lineage"] == row.lineage_text
