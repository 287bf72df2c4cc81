"""What a run publishes (summary, report, model card, spec) writes the home folder as ``~``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.published import without_home
from tests.unit.test_report import make_history, make_summary


@pytest.mark.parametrize(
    ("text", "published"),
    [
        ('"/home/al/corpora/x.jsonl"', '"~/corpora/x.jsonl"'),
        ("base: /home/al", "base: ~"),
        ("see /home/al/a and /home/al/b", "see ~/a and ~/b"),
        ("/home/alice/x", "/home/alice/x"),  # another user's folder
        ("/home/al.old/x", "/home/al.old/x"),
        ("/data/home/al/x", "/data/home/al/x"),  # not a path that starts at the home folder
        ("s3://bucket/home/al/x", "s3://bucket/home/al/x"),
    ],
)
def test_only_paths_that_start_at_the_home_folder_change(text, published):
    assert without_home(text, "/home/al") == published


@pytest.fixture
def home(tmp_path_factory, monkeypatch) -> Path:
    """The tests' temporary root as $HOME: every fixture file (model, corpora) lies in it."""
    root = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("HOME", str(root))
    return root


def test_a_runs_summary_report_card_and_spec_name_no_home_folder(home, tiny_spec, tmp_path):
    from orchestrator.export import write_model_card
    from orchestrator.runner import RunResult, write_outputs
    from orchestrator.spec import load_spec
    from orchestrator.storage import Location
    from orchestrator.summary import SourceCounts, read_run_summary

    spec = load_spec(tiny_spec)
    run = tmp_path / "runs" / "tiny" / spec.run_id
    (run / "model").mkdir(parents=True)
    summary = make_summary()
    summary.model_uri = str(run / "model")
    summary.checkpoint = str(run / "checkpoint_1")
    summary.sources = {"colors": SourceCounts(rows=95, bad_rows=0)}
    summary.sources["more"] = SourceCounts(rows=64, bad_rows=0)
    history = "".join(json.dumps(r.to_metrics()) + "\n" for r in make_history())
    (run / "history.jsonl").write_text(history)
    write_outputs(Location(str(run)), summary)
    write_model_card(run / "model", spec, summary)
    (run / "spec.yaml").write_text(spec.published_yaml())

    for name in ("summary.json", "report.html", "model/README.md", "spec.yaml"):
        text = (run / name).read_text()
        assert str(home) not in text, name
    written = json.loads((run / "summary.json").read_text())
    assert written["model_uri"] == f"~/{run.relative_to(home)}/model"
    assert "base_model: ~/" in (run / "model/README.md").read_text()
    # What reads them back expands ~: the spec runs as before, the model folder is found.
    published = load_spec(str(run / "spec.yaml"))
    assert published.model.base.startswith("~/") and published.run_id == spec.run_id
    result = RunResult.of(Location(str(run)), read_run_summary(Location(str(run))))
    assert result.model_dir == run / "model"
