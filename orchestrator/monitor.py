"""What a run shows while it trains: a progress bar, Ray metrics, and ``history.jsonl``.

One Ray Train callback does all three because all three need the same thing: every report,
in order, in one place. It runs in Ray Train's controller (not in the workers), so the
training loop stays free of printing, metric and storage calls. The bar is Ray's
``tqdm_ray``, which the driver draws with ``tqdm.auto``: a terminal bar, a notebook widget.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, Literal

from ray.train import UserCallback

from orchestrator.layout import HISTORY_FILE
from orchestrator.step_report import StepReport, run_report
from orchestrator.storage import Location, read_text, write_text

log = logging.getLogger("orchestrator")
Display = Literal["bar", "log", "none"]


def read_history(run: Location) -> list[StepReport]:
    """The reports of a run so far (empty for a run that has not reported yet)."""
    try:
        text = read_text(run.join(HISTORY_FILE))
    except FileNotFoundError:
        return []
    reports = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            if line:
                reports.append(StepReport.from_metrics(json.loads(line)))
        except json.JSONDecodeError:  # a torn line (a crash mid-copy): the others still count
            log.warning("%s line %d is torn; skipped", run.join(HISTORY_FILE).uri, number)
        except TypeError:  # valid JSON, but a required field is missing: not ours
            where = run.join(HISTORY_FILE).uri
            log.warning("%s line %d is not a training report; skipped", where, number)
    return reports


def describe(report: StepReport) -> str:
    """``loss 0.412 · 35.1 pairs/s``, plus the evaluation metrics of an evaluation report."""
    parts = [f"loss {report.loss:.3f}", f"{report.pairs_per_s:.1f} pairs/s"]
    parts += [f"{name} {value:.4f}" for name, value in report.evaluation.items()]
    return " · ".join(parts)


def interactive_display() -> Display:
    """A bar in a terminal or a notebook; a line per report elsewhere (a job's logs)."""
    return "bar" if sys.stderr.isatty() or "ipykernel" in sys.modules else "log"


class RunMonitor(UserCallback):
    """Progress (``display``), ``ray.util.metrics`` gauges and the run's ``history.jsonl``.

    ``display``: ``bar`` draws a progress bar, ``log`` prints a line per report, ``none``
    shows nothing (a search, whose progress is Tune's table).

    The history survives restarts and resumes: reports of steps that a restarted attempt
    trains again replace the old ones, so the file always describes the model being trained.
    """

    def __init__(self, run_id: str, experiment: str, run: Location, display: Display) -> None:
        self.run_id, self.experiment, self.run, self.display = run_id, experiment, run, display
        self._lines: list[str] = []  # the history's lines (kept for object stores only)
        self._attempt: tuple[int, int] | None = None
        self._last_step = -1
        self._telemetry = self._bar = None

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        report = run_report([StepReport.from_metrics(m) for m in metrics])
        self._append(report)
        if self._telemetry is None:  # created here, in the controller process
            from orchestrator.telemetry import TrainingTelemetry

            self._telemetry = TrainingTelemetry(self.run_id, self.experiment)
        self._telemetry.record(report)
        self._show(report)

    def _append(self, report: StepReport) -> None:
        """A local history grows by one line per report; it is rewritten once per attempt,
        without the reports that the attempt trains again. An object store has no append:
        there the object is written anew (O(reports) per report)."""
        attempt = (report.resumed_from_step, report.restores)
        line = json.dumps(report.to_metrics()) + "\n"
        target = self.run.join(HISTORY_FILE)
        # A new attempt (also one restarted before any checkpoint, whose step goes back):
        # drop what it will train again.
        new_attempt = attempt != self._attempt or report.step <= self._last_step
        self._attempt, self._last_step = attempt, report.step
        if new_attempt:
            kept = [r for r in read_history(self.run) if r.step <= attempt[0]]
            self._lines = [json.dumps(r.to_metrics()) + "\n" for r in kept] + [line]
            write_text(target, "".join(self._lines))
        elif target.is_remote:
            self._lines.append(line)
            write_text(target, "".join(self._lines))
        else:
            with target.path.open("a") as history:
                history.write(line)

    def _show(self, report: StepReport) -> None:
        step, total = report.step, report.total_steps
        if self.display == "log":  # printed: the controller's stdout reaches the job's logs
            print(f"{self.experiment} step {step}/{total}: {describe(report)}", flush=True)
        if self.display != "bar":
            return
        if self._bar is None:
            from ray.experimental import tqdm_ray

            self._bar = tqdm_ray.tqdm(total=total, desc=self.experiment, unit="step")
        self._bar.n = step
        self._bar.set_description(f"{self.experiment} {describe(report)}")
        if step >= total:
            self._bar.close()
