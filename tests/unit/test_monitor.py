"""The run monitor's history: one report per step, kept right across restarts and resumes."""

from __future__ import annotations

import json

from orchestrator.monitor import RunMonitor, describe, read_history
from orchestrator.step_report import StepReport, run_report
from orchestrator.storage import Location


def report(step: int, resumed_from: int = 0, restores: int = 0, **extra) -> StepReport:
    return StepReport.from_metrics(
        {
            "step": step,
            "total_steps": 6,
            "loss": 1.0 / step,
            "lr": 1e-4,
            "time": 1.0,
            "pairs_per_s": 10.0,
            "tokens_per_s": 100.0,
            "resumed_from_step": resumed_from,
            "restores": restores,
            **extra,
        }
    )


def monitor(tmp_path) -> RunMonitor:
    return RunMonitor("run1", "tiny", Location(str(tmp_path / "run")), display="none")


def test_the_run_report_is_rank_zeros_with_tokens_summed_over_workers():
    merged = run_report(
        [report(3, rows_decoded=5, **{"eval/ndcg@10": 0.5}), report(3, rows_decoded=7)]
    )
    assert merged.tokens_per_s == 200.0 and merged.rows_decoded == 12
    assert merged.evaluation == {"ndcg@10": 0.5} and merged.pairs_per_s == 10.0
    assert merged.to_metrics()["eval/ndcg@10"] == 0.5


def test_history_is_written_after_every_report(tmp_path):
    m = monitor(tmp_path)
    for step in (1, 2, 3):
        m._append(report(step))
        assert [r.step for r in read_history(m.run)] == list(range(1, step + 1))


def test_a_restart_replaces_the_steps_it_trains_again(tmp_path):
    m = monitor(tmp_path)
    for step in (1, 2, 3, 4):
        m._append(report(step))
    # Worker failure after step 4; Ray Train restarts from the checkpoint of step 2.
    m._append(report(3, resumed_from=2, restores=1, loss=0.9))
    history = read_history(m.run)
    assert [r.step for r in history] == [1, 2, 3]
    assert history[-1].restores == 1


def test_a_restart_before_any_checkpoint_starts_the_history_again(tmp_path):
    m = monitor(tmp_path)
    for step in (1, 2):
        m._append(report(step))
    m._append(report(1))  # a node lost before the first checkpoint: step 1 again, from 0
    m._append(report(2, loss=0.7))
    assert [(r.step, r.loss) for r in read_history(m.run)] == [(1, 1.0), (2, 0.7)]


def test_a_local_history_is_appended_not_rewritten(tmp_path, monkeypatch):
    import orchestrator.monitor as monitoring

    m = monitor(tmp_path)
    m._append(report(1))  # the attempt's first report writes the file
    monkeypatch.setattr(monitoring, "write_text", None)  # later ones must only append
    for step in (2, 3):
        m._append(report(step))
    assert [r.step for r in read_history(m.run)] == [1, 2, 3]


def test_a_resumed_run_in_a_new_process_continues_the_file(tmp_path):
    first = monitor(tmp_path)
    for step in (1, 2, 3):
        first._append(report(step))
    second = monitor(tmp_path)  # `orchestrator run` again: resumes from the step-2 checkpoint
    second._append(report(3, resumed_from=2))
    second._append(report(4, resumed_from=2))
    assert [r.step for r in read_history(second.run)] == [1, 2, 3, 4]


def test_describe_shows_loss_throughput_and_evaluations():
    assert describe(report(2)) == "loss 0.500 · 10.0 pairs/s"
    assert describe(report(2, **{"eval/ndcg@10": 0.71234})) == (
        "loss 0.500 · 10.0 pairs/s · ndcg@10 0.7123"
    )


def test_a_torn_history_line_is_skipped_and_the_rest_kept(tmp_path, caplog):
    from orchestrator.storage import Location, write_text

    run = Location(str(tmp_path))
    lines = [json.dumps(report(step).to_metrics()) for step in (1, 2)]
    write_text(run.join("history.jsonl"), "\n".join([*lines, '{"step": 3}', '{"step": 4, "lo']))
    assert [r.step for r in read_history(run)] == [1, 2]
    assert "history.jsonl line 3 is not a training report" in caplog.text
    assert "history.jsonl line 4 is torn" in caplog.text
