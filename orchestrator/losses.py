"""Spec → sentence-transformers loss, fed from the training step's own forward pass.

Every ``loss.kind`` maps to the library's loss of that name; this module only decides how the
texts of a step reach it:

* most losses take the embeddings of one DDP forward per step (``compute_loss_from_embeddings``:
  the library's math, including the with-gradient all-gather of in-batch negatives across
  workers);
* the guided (GISTEmbed) InfoNCE is the library's loss too, handed those same embeddings in
  place of its own forwards, and the guide's embeddings of the step's texts;
* the cached (GradCache) InfoNCE embeds mini-batches itself, twice; it is handed the DDP-wrapped
  encoder so that its replayed mini-batches synchronize gradients once, like one forward.

The temperature τ of the spec becomes the library's ``scale = 1/τ``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from sentence_transformers.base.losses.merged_forward import column_merging_disabled
from sentence_transformers.sentence_transformer import losses as st_losses
from sentence_transformers.util import cos_sim

from orchestrator.spec import CachedInfoNCELoss, InfoNCELoss

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from orchestrator.data.tokenize import Batch
    from orchestrator.spec import Loss

_TRIPLET_DISTANCE = {
    "cosine": st_losses.TripletDistanceMetric.COSINE,
    "euclidean": st_losses.TripletDistanceMetric.EUCLIDEAN,
    "manhattan": st_losses.TripletDistanceMetric.MANHATTAN,
}
_PAIR_DISTANCE = {
    "cosine": st_losses.SiameseDistanceMetric.COSINE_DISTANCE,
    "euclidean": st_losses.SiameseDistanceMetric.EUCLIDEAN,
    "manhattan": st_losses.SiameseDistanceMetric.MANHATTAN,
}


class FalseNegativeMask:
    """Cosine similarity that drops in-batch candidates whose text is the anchor's positive.

    With several questions per paragraph (SQuAD has about five), one global batch can hold
    the same paragraph as the positive of two anchors; InfoNCE would then train each anchor
    to push away its own answer. sentence-transformers' InfoNCE has no such mask; its
    similarity function is the one place that sees the (local anchors x all candidates)
    matrix, so the mask is applied there, to matrices of exactly that step's shape. Which
    candidates are duplicates comes from the passages' token-id fingerprints, gathered
    across workers like the candidates themselves.
    """

    def __init__(self, gather: bool) -> None:
        self.gather = gather
        self.mask: torch.Tensor | None = None
        self.masked = 0  # candidates masked in the last step, over this rank's anchors

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        scores = cos_sim(a, b)
        if self.mask is not None and scores.shape == self.mask.shape:
            scores = scores.masked_fill(self.mask, float("-inf"))
        return scores

    def prepare(self, keys: torch.Tensor | None, n_docs: int) -> None:
        """Build the mask of one step from its passages' fingerprints (``Batch.passage_keys``)."""
        if keys is None:  # a batch built without fingerprints: nothing to compare
            self.mask, self.masked = None, 0
            return
        local = keys.numel() // n_docs
        groups = keys.view(n_docs, local)
        offset = 0
        if self.gather and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            gathered = [torch.empty_like(groups) for _ in range(world)]
            torch.distributed.all_gather(gathered, groups)
            groups = torch.cat(gathered, dim=1)  # per group: every rank's rows in rank order
            offset = torch.distributed.get_rank() * local
        candidates = groups.reshape(-1)  # positives of all ranks, then each negative column
        own = torch.arange(offset, offset + local, device=keys.device)
        mask = candidates[None, :] == candidates[own][:, None]
        mask[torch.arange(local, device=keys.device), own] = False
        self.mask, self.masked = mask, int(mask.sum())


class _StepEmbeddings(torch.nn.Module):
    """Stands in for the model inside ``GISTEmbedLoss``: returns the step's embeddings.

    The library's guided loss embeds its columns itself, one forward each; under DDP that is
    several forwards before one backward. Handing it the embeddings of the step's one DDP
    forward, a column per call, keeps the library's guided math and one gradient sync.
    """

    def __init__(self) -> None:
        super().__init__()
        self.columns: list[torch.Tensor] = []

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"sentence_embedding": self.columns.pop(0)}


class GuidedInfoNCE(torch.nn.Module):
    """InfoNCE whose in-batch candidates a frozen guide model filters (GISTEmbed).

    ``prepare`` takes the step's token features, which the guide embeds (without gradients);
    ``compute_loss_from_embeddings`` takes the trained model's embeddings of them, as the
    other library losses do, so Matryoshka truncation works the same way.
    """

    def __init__(self, gist: torch.nn.Module) -> None:
        super().__init__()
        self.gist = gist
        self.feed = _StepEmbeddings()
        gist.model = self.feed
        self.features: list[dict[str, torch.Tensor]] = []

    def prepare(self, batch: Batch) -> None:
        self.features = [batch.queries, *_passage_columns(batch)]

    def compute_loss_from_embeddings(
        self, embeddings: list[torch.Tensor], labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        self.feed.columns = list(embeddings)
        with column_merging_disabled():  # one column per call, in order
            return self.gist(self.features, labels)


def _passage_columns(batch: Batch) -> list[dict[str, torch.Tensor]]:
    """The step's passages as one features dict per column (positives, then each negative)."""
    return [
        {key: value.chunk(batch.n_docs)[group] for key, value in batch.passages.items()}
        for group in range(batch.n_docs)
    ]


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
        similarity = getattr(inner, "similarity_fct", None)
        self.false_negatives = similarity if isinstance(similarity, FalseNegativeMask) else None

    @property
    def masked(self) -> int | None:
        """In-batch candidates masked as equal to the positive in the last step (this rank).

        None where nothing counts them: no mask, or a guide's filter (inside the library loss).
        """
        return self.false_negatives.masked if self.false_negatives else None

    def forward(
        self, embeddings: list[torch.Tensor], labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The loss of ``[anchors, positives, negatives_1, ...]`` (and scores or labels)."""
        total = embeddings[0].new_zeros(())
        for dim, weight in zip(self.dims, self.weights, strict=True):
            parts = [e[..., :dim] for e in embeddings] if dim else embeddings
            total = total + weight * self.inner.compute_loss_from_embeddings(parts, labels)
        return total

    def step(self, encoder: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Embed the step's texts in one forward of ``encoder`` and take the loss."""
        if self.false_negatives is not None:
            self.false_negatives.prepare(batch.passage_keys, batch.n_docs)
        if isinstance(self.inner, GuidedInfoNCE):
            self.inner.prepare(batch)
        queries, passages = encoder([batch.queries, batch.passages])
        return self([queries, *passages.chunk(batch.n_docs)], batch.labels)


class CachedEmbeddingLoss(torch.nn.Module):
    """GradCache InfoNCE: sentence-transformers' cached loss, embedding through ``encoder``.

    The library's loss calls its ``model`` once per mini-batch, in the step and again during
    backward; pointing it at the DDP-wrapped encoder (the library handles DDP's ``no_sync``)
    keeps one gradient all-reduce per step. Matryoshka dims use the library's own wrapper,
    which truncates the cached embeddings.
    """

    def __init__(self, cached: torch.nn.Module, loss: torch.nn.Module) -> None:
        super().__init__()
        self.cached = cached  # the module that embeds
        self.loss = loss  # ``cached`` itself, or MatryoshkaLoss around it

    masked = None  # the cached loss embeds mini-batches itself: no false-negative mask

    def step(self, encoder: torch.nn.Module, batch: Batch) -> torch.Tensor:
        self.cached.model = encoder
        return self.loss([batch.queries, *_passage_columns(batch)], batch.labels)


def _guided(
    spec: InfoNCELoss, model: SentenceTransformer, guide: SentenceTransformer, gather: bool
) -> torch.nn.Module:
    """The library's GISTEmbed loss (cached or not): query -> passage, like plain InfoNCE."""
    if spec.guide is None:  # pragma: no cover - build_loss calls this only with a guide
        raise ValueError("no guide in the spec")
    options = {
        "temperature": spec.temperature,
        "margin": spec.guide.margin,
        "margin_strategy": spec.guide.margin_strategy,
        "contrast_anchors": False,
        "contrast_positives": False,
        "gather_across_devices": gather,
    }
    if isinstance(spec, CachedInfoNCELoss):
        return st_losses.CachedGISTEmbedLoss(
            model, guide, mini_batch_size=spec.mini_batch_size, **options
        )
    return GuidedInfoNCE(st_losses.GISTEmbedLoss(model, guide, **options))


def _infonce(
    spec: InfoNCELoss,
    model: SentenceTransformer,
    world_size: int,
    guide: SentenceTransformer | None,
) -> torch.nn.Module:
    symmetric = spec.symmetric
    gather = spec.gather_across_workers and world_size > 1
    if spec.guide is not None:
        if guide is None:
            raise ValueError("loss.guide is set: pass the loaded guide model")
        return _guided(spec, model, guide, gather)
    options = {
        "scale": 1.0 / spec.temperature,
        "gather_across_devices": gather,
        "directions": ("query_to_doc", "doc_to_query") if symmetric else ("query_to_doc",),
        "partition_mode": "per_direction" if symmetric else "joint",
    }
    if isinstance(spec, CachedInfoNCELoss):
        return st_losses.CachedMultipleNegativesRankingLoss(
            model, mini_batch_size=spec.mini_batch_size, **options
        )
    if spec.masks_equal_texts:
        options["similarity_fct"] = FalseNegativeMask(gather)
    return st_losses.MultipleNegativesRankingLoss(model, **options)


def library_loss(
    spec: Loss,
    model: SentenceTransformer,
    world_size: int = 1,
    guide: SentenceTransformer | None = None,
) -> torch.nn.Module:
    """The sentence-transformers loss of ``spec`` (no Matryoshka), as its own trainer takes it.

    ``guide``: the loaded ``loss.guide`` model, for the guided (GISTEmbed) losses.
    """
    kind = spec.kind
    if isinstance(spec, InfoNCELoss):
        return _infonce(spec, model, world_size, guide)
    if kind == "triplet":
        return st_losses.TripletLoss(
            model, distance_metric=_TRIPLET_DISTANCE[spec.distance], triplet_margin=spec.margin
        )
    if kind == "cosent":
        return st_losses.CoSENTLoss(model, scale=1.0 / spec.temperature)
    if kind == "angle":
        return st_losses.AnglELoss(model, scale=1.0 / spec.temperature)
    if kind == "cosine":
        return st_losses.CosineSimilarityLoss(model)
    if kind == "contrastive":
        return st_losses.ContrastiveLoss(
            model, distance_metric=_PAIR_DISTANCE[spec.distance], margin=spec.margin
        )
    if kind == "online_contrastive":
        return st_losses.OnlineContrastiveLoss(
            model, distance_metric=_PAIR_DISTANCE[spec.distance], margin=spec.margin
        )
    raise ValueError(f"unknown loss kind {kind!r}")  # pragma: no cover - the spec rules it out


def build_loss(
    spec: Loss,
    model: SentenceTransformer,
    world_size: int = 1,
    guide: SentenceTransformer | None = None,
) -> EmbeddingLoss | CachedEmbeddingLoss:
    """The training objective of ``spec``; ``.step(encoder, batch)`` gives a step's loss."""
    inner = library_loss(spec, model, world_size, guide)
    if not isinstance(spec, CachedInfoNCELoss):
        return EmbeddingLoss(inner, spec.matryoshka_dims, spec.matryoshka_weights)
    if not spec.matryoshka_dims:
        return CachedEmbeddingLoss(inner, inner)
    weights = spec.matryoshka_weights or [1.0] * len(spec.matryoshka_dims)
    wrapped = st_losses.MatryoshkaLoss(model, inner, spec.matryoshka_dims, weights)
    return CachedEmbeddingLoss(inner, wrapped)
