"""A search's results: one row per trial, as CSV and markdown, and a metric-vs-step plot."""

from __future__ import annotations

import contextlib
import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.layout import RESULTS_CSV, RESULTS_MD, RESULTS_PLOT
from orchestrator.plots import new_axes, to_png
from orchestrator.published import without_home
from orchestrator.search_space import Exploit, format_exploit
from orchestrator.spec import SpecError
from orchestrator.storage import Location, write_bytes, write_text

if TYPE_CHECKING:
    from ray.tune import ResultGrid

    from orchestrator.spec import ExperimentSpec

#: Trials whose final checkpoint holds a full training run; the best of them is published.
FINISHED = ("completed", "reused")
#: Keys a trial adds to what it reports to Tune: why it was skipped (its spec is invalid), or
#: that an identical run had finished and its final evaluation is the result.
SKIPPED, REUSED = "skipped", "reused_run"
#: Key of a population-based trial's results (and checkpoints' metadata): the exploits
#: behind its weights, oldest first (:func:`orchestrator.search_space.exploit_record`).
LINEAGE = "pbt_lineage"


@dataclass
class TrialRow:
    trial: str
    params: dict[str, Any]
    run_id: str
    status: str  # completed | reused | stopped early | skipped | error | not started
    steps: int
    total_steps: int | None
    metric: float | None
    time_s: float | None
    note: str = ""
    history: list[tuple[int, float]] = field(default_factory=list, repr=False)
    lineage: list[Exploit] = field(default_factory=list)  # population-based trials only

    @property
    def finished(self) -> bool:
        return self.status in FINISHED and self.metric is not None

    @property
    def lineage_text(self) -> str:
        """``trial-<donor>@step <n> (path old→new)`` for each exploit, oldest first."""
        return "; ".join(format_exploit(exploit) for exploit in self.lineage)

    def as_dict(self) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "run_id": self.run_id,
            **self.params,
            "status": self.status,
            "steps": self.steps,
            "total_steps": self.total_steps,
            "metric": self.metric,
            "time_s": self.time_s,
            "note": self.note,
            **({"lineage": self.lineage_text} if self.lineage else {}),
        }


def _status(result, metrics: dict[str, Any]) -> tuple[str, str]:
    if metrics.get(SKIPPED):
        return "skipped", metrics[SKIPPED]
    if result.error is not None:
        return "error", str(result.error).strip().splitlines()[-1][:300]
    if metrics.get(REUSED):
        return "reused", "an identical run had finished"
    if not metrics:
        return "not started", ""
    if metrics.get("step", 0) >= metrics.get("total_steps", math.inf):
        return "completed", ""
    return "stopped early", "by ASHA (behind at an evaluation) or the time budget"


def _number(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def trial_rows(
    grid: ResultGrid, base: ExperimentSpec, run_id_of: Callable[[TrialRow], str]
) -> list[TrialRow]:
    """One row per trial, best first (by the final evaluation of each trial); ``run_id_of``
    a row names its run folder (once its params and lineage are known)."""
    key, rows = base.tune.metric_key, []
    for result in grid:
        metrics = result.metrics or {}
        params = base.tune.trial_params(result.config or {})
        status, note = _status(result, metrics)
        frame = result.metrics_dataframe
        history = []
        if frame is not None and key in frame and "step" in frame:
            points = frame[["step", key]].dropna()
            history = [(int(s), float(v)) for s, v in points.itertuples(index=False)]
        row = TrialRow(
            trial=str(metrics.get("trial_id") or result.path.rsplit("-", 1)[-1]),
            params=params,
            run_id="",
            status=status,
            steps=int(metrics.get("step") or 0),
            total_steps=metrics.get("total_steps"),
            metric=_number(metrics.get(key)),
            time_s=_number(metrics.get("time_total_s")),
            note=note,
            history=history,
            lineage=metrics.get(LINEAGE) or [],
        )
        with contextlib.suppress(SpecError):  # values that make no valid spec: no run
            row.run_id = run_id_of(row)
        rows.append(row)
    sign = -1 if base.tune.mode == "max" else 1
    # ties (identical trials train identically) by trial id, so every listing orders alike
    rows.sort(key=lambda r: (r.metric is None, not r.finished, sign * (r.metric or 0.0), r.trial))
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 0.001 or abs(value) >= 1000 else f"{value:.4f}"
    return str(value)


def to_csv(rows: list[TrialRow], baseline: float, metric: str, lineage: bool = False) -> str:
    """The table as CSV; ``lineage``: a last column with each trial's exploits (PBT)."""
    params = list(dict.fromkeys(p for r in rows for p in r.params))
    header = ["rank", "trial", "run_id", *params, "status", "steps", "total_steps"]
    header += [metric, "time_s", "note", *(["lineage"] if lineage else [])]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerow(["", "baseline", "", *[""] * len(params), "base model", 0, "", baseline])
    for rank, r in enumerate(rows, start=1):
        values = [r.params.get(p, "") for p in params]
        cells = [rank, r.trial, r.run_id, *values, r.status, r.steps, r.total_steps]
        extra = [r.lineage_text] if lineage else []
        writer.writerow([*cells, r.metric, r.time_s, r.note, *extra])
    return out.getvalue()


def to_markdown(rows: list[TrialRow], baseline: float, spec: ExperimentSpec) -> str:
    metric = spec.tune.metric
    lineage = spec.tune.scheduler == "pbt"
    params = list(dict.fromkeys(p for r in rows for p in r.params))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    tally = ", ".join(f"{n} {status}" for status, n in counts.items())
    lines = [
        f"# Search `{spec.name}`: {metric} ({spec.tune.mode})",
        "",
        f"Base model: {metric} = {baseline:.4f}. {len(rows)} trial(s): {tally}.",
        "",
        "| # | trial | "
        + " | ".join(f"`{p}`" for p in params)
        + f" | status | steps | {metric} | Δ vs base | time (s) | run id |"
        + (" lineage |" if lineage else ""),
        "|---" * (len(params) + 8 + lineage) + "|",
    ]
    for rank, r in enumerate(rows, start=1):
        delta = f"{r.metric - baseline:+.4f}" if r.metric is not None else ""
        values = " | ".join(_cell(r.params.get(p)) for p in params)
        status = f"{r.status}: {r.note}" if r.status in ("skipped", "error") else r.status
        lines.append(
            f"| {rank} | {r.trial} | {values} | {status} | {r.steps}/{r.total_steps or '?'} | "
            f"{_cell(r.metric)} | {delta} | {r.time_s or 0:.0f} | {r.run_id} |"
            + (f" {r.lineage_text} |" if lineage else "")
        )
    return "\n".join(lines) + "\n"


def plot_history(rows: list[TrialRow], baseline: float, metric: str) -> bytes:
    """PNG: the metric at each evaluation, one line per trial, the base model dashed."""
    fig, ax = new_axes(size=(8, 5), dpi=110)
    for r in rows:
        if r.history:
            steps, values = zip(*r.history, strict=True)
            label = f"{r.trial} {' '.join(f'{k}={_cell(v)}' for k, v in r.params.items())}"
            ax.plot(steps, values, marker="o", label=label[:70])
    ax.axhline(baseline, linestyle="--", color="gray", label="base model")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7, loc="best")
    return to_png(fig)


def write_report(
    location: Location, spec: ExperimentSpec, rows: list[TrialRow], baseline: dict[str, float]
) -> str:
    """results.csv, results.md and metric_vs_step.png in the search's folder; the markdown."""
    metric = spec.tune.metric
    markdown = to_markdown(rows, baseline[metric], spec)
    table = to_csv(rows, baseline[metric], metric, lineage=spec.tune.scheduler == "pbt")
    write_text(location.join(RESULTS_CSV), without_home(table))
    write_text(location.join(RESULTS_MD), without_home(markdown))
    write_bytes(location.join(RESULTS_PLOT), plot_history(rows, baseline[metric], metric))
    return markdown
