"""The run report: verdict, comparison table, embedded figures, escaping, TensorBoard scalars."""

from __future__ import annotations

import base64
import io
import struct
import sys
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydantic import TypeAdapter

from orchestrator.report import render_html, write_tensorboard
from orchestrator.step_report import StepReport
from orchestrator.summary import MergeChoice, RunSummary, SourceCounts
from orchestrator.verdict import GuardVerdict
from tests.summaries import run_summary, verdict_dict

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVAL_FIGURES = [f"held-out {m} during training" for m in ("ndcg@10", "mrr@10", "recall@10")]
ALL_FIGURES = ["training loss", *EVAL_FIGURES, "throughput", "data wait"]


def make_history(steps: int = 10, eval_every: int = 5, tokens: bool = True) -> list[StepReport]:
    """Reports as train_loop sends them: one per step, evaluations every ``eval_every``."""
    history = []
    for step in range(1, steps + 1):
        report: dict[str, Any] = {
            "step": step,
            "total_steps": steps,
            "loss": 2.0 - 0.1 * step,
            "lr": 2e-5 * (1 - step / steps),
            "time": 1000.0 + step,
            "pairs_seen": 32 * step,
            "pairs_per_s": 100.0 + step,
            "step_time_s": 0.32,
            "data_wait_fraction": 0.05,
            "negatives_per_query": 31,
            "trainable_params": 1000,
            "total_params": 5000,
            "source_steps": {"faq": step},
            "resumed_from_step": 0,
            "restores": 0,
        }
        if tokens:
            report["tokens_per_s"] = 4000.0 + 10 * step
        if step % eval_every == 0:
            report.update(
                {
                    "eval/ndcg@10": 0.40 + 0.01 * step,
                    "eval/mrr@10": 0.30 + 0.01 * step,
                    "eval/recall@10": 0.60 + 0.01 * step,
                    "eval/dim64/ndcg@10": 0.35 + 0.01 * step,
                }
            )
        if step == steps:
            report["stream_digests"] = ["abc"]
        history.append(StepReport.from_metrics(report))
    return history


def make_summary(improved: bool = True, name: str = "faq-tune") -> RunSummary:
    baseline = {"ndcg@10": 0.4000, "mrr@10": 0.3500, "recall@10": 0.6000, "dim64/ndcg@10": 0.3000}
    if improved:
        finetuned = {"ndcg@10": 0.5012, "mrr@10": 0.3300, "recall@10": 0.7000}
    else:
        finetuned = {"ndcg@10": 0.3750, "mrr@10": 0.3600, "recall@10": 0.6000}
    finetuned["dim64/ndcg@10"] = 0.3125
    finetuned["map@100"] = 0.25  # scored only on the fine-tuned model: not comparable
    judged = verdict_dict(baseline["ndcg@10"], finetuned["ndcg@10"])
    return run_summary(name=name, baseline=baseline, finetuned=finetuned, verdict=judged)


class Page(HTMLParser):
    """The parts of a page the tests look at: text, table rows, tags with src/href."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.text: list[str] = []
        self.title = ""
        self.tables: dict[str, list[list[tuple[str, str]]]] = {}
        self.links: list[tuple[str, dict[str, str | None]]] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._cell_class = ""
        self._in_title = False
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if "src" in attributes or "href" in attributes or tag in ("link", "script"):
            self.links.append((tag, attributes))
        if tag == "table":
            self._table = attributes.get("class") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell, self._cell_class = [], attributes.get("class") or ""
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append(("".join(self._cell), self._cell_class))
            self._cell = None
        elif tag == "table":
            self._table = None
        self._in_title = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._in_title:
            self.title += data

    @property
    def images(self) -> dict[str, str]:
        return {a["alt"] or "": a["src"] or "" for tag, a in self.links if tag == "img"}


@pytest.fixture(scope="module")
def improving() -> Page:
    """The page of an improving run with a full history, rendered once for several tests."""
    return Page(render_html(make_history(), make_summary(improved=True)))


def test_improving_run_says_it_helped(improving):
    text = " ".join(improving.text)
    assert "Fine-tuning helped: improved: ndcg@10 0.4000 -> 0.5012, +0.1012 (no interval)" in text
    assert "WORSE" not in text


def test_worsening_run_says_it_made_it_worse():
    page = Page(render_html(make_history(), make_summary(improved=False)))
    text = " ".join(page.text)
    assert "Fine-tuning made it WORSE: worse: ndcg@10 0.4000 -> 0.3750, -0.0250" in text
    assert "Keep the base model." in text
    assert "helped" not in text


def test_table_has_every_shared_metric_headline_first_with_coloured_deltas(improving):
    page = improving
    header, *rows = page.tables["comparison"]
    assert [cell for cell, _ in header] == ["metric", "base", "fine-tuned", "Δ"]
    # Δ by hand: 0.5012-0.4000, 0.3300-0.3500, 0.7000-0.6000, 0.3125-0.3000; map@100 has no base.
    assert [[cell for cell, _ in row] for row in rows] == [
        ["ndcg@10", "0.4000", "0.5012", "+0.1012"],
        ["mrr@10", "0.3500", "0.3300", "-0.0200"],
        ["recall@10", "0.6000", "0.7000", "+0.1000"],
        ["dim64/ndcg@10", "0.3000", "0.3125", "+0.0125"],
    ]
    assert [row[3][1].split() for row in rows] == [
        ["num", "up"],
        ["num", "down"],
        ["num", "up"],
        ["num", "up"],
    ]


def test_unchanged_metric_is_neither_up_nor_down():
    page = Page(render_html(make_history(), make_summary(improved=False)))
    recall = next(row for row in page.tables["comparison"] if row[0][0] == "recall@10")
    assert recall[3] == ("+0.0000", "num same")


def test_every_figure_is_an_embedded_png_and_nothing_is_external(improving):
    page = improving
    assert list(page.images) == ALL_FIGURES
    for title, src in page.images.items():
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix), title
        png = base64.b64decode(src[len(prefix) :], validate=True)
        assert png.startswith(PNG_SIGNATURE), title
        with Image.open(io.BytesIO(png)) as image:
            assert image.size == (600, 300), title
    assert [tag for tag, _ in page.links] == ["img"] * len(ALL_FIGURES)
    assert all("href" not in attributes for _, attributes in page.links)


def test_old_history_without_tokens_and_no_evaluations_still_plots_training():
    history = make_history(eval_every=100, tokens=False)
    page = Page(render_html(history, make_summary()))
    assert list(page.images) == ["training loss", "throughput", "data wait"]


def test_empty_history_renders_the_table_and_no_curves():
    page = Page(render_html([], make_summary()))
    assert page.images == {}
    assert "No training reports were recorded." in page.text
    assert len(page.tables["comparison"]) == 1 + 4
    assert "Fine-tuning helped" in " ".join(page.text)


def test_facts_table(improving):
    page = improving
    facts = {row[0][0]: row[1][0] for row in page.tables["facts"]}
    assert facts["steps"] == "10"
    assert facts["pairs seen"] == "320"
    assert facts["negatives per query"] == "31"
    assert facts["source faq"] == "1,200 rows, 3 bad rows"
    assert facts["time: train"] == "42.2 s"
    assert facts["time: total"] == "60.0 s"


def test_hostile_experiment_name_is_escaped():
    name = '<script>alert("x")</script><img src="http://evil.example/x.png"> & co'
    summary = make_summary(name=name)
    summary.sources = {"<b>src</b>": SourceCounts(rows=1, bad_rows=0)}
    page_html = render_html(make_history(), summary)
    assert "<script>" not in page_html and "<b>" not in page_html
    page = Page(page_html)
    assert page.title == f"{name} · run run-1a2b3c"
    assert name in "".join(page.text)
    assert all(src.startswith("data:image/png;base64,") for src in page.images.values())
    assert len(page.images) == len(ALL_FIGURES)


def read_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Parse TensorBoard event files by hand: TFRecord framing, checked CRCs, Event protos.

    The ``tensorboard`` package (and its event reader) is not a dependency of this project.
    """
    from tensorboardX.crc32c import crc32c
    from tensorboardX.proto.event_pb2 import Event

    def masked(data: bytes) -> int:
        crc = crc32c(data)
        return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF

    scalars: dict[str, list[tuple[int, float]]] = {}
    files = sorted(directory.glob("events.out.tfevents.*"))
    assert len(files) == 1
    data, offset = files[0].read_bytes(), 0
    while offset < len(data):
        header = data[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
        assert length_crc == masked(header)
        record = data[offset + 12 : offset + 12 + length]
        (record_crc,) = struct.unpack("<I", data[offset + 12 + length : offset + 16 + length])
        assert record_crc == masked(record)
        offset += 16 + length
        event = Event.FromString(record)
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_scalars_read_back(tmp_path):
    history = make_history()
    assert write_tensorboard(history, tmp_path / "tb") == tmp_path / "tb"
    scalars = read_scalars(tmp_path / "tb")

    def expect(key: str) -> list[tuple[int, Any]]:
        rows = [r.to_metrics() for r in history]
        return [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in rows if key in r]

    assert scalars["train/loss"] == expect("loss")
    assert scalars["train/pairs_per_s"] == expect("pairs_per_s")
    assert scalars["train/tokens_per_s"] == expect("tokens_per_s")
    assert scalars["eval/ndcg@10"] == expect("eval/ndcg@10")
    assert [step for step, _ in scalars["eval/dim64/ndcg@10"]] == [5, 10]
    rows = [r.to_metrics() for r in history]
    numeric = {k for r in rows for k, v in r.items() if isinstance(v, (int, float))}
    tags = {k if k.startswith("eval/") else f"train/{k}" for k in numeric - {"step"}}
    assert set(scalars) == tags  # source_steps and stream_digests are not scalars


def test_tensorboard_without_tensorboardx_returns_none(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import now raises ImportError
    assert write_tensorboard(make_history(), tmp_path / "tb") is None
    assert not (tmp_path / "tb").exists()


def test_comparison_table_shows_each_named_sets_headline_metric():
    from orchestrator.export import comparison_table

    base = {"ndcg@10": 0.5, "refutes/accuracy": 0.6, "labels/roc_auc": 0.7, "labels/f1": 0.4}
    tuned = {"ndcg@10": 0.6, "refutes/accuracy": 0.8, "labels/roc_auc": 0.75, "labels/f1": 0.5}
    judged = verdict_dict(0.7, 0.75, metric="labels/roc_auc")
    summary = run_summary(baseline=base, finetuned=tuned, verdict=judged)
    rows = [line.split(" | ")[0].strip("| ") for line in comparison_table(summary).splitlines()]
    assert rows[2:] == ["labels/roc_auc", "ndcg@10", "refutes/accuracy"]


def test_comparison_table_shows_each_domains_main_metric_and_the_guard_last():
    from orchestrator.export import comparison_table

    names = ["ndcg@10", "nq/ndcg@10", "nyt/ndcg@10", "nyt/mrr@10", "reddit/ndcg@10"]
    base, tuned = dict.fromkeys(names, 0.5), dict.fromkeys(names, 0.6)
    guard = {**verdict_dict(0.5, 0.6, metric="nq/ndcg@10"), "max_drop": 0.005, "forgot": False}
    summary = run_summary(baseline=base, finetuned=tuned, verdict=verdict_dict(guard=guard))
    rows = [line.split(" | ")[0].strip("| ") for line in comparison_table(summary).splitlines()]
    assert [r for r in rows[2:] if "/" in r] == ["nyt/ndcg@10", "reddit/ndcg@10", "nq/ndcg@10"]


def test_a_merge_search_adds_its_trade_off_plot_and_a_fact():
    summary = make_summary(improved=True)
    guard = {
        **verdict_dict(0.80, 0.797, metric="nq/ndcg@10"),
        "interval": [-0.01, 0.004],
        "outcome": "within noise",
        "max_drop": 0.005,
        "forgot": False,
    }
    summary.verdict = replace(
        summary.verdict, guard=TypeAdapter(GuardVerdict).validate_python(guard)
    )
    summary.merge = MergeChoice(
        split="validation",
        chosen=0.5,
        alphas=[
            {"alpha": a, "ndcg@10": 0.80 + a / 20, "nq/ndcg@10": 0.80 - a / 30} for a in (0.5, 1.0)
        ],
    )
    page = Page(render_html(make_history(), summary))
    assert "merge: in-domain vs guard on validation, per alpha" in page.images
    text = " ".join(page.text)
    assert "alpha 0.5 of the fine-tuned weights' change" in text
    assert "general ability kept: nq/ndcg@10 0.8000 -> 0.7970" in text


def test_widths_precisions_and_formats_get_their_own_tables(tiny_spec, tmp_path):
    from orchestrator.export import write_model_card
    from orchestrator.spec import load_spec
    from orchestrator.summary import FormatFigures
    from orchestrator.verdict import Evaluation, guard_verdict

    summary = make_summary(improved=True)
    summary.baseline.update({"binary/ndcg@10": 0.3500, "dim64/int8/ndcg@10": 0.2900})
    summary.finetuned.update({"binary/ndcg@10": 0.4800, "dim64/int8/ndcg@10": 0.3100})
    summary.embedding_dim = 384
    summary.baseline["nq/ndcg@10"], summary.finetuned["nq/ndcg@10"] = 0.8336, 0.8299
    guard = guard_verdict(
        "nq/ndcg@10", 0.005, Evaluation(summary.baseline, {}), Evaluation(summary.finetuned, {})
    )
    summary.verdict = summary.verdict.with_guard(guard)
    onnx = {**summary.finetuned, "ndcg@10": 0.5012}
    int8 = {**summary.finetuned, "ndcg@10": 0.4900, "nq/ndcg@10": 0.8197}
    summary.formats = [
        FormatFigures(
            format="pytorch",
            file="model.safetensors",
            size_bytes=90 * 2**20,
            metrics=summary.finetuned,
            eval_s=10.0,
        ),
        FormatFigures(
            format="onnx", file="onnx/model.onnx", size_bytes=90 * 2**20, metrics=onnx, eval_s=8.0
        ),
        FormatFigures(
            format="onnx_int8",
            file="onnx/model_qint8.onnx",
            size_bytes=23 * 2**20,
            metrics=int8,
            eval_s=5.5,
        ),
    ]
    page = Page(render_html(make_history(), summary))
    widths = [[text for text, _ in row] for row in page.tables["precision"]]
    assert widths == [
        ["width", "precision", "bytes/vector", "base ndcg@10", "fine-tuned", "Δ"],
        ["384", "float32", "1,536", "0.4000", "0.5012", "+0.1012"],
        ["384", "binary", "48", "0.3500", "0.4800", "+0.1300"],
        ["64", "float32", "256", "0.3000", "0.3125", "+0.0125"],
        ["64", "int8", "64", "0.2900", "0.3100", "+0.0200"],
    ]
    header, *rows = page.tables["formats"]
    assert [text for text, _ in header][3:7] == [
        "ndcg@10",
        "Δ vs PyTorch",
        "nq/ndcg@10",
        "Δ vs PyTorch",
    ]
    assert [(row[0][0], row[2][0], row[4], row[6]) for row in rows] == [
        ("pytorch", "90.0 MiB", ("+0.0000", "num same"), ("+0.0000", "num same")),
        ("onnx", "90.0 MiB", ("+0.0000", "num same"), ("+0.0000", "num same")),
        ("onnx_int8", "23.0 MiB", ("-0.0112", "num down"), ("-0.0102", "num down")),
    ]

    spec = load_spec(tiny_spec)
    summary.sources = {name: SourceCounts(rows=96, bad_rows=0) for name in spec.data.sources}
    write_model_card(tmp_path, spec, summary)
    card = (tmp_path / "README.md").read_text()
    assert "| 64 | int8 | 64 | 0.2900 | 0.3100 | +0.0200 |" in card
    int8_row = "| onnx_int8 | `onnx/model_qint8.onnx` | 23.0 MiB | 0.4900 | -0.0112 | 0.8197 |"
    assert int8_row + " -0.0102 | 5.5 s |" in card
    assert 'backend="onnx", model_kwargs={"file_name": "onnx/model_qint8.onnx"}' in card
