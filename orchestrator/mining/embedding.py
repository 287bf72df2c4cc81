"""Embedding for mining: anchors and corpus through one Ray Data actor pool; top-k retrieval.

The actor holds the encoder built by :func:`orchestrator.modeling.load_encoder`, so prompts
and pooling are the spec's, and moves to a GPU or a larger cluster unchanged.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import ray.data
import torch

if TYPE_CHECKING:
    from orchestrator.spec import ExperimentSpec

#: Bound on one anchors x corpus similarity block (floats), ~256 MiB.
SIMILARITY_BLOCK = 1 << 26


class _Encoder:
    """Ray Data actor: loads the encoder once, embeds ``text`` rows, normalized.

    A batch holds anchors (``query`` true: query prompt) and passages; each group is encoded
    with its prompt through ``encode(prompt=...)``, exactly as the evaluator does.
    """

    def __init__(self, model_path: str, spec_json: dict, batch_size: int, threads: int) -> None:
        from orchestrator.modeling import load_encoder
        from orchestrator.spec import ExperimentSpec

        torch.set_num_threads(threads)
        spec = ExperimentSpec.model_validate(spec_json)
        device = "cuda" if spec.scaling.use_gpu and torch.cuda.is_available() else "cpu"
        self.model = load_encoder(model_path, spec.model, device)
        self.prompts = {True: spec.model.query_prompt, False: spec.model.passage_prompt}
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = np.zeros((len(batch["id"]), self.model.get_embedding_dimension()), "f4")
        for query, prompt in self.prompts.items():
            rows = np.flatnonzero(batch["query"] == query)
            if len(rows):
                out[rows] = self.model.encode(
                    [str(t) for t in batch["text"][rows]],
                    prompt=prompt or None,
                    batch_size=self.batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                )
        return {"id": batch["id"], "embedding": out}


def embed(
    spec: ExperimentSpec, model_path: str, anchors: list[str], corpus: list[str], batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique anchors and corpus texts → normalized embeddings, via one Ray Data actor pool.

    Rows carry their position, so the result does not depend on Ray Data's output order. The
    embeddings come back to the driver: exact retrieval there needs the whole corpus at hand.
    """
    items = [{"id": i, "text": t, "query": True} for i, t in enumerate(anchors)]
    items += [{"id": len(anchors) + i, "text": t, "query": False} for i, t in enumerate(corpus)]
    num_cpus = spec.scaling.cpus_per_data_task
    embedded = ray.data.from_items(items).map_batches(
        _Encoder,
        fn_constructor_kwargs={
            "model_path": model_path,
            "spec_json": spec.model_dump(mode="json"),
            "batch_size": batch_size,
            "threads": max(1, math.ceil(num_cpus)),
        },
        batch_size=batch_size * 4,  # a few encode batches per Ray batch: less overhead per call
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=num_cpus,
        num_gpus=1 if spec.scaling.use_gpu else 0,
    )
    ids, vectors = [], []
    for batch in embedded.iter_batches(batch_format="numpy", batch_size=None):
        ids.append(batch["id"])
        vectors.append(batch["embedding"])
    every = torch.from_numpy(np.concatenate(vectors)[np.argsort(np.concatenate(ids))])
    return every[: len(anchors)], every[len(anchors) :]


# --------------------------------------------------------------------------- retrieval


def retrieve(
    anchors: torch.Tensor, corpus: torch.Tensor, top: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``top`` cosine neighbours of each anchor: (scores, corpus indices), best first.

    Embeddings are normalized, so a dot product is the cosine. Anchors go in blocks that bound
    the similarity matrix. Exact search is right up to a few million passages; beyond that this
    wants an ANN index such as FAISS (not a dependency of this project).
    """
    top = min(top, len(corpus))
    rows = max(1, SIMILARITY_BLOCK // max(1, len(corpus)))
    scores, indices = [], []
    for start in range(0, len(anchors), rows):
        block = anchors[start : start + rows] @ corpus.T
        s, i = torch.topk(block, k=top, dim=1)
        scores.append(s)
        indices.append(i)
    return torch.cat(scores), torch.cat(indices)


# --------------------------------------------------------------------------- filtering
