"""A finished run, for people: one self-contained ``report.html`` and TensorBoard scalars.

The page answers "should I use the fine-tuned model?" first (the verdict and the base vs
fine-tuned table), then shows how training went (loss, held-out metrics, throughput, data
waits) and the facts needed to reproduce or question the result. Everything is inline (CSS,
figures as PNG data URIs), so the one file can be attached to a ticket, mailed, or opened
straight from object storage without the rest of the run folder.
"""

from __future__ import annotations

import base64
import html
import numbers
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.export import HEADLINE, Table, compared, formats_table, precision_table
from orchestrator.plots import new_axes, to_png
from orchestrator.step_report import EVAL_PREFIX, StepReport
from orchestrator.verdict import headline

if TYPE_CHECKING:
    from orchestrator.summary import RunSummary


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       color: #1f2328; }
h1 small { color: #59636e; font-weight: normal; font-size: 0.6em; }
.verdict { padding: 0.8rem 1rem; border-radius: 6px; font-size: 1.15rem; }
.verdict.good { background: #dafbe1; } .verdict.bad { background: #ffebe9; }
.verdict.same { background: #f6f8fa; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { padding: 0.25rem 0.8rem; border-bottom: 1px solid #d1d9e0; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.up { color: #1a7f37; font-weight: bold; } .down { color: #cf222e; font-weight: bold; }
.same { color: #59636e; }
figure { margin: 0 0 1.5rem; } figcaption { color: #59636e; font-size: 0.9rem; }
"""


def render_html(history: list[StepReport], summary: RunSummary) -> str:
    """The run's report page: verdict, base vs fine-tuned table, training curves, facts.

    ``history`` is rank 0's training reports in step order (may be empty); ``summary`` is the
    run's ``summary.json``. Every piece of text is escaped: names come from user specs.
    """
    name, run_id = _e(summary.name), _e(summary.run_id)
    figures = _figures(history, summary)
    curves = "\n".join(_figure_html(title, png) for title, png in figures.items())
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{name} · run {run_id}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{name} <small>run {run_id}</small></h1>
{_verdict_html(summary)}
<h2>Held-out evaluation: base vs fine-tuned</h2>
{_comparison_html(summary)}
{_table_html(precision_table(summary))}{_table_html(formats_table(summary))}<h2>Training</h2>
{curves or "<p>No training reports were recorded.</p>"}
<h2>Run facts</h2>
{_facts_html(summary)}
</body>
</html>
"""


def write_tensorboard(history: list[StepReport], directory: str | Path) -> Path | None:
    """Write ``history`` as TensorBoard scalars in ``directory``; the directory, or None.

    So ``tensorboard --logdir`` shows a finished run next to live ones, without TensorBoard
    having been attached during training. One scalar per numeric key at its report's step:
    ``eval/<metric>`` keys keep their name, the others become ``train/<key>``. Each call adds
    a new event file, so write a run's history once per directory.

    Written through tensorboardX's ``FileWriter`` rather than ``SummaryWriter.add_scalar``,
    which renames tags with ``@`` (``eval/ndcg@10`` would show as ``eval/ndcg_10``) and logs a
    line for every renamed scalar; TensorBoard itself takes any tag.

    tensorboardX is optional: when it is not installed this returns None instead of raising,
    and the caller decides whether that is worth a log line (the HTML report needs no extra).
    """
    try:
        from tensorboardX import FileWriter
        from tensorboardX.proto.summary_pb2 import Summary
    except ImportError:
        return None
    path = Path(directory)
    writer = FileWriter(str(path))
    try:
        for report in history:
            values = [
                Summary.Value(tag=_tag(key), simple_value=float(value))
                for key, value in report.to_metrics().items()
                if key != "step" and _is_number(value)
            ]
            writer.add_summary(Summary(value=values), global_step=report.step)
    finally:
        writer.close()
    return path


def _tag(key: str) -> str:
    return key if key.startswith(EVAL_PREFIX) else f"train/{key}"


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _e(value: Any) -> str:
    return html.escape(str(value))


def _verdict_html(summary: RunSummary) -> str:
    tone, sentence = headline(summary.verdict, summary.rejected)
    return f'<p class="verdict {tone}">{_e(sentence)}</p>'


def _delta_class(delta: float) -> str:
    return "up" if delta > 0 else "down" if delta < 0 else "same"


def _comparison_html(summary: RunSummary) -> str:
    """Every metric both models were scored on (Matryoshka dims too), headline ones first."""
    rows = [
        f'<tr><td>{_e(name)}</td><td class="num">{base:.4f}</td>'
        f'<td class="num">{tuned:.4f}</td>'
        f'<td class="num {_delta_class(delta)}">{delta:+.4f}</td></tr>'
        for name, base, tuned, delta in compared(summary, (*HEADLINE, *summary.baseline))
    ]
    header = "<tr><th>metric</th><th>base</th><th>fine-tuned</th><th>Δ</th></tr>"
    return f'<table class="comparison">{header}{"".join(rows)}</table>'


def _table_html(table: Table | None) -> str:
    """A card table as HTML: cells escaped, figures right-aligned, deltas coloured by sign."""
    if table is None:
        return ""
    deltas = {i for i, name in enumerate(table.header) if name.startswith("Δ")}

    def cell(i: int, text: str) -> str:
        text = _e(text.strip("`"))
        if i in deltas:
            return f'<td class="num {_delta_class(float(text))}">{text}</td>'
        return f'<td class="num">{text}</td>' if i >= table.numeric_from else f"<td>{text}</td>"

    head = "".join(f"<th>{_e(h)}</th>" for h in table.header)
    body = "".join(
        "<tr>" + "".join(cell(i, text) for i, text in enumerate(row)) + "</tr>"
        for row in table.rows
    )
    title = table.title.split(" (")[0]
    return f'<h2>{_e(title)}</h2>\n<table class="{table.name}"><tr>{head}</tr>{body}</table>\n'


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}"
    return str(value)


def _facts(summary: RunSummary) -> list[tuple[str, str]]:
    facts = [
        ("base model", _fmt(summary.base_model)),
        ("fine-tuned model", _fmt(summary.model_uri)),
        ("steps", _fmt(summary.steps)),
        ("pairs seen", _fmt(summary.pairs_seen)),
        ("negatives per query", _fmt(summary.negatives_per_query)),
    ]
    if merge := summary.merge:
        facts.append(("merged", f"alpha {merge.chosen} of the fine-tuned weights' change"))
    for name, source in summary.sources.items():
        counts = f"{_fmt(source.rows)} rows, {_fmt(source.bad_rows)} bad rows"
        facts.append((f"source {name}", counts))
    for phase, seconds in summary.timings_s.items():
        facts.append((f"time: {phase}", f"{seconds:,.1f} s"))
    return facts


def _facts_html(summary: RunSummary) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in _facts(summary))
    return f'<table class="facts">{rows}</table>'


def _figure_html(title: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img alt="{_e(title)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(title)}</figcaption></figure>"
    )


def _points(history: list[StepReport], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the reports that carry ``key`` (a flat metric name) as a number."""
    values = [(r.step, r.to_metrics().get(key)) for r in history]
    pairs = [(step, value) for step, value in values if _is_number(value)]
    return [s for s, _ in pairs], [v for _, v in pairs]


def _figures(history: list[StepReport], summary: RunSummary) -> dict[str, bytes]:
    """Title -> PNG of each curve the history has data for, in page order."""
    figures = {"training loss": _loss_png(history)}
    for metric in dict.fromkeys((summary.verdict.metric, *HEADLINE)):
        figures[f"held-out {metric} during training"] = _eval_png(history, summary, metric)
    figures["merge: in-domain vs guard on validation, per alpha"] = _merge_png(summary)
    figures["throughput"] = _throughput_png(history)
    figures["data wait"] = _data_wait_png(history)
    return {title: png for title, png in figures.items() if png is not None}


def _merge_png(summary: RunSummary) -> bytes | None:
    """The trade-off a merge chose from: each alpha's in-domain and guard validation figures."""
    merge, guard = summary.merge, summary.verdict.guard
    if merge is None or guard is None:
        return None
    main, key = summary.verdict.metric, guard.metric
    rows = [r for r in merge.alphas if main in r and key in r]
    if len(rows) < 2:
        return None
    figure, axes = new_axes()
    axes.plot([r[key] for r in rows], [r[main] for r in rows], marker="o")
    for r in rows:
        marker = " (chosen)" if r["alpha"] == merge.chosen else ""
        axes.annotate(f"alpha {r['alpha']}{marker}", (r[key], r[main]), fontsize=8)
    axes.set_xlabel(f"{key} (guard)")
    axes.set_ylabel(f"{main} (in-domain)")
    return to_png(figure)


def _loss_png(history: list[StepReport]) -> bytes | None:
    steps, values = _points(history, "loss")
    if not steps:
        return None
    figure, axes = new_axes()
    axes.plot(steps, values)
    axes.set_ylabel("training loss")
    return to_png(figure)


def _eval_png(history: list[StepReport], summary: RunSummary, metric: str) -> bytes | None:
    """The metric at each evaluation, against the base model (dashed) and the exported model.

    The exported model's score (the star) should sit on the curve's end: a gap means the
    export (LoRA merge, dtype) changed the model.
    """
    steps, values = _points(history, f"{EVAL_PREFIX}{metric}")
    if not steps:
        return None
    figure, axes = new_axes()
    axes.plot(steps, values, marker="o", label="during training")
    if metric in summary.baseline:
        base = summary.baseline[metric]
        axes.axhline(base, linestyle="--", color="gray", label=f"base model {base:.4f}")
    if metric in summary.finetuned:
        tuned = summary.finetuned[metric]
        final_step = summary.steps or steps[-1]
        axes.plot([final_step], [tuned], "r*", markersize=12, label=f"fine-tuned {tuned:.4f}")
    axes.set_ylabel(metric)
    axes.legend(fontsize=8, loc="best")
    return to_png(figure)


def _throughput_png(history: list[StepReport]) -> bytes | None:
    """Pairs per second, and tokens per second on a second axis where reports carry them."""
    steps, pairs = _points(history, "pairs_per_s")
    if not steps:
        return None
    figure, axes = new_axes()
    axes.plot(steps, pairs, color="tab:blue")
    axes.set_ylabel("pairs / s", color="tab:blue")
    token_steps, tokens = _points(history, "tokens_per_s")
    if token_steps:
        right = axes.twinx()
        right.plot(token_steps, tokens, color="tab:orange")
        right.set_ylabel("tokens / s", color="tab:orange")
    return to_png(figure)


def _data_wait_png(history: list[StepReport]) -> bytes | None:
    """Share of step time spent waiting for batches: near 0 means the data keeps up."""
    steps, values = _points(history, "data_wait_fraction")
    if not steps:
        return None
    figure, axes = new_axes()
    axes.plot(steps, values)
    axes.set_ylim(0, 1)
    axes.set_ylabel("data-wait fraction")
    return to_png(figure)
