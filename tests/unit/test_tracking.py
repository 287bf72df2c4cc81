"""MLflow tracking against a real local MLflow store (SQLite: MLflow 3 keeps its plain file
store in maintenance mode): the callback's metrics, a run's figures and files, a run found
again, trials under their search, and no credential in a spec."""

from __future__ import annotations

import pytest

from orchestrator.spec import SpecError, load_spec
from orchestrator.step_report import StepReport
from orchestrator.storage import Location
from orchestrator.tracking import (
    MlflowReports,
    MlflowTarget,
    NoTracking,
    TrialTracking,
    metric_key,
    spec_params,
    tracked,
)
from tests.summaries import run_summary

mlflow = pytest.importorskip("mlflow")


def report(step: int, **extra) -> dict:
    figures = {"step": step, "total_steps": 2, "loss": 1.0 / step, "lr": 1e-4, "time": 1.0}
    return StepReport.from_metrics({**figures, "tokens_per_s": 10.0, **extra}).to_metrics()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store for the module: creating its schema takes seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def spec(tiny_spec, tmp_path, store, request):
    """A spec tracked in its own experiment (one per test) of the module's store."""
    name = request.node.name
    # Created here with its artifacts in tmp_path (MLflow's default would be ./mlruns).
    MlflowTarget(store, name).client().create_experiment(name, (tmp_path / "artifacts").as_uri())
    return load_spec({**tiny_spec, "tracking": {"mlflow": {"uri": store, "experiment": name}}})


def only_run(target: MlflowTarget):
    client = target.client()
    (found,) = client.search_runs([client.get_experiment_by_name(target.experiment).experiment_id])
    return client, found


def test_a_tracked_run_logs_its_spec_reports_figures_and_files(spec, tmp_path):
    folder = tmp_path / "run"
    (folder / "model").mkdir(parents=True)
    (folder / "summary.json").write_text("{}")
    (folder / "model" / "README.md").write_text("# card")
    with tracked(spec) as tracking:
        (callback,) = tracking.callbacks()
        assert isinstance(callback, MlflowReports)
        callback.after_report(None, [report(1), report(1, tokens_per_s=5.0)], None)
        callback.after_report(None, [report(2, **{"eval/ndcg@10": 0.5})], None)
        summary = run_summary(steps=2, baseline={"ndcg@10": 0.8}, finetuned={"ndcg@10": 0.85})
        files = ["summary.json", "report.html", "model/README.md"]  # no report.html: skipped
        tracking.finished(summary, Location(str(folder)), files)
    client, run = only_run(tracking.target)
    assert run.info.status == "FINISHED"
    assert run.data.tags["orchestrator.run_id"] == spec.run_id
    assert run.data.params["train.lr"] == str(spec.train.lr)
    assert run.data.params["data.sources.colors.format"] == "jsonl"
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in losses] == [(1, 1.0), (2, 0.5)]
    tokens = client.get_metric_history(run.info.run_id, "train/tokens_per_s")
    assert tokens[0].value == 15.0  # the ranks' tokens summed, as the dashboards show them
    assert client.get_metric_history(run.info.run_id, "eval/ndcg_at_10")[0].value == 0.5
    assert run.data.metrics["finetuned/ndcg_at_10"] == 0.85
    assert run.data.metrics["verdict/delta"] == pytest.approx(summary.verdict.delta)
    assert run.data.tags["verdict"] == "improved"
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"summary.json", "model_README.md"}


def test_a_run_started_again_continues_its_mlflow_run(spec):
    for _ in range(2):
        with tracked(spec) as tracking:
            tracking.log({"x": 1.0})
    _, run = only_run(tracking.target)
    assert run.info.status == "RUNNING"  # not finished yet: neither attempt finished


def test_a_failed_run_is_marked_failed(spec):
    with pytest.raises(RuntimeError), tracked(spec):
        raise RuntimeError("the workers died")
    _, run = only_run(MlflowTarget.of(spec))
    assert run.info.status == "FAILED"


def test_trials_log_under_their_search(spec):
    with tracked(spec, search="tune-abc") as search:
        trials = TrialTracking.under(search)
        trial_spec = spec.model_copy(update={"name": "trial"})
        with trials.tracked(trial_spec) as trial:
            trial.log({"x": 1.0})
    client = search.target.client()
    experiment = client.get_experiment_by_name(search.target.experiment).experiment_id
    (child,) = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{search.run_id}'")
    assert child.data.tags["orchestrator.run_id"] == trial_spec.run_id != spec.run_id


def test_without_a_tracker_nothing_is_tracked(tiny_spec, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = load_spec(tiny_spec)
    assert MlflowTarget.of(spec) is None
    with tracked(spec) as tracking:
        assert isinstance(tracking, NoTracking) and tracking.callbacks() == []
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert MlflowTarget.of(spec) == MlflowTarget("http://127.0.0.1:5000", spec.name)


def test_tracking_is_not_part_of_the_run_id_and_takes_no_credentials(tiny_spec):
    plain = load_spec(tiny_spec)
    tracked_spec = load_spec({**tiny_spec, "tracking": {"mlflow": {"uri": "http://h:5000"}}})
    assert tracked_spec.run_id == plain.run_id
    with pytest.raises(SpecError) as error:
        load_spec({**tiny_spec, "tracking": {"mlflow": {"uri": "https://me:hunter2@h:5000"}}})
    assert any(
        p.startswith("tracking.mlflow.uri") and "never from a spec" in p
        for p in error.value.problems
    )
    assert "hunter2" not in str(error.value)


def test_metric_names_and_params_fit_mlflow(spec):
    assert metric_key("eval/nq/ndcg@10") == "eval/nq/ndcg_at_10"
    params = spec_params(spec)
    assert "tracking.mlflow.uri" not in params and all(len(v) <= 6000 for v in params.values())
