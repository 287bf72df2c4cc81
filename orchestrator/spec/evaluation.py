"""Held-out sets (``data.eval``, ``data.validation``, ``data.eval_sets``), the ``eval`` section and
its guard, and the metric names a spec may ask for."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from orchestrator.spec.base import Distinct, PathText, Section
from orchestrator.spec.columns import (
    LABELED_PAIRS,
    PAIRS,
    SCORED_PAIRS,
    TRIPLETS,
    ColumnMap,
)


class RetrievalEvalSpec(Section):
    """A held-out retrieval set in BEIR layout: corpus/queries JSONL (`_id`, `text`) + qrels TSV."""

    kind: Literal["retrieval"] = Field(
        default="retrieval", description="Always retrieval here; may be left out."
    )
    corpus: PathText = Field(description="JSON Lines of passages: `_id`, `text`.")
    queries: PathText = Field(description="JSON Lines of queries: `_id`, `text`.")
    qrels: PathText = Field(description="TSV with header: query-id, corpus-id, score.")
    max_queries: PositiveInt | None = Field(
        default=None, description="Evaluate a seeded random sample of this many queries."
    )

    def local_files(self) -> dict[str, str]:
        return {key: getattr(self, key) for key in ("corpus", "queries", "qrels")}


def format_by_suffix(path: str) -> str:
    """The row format a held-out file is read as: by its suffix, JSON Lines by default."""
    suffix = Path(path).suffix.lower()
    return {".parquet": "parquet", ".csv": "csv", ".tsv": "csv"}.get(suffix, "jsonl")


class _PairEvalSet(Section):
    """A held-out file of rows like the training rows: JSONL, CSV or Parquet (by its suffix)."""

    path: PathText = Field(description="A local .jsonl/.json, .csv/.tsv or .parquet file.")
    columns: ColumnMap = Field(
        default_factory=ColumnMap,
        description="The file's own column names, as for a source; the kind fixes the format.",
    )
    max_rows: PositiveInt | None = Field(default=None, description="Use only the first N rows.")
    #: Metric names this kind of set reports, each as ``<set name>/<metric>``.
    metrics: ClassVar[tuple[str, ...]] = ()
    #: The row format (see :class:`ColumnMap`) the file must have.
    row_format: ClassVar[str] = PAIRS

    @model_validator(mode="after")
    def _columns_fit(self) -> _PairEvalSet:
        if mismatch := self.columns.mismatch((self.row_format,)):
            raise ValueError(f"columns: a {self.kind} set needs {mismatch}")
        if len(self.columns.negatives) > 1:
            raise ValueError("columns.negatives: a triplet set compares one negative per row")
        return self

    @property
    def file_format(self) -> str:
        return format_by_suffix(self.path)

    def local_files(self) -> dict[str, str]:
        return {"path": self.path}


class TripletEvalSet(_PairEvalSet):
    """(anchor, positive, negative): is the positive closer to the anchor than the negative?"""

    kind: Literal["triplets"]
    metrics: ClassVar[tuple[str, ...]] = ("accuracy",)
    row_format: ClassVar[str] = TRIPLETS


class LabeledPairsEvalSet(_PairEvalSet):
    """(text, text, 0/1): binary classification by cosine similarity, ROC AUC included."""

    kind: Literal["labeled_pairs"]
    metrics: ClassVar[tuple[str, ...]] = (
        "roc_auc",
        "ap",
        "accuracy",
        "f1",
        "precision",
        "recall",
        "mcc",
    )
    row_format: ClassVar[str] = LABELED_PAIRS


class ScoredPairsEvalSet(_PairEvalSet):
    """(text, text, score): Spearman/Pearson correlation of cosine similarity with the score."""

    kind: Literal["scored_pairs"]
    metrics: ClassVar[tuple[str, ...]] = ("spearman", "pearson")
    row_format: ClassVar[str] = SCORED_PAIRS


class RetrievalEvalSet(RetrievalEvalSpec):
    """Another retrieval set by name (e.g. each domain of a multi-source run): its metrics are
    the main set's, as ``<name>/ndcg@10``; test figures only (no validation split)."""

    kind: Literal["retrieval"]  # type: ignore[assignment]  # named sets must say their kind
    metrics: ClassVar[tuple[str, ...]] = ("ndcg@10",)  # and every other retrieval metric


EvalSet = Annotated[
    TripletEvalSet | LabeledPairsEvalSet | ScoredPairsEvalSet | RetrievalEvalSet,
    Field(discriminator="kind"),
]


#: An evaluation metric name: ``ndcg@10``; ``dim64/ndcg@10`` for embeddings cut to 64 dims;
#: ``binary/ndcg@10``, ``dim64/int8/ndcg@10`` for quantized ones (``eval.quantization``).
METRIC_NAME = re.compile(
    r"(?:dim(?P<dim>\d+)/)?(?:(?P<precision>int8|binary)/)?"
    r"(?P<kind>ndcg|mrr|map|recall|precision|accuracy)@(?P<k>\d+)"
)
#: Embedding precisions ``eval.quantization`` may add, beside float32.
Precision = Literal["int8", "binary"]
#: The first part of a width's or a precision's metric names (``dim64/``, ``int8/``): no
#: named set or guard may be called that, or their metric names would collide.
VARIANT_NAME = re.compile(r"dim\d+|int8|binary")
#: A metric of a named held-out set (``data.eval_sets``): ``refutes/accuracy``.
SET_METRIC_NAME = re.compile(r"([A-Za-z][A-Za-z0-9_-]*)/([a-z_]+(?:@\d+)?)")


#: A retrieval metric the guard may compare: ``ndcg@10``, ``recall@5``, ``map@100``.
GUARD_METRIC = re.compile(r"(?:(?:ndcg|mrr|recall|precision|accuracy)@\d+|map@100)")


class GuardSpec(RetrievalEvalSpec):
    """A general-domain retrieval set the run never trains on: did it cost general ability?

    Base and fine-tuned are compared on it like on ``data.eval``; a fine-tuned model that
    scores more than ``max_drop`` below its base there has forgotten, and is not published as
    the run's model (unless ``eval.accept_forgetting``). Its metrics are ``<name>/<metric>``.
    """

    name: str = Field(
        default="guard",
        pattern=r"^[A-Za-z][A-Za-z0-9_-]*$",
        description="The guard's metrics are <name>/<metric>, e.g. nq/ndcg@10.",
    )
    metric: str = Field(default="ndcg@10", description="The retrieval metric compared.")
    max_drop: float = Field(
        default=0.005, ge=0.0, le=1.0, description="Largest tolerated drop below the base."
    )
    validation: RetrievalEvalSpec | None = Field(
        default=None, description="The guard's validation split (for the merge weight)."
    )

    @field_validator("metric")
    @classmethod
    def _retrieval_metric(cls, metric: str) -> str:
        if not GUARD_METRIC.fullmatch(metric):
            raise ValueError(f"{metric!r} is not a retrieval metric like 'ndcg@10' or 'map@100'")
        return metric

    @property
    def metric_key(self) -> str:
        return f"{self.name}/{self.metric}"

    def local_files(self) -> dict[str, str]:
        files = super().local_files()
        if self.validation:
            files.update({f"validation.{k}": v for k, v in self.validation.local_files().items()})
        return files


class EvalSpec(Section):
    batch_size: PositiveInt = Field(default=64, description="Texts embedded at once.")
    k_values: list[PositiveInt] = Field(
        default_factory=lambda: [1, 3, 5, 10],
        min_length=1,
        description="Cutoffs of the retrieval metrics (ndcg, mrr, recall, precision, accuracy "
        "@k; 10 always; map at 100 only).",
    )
    main_metric: str = Field(
        default="ndcg@10",
        description="Decides the verdict, e.g. ndcg@10, dim64/ndcg@10 or refutes/accuracy.",
    )
    matryoshka_dims: list[PositiveInt] = Field(
        default_factory=list,
        description="Also evaluate embeddings truncated to these dims; their metrics are "
        "named dim<d>/<metric>, e.g. dim64/ndcg@10.",
    )
    quantization: Annotated[list[Precision], Distinct] = Field(
        default_factory=list,
        description="Also evaluate quantized embeddings (int8: one byte a dimension; binary: "
        "one bit, searched by Hamming distance; the best candidates of either rescored with "
        "the float query); their metrics are named int8/<metric>, dim64/binary/<metric>.",
    )
    rescore_multiplier: PositiveInt = Field(
        default=4,
        description="Quantized search fetches this many times k candidates, rescored with the "
        "float query.",
    )
    guard: GuardSpec | None = Field(
        default=None,
        description="A general-domain retrieval set the run never trains on: a fine-tuned "
        "model more than max_drop below its base there has forgotten, and is not published "
        "as the run's model.",
    )
    accept_forgetting: bool = Field(
        default=False,
        description="Publish the model as the run's model (model/) even when the guard says "
        "it forgot.",
    )
