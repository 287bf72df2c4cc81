"""Held-out evaluation with sentence-transformers evaluators, the same for base and fine-tuned.

Metrics come back as one flat dict so that summaries, Ray Train reports and tables all speak
the same names: the retrieval set's ``ndcg@10``, ``mrr@10``, ``dim64/ndcg@10`` ..., and each
named set's ``<name>/<metric>``: ``refutes/accuracy`` (triplets), ``labels/roc_auc``
(labeled pairs), ``sts/spearman`` (scored pairs). Similarities are cosine throughout.
"""

from __future__ import annotations

import csv
import json
import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from sentence_transformers.sentence_transformer.evaluation import (
    BinaryClassificationEvaluator,
    EmbeddingSimilarityEvaluator,
    InformationRetrievalEvaluator,
    TripletEvaluator,
)
from sentence_transformers.util import pairwise_cos_sim
from sklearn.metrics import roc_auc_score

from orchestrator.data.sources import canonical_columns, converted, parse_records
from orchestrator.errors import BadRowsError
from orchestrator.quantized import quantized_searches
from orchestrator.spec import ANCHOR, LABEL, POSITIVE, SCORE, RetrievalEvalSpec
from orchestrator.verdict import Evaluation

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from orchestrator.spec import EvalSet, ExperimentSpec

log = logging.getLogger("orchestrator")


def _read_jsonl(path: str) -> dict[str, str]:
    out = {}
    with Path(path).expanduser().open() as f:
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


def load_retrieval_set(held_out: RetrievalEvalSpec, seed: int = 0):
    """Queries, corpus and relevance judgments of a retrieval set (queries capped if asked)."""
    corpus, queries = _read_jsonl(held_out.corpus), _read_jsonl(held_out.queries)
    relevant: dict[str, set[str]] = {}
    with Path(held_out.qrels).expanduser().open() as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if float(row.get("score", 1)) > 0:
                relevant.setdefault(row["query-id"], set()).add(row["corpus-id"])
    qids = sorted(q for q in relevant if q in queries)
    if held_out.max_queries and len(qids) > held_out.max_queries:
        qids = sorted(random.Random(seed).sample(qids, held_out.max_queries))
    return {q: queries[q] for q in qids}, corpus, {q: relevant[q] for q in qids}


def per_query_metrics(
    hits: list[list[dict[str, Any]]],
    query_ids: list[str],
    relevant: dict[str, set[str]],
    ks: list[int],
) -> dict[str, np.ndarray]:
    """Each query's ndcg@k, mrr@k, recall@k, precision@k, accuracy@k and map@100.

    The library computes these per query and keeps only their means; the verdict's interval
    needs them per query. Same definitions as ``InformationRetrievalEvaluator.compute_metrics``
    (binary relevance, ties by corpus id); a test checks that their means are its figures.
    """
    out: dict[str, list[float]] = {}
    for hits_of_query, qid in zip(hits, query_ids, strict=True):
        ranked = sorted(hits_of_query, key=lambda h: (-h["score"], h["corpus_id"]))
        wanted = relevant[qid]
        found = np.array([h["corpus_id"] in wanted for h in ranked[: max(*ks, 100)]], float)
        for k in ks:
            top = found[:k]
            ideal = 1 / np.log2(np.arange(2, min(k, len(wanted)) + 2))
            gains = top / np.log2(np.arange(2, len(top) + 2))
            first = np.flatnonzero(top)
            values = {
                f"ndcg@{k}": gains.sum() / ideal.sum(),
                f"mrr@{k}": 1 / (first[0] + 1) if len(first) else 0.0,
                f"recall@{k}": top.sum() / len(wanted),
                f"precision@{k}": top.sum() / k,
                f"accuracy@{k}": float(top.any()),
            }
            for name, value in values.items():
                out.setdefault(name, []).append(float(value))
        top = found[:100]
        precision_at_hits = np.cumsum(top) / np.arange(1, len(top) + 1) * top
        out.setdefault("map@100", []).append(precision_at_hits.sum() / min(100, len(wanted)))
    return {name: np.array(values) for name, values in out.items()}


class RetrievalEvaluator(InformationRetrievalEvaluator):
    """The library's retrieval evaluator that also keeps each query's metric values and, when
    ``keep_embeddings``, the embeddings it computed (quantized retrieval reuses them instead of
    embedding again; other evaluations pay no copy)."""

    per_query: dict[str, np.ndarray]

    def __init__(self, *args: Any, keep_embeddings: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._keep_embeddings = keep_embeddings

    def __call__(self, model: SentenceTransformer, *args: Any, **kwargs: Any) -> dict[str, float]:
        self._embedded: dict[str, list[np.ndarray]] = {"query": [], "document": []}
        return super().__call__(model, *args, **kwargs)

    def embed_inputs(self, model: SentenceTransformer, sentences: Any, **kwargs: Any) -> Any:
        embeddings = super().embed_inputs(model, sentences, **kwargs)
        if self._keep_embeddings:
            self._embedded[kwargs["encode_fn_name"]].append(embeddings.float().cpu().numpy())
        return embeddings

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """The last call's (query, corpus) embeddings, rows in ``queries_ids``/``corpus_ids``
        order (the corpus is embedded in chunks, in order)."""
        return np.concatenate(self._embedded["query"]), np.concatenate(self._embedded["document"])

    def compute_metrics(self, queries_result_list: list[object]):
        ks = sorted(set(self.ndcg_at_k) | set(self.mrr_at_k) | set(self.accuracy_at_k))
        self.per_query = per_query_metrics(
            queries_result_list, self.queries_ids, self.relevant_docs, ks
        )
        return super().compute_metrics(queries_result_list)


def build_evaluator(
    spec: ExperimentSpec,
    retrieval_set: tuple,
    truncate_dim: int | None = None,
    keep_embeddings: bool = False,
) -> RetrievalEvaluator:
    """The evaluator over ``retrieval_set`` (from :func:`load_retrieval_set`)."""
    queries, corpus, relevant = retrieval_set
    ks = sorted(set(spec.eval.k_values) | {10})
    return RetrievalEvaluator(
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
        keep_embeddings=keep_embeddings,
    )


class BinaryClassificationWithAUC(BinaryClassificationEvaluator):
    """sentence-transformers' pair classification metrics plus ROC AUC, which it lacks.

    The library reports accuracy, F1, precision and recall at their best thresholds, AP and
    MCC; ROC AUC (threshold-free, insensitive to the label balance) is computed here from the
    same cosine similarities, reusing the embeddings the library computed.
    """

    def embed_inputs(self, model: SentenceTransformer, sentences: Any, **kwargs: Any) -> Any:
        embeddings = super().embed_inputs(model, sentences, **kwargs)
        self._embedded = dict(zip(sentences, embeddings, strict=True))
        return embeddings

    def compute_metrics(self, model: SentenceTransformer) -> dict[str, dict[str, float]]:
        scores = super().compute_metrics(model)
        first = np.stack([self._embedded[s] for s in self.sentences1])
        second = np.stack([self._embedded[s] for s in self.sentences2])
        cosine = pairwise_cos_sim(first, second).numpy()  # the similarity the library scored
        scores["cosine"]["roc_auc"] = float(roc_auc_score(self.labels, cosine))
        return scores


def read_eval_set(name: str, held_out: EvalSet, on_bad_rows: str = "skip") -> dict[str, list[Any]]:
    """A named held-out file → canonical columns (anchor, positive, negative_1, score, label).

    Broken rows are reported by file and line; skipped (and logged) or, with
    ``on_bad_rows: fail``, an error, exactly like training rows.
    """
    mapping = canonical_columns(held_out.columns)
    path = Path(held_out.path).expanduser()
    rows: dict[str, list[Any]] = {column: [] for column in mapping}
    bad: list[str] = []
    for number, record, problem in parse_records(path.read_bytes(), held_out.file_format):
        row, problem = (None, problem) if problem else converted(record, mapping)
        if row is None:
            bad.append(f"{path}:{number}: {problem}")
            continue
        for column, value in row.items():
            rows[column].append(value)
        if held_out.max_rows and len(rows[ANCHOR]) == held_out.max_rows:
            break
    if bad and on_bad_rows == "fail":
        raise BadRowsError(f"data.eval_sets.{name}: {len(bad)} bad row(s), e.g. {bad[0]}")
    if bad:
        log.warning("data.eval_sets.%s: skipped %d bad row(s), e.g. %s", name, len(bad), bad[0])
    if not rows[ANCHOR]:
        raise BadRowsError(f"data.eval_sets.{name}: no usable rows in {path}")
    return rows


def build_set_evaluator(name: str, held_out: EvalSet, spec: ExperimentSpec):
    """The library evaluator of one named set, with the prompts training used.

    The triplet evaluator embeds with ``encode_query``/``encode_document``, which apply the
    prompts :func:`orchestrator.modeling.load_encoder` set from the spec; the pair evaluators
    call plain ``encode``, so their texts get the same prompts here, as training's do.
    """
    rows = read_eval_set(name, held_out, spec.data.on_bad_rows)
    common = {"name": name, "batch_size": spec.eval.batch_size, "write_csv": False}
    cosine = {"similarity_fn_names": ["cosine"]}
    if held_out.kind == "triplets":
        triplets = rows[ANCHOR], rows[POSITIVE], rows["negative_1"]
        return TripletEvaluator(*triplets, **common, **cosine)
    anchors = [spec.model.query_prompt + text for text in rows[ANCHOR]]
    seconds = [spec.model.passage_prompt + text for text in rows[POSITIVE]]
    if held_out.kind == "labeled_pairs":
        labels = [int(label) for label in rows[LABEL]]
        return BinaryClassificationWithAUC(anchors, seconds, labels, **common, **cosine)
    return EmbeddingSimilarityEvaluator(anchors, seconds, rows[SCORE], **common, **cosine)


def _set_metric(raw_key: str, name: str) -> str:
    """``refutes_cosine_accuracy`` → ``accuracy``; ``sts_spearman_cosine`` → ``spearman``."""
    parts = raw_key.removeprefix(name + "_").split("_")
    return "_".join(part for part in parts if part != "cosine")


def evaluate(model: SentenceTransformer, spec: ExperimentSpec) -> dict[str, float]:
    """Run the held-out evaluators on a model; flat metric names, e.g. ``ndcg@10``.

    Each of ``eval.matryoshka_dims`` adds the retrieval metrics on truncated embeddings, named
    ``dim<d>/ndcg@10``; each of ``eval.quantization`` those of quantized ones at every width,
    ``int8/ndcg@10``, ``dim<d>/binary/ndcg@10``; each named set adds ``<name>/<metric>``.
    """
    return evaluate_per_query(model, spec)[0]


def evaluate_per_query(
    model: SentenceTransformer, spec: ExperimentSpec
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """:func:`evaluate`, plus each retrieval metric's per-query values (for intervals)."""
    metrics: dict[str, float] = {}
    per_query: dict[str, np.ndarray] = {}
    retrieval = {"": spec.data.eval} if spec.data.eval is not None else {}
    retrieval.update(
        {
            f"{name}/": held_out
            for name, held_out in spec.data.eval_sets.items()
            if held_out.kind == "retrieval"
        }
    )
    for name, held_out in retrieval.items():
        retrieval_set = load_retrieval_set(held_out)
        dims = [None, *spec.eval.matryoshka_dims] if not name else [None]
        for dim in dims:
            prefix = name + (f"dim{dim}/" if dim else "")
            quantized = dim is None and not name and bool(spec.eval.quantization)
            evaluator = build_evaluator(spec, retrieval_set, dim, keep_embeddings=quantized)
            raw = evaluator(model)  # "heldout_cosine_ndcg@10"
            metrics.update({prefix + k.split("_", 2)[-1]: float(v) for k, v in sorted(raw.items())})
            per_query.update({prefix + k: v for k, v in evaluator.per_query.items()})
            if quantized:
                found = _quantized_metrics(evaluator, spec)
                metrics.update(found[0])
                per_query.update(found[1])
    for name, held_out in spec.data.eval_sets.items():
        if held_out.kind == "retrieval":
            continue
        raw = build_set_evaluator(name, held_out, spec)(model)
        for key, value in sorted(raw.items()):
            metric = _set_metric(key, name)
            if metric in held_out.metrics:
                metrics[f"{name}/{metric}"] = float(value)
    return metrics, per_query


def _quantized_metrics(
    evaluator: RetrievalEvaluator, spec: ExperimentSpec
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """``int8/ndcg@10``, ``dim64/binary/ndcg@10`` ... from the embeddings ``evaluator`` (full
    width) just computed: see :mod:`orchestrator.quantized`."""
    ks = sorted(set(spec.eval.k_values) | {10})
    queries, corpus = evaluator.embeddings()
    metrics, per_query = {}, {}
    searches = quantized_searches(queries, corpus, evaluator.corpus_ids, spec, max(*ks, 100))
    for prefix, hits in searches:
        values = per_query_metrics(hits, evaluator.queries_ids, evaluator.relevant_docs, ks)
        metrics.update({prefix + k: float(v.mean()) for k, v in sorted(values.items())})
        per_query.update({prefix + k: v for k, v in values.items()})
    return metrics, per_query


Split = Literal["test", "validation"]


def in_domain_spec(spec: ExperimentSpec, split: Split) -> ExperimentSpec:
    """The spec whose ``data.eval`` is the in-domain retrieval set of ``split``.

    ``validation`` falls back to the test set when the spec has no ``data.validation``.
    """
    if split == "validation" and spec.data.validation is not None:
        data = spec.data.model_copy(update={"eval": spec.data.validation})
        return spec.model_copy(update={"data": data})
    return spec


def guard_spec(spec: ExperimentSpec, split: Split) -> ExperimentSpec | None:
    """The spec that evaluates the guard set of ``split`` alone (None without a guard)."""
    guard = spec.eval.guard
    if guard is None:
        return None
    held_out = guard.validation if split == "validation" and guard.validation else guard
    files = {key: getattr(held_out, key) for key in ("corpus", "queries", "qrels")}
    retrieval = RetrievalEvalSpec(**files, max_queries=held_out.max_queries)
    data = spec.data.model_copy(update={"eval": retrieval, "eval_sets": {}})
    return spec.model_copy(
        update={
            "data": data,
            "eval": spec.eval.model_copy(update={"matryoshka_dims": [], "quantization": []}),
        }
    )


def evaluate_split(model: SentenceTransformer, spec: ExperimentSpec, split: Split) -> Evaluation:
    """Every held-out figure of one split: in-domain, and the guard's as ``<guard>/<metric>``."""
    metrics, per_query = evaluate_per_query(model, in_domain_spec(spec, split))
    if guarded := guard_spec(spec, split):
        prefix = f"{spec.eval.guard.name}/"
        guard_metrics, guard_per_query = evaluate_per_query(model, guarded)
        metrics.update({prefix + k: v for k, v in guard_metrics.items()})
        per_query.update({prefix + k: v for k, v in guard_per_query.items()})
    return Evaluation(metrics, per_query)
