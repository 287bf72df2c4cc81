"""Held-out evaluation with sentence-transformers evaluators, the same for base and fine-tuned.

Metrics come back as a flat ``{"ndcg@10": ..., "mrr@10": ..., "recall@10": ...}`` dict so that
summaries, Ray Train reports and tables all speak the same names.
"""

from __future__ import annotations

import csv
import json
import random
from typing import TYPE_CHECKING

from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from orchestrator.spec import ExperimentSpec


def _read_jsonl(path: str) -> dict[str, str]:
    out = {}
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    row = json.loads(line)
                    out[str(row["_id"])] = row["text"]
                except (json.JSONDecodeError, KeyError) as exc:
                    raise ValueError(
                        f"{path}:{number}: expected {{'_id', 'text'}}: {exc}"
                    ) from None
    return out


def load_retrieval_set(spec: ExperimentSpec, seed: int = 0):
    """Queries, corpus and relevance judgments of the held-out set (queries capped if asked)."""
    ev = spec.data.eval
    corpus, queries = _read_jsonl(ev.corpus), _read_jsonl(ev.queries)
    relevant: dict[str, set[str]] = {}
    with open(ev.qrels) as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if float(row.get("score", 1)) > 0:
                relevant.setdefault(row["query-id"], set()).add(row["corpus-id"])
    qids = sorted(q for q in relevant if q in queries)
    if ev.max_queries and len(qids) > ev.max_queries:
        qids = sorted(random.Random(seed).sample(qids, ev.max_queries))
    return {q: queries[q] for q in qids}, corpus, {q: relevant[q] for q in qids}


def build_evaluator(
    spec: ExperimentSpec, retrieval_set: tuple, truncate_dim: int | None = None
) -> InformationRetrievalEvaluator:
    """The held-out evaluator over ``retrieval_set`` (from :func:`load_retrieval_set`)."""
    queries, corpus, relevant = retrieval_set
    ks = sorted(set(spec.eval.k_values) | {10})
    return InformationRetrievalEvaluator(
        queries=queries,
        corpus=corpus,
        relevant_docs=relevant,
        mrr_at_k=ks,
        ndcg_at_k=ks,
        accuracy_at_k=ks,
        precision_recall_at_k=ks,
        map_at_k=[100],
        batch_size=spec.eval.batch_size,
        name="heldout",
        write_csv=False,
        query_prompt=spec.model.query_prompt or None,
        corpus_prompt=spec.model.passage_prompt or None,
        truncate_dim=truncate_dim,
    )


def evaluate(model: SentenceTransformer, spec: ExperimentSpec) -> dict[str, float]:
    """Run the held-out evaluators on a model; flat metric names, e.g. ``ndcg@10``.

    Each of ``eval.matryoshka_dims`` adds the same metrics on truncated embeddings, named
    ``dim<d>/ndcg@10``.
    """
    metrics, retrieval_set = {}, load_retrieval_set(spec)
    for dim in [None, *spec.eval.matryoshka_dims]:
        prefix = f"dim{dim}/" if dim else ""
        raw = build_evaluator(spec, retrieval_set, dim)(model)  # "heldout_cosine_ndcg@10", ...
        metrics.update({prefix + k.split("_", 2)[-1]: float(v) for k, v in sorted(raw.items())})
    return metrics
