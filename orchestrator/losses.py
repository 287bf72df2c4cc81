"""Spec → sentence-transformers loss, computed from embeddings of one forward pass per step.

The training step embeds all texts in a single DDP forward and hands the embeddings to
``loss.compute_loss_from_embeddings`` (sentence-transformers' own math, including the
with-gradient all-gather of in-batch negatives across workers). The temperature τ of the spec
becomes the library's ``scale = 1/τ``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from sentence_transformers.sentence_transformer import losses as st_losses

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from orchestrator.spec import InfoNCELoss, TripletLossSpec

_TRIPLET_DISTANCE = {
    "cosine": st_losses.TripletDistanceMetric.COSINE,
    "euclidean": st_losses.TripletDistanceMetric.EUCLIDEAN,
    "manhattan": st_losses.TripletDistanceMetric.MANHATTAN,
}


class EmbeddingLoss(torch.nn.Module):
    """A library loss plus optional Matryoshka truncation, applied to precomputed embeddings.

    sentence-transformers' ``MatryoshkaLoss`` works by decorating the model's forward; with one
    shared forward per step we truncate the embeddings instead, which is the same objective
    (each inner loss normalizes/compares the truncated vectors itself).
    """

    def __init__(
        self,
        inner: torch.nn.Module,
        dims: Sequence[int] | None = None,
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.inner = inner
        self.dims = list(dims) if dims else [None]
        self.weights = list(weights) if weights else [1.0] * len(self.dims)

    def forward(self, embeddings: list[torch.Tensor]) -> torch.Tensor:
        total = embeddings[0].new_zeros(())
        for dim, weight in zip(self.dims, self.weights, strict=True):
            parts = [e[..., :dim] for e in embeddings] if dim else embeddings
            total = total + weight * self.inner.compute_loss_from_embeddings(parts, None)
        return total


def build_loss(
    spec: InfoNCELoss | TripletLossSpec, model: SentenceTransformer, world_size: int = 1
) -> EmbeddingLoss:
    if spec.kind in ("infonce", "mnrl"):
        symmetric = spec.symmetric
        inner = st_losses.MultipleNegativesRankingLoss(
            model,
            scale=1.0 / spec.temperature,
            gather_across_devices=spec.gather_across_workers and world_size > 1,
            directions=("query_to_doc", "doc_to_query") if symmetric else ("query_to_doc",),
            partition_mode="per_direction" if symmetric else "joint",
        )
    elif spec.kind == "triplet":
        inner = st_losses.TripletLoss(
            model, distance_metric=_TRIPLET_DISTANCE[spec.distance], triplet_margin=spec.margin
        )
    else:  # pragma: no cover - the spec's discriminated union rules this out
        raise ValueError(f"unknown loss kind {spec.kind!r}")
    return EmbeddingLoss(inner, spec.matryoshka_dims, spec.matryoshka_weights)


def negatives_per_query(
    spec: InfoNCELoss | TripletLossSpec, per_worker_batch: int, world_size: int, hard: int
) -> int:
    """How many candidates compete with each query's positive in one step."""
    if spec.kind == "triplet":
        return hard
    pool = per_worker_batch * (world_size if spec.gather_across_workers else 1)
    return pool * (1 + hard) - 1
