"""The experiment spec: one validated document that drives data, training, evaluation and export.

This module is deliberately free of torch and Ray imports so a spec can be loaded and checked
on a laptop in milliseconds, before anything reaches a cluster. Checks that need the file
system (does the corpus exist? how wide is the model?) live in :mod:`orchestrator.preflight`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from orchestrator.credentials import credential_problems
from orchestrator.published import without_home
from orchestrator.spec_yaml import YamlProblem, parse_yaml, read_yaml

#: Marks a cross-field error whose lines each start with their own dotted path.
_CROSS_FIELD = "cross-field:\n"

#: Canonical column names every source is mapped onto.
ANCHOR, POSITIVE, SCORE, LABEL = "anchor", "positive", "score", "label"

#: The four shapes of training data, named by what a row holds besides (anchor, positive):
#: nothing, hard-negative texts, a similarity score, or a 0/1 label.
PAIRS, TRIPLETS, SCORED_PAIRS, LABELED_PAIRS = "pairs", "triplets", "scored_pairs", "labeled_pairs"


class SpecError(ValueError):
    """A spec that cannot run: each problem names the dotted field path and a hint where useful."""

    def __init__(self, problems: list[str], origin: str = "spec") -> None:
        self.problems = problems
        self.origin = origin
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{origin} is invalid ({len(problems)} problem(s)):\n{lines}")


#: Marks a section-level error about one of its fields: ``<field>\n<message>``.
_IN_SECTION = "field:\n"

#: The seeds numpy, torch and Python's random all accept.
Seed = Annotated[int, Field(ge=0, lt=2**32)]


def _numeric(annotation: Any) -> bool:
    """Does a field of this type take numbers (and so must not take true/false)?"""
    if get_origin(annotation) is Annotated:
        return _numeric(get_args(annotation)[0])
    options = [get_args(o)[0] if get_origin(o) is Annotated else o for o in get_args(annotation)]
    options = options or [annotation]
    return bool not in options and any(o in (int, float) for o in options)


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("empty: name a file, a folder or a model")
    return text


#: A path or a model name: never empty (an empty path is the working directory).
PathText = Annotated[str, AfterValidator(_not_blank)]


class _Section(BaseModel):
    # NaN and infinities are never a meaningful learning rate, margin or budget.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        """``max_steps: yes`` is YAML for 1 to pydantic; a number field gets a number."""
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name) if isinstance(name, str) else None
                if isinstance(value, bool) and field and _numeric(field.annotation):
                    raise ValueError(f"{_IN_SECTION}{name}\nexpected a number, got {value}")
        return data


# --------------------------------------------------------------------------- model


class ModelSpec(_Section):
    """Which encoder to start from and how texts reach it."""

    base: PathText = Field(
        description="A local SentenceTransformer/transformers folder, a known offline name "
        "(see `orchestrator prepare --list`), or a Hub id where a network allows it."
    )
    max_seq_length: PositiveInt = 256
    pooling: Literal["mean", "cls", "lasttoken"] | None = Field(
        default=None, description="Override the model's own pooling; None keeps it."
    )
    attention_dropout: float | None = Field(
        default=None,
        ge=0.0,
        lt=1.0,
        description="Override the attention-probability dropout (None keeps the model's). "
        "0 lets PyTorch use its fused attention kernel while training: 1.5x faster steps "
        "on CPU (bench/), at the cost of that regularizer.",
    )
    query_prompt: str = Field(default="", description="Prefix for anchors/queries, e.g. 'query: '.")
    passage_prompt: str = Field(default="", description="Prefix for positives/negatives/corpus.")
    trust_remote_code: bool = False


# --------------------------------------------------------------------------- data


def _endpoint_url(url: str | None) -> str | None:
    if url is not None and not re.fullmatch(r"https?://[^/@\s]+/?", url):
        raise ValueError("expected http(s)://host[:port] with no credentials or path")
    return url.rstrip("/") if url else url


#: An S3-compatible endpoint: where to reach a store, never how to log in to it.
EndpointUrl = Annotated[str | None, AfterValidator(_endpoint_url)]


class ColumnMap(_Section):
    """Maps canonical columns onto a file's own column names; which are set gives the format.

    pairs: anchor + positive. triplets: + ``negatives``. scored pairs: + ``score`` (a number;
    ``positive`` is then simply the second text). labeled pairs: + ``label`` (1 similar, 0 not).
    """

    anchor: str = ANCHOR
    positive: str = Field(default=POSITIVE, description="The positive, or the second text.")
    negatives: list[str] = Field(
        default_factory=list, description="Zero or more hard-negative columns, in order."
    )
    score: str | None = Field(default=None, description="Similarity score column (scored pairs).")
    label: str | None = Field(default=None, description="0/1 label column (labeled pairs).")

    @model_validator(mode="after")
    def _one_format(self) -> ColumnMap:
        extras = [k for k in ("negatives", "score", "label") if getattr(self, k)]
        if len(extras) > 1:
            raise ValueError(
                f"a row is pairs + one of negatives, score or label; this map sets {extras}"
            )
        named = [self.anchor, self.positive, *self.negatives, self.score, self.label]
        named = [n for n in named if n is not None]
        if any(not n.strip() for n in named):
            raise ValueError("a column name is empty")
        if repeated := sorted({n for n in named if named.count(n) > 1}):
            raise ValueError(f"each column once: {repeated} is mapped twice")
        return self

    @property
    def format(self) -> str:
        """pairs, triplets, scored_pairs or labeled_pairs."""
        if self.negatives:
            return TRIPLETS
        return SCORED_PAIRS if self.score else LABELED_PAIRS if self.label else PAIRS


class _FileSource(_Section):
    path: PathText = Field(description="A file, a folder or a glob; local or s3://bucket/key.")
    endpoint_url: EndpointUrl = Field(
        default=None,
        description="S3-compatible endpoint for an s3:// path; None: AWS or $AWS_ENDPOINT_URL.",
    )
    columns: ColumnMap = Field(default_factory=ColumnMap)
    weight: PositiveFloat = 1.0
    max_rows: PositiveInt | None = Field(default=None, description="Use only the first N rows.")


class JsonlSource(_FileSource):
    format: Literal["jsonl"]


class ParquetSource(_FileSource):
    format: Literal["parquet"]


class CsvSource(_FileSource):
    format: Literal["csv"]
    delimiter: str = Field(
        default=",",
        min_length=1,
        max_length=1,
        description='One character; a tab is "\\t" in YAML (double quotes).',
    )


Source = Annotated[JsonlSource | ParquetSource | CsvSource, Field(discriminator="format")]


class RetrievalEvalSpec(_Section):
    """A held-out retrieval set in BEIR layout: corpus/queries JSONL (`_id`, `text`) + qrels TSV."""

    kind: Literal["retrieval"] = "retrieval"
    corpus: PathText
    queries: PathText
    qrels: PathText = Field(description="TSV with header: query-id, corpus-id, score.")
    max_queries: PositiveInt | None = None

    def local_files(self) -> dict[str, str]:
        return {key: getattr(self, key) for key in ("corpus", "queries", "qrels")}


def format_by_suffix(path: str) -> str:
    """The row format a held-out file is read as: by its suffix, JSON Lines by default."""
    suffix = Path(path).suffix.lower()
    return {".parquet": "parquet", ".csv": "csv", ".tsv": "csv"}.get(suffix, "jsonl")


class _PairEvalSet(_Section):
    """A held-out file of rows like the training rows: JSONL, CSV or Parquet (by its suffix)."""

    path: PathText = Field(description="A local .jsonl/.json, .csv/.tsv or .parquet file.")
    columns: ColumnMap = Field(default_factory=ColumnMap)
    max_rows: PositiveInt | None = None
    #: Metric names this kind of set reports, each as ``<set name>/<metric>``.
    metrics: ClassVar[tuple[str, ...]] = ()
    #: The row format (see :class:`ColumnMap`) the file must have.
    row_format: ClassVar[str] = PAIRS

    @model_validator(mode="after")
    def _columns_fit(self) -> _PairEvalSet:
        if self.columns.format != self.row_format:
            raise ValueError(
                f"columns: a {self.kind} set needs {self.row_format} "
                f"({_FORMAT_COLUMNS[self.row_format]}); these columns make {self.columns.format}"
            )
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

_FORMAT_COLUMNS = {
    PAIRS: "columns anchor, positive",
    TRIPLETS: "columns.negatives",
    SCORED_PAIRS: "columns.score",
    LABELED_PAIRS: "columns.label",
}


class DataSpec(_Section):
    sources: dict[str, Source] = Field(min_length=1)
    eval: RetrievalEvalSpec | None = Field(
        default=None,
        description="The held-out test retrieval set: every reported figure (verdict, card, "
        "tables); its metrics are ndcg@10, ...",
    )
    validation: RetrievalEvalSpec | None = Field(
        default=None,
        description="A second held-out retrieval set for every choice a run makes: "
        "evaluations during training (a search's metric) and the merge weight. None: those "
        "use data.eval, and choices are then judged on the figures they were chosen on.",
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
        "into batches of similar lengths (less padding); 0 or 1: off.",
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
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", name) or re.fullmatch(r"dim\d+", name):
                raise ValueError(
                    f"name {name!r} must start with a letter: [A-Za-z0-9_-] (and not be dim<N>)"
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


# --------------------------------------------------------------------------- losses


class _LossBase(_Section):
    matryoshka_dims: list[PositiveInt] | None = Field(
        default=None, description="Also train truncated embeddings (largest first)."
    )
    matryoshka_weights: list[PositiveFloat] | None = None
    #: The row formats (see :class:`ColumnMap`) this loss trains on.
    formats: ClassVar[tuple[str, ...]] = (PAIRS, TRIPLETS)
    #: At most this many negative columns (None: any number).
    max_negatives: ClassVar[int | None] = None

    @model_validator(mode="after")
    def _matryoshka_consistent(self) -> _LossBase:
        dims, weights = self.matryoshka_dims, self.matryoshka_weights
        if dims is not None and sorted(dims, reverse=True) != dims:
            raise ValueError("matryoshka_dims must be strictly decreasing, e.g. [384, 256, 64]")
        if dims is not None and len(set(dims)) != len(dims):
            raise ValueError("matryoshka_dims must not repeat")
        if weights is not None and (dims is None or len(weights) != len(dims)):
            raise ValueError("matryoshka_weights needs one weight per matryoshka_dims entry")
        return self

    def column_problem(self, columns: ColumnMap) -> str | None:
        """Why this loss cannot train on rows with these columns, or None."""
        kind, have = self.kind, columns.format  # type: ignore[attr-defined]
        if have not in self.formats:
            wanted = " or ".join(f"{f} ({_FORMAT_COLUMNS[f]})" for f in self.formats)
            return f"loss '{kind}' trains on {wanted}; these columns make {have}"
        if self.max_negatives is not None and len(columns.negatives) > self.max_negatives:
            return (
                f"loss '{kind}' compares {self.max_negatives} negative per row; map one of "
                f"{columns.negatives} (or use infonce, which takes them all)"
            )
        return None


class GuideSpec(_Section):
    """GISTEmbed: a frozen guide model decides which in-batch candidates are not negatives.

    A candidate the guide finds at least as similar to the anchor as its own positive (minus
    ``margin``) is left out: another question's paragraph that answers this one too. Catches
    what equal texts cannot (paraphrases, near-duplicates); costs one forward of the guide per
    step, without gradients.
    """

    model: str = Field(
        min_length=1,
        description="'base' (the run's own base model, frozen) or a model folder, known "
        "offline model or Hub id.",
    )
    margin: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    margin_strategy: Literal["absolute", "relative"] = Field(
        default="absolute",
        description="absolute: leave out above positive - margin; relative: above "
        "positive - |positive| x margin.",
    )


class InfoNCELoss(_LossBase):
    """InfoNCE / MultipleNegativesRanking: in-batch (and hard) negatives, softmax at τ."""

    kind: Literal["infonce", "mnrl"]
    temperature: PositiveFloat = Field(default=0.05, le=1.0, description="τ; scale = 1/τ.")
    symmetric: bool = Field(default=False, description="Add the passage→query direction.")
    gather_across_workers: bool = Field(
        default=True, description="Share in-batch negatives across all data-parallel workers."
    )
    mask_false_negatives: bool | None = Field(
        default=None,
        description="Leave out in-batch candidates whose text is the anchor's own positive "
        "(another question about the same paragraph): they are not negatives. Default: on, "
        "unless a guide filters the candidates.",
    )
    guide: GuideSpec | None = Field(
        default=None,
        description="Filter in-batch candidates with a guide model instead "
        "(sentence-transformers' GISTEmbedLoss).",
    )

    @model_validator(mode="after")
    def _guide_consistent(self) -> InfoNCELoss:
        if self.guide is None:
            return self
        if self.symmetric:
            raise ValueError("guide: the guided loss scores query -> passage only; drop symmetric")
        if self.mask_false_negatives:
            raise ValueError(
                "guide replaces mask_false_negatives (a text equal to the positive is as "
                "similar as the positive: a margin > 0 leaves it out too); drop one"
            )
        return self

    @property
    def masks_equal_texts(self) -> bool:
        """Whether the loss leaves out candidates whose text is the anchor's positive."""
        if self.mask_false_negatives is None:
            return self.guide is None
        return self.mask_false_negatives

    def column_problem(self, columns: ColumnMap) -> str | None:
        if self.guide is not None and len(columns.negatives) > 1:
            return (
                f"loss.guide: the guided loss takes one negative per row; map one of "
                f"{columns.negatives}"
            )
        return super().column_problem(columns)


class CachedInfoNCELoss(InfoNCELoss):
    """InfoNCE with GradCache: the batch (the in-batch pool) is no longer bounded by memory.

    Texts are embedded ``mini_batch_size`` at a time without a graph, the loss is taken over the
    whole batch, and each mini-batch is embedded again with gradients: about 1.3x the compute of
    plain InfoNCE for activations of one mini-batch.
    """

    kind: Literal["cached_mnrl", "cached_infonce"]  # type: ignore[assignment]
    mini_batch_size: PositiveInt = Field(
        default=32, description="Texts embedded at once (memory), not the batch (the pool)."
    )
    mask_false_negatives: Literal[False] = Field(
        default=False, description="Not available: the cached loss scores mini-batches itself."
    )


class TripletLossSpec(_LossBase):
    """max(d(a, p) - d(a, n) + margin, 0) over (anchor, positive, negative) rows."""

    kind: Literal["triplet"]
    margin: PositiveFloat = 0.5
    distance: Literal["cosine", "euclidean", "manhattan"] = "cosine"
    formats: ClassVar[tuple[str, ...]] = (TRIPLETS,)
    max_negatives: ClassVar[int | None] = 1


class CoSENTLossSpec(_LossBase):
    """CoSENT (cosine) or AnglE (angle in complex space): rank pairs in the order of their scores.

    Only the order of scores matters, so any scale works (0-5 STS scores, 0/1 labels).
    """

    kind: Literal["cosent", "angle"]
    temperature: PositiveFloat = Field(default=0.05, le=1.0, description="τ; scale = 1/τ.")
    formats: ClassVar[tuple[str, ...]] = (SCORED_PAIRS,)


class CosineSimilarityLossSpec(_LossBase):
    """Mean squared error between cos(a, b) and the pair's score (scores in [-1, 1])."""

    kind: Literal["cosine"]
    formats: ClassVar[tuple[str, ...]] = (SCORED_PAIRS,)


class ContrastiveLossSpec(_LossBase):
    """Pull label-1 pairs together, push label-0 pairs beyond ``margin``.

    ``online_contrastive`` only uses the hard ones: positives farther than the closest negative
    and negatives closer than the farthest positive of the batch.
    """

    kind: Literal["contrastive", "online_contrastive"]
    margin: PositiveFloat = 0.5
    distance: Literal["cosine", "euclidean", "manhattan"] = "cosine"
    formats: ClassVar[tuple[str, ...]] = (LABELED_PAIRS,)


Loss = Annotated[
    InfoNCELoss
    | CachedInfoNCELoss
    | TripletLossSpec
    | CoSENTLossSpec
    | CosineSimilarityLossSpec
    | ContrastiveLossSpec,
    Field(discriminator="kind"),
]


# --------------------------------------------------------------------------- lora / train / scale


class LoraSpec(_Section):
    r: PositiveInt = 8
    alpha: PositiveFloat = 16
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["query", "value"], min_length=1)
    merge: bool = Field(default=True, description="Merge into the base weights on export.")


class TrainSpec(_Section):
    lr: PositiveFloat = 2e-5
    weight_decay: float = Field(default=0.01, ge=0.0)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(default=0.1, ge=0.0, lt=1.0)
    epochs: PositiveFloat | None = 1.0
    max_steps: PositiveInt | None = Field(default=None, description="Overrides epochs when set.")
    batch_size: PositiveInt = Field(
        default=32, description="Global batch: pairs per step over all workers (in-batch pool)."
    )
    max_grad_norm: PositiveFloat | None = 1.0
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32", description="Autocast dtype on GPU; bf16 also works on CPU."
    )
    gradient_checkpointing: bool = False
    embed_group_rows: PositiveInt | None = Field(
        default=None,
        description="Embed a step's texts in length-sorted groups of at most this many rows, "
        "each padded to its own longest text: less padding, faster steps on CPU (the same "
        "embeddings); none: one padded batch per kind of text.",
    )
    seed: Seed = 42
    eval_every: int = Field(default=0, ge=0, description="Steps between evaluations; 0 = at end.")
    checkpoint_every: PositiveInt = Field(default=50, description="Steps between checkpoints.")
    log_every: PositiveInt = 10

    @model_validator(mode="after")
    def _has_budget(self) -> TrainSpec:
        if self.max_steps is None and self.epochs is None:
            raise ValueError("set train.epochs or train.max_steps")
        return self


class ScalingSpec(_Section):
    num_workers: PositiveInt = 1
    cpus_per_worker: PositiveFloat = Field(
        default=1.0, description="Fractions leave CPU for Ray Data on small machines."
    )
    gpus_per_worker: float = Field(default=0.0, ge=0.0)
    cpus_per_data_task: PositiveFloat = Field(
        default=0.5,
        description="CPU per Ray Data read/tokenize task (fractions overlap with training).",
    )
    max_failures: int = Field(
        default=0,
        ge=-1,
        description="Worker-group restarts after a worker or node dies (-1: unlimited); each "
        "restart resumes from the latest checkpoint.",
    )

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


#: An evaluation metric name: ``ndcg@10``, or ``dim64/ndcg@10`` for embeddings cut to 64 dims.
METRIC_NAME = re.compile(r"(?:dim(\d+)/)?(ndcg|mrr|map|recall|precision|accuracy)@(\d+)")
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

    name: str = Field(default="guard", pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
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


class MergeSpec(_Section):
    """Weight-space interpolation of base and fine-tuned (WiSE-FT, Wortsman et al. 2022).

    θ = θ_base + alpha·(θ_tuned - θ_base), for full fine-tuning and (merged) LoRA alike. Each
    alpha is evaluated on the validation sets, in-domain and guard; the chosen one has
    the best in-domain figure among those that keep the guard within ``eval.guard.max_drop``
    (the smallest guard drop if none does). Only the chosen model is exported.
    """

    alphas: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(
        min_length=1, description="Weights of the fine-tuned model to try (1 = no merge)."
    )

    @field_validator("alphas")
    @classmethod
    def _distinct(cls, alphas: list[float]) -> list[float]:
        if len(set(alphas)) != len(alphas):
            raise ValueError("alphas must not repeat")
        return sorted(alphas)


class EvalSpec(_Section):
    batch_size: PositiveInt = 64
    k_values: list[PositiveInt] = Field(default_factory=lambda: [1, 3, 5, 10], min_length=1)
    main_metric: str = "ndcg@10"
    matryoshka_dims: list[PositiveInt] = Field(
        default_factory=list,
        description="Also evaluate embeddings truncated to these dims; their metrics are "
        "named dim<d>/<metric>, e.g. dim64/ndcg@10.",
    )
    guard: GuardSpec | None = Field(
        default=None, description="General-domain set that catches forgetting (see GuardSpec)."
    )
    accept_forgetting: bool = Field(
        default=False,
        description="Publish the model as the run's model even when the guard says it forgot.",
    )


class StorageSpec(_Section):
    """Where runs live. Credentials never go here: boto3/pyarrow read the environment,
    ``~/.aws`` or the instance role (``AWS_PROFILE`` picks a named profile)."""

    uri: str = Field(
        default="runs",
        description="A local folder or s3://bucket/prefix; runs live under <uri>/<name>/<run_id>/.",
    )
    endpoint_url: EndpointUrl = Field(
        default=None,
        description="S3-compatible endpoint (MinIO, R2, a test server), e.g. "
        "http://127.0.0.1:9000; None: AWS, or $AWS_ENDPOINT_URL.",
    )
    region: str | None = None
    retry_attempts: PositiveInt = Field(
        default=8, description="Attempts per storage request (AWS 'standard' retry backoff)."
    )
    keep_checkpoints: PositiveInt = 2

    @field_validator("uri")
    @classmethod
    def _supported_uri(cls, uri: str) -> str:
        scheme, sep, rest = uri.partition("://")
        if not sep:
            return uri
        if scheme != "s3":
            raise ValueError(
                f"{scheme}:// is not supported; use a local folder or s3://bucket/prefix"
            )
        bucket = rest.split("/", 1)[0]
        if not bucket or "@" in bucket or ":" in bucket or "?" in rest:
            raise ValueError(
                "expected s3://bucket/prefix without credentials or options; credentials come "
                "from the environment, the endpoint from storage.endpoint_url"
            )
        return uri.rstrip("/")

    @property
    def is_remote(self) -> bool:
        return self.uri.startswith("s3://")


# --------------------------------------------------------------------------- tuning

#: Paths a search may vary. Everything else (the model, the data files and columns, the
#: evaluation, storage) is shared by all trials: they reuse one tokenized dataset and one
#: baseline, and their metrics stay comparable.
SEARCHABLE = re.compile(
    r"(loss|lora)(\..+)?|train\.(?!eval_every$).+|scaling\..+|data\.sources\.[^.]+\.weight"
    r"|data\.shuffle(_window)?|data\.bucket_window|model\.attention_dropout"
)


#: The kinds of search domain, as they are written in a spec.
DOMAIN_KINDS = ("choice", "grid", "uniform", "loguniform", "randint")


class SearchDomain(_Section):
    """One search dimension: exactly one of choice, grid, uniform, loguniform or randint."""

    choice: list[Any] | None = Field(default=None, min_length=1, description="Sample one value.")
    grid: list[Any] | None = Field(
        default=None, min_length=1, description="Try every value (each num_samples times)."
    )
    uniform: tuple[float, float] | None = None
    loguniform: tuple[PositiveFloat, PositiveFloat] | None = None
    randint: tuple[int, int] | None = Field(default=None, description="Both ends included.")
    when: dict[str, Any] | None = Field(
        default=None,
        description="Sample only when these earlier parameters take these values (a value or "
        "a list of values), e.g. {loss.kind: [infonce, mnrl]}.",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> SearchDomain:
        kinds = [k for k in DOMAIN_KINDS if getattr(self, k)]
        if len(kinds) != 1:
            raise ValueError("give exactly one of choice, grid, uniform, loguniform, randint")
        bounds = self.uniform or self.loguniform or self.randint
        if bounds and not bounds[0] < bounds[1]:
            raise ValueError(f"{kinds[0]}: expected [low, high] with low < high")
        if self.grid and self.when:
            raise ValueError("a grid cannot be conditional (`when`): use choice")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in DOMAIN_KINDS if getattr(self, k))

    def candidates(self) -> list[Any]:
        """Values to check before anything runs: every listed value, or both ends of a range."""
        return list(getattr(self, self.kind))

    def applies(self, chosen: dict[str, Any]) -> bool:
        """Whether this parameter is sampled, given the values chosen before it."""
        for path, allowed in (self.when or {}).items():
            allowed = allowed if isinstance(allowed, list) else [allowed]
            if chosen.get(path) not in allowed:
                return False
        return True


class TuneSpec(_Section):
    """A search over the spec itself: each trial is the run of the spec with sampled overrides."""

    metric: str = Field(
        default="ndcg@10", description="Held-out metric to optimize, e.g. ndcg@10, dim64/ndcg@10."
    )
    mode: Literal["max", "min"] = "max"
    space: dict[str, SearchDomain] = Field(
        min_length=1, description="Dotted spec paths (as in overrides) → search domain."
    )
    num_samples: PositiveInt = Field(
        default=4, description="Trials to sample; with grids, repeats of the whole grid."
    )
    max_concurrent_trials: PositiveInt | None = Field(
        default=None,
        description="None: as many as the cluster's CPUs/GPUs hold, given each trial's scaling.",
    )
    search: Literal["random", "optuna"] = Field(
        default="random", description="random (grids enumerated) or Optuna's TPE sampler."
    )
    scheduler: Literal["asha", "fifo"] = Field(
        default="asha", description="asha: stop trials that trail at an evaluation; fifo: never."
    )
    grace_period: PositiveInt | None = Field(
        default=None, description="Steps before ASHA may stop a trial; None: train.eval_every."
    )
    reduction_factor: float = Field(
        default=2.0, gt=1.0, description="ASHA keeps the top 1/reduction_factor at each rung."
    )
    time_budget_s: PositiveFloat | None = Field(
        default=None, description="Stop starting and running trials after this many seconds."
    )
    seed: Seed | None = Field(default=None, description="Sampler seed; None: train.seed.")

    def sampler_seed(self, train_seed: int) -> int:
        return self.seed if self.seed is not None else train_seed

    def trial_params(self, config: dict[str, Any]) -> dict[str, Any]:
        """The sampled values that apply to a trial: one whose ``when`` fails is dropped."""
        chosen: dict[str, Any] = {}
        for path, domain in self.space.items():
            if path in config and domain.applies(chosen):
                chosen[path] = config[path]
        return chosen

    @property
    def metric_key(self) -> str:
        """The name the metric carries in Ray Train/Tune reports."""
        return f"eval/{self.metric}"

    def problems(self, spec: ExperimentSpec) -> list[str]:
        problems = [spec.metric_problem("tune.metric", self.metric)]
        if not spec.train.eval_every:
            problems.append(
                "train.eval_every: a search reads its metric from evaluations during training "
                "(ASHA compares trials there): set it, e.g. to a quarter of the steps"
            )
        seen: list[str] = []
        for path, domain in self.space.items():
            where = f"tune.space.{path}"
            if not SEARCHABLE.fullmatch(path):
                problems.append(
                    f"{where}: not searchable; trials share the model, data files, evaluation "
                    "and storage. Search loss.*, lora.*, train.* (not eval_every), scaling.*, "
                    "data.sources.<name>.weight, data.shuffle, data.shuffle_window, "
                    "data.bucket_window, model.attention_dropout"
                )
            name = path.split(".")[2] if path.startswith("data.sources.") else None
            if name and name not in spec.data.sources:
                problems.append(f"{where}: no source {name!r} in data.sources")
            for condition in domain.when or {}:
                if condition not in seen:
                    problems.append(f"{where}.when: {condition!r} must be searched before it")
            if self.search == "optuna" and domain.grid:
                problems.append(f"{where}: optuna samples; use choice instead of grid")
            scalars = (str, int, float, bool, type(None))
            if self.search == "optuna" and any(
                not isinstance(v, scalars) for v in domain.choice or []
            ):
                problems.append(f"{where}: optuna chooses among single values, not lists/maps")
            seen.append(path)
        return problems


# --------------------------------------------------------------------------- experiment


class TestingSpec(_Section):
    """Chaos testing: rehearse recovery on a real cluster before a spot node does it for you."""

    kill_worker_at_step: PositiveInt = Field(
        description="SIGKILL one training worker once, when it reaches this step."
    )
    kill_rank: int = Field(default=0, ge=0)


class ExperimentSpec(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    description: str = ""
    model: ModelSpec
    data: DataSpec
    loss: Loss
    lora: LoraSpec | None = None
    merge: MergeSpec | None = None
    train: TrainSpec = Field(default_factory=TrainSpec)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    tune: TuneSpec | None = None
    testing: TestingSpec | None = None

    @model_validator(mode="after")
    def _cross_field(self) -> ExperimentSpec:
        problems = []
        batch = self.train.batch_size
        for name, source in self.data.sources.items():
            if problem := self.loss.column_problem(source.columns):
                problems.append(f"data.sources.{name}.columns: {problem}")
            if source.max_rows is not None and source.max_rows < batch:
                problems.append(
                    f"data.sources.{name}.max_rows: {source.max_rows} rows cannot fill one "
                    f"global batch of {batch} (train.batch_size); each step draws from one source"
                )
        contrastive = isinstance(self.loss, InfoNCELoss)
        gathered = contrastive and self.loss.gather_across_workers
        pool = batch if gathered else batch // max(self.scaling.num_workers, 1)
        no_negatives = all(not s.columns.negatives for s in self.data.sources.values())
        if contrastive and pool < 2 and no_negatives:
            problems.append(
                f"train.batch_size: InfoNCE with {pool} pair per softmax and no hard negatives "
                "has nothing to contrast; use a larger batch (or gather across workers)"
            )
        if self.train.batch_size % self.scaling.num_workers:
            problems.append(
                f"train.batch_size: {self.train.batch_size} is the global batch and must divide "
                f"evenly over scaling.num_workers={self.scaling.num_workers}"
            )
        problems.append(self.metric_problem("eval.main_metric", self.eval.main_metric))
        if self.tune:
            problems.extend(self.tune.problems(self))
        chaos = self.testing
        if chaos and chaos.kill_worker_at_step <= self.train.checkpoint_every:
            problems.append(
                "testing.kill_worker_at_step: must come after the first checkpoint "
                f"(train.checkpoint_every={self.train.checkpoint_every}), or nothing can resume"
            )
        last = self.train.max_steps
        if chaos and last is not None and chaos.kill_worker_at_step > last:
            problems.append(
                f"testing.kill_worker_at_step: step {chaos.kill_worker_at_step} comes after the "
                f"last step (train.max_steps={last}): nothing would be killed"
            )
        if chaos and chaos.kill_rank >= self.scaling.num_workers:
            problems.append(f"testing.kill_rank: no rank {chaos.kill_rank} among the workers")
        if chaos and self.scaling.max_failures == 0:
            problems.append("testing: a killed worker needs scaling.max_failures >= 1 to recover")
        guard = self.eval.guard
        if guard and (found := METRIC_NAME.fullmatch(guard.metric)):
            problems.append(
                self._cutoff_problem("eval.guard.metric", guard.metric, found[2], int(found[3]))
            )
        if guard and (guard.name in self.data.eval_sets or re.fullmatch(r"dim\d+", guard.name)):
            problems.append(
                f"eval.guard.name: {guard.name!r} is taken (data.eval_sets or dim<N>): "
                "metric names would collide"
            )
        if self.merge and not (guard and self.data.eval):
            problems.append(
                "merge: choosing the weight needs data.eval (in-domain) and eval.guard "
                "(general domain); add data.validation and eval.guard.validation to choose on "
                "validation splits"
            )
        if self.train.precision == "fp16" and not self.scaling.use_gpu:
            problems.append("train.precision: fp16 needs GPUs (scaling.gpus_per_worker > 0)")
        problems = [p for p in problems if p]
        if problems:  # one line each; _format_error splits them back into separate problems
            raise ValueError(_CROSS_FIELD + "\n".join(problems))
        return self

    def _cutoff_problem(self, field: str, name: str, kind: str, k: int) -> str | None:
        """The retrieval evaluator reports map@100 and the others at eval.k_values (and 10)."""
        if kind == "map":
            return None if k == 100 else f"{field}: {name!r}: MAP is reported at 100 only"
        cutoffs = sorted({*self.eval.k_values, 10})
        if k not in cutoffs:
            return f"{field}: {name!r}: {kind} is reported at {cutoffs} (eval.k_values)"
        return None

    def metric_problem(self, field: str, name: str) -> str | None:
        """Why ``name`` is not a metric this spec's evaluation produces, or None."""
        if match := METRIC_NAME.fullmatch(name):
            if self.data.eval is None:
                sets = ", ".join(f"'{n}/{s.metrics[0]}'" for n, s in self.data.eval_sets.items())
                return f"{field}: {name!r} needs data.eval (a retrieval set); or name {sets}"
            if match[1] and int(match[1]) not in self.eval.matryoshka_dims:
                return f"{field}: {name!r} needs {match[1]} in eval.matryoshka_dims"
            return self._cutoff_problem(field, name, match[2], int(match[3]))
        if match := SET_METRIC_NAME.fullmatch(name):
            held_out = self.data.eval_sets.get(match[1])
            if held_out is None:
                return f"{field}: {name!r}: no set {match[1]!r} in data.eval_sets"
            if isinstance(held_out, RetrievalEvalSet):
                if (found := METRIC_NAME.fullmatch(match[2])) and not found[1]:
                    return self._cutoff_problem(field, name, found[2], int(found[3]))
                return f"{field}: a retrieval set reports metrics like '{match[1]}/ndcg@10'"
            if match[2] not in held_out.metrics:
                return f"{field}: a {held_out.kind} set reports {', '.join(held_out.metrics)}"
            return None
        return (
            f"{field}: {name!r} is not like 'ndcg@10', 'dim64/ndcg@10' (retrieval) or "
            "'<set>/accuracy' (data.eval_sets)"
        )

    @property
    def per_worker_batch_size(self) -> int:
        return self.train.batch_size // self.scaling.num_workers

    def held_out_files(self) -> dict[str, str]:
        """Dotted field path → local path of every held-out file, the guard's included."""
        files = self.data.eval_files()
        if self.eval.guard:
            files.update({f"eval.guard.{k}": v for k, v in self.eval.guard.local_files().items()})
        return files

    def hash(self, include_tune: bool = False) -> str:
        """Stable content hash: equal specs (after defaults) give equal run ids.

        The ``tune`` section is left out by default: it does not change what a run trains, so
        ``run`` of a spec and the search trial with the same values share one run folder.
        A path spelled from the home folder hashes as its ``~/`` form: the spec a run
        publishes (see :mod:`orchestrator.published`) names that same run.
        """
        raw = self.model_dump(mode="json", exclude=None if include_tune else {"tune"})
        canonical = without_home(json.dumps(raw, sort_keys=True))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def run_id(self) -> str:
        return self.hash()[:12]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def published_yaml(self) -> str:
        """The spec as a run publishes it beside its outputs: the home folder written as ``~``."""
        return without_home(self.to_yaml())


# --------------------------------------------------------------------------- loading


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `dotted.path=value` strings to a raw spec dict; values are parsed as YAML."""
    for item in overrides:
        path, sep, text = item.partition("=")
        if not sep or not path:
            raise SpecError([f"override {item!r}: expected key.path=value"], "overrides")
        try:
            set_path(raw, path.strip(), parse_yaml(text))
        except YamlProblem as exc:
            raise SpecError([f"override {item!r}: the value is {exc}"], "overrides") from None
        except KeyError as exc:
            raise SpecError([f"override {item!r}: {exc.args[0]}"], "overrides") from None
    return raw


def set_path(raw: dict[str, Any], path: str, value: Any) -> None:
    """Set ``a.b.c`` in a raw spec dict, creating missing sections (e.g. ``lora.r`` adds LoRA)."""
    keys = path.split(".")
    node = raw
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise KeyError(f"{key!r} is not a section")
        node = child
    node[keys[-1]] = value


def _format_error(error: dict[str, Any]) -> list[str]:
    # Drop the union tag pydantic inserts (e.g. `loss.infonce.temperature` -> `loss.temperature`).
    loc = [str(p) for p in error["loc"] if not str(p).startswith("function-")]
    message = error["msg"].removeprefix("Value error, ")
    if message.startswith(_CROSS_FIELD):
        return message.removeprefix(_CROSS_FIELD).splitlines()
    if message.startswith(_IN_SECTION):
        field, message = message.removeprefix(_IN_SECTION).split("\n", 1)
        loc.append(field)
    hint = ""
    if error["type"] == "extra_forbidden":
        hint = " (unknown field: check spelling)"
    elif error["type"] == "union_tag_invalid":
        loc = loc[:-1] if loc and loc[-1] in ("kind", "format") else loc
        loc.append(str(error["ctx"]["discriminator"]).strip("'"))
    elif error["type"] == "missing":
        hint = " (required)"
    path = ".".join(p for p in loc if p not in _TAGS) or "<root>"
    return [f"{path}: {message}{hint}"]


#: Loss kind → its spec class, for trials that switch ``loss.kind``.
LOSS_CLASSES: dict[str, type[_LossBase]] = {
    kind: cls
    for cls in get_args(get_args(Loss)[0])
    for kind in get_args(cls.model_fields["kind"].annotation)
}

#: Discriminator tags pydantic puts into error locations; they are not part of the user's path.
_TAGS = {
    *LOSS_CLASSES,
    *(get_args(c.model_fields["kind"].annotation)[0] for c in get_args(get_args(EvalSet)[0])),
    "jsonl",
    "parquet",
    "csv",
}


def parse_spec(raw: dict[str, Any], origin: str = "spec") -> ExperimentSpec:
    """Validate a raw dict; raise :class:`SpecError` naming every bad field."""
    if not isinstance(raw, dict):
        raise SpecError(["<root>: expected a mapping of sections"], origin)
    if leaks := credential_problems(raw):
        raise SpecError(leaks, origin)
    try:
        return ExperimentSpec.model_validate(raw)
    except ValidationError as exc:
        problems = [line for e in exc.errors() for line in _format_error(e)]
        raise SpecError(problems, origin) from None


def load_spec(
    source: str | Path | dict[str, Any] | ExperimentSpec, overrides: list[str] | None = None
) -> ExperimentSpec:
    """Load a spec from a YAML/JSON file, a dict, or a spec, applying dotted overrides first."""
    if isinstance(source, ExperimentSpec):
        raw, origin = source.model_dump(mode="json"), "spec"
    elif isinstance(source, dict):
        raw, origin = json.loads(json.dumps(source)), "spec"
    else:
        path = Path(source)
        if not path.is_file():
            raise SpecError([f"<file>: {path} does not exist"], str(path))
        try:
            raw = read_yaml(path)
        except YamlProblem as exc:
            raise SpecError([f"<file>: {exc}"], str(path)) from None
        origin = str(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError(["<root>: expected a mapping of sections"], origin)
    return parse_spec(apply_overrides(raw, overrides or []), origin)
