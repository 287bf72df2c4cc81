"""What a finished run or search produced: ``summary.json``, typed.

A run's summary is assembled from two halves, each made where its facts are known: what
training did (:class:`Trained`, on the driver, from the last report and the compiled sources)
and what the export task judged (:class:`Judgement`: both evaluations, the verdicts, where the
model went). On disk it is one flat JSON object with a ``version``; pydantic reads it back
into these dataclasses, ignoring keys it does not know, so files of earlier versions read too.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from orchestrator.layout import SUMMARY_FILE
from orchestrator.published import without_home
from orchestrator.storage import Location, read_text, write_text
from orchestrator.verdict import Verdict

log = logging.getLogger("orchestrator")

#: 2: written from these types (1: the same keys, from dicts).
SUMMARY_VERSION = 2


@dataclass(kw_only=True)
class SourceCounts:
    """One source as compiled: usable rows, rows left out, and the first of those."""

    rows: int
    bad_rows: int
    examples: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class MergeChoice:
    """``merge:``: the alpha of base/fine-tuned interpolation that was exported and why.

    ``alphas`` holds each alpha's validation figures (main metric, guard metric, guard drop
    and its standard error); ``split`` is None when a single alpha was applied unevaluated.
    """

    chosen: float
    split: str | None
    alphas: list[dict[str, float]]
    base: dict[str, float] | None = None


@dataclass(kw_only=True)
class FormatFigures:
    """One runtime format of ``export.formats`` as exported and evaluated on the test split.

    ``metrics`` are the same evaluation as the fine-tuned PyTorch model's; ``eval_s`` the
    seconds that evaluation took through the format's runtime (embedding and scoring the
    test split), comparable across the formats of one run only.
    """

    format: str
    file: str
    size_bytes: int
    metrics: dict[str, float]
    eval_s: float


@dataclass(kw_only=True)
class Trained:
    """What training did, from the report that came with the final checkpoint."""

    run_id: str
    name: str
    spec_hash: str
    base_model: str
    steps: int
    resumed_from_step: int
    restores: int
    stream_digests: list[str] | None
    pairs_seen: int
    source_steps: dict[str, int]
    negatives_per_query: int
    trainable_params: int
    total_params: int
    final_loss: float | None
    sources: dict[str, SourceCounts]
    checkpoint: str  # the final checkpoint's URI


@dataclass(kw_only=True)
class Judgement:
    """What the export task found: both models on the test split, the verdict, the model's
    place (``model/``, or ``model.rejected/`` when the guard says it forgot)."""

    baseline: dict[str, float]
    finetuned: dict[str, float]
    verdict: Verdict
    model_uri: str
    rejected: bool
    merge: MergeChoice | None = None
    embedding_dim: int | None = None
    formats: list[FormatFigures] = field(default_factory=list)


@dataclass(kw_only=True)
class RunSummary(Judgement, Trained):
    """A finished run: ``summary.json``. ``timings_s``: seconds per phase and in ``total``."""

    timings_s: dict[str, float] = field(default_factory=dict)
    version: int = SUMMARY_VERSION

    @classmethod
    def of(cls, trained: Trained, judgement: Judgement, timings_s: dict[str, float]) -> RunSummary:
        return cls(**vars(trained), **vars(judgement), timings_s=timings_s)

    @property
    def improved(self) -> bool:
        return self.verdict.improved


@dataclass(kw_only=True)
class SearchSummary:
    """A finished search: its ``summary.json``. ``trials`` are the rows of results.csv."""

    tune_id: str
    name: str
    metric: str
    mode: str
    baseline: dict[str, float]
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None
    best_run_uri: str | None
    best_model_uri: str | None
    verdict: Verdict | None
    timings_s: dict[str, float]
    version: int = SUMMARY_VERSION


_RUN = TypeAdapter(RunSummary)
_SEARCH = TypeAdapter(SearchSummary)


def summary_dict(summary: RunSummary | SearchSummary) -> dict[str, Any]:
    """The JSON object of ``summary.json``, as plain dicts, lists and numbers."""
    adapter = _RUN if isinstance(summary, RunSummary) else _SEARCH
    return adapter.dump_python(summary, mode="json")


def parse_run_summary(text: str) -> RunSummary:
    """A run's ``summary.json`` text read back; pydantic's ValidationError if it is not one."""
    return _RUN.validate_json(text)


def parse_search_summary(text: str) -> SearchSummary:
    return _SEARCH.validate_json(text)


def to_json(summary: RunSummary | SearchSummary) -> str:
    return without_home(json.dumps(summary_dict(summary), indent=2))


def write_summary(folder: Location, summary: RunSummary | SearchSummary) -> None:
    write_text(folder.join(SUMMARY_FILE), to_json(summary))


def read_run_summary(run: Location) -> RunSummary | None:
    """The summary of a run that finished in ``run``; None without one.

    A torn or foreign file is None too, with a warning: the run is then finished again.
    """
    try:
        return parse_run_summary(read_text(run.join(SUMMARY_FILE)))
    except FileNotFoundError:
        return None
    except (ValidationError, UnicodeDecodeError) as exc:
        problem = str(exc).splitlines()[0]
        log.warning("%s is torn or not a run's summary (%s)", run.join(SUMMARY_FILE).uri, problem)
        return None


def read_search_summary(search: Location) -> SearchSummary:
    """A finished search's summary; FileNotFoundError before the search has finished."""
    return parse_search_summary(read_text(search.join(SUMMARY_FILE)))
