"""The ``data`` section: the training sources (files and their columns) and the held-out sets."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from orchestrator.spec.base import EndpointUrl, PathText, Section
from orchestrator.spec.columns import ColumnMap
from orchestrator.spec.evaluation import VARIANT_NAME, EvalSet, RetrievalEvalSpec


class _FileSource(Section):
    path: PathText = Field(description="A file, a folder or a glob; local or s3://bucket/key.")
    endpoint_url: EndpointUrl = Field(
        default=None,
        description="S3-compatible endpoint for an s3:// path; None: AWS or $AWS_ENDPOINT_URL.",
    )
    columns: ColumnMap = Field(
        default_factory=ColumnMap,
        description="The file's own column names for anchor, positive and negatives, score or "
        "label; which are set gives the row format.",
    )
    weight: PositiveFloat = Field(
        default=1.0,
        description="Relative probability that a global batch comes from this source.",
    )
    max_rows: PositiveInt | None = Field(default=None, description="Use only the first N rows.")


class JsonlSource(_FileSource):
    """JSON Lines: one JSON object a row."""

    format: Literal["jsonl"]


class ParquetSource(_FileSource):
    """Parquet files."""

    format: Literal["parquet"]


class CsvSource(_FileSource):
    """CSV with a header row, split by ``delimiter``."""

    format: Literal["csv"]
    delimiter: str = Field(
        default=",",
        min_length=1,
        max_length=1,
        description='One character; a tab is "\\t" in YAML (double quotes).',
    )


Source = Annotated[JsonlSource | ParquetSource | CsvSource, Field(discriminator="format")]


class DataSpec(Section):
    sources: dict[str, Source] = Field(
        min_length=1,
        description="The training corpora by name; every global batch comes from one source, "
        "drawn by weight, so in-batch negatives stay in one domain.",
    )
    eval: RetrievalEvalSpec | None = Field(
        default=None,
        description="The held-out test retrieval set, in BEIR layout: every reported figure "
        "(verdict, card, tables) is measured here; its metrics are ndcg@10, ...",
    )
    validation: RetrievalEvalSpec | None = Field(
        default=None,
        description="A second held-out retrieval set (same layout, other articles) for every "
        "choice a run makes: evaluations during training (so a search's metric and ASHA) and "
        "the merge weight. None: those use data.eval, and choices are then judged on the "
        "figures they were chosen on.",
    )
    eval_sets: dict[str, EvalSet] = Field(
        default_factory=dict,
        description="More held-out sets by name (triplets, labeled_pairs, scored_pairs, "
        "retrieval); their metrics are <name>/<metric>, e.g. refutes/accuracy, "
        "labels/roc_auc, nyt/ndcg@10.",
    )
    on_bad_rows: Literal["skip", "fail"] = Field(
        default="skip",
        description="skip: drop broken rows and report them; fail: stop before training.",
    )
    shuffle: bool = Field(
        default=True,
        description="Train each epoch in a seeded random order: the source's fragments "
        "permuted, each worker's rows shuffled within data.shuffle_window (a pure function "
        "of train.seed, the epoch and the world size); false: file order.",
    )
    bucket_window: int = Field(
        default=0,
        ge=0,
        description="Length bucketing: regroup each window of this many shuffled batches "
        "into batches of similar lengths, so less padding; 0 or 1: off.",
    )
    shuffle_window: PositiveInt = Field(
        default=32768,
        description="Rows each worker shuffles together: its share of an epoch (fragments "
        "in a seeded random order) is read in windows of this many rows, each shuffled on "
        "its own. A worker's memory grows with it, never with the corpus.",
    )

    @field_validator("sources", "eval_sets")
    @classmethod
    def _names_are_identifiers(cls, named: dict[str, Any]) -> dict[str, Any]:
        for name in named:
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", name) or VARIANT_NAME.fullmatch(name):
                raise ValueError(
                    f"name {name!r} must start with a letter: [A-Za-z0-9_-] (and not be dim<N>, "
                    "int8 or binary)"
                )
        return named

    @model_validator(mode="after")
    def _has_evaluation(self) -> DataSpec:
        if self.eval is None and not self.eval_sets:
            raise ValueError(
                "no held-out data: set data.eval (a retrieval set) and/or data.eval_sets"
            )
        return self

    def eval_files(self) -> dict[str, str]:
        """Dotted field path → local path of every held-out file."""
        named = {"data.eval": self.eval} if self.eval else {}
        if self.validation:
            named["data.validation"] = self.validation
        named.update({f"data.eval_sets.{k}": v for k, v in self.eval_sets.items()})
        return {
            f"{where}.{key}": path
            for where, held_out in named.items()
            for key, path in held_out.local_files().items()
        }
