"""A real search on the local Ray: interrupted with Ctrl-C, continued, ASHA, table, best model.

The learning rates make the outcome predictable: the first trial (lr 1e-2) learns, the
trials with a vanishing lr stay at the baseline, so ASHA stops them at its first rung.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

LEARNING_RATES = [1e-2, 1e-7, 3e-3, 1e-8]


def search_spec(tiny_model, corpora, root: Path) -> dict:
    from tests.conftest import tiny_spec_dict

    spec = tiny_spec_dict(tiny_model, corpora, root)
    spec["name"] = "tiny-search"
    # Relative paths, as in experiments/: trials must resolve them like the driver does.
    for source in spec["data"]["sources"].values():
        source["path"] = os.path.relpath(source["path"])
    spec["data"]["eval"] = {k: os.path.relpath(v) for k, v in spec["data"]["eval"].items()}
    # Half a CPU per trial: on 2 CPUs a trial still starts if an earlier test's Ray Train run
    # has not yet given back its placement group (seen after a worker-group restart).
    spec["scaling"] = {"num_workers": 1, "cpus_per_worker": 0.5, "cpus_per_data_task": 0.25}
    spec["train"].update(max_steps=8, eval_every=2, checkpoint_every=4, log_every=2)
    spec["tune"] = {
        "metric": "ndcg@10",
        "num_samples": 1,
        "max_concurrent_trials": 1,
        "grace_period": 2,
        "reduction_factor": 2,
        "space": {"train.lr": {"grid": LEARNING_RATES}},
    }
    return spec


def wait_for(condition, timeout: float, what: str, process: subprocess.Popen) -> None:
    deadline = time.time() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the search exited ({process.returncode}) before {what}")
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(1)


@pytest.fixture(scope="module")
def search(ray_cluster, tiny_model, corpora, tmp_path_factory, mlflow_uri):
    """Start the search from the CLI, Ctrl-C it during the second trial, then continue it;
    tracked in a real MLflow server."""
    import ray

    from orchestrator import load_spec, tune
    from orchestrator.layout import run_location
    from orchestrator.search_space import trial_spec

    root = tmp_path_factory.mktemp("search")
    raw = search_spec(tiny_model, corpora, root)
    raw["tracking"] = {"mlflow": {"uri": mlflow_uri, "experiment": "search"}}
    spec_file = root / "search.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    base = load_spec(raw)
    second = run_location(trial_spec(base, {"train.lr": LEARNING_RATES[1]})).path

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "tune", str(spec_file)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Trials run one at a time: the second one starting means the first one has ended.
        wait_for(lambda: (second / "spec.yaml").is_file(), 240, "the second trial", process)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    return base, process.returncode, output, tune(raw)


def test_an_interrupted_search_says_how_to_continue(search):
    _, returncode, output, _ = search
    assert returncode == 130, output[-3000:]
    assert "run `orchestrator tune` on the same spec again to continue it" in output


def test_the_continued_search_keeps_finished_trials_and_ends_the_rest(search):
    _, _, _, result = search
    by_lr = {row.params["train.lr"]: row for row in result.rows}
    assert sorted(by_lr) == sorted(LEARNING_RATES)
    # Finished before the interruption: kept by Tuner.restore, not run (or reused) again.
    assert by_lr[1e-2].status == "completed" and by_lr[1e-2].steps == 8
    assert all(row.status in ("completed", "stopped early") for row in result.rows)


def test_asha_stops_trials_that_trail_at_an_evaluation(search):
    _, _, _, result = search
    stopped = [row for row in result.rows if row.status == "stopped early"]
    assert stopped, [(r.params, r.status, r.history) for r in result.rows]
    for row in stopped:
        assert row.steps < 8 and row.history[-1][0] == row.steps
    assert {row.params["train.lr"] for row in stopped} <= {1e-7, 1e-8}


def test_the_results_table_is_sorted_and_complete(search):
    _, _, _, result = search
    folder = Path(result.tune_uri)
    rows = list(csv.DictReader((folder / "results.csv").open()))
    assert rows[0]["trial"] == "baseline"
    trials = rows[1:]
    assert len(trials) == 4
    assert [r["trial"] for r in trials] == [r.trial for r in result.rows]
    finished = [float(r["ndcg@10"]) for r in trials if r["status"] == "completed"]
    assert finished == sorted(finished, reverse=True)
    assert {"train.lr", "status", "steps", "ndcg@10", "time_s", "run_id"} <= set(trials[0])
    markdown = (folder / "results.md").read_text()
    assert "| `train.lr` |" in markdown and "stopped early" in markdown
    assert f"Base model: ndcg@10 = {result.summary.baseline['ndcg@10']:.4f}" in markdown
    assert (folder / "metric_vs_step.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_search_and_each_trial_are_tracked_in_mlflow(search, mlflow_uri):
    """One parent run for the search (continued, not duplicated, after the interruption),
    one child run per trial; the published best trial carries the evaluations and files."""
    from mlflow.tracking import MlflowClient

    from orchestrator.layout import tune_id

    base, _, _, result = search
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("search").experiment_id
    (parent,) = client.search_runs([experiment], f"tags.`orchestrator.tune_id` = '{tune_id(base)}'")
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["baseline/ndcg_at_10"] == pytest.approx(
        result.summary.baseline["ndcg@10"]
    )
    assert {"results.csv", "results.md", "summary.json"} <= {
        f.path for f in client.list_artifacts(parent.info.run_id)
    }
    children = client.search_runs(
        [experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    by_run = {c.data.tags["orchestrator.run_id"]: c for c in children}
    assert len(children) == len(by_run) == 4, "one MLflow run per trial"
    assert set(by_run) == {row.run_id for row in result.rows}
    best = by_run[result.best.run_id]
    assert best.data.metrics["finetuned/ndcg_at_10"] == pytest.approx(
        result.best.finetuned["ndcg@10"]
    )
    assert "report.html" in {f.path for f in client.list_artifacts(best.info.run_id)}
    assert client.get_metric_history(best.info.run_id, "eval/ndcg_at_10"), "its evaluations"


def test_the_best_trial_is_published_like_a_run(search):
    from sentence_transformers import SentenceTransformer

    _, _, _, result = search
    best = result.rows[0]
    assert best.status == "completed"
    assert result.best.run_id == best.run_id
    summary = result.best.summary
    assert summary.finetuned["ndcg@10"] == pytest.approx(best.metric, abs=1e-4)
    assert summary.verdict.baseline == result.summary.baseline["ndcg@10"]
    assert (result.best.run_dir / "summary.json").is_file()
    assert (result.best.model_dir / "manifest.json").is_file()
    model = SentenceTransformer(str(result.best.model_dir))
    assert model.encode(["what color is the car"]).shape == (1, 32)
    assert result.summary.best_model_uri == result.best.model_uri


def test_a_finished_search_is_not_run_again(search):
    from orchestrator import tune

    base, _, _, result = search
    again = tune(base)
    assert [(r.trial, r.status, r.metric) for r in again.rows] == [
        (r.trial, r.status, r.metric) for r in result.rows
    ]


def test_an_optuna_search_samples_and_publishes_its_best(
    ray_cluster, tiny_model, corpora, tmp_path
):
    pytest.importorskip("optuna")
    from orchestrator import tune

    raw = search_spec(tiny_model, corpora, tmp_path)
    raw["train"].update(max_steps=4, checkpoint_every=4)
    raw["tune"] = {
        "metric": "mrr@10",
        "search": "optuna",
        "scheduler": "fifo",
        "num_samples": 2,
        "space": {
            "train.lr": {"loguniform": [1e-3, 1e-2]},
            "loss.temperature": {"choice": [0.05, 0.1]},
        },
    }
    result = tune(raw)
    assert len(result.rows) == 2
    assert all(row.status == "completed" and row.steps == 4 for row in result.rows)
    assert all(1e-3 <= row.params["train.lr"] <= 1e-2 for row in result.rows)
    assert result.rows[0].metric >= result.rows[1].metric
    finetuned = result.best.summary.finetuned["mrr@10"]
    assert finetuned == pytest.approx(result.rows[0].metric, abs=1e-4)


def test_fresh_knows_every_trial_run_the_search_recorded(search):
    """What ``tune --fresh`` deletes besides the search folder: each trial's run folder."""
    from orchestrator.layout import tune_location
    from orchestrator.tuning import recorded_trial_runs

    base, _, _, result = search
    runs = recorded_trial_runs(base, tune_location(base))
    assert sorted(Path(run.uri).name for run in runs) == sorted(r.run_id for r in result.rows)
