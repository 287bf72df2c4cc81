"""The ``loss`` section: one discriminated union of the training objectives, by ``kind``."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, get_args

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from orchestrator.spec.base import Section
from orchestrator.spec.columns import (
    LABELED_PAIRS,
    PAIRS,
    SCORED_PAIRS,
    TRIPLETS,
    ColumnMap,
)

#: τ of the softmax (InfoNCE) or of the ranking (CoSENT, AnglE).
_TEMPERATURE = (
    "τ; scale = 1/τ. validate and run warn when τ is more than 2x off the τ a known base "
    "model was trained with (0.05 for the all-* models)."
)

#: How the margin losses measure the distance between two embeddings.
Distance = Literal["cosine", "euclidean", "manhattan"]


class _LossBase(Section):
    matryoshka_dims: list[PositiveInt] | None = Field(
        default=None,
        description="Also train embeddings truncated to these dims (largest first; "
        "MatryoshkaLoss).",
    )
    matryoshka_weights: list[PositiveFloat] | None = Field(
        default=None, description="One weight per matryoshka_dims entry; None: all 1."
    )
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

    def negatives_per_query(self, per_worker_batch: int, world_size: int, hard: int) -> int:
        """How many candidates compete with each query's positive in one step.

        In-batch losses (InfoNCE) rank against the whole pool; triplet against its own
        negatives; the pair losses (CoSENT, AnglE, cosine, contrastive) score each pair on its
        own: 0.
        """
        return 0

    def column_problem(self, columns: ColumnMap) -> str | None:
        """Why this loss cannot train on rows with these columns, or None."""
        kind = self.kind  # type: ignore[attr-defined]
        if mismatch := columns.mismatch(self.formats):
            return f"loss '{kind}' trains on {mismatch}"
        if self.max_negatives is not None and len(columns.negatives) > self.max_negatives:
            return (
                f"loss '{kind}' compares {self.max_negatives} negative per row; map one of "
                f"{columns.negatives} (or use infonce, which takes them all)"
            )
        return None


class GuideSpec(Section):
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
    margin: float = Field(
        default=0.0,
        ge=0.0,
        allow_inf_nan=False,
        description="Leave out candidates at least as similar as the positive minus this.",
    )
    margin_strategy: Literal["absolute", "relative"] = Field(
        default="absolute",
        description="absolute: leave out above positive - margin; relative: above "
        "positive - abs(positive) x margin.",
    )


class InfoNCELoss(_LossBase):
    """InfoNCE / MultipleNegativesRanking: in-batch (and hard) negatives, softmax at τ."""

    kind: Literal["infonce", "mnrl"]
    temperature: PositiveFloat = Field(default=0.05, le=1.0, description=_TEMPERATURE)
    symmetric: bool = Field(default=False, description="Add the passage→query direction.")
    gather_across_workers: bool = Field(
        default=True, description="Share in-batch negatives across all data-parallel workers."
    )
    mask_false_negatives: bool | None = Field(
        default=None,
        description="Leave out in-batch candidates whose text is the anchor's own positive "
        "(another question about the same paragraph): they are not negatives; counted per "
        "query as false_negatives_masked in the history. Default: on, unless a guide "
        "filters the candidates.",
    )
    guide: GuideSpec | None = Field(
        default=None,
        description="Filter in-batch candidates with a guide model instead (GISTEmbed: "
        "sentence-transformers' GISTEmbedLoss, CachedGISTEmbedLoss for the cached kinds): "
        "replaces the equal-text mask, query → passage only, at most one hard negative, one "
        "more forward (no gradients) per step.",
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

    def negatives_per_query(self, per_worker_batch: int, world_size: int, hard: int) -> int:
        pool = per_worker_batch * (world_size if self.gather_across_workers else 1)
        return pool * (1 + hard) - 1

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
    whole batch, and each mini-batch is embedded again with gradients: more compute than plain
    InfoNCE for activations of one mini-batch (both measured in bench/RESULTS.md).
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
    margin: PositiveFloat = Field(
        default=0.5, description="How much closer than the negative the positive must be."
    )
    distance: Distance = Field(default="cosine", description="The distance d.")
    formats: ClassVar[tuple[str, ...]] = (TRIPLETS,)
    max_negatives: ClassVar[int | None] = 1

    def negatives_per_query(self, per_worker_batch: int, world_size: int, hard: int) -> int:
        return hard


class CoSENTLossSpec(_LossBase):
    """CoSENT (cosine) or AnglE (angle in complex space): rank pairs in the order of their scores.

    Only the order of scores matters, so any scale works (0-5 STS scores, 0/1 labels).
    """

    kind: Literal["cosent", "angle"]
    temperature: PositiveFloat = Field(default=0.05, le=1.0, description=_TEMPERATURE)
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
    margin: PositiveFloat = Field(
        default=0.5, description="The distance beyond which label-0 pairs are pushed."
    )
    distance: Distance = Field(default="cosine", description="The distance between embeddings.")
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


#: Loss kind → its spec class, for trials that switch ``loss.kind``.
LOSS_CLASSES: dict[str, type[_LossBase]] = {
    kind: cls
    for cls in get_args(get_args(Loss)[0])
    for kind in get_args(cls.model_fields["kind"].annotation)
}
