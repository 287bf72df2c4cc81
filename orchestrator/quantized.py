"""Retrieval quality of quantized embeddings: what a vector index that stores int8 or binary
codes (``eval.quantization``) would find, at every Matryoshka width.

The float32 embeddings of the full-width retrieval evaluation are reused; each width cuts and
re-normalizes them; each precision quantizes the passages with sentence-transformers'
``quantize_embeddings`` (int8: per-dimension ranges calibrated on the corpus itself, as an
index built from it would be; binary: one bit a dimension, its sign) and searches them with
its ``semantic_search_usearch``, exactly (no approximate index, so the figures are the codes'
alone), then rescores the ``eval.rescore_multiplier`` times k best candidates with the float
query (the library's rescoring). The hits go through the same per-query metrics as the float
evaluation, so ``binary/ndcg@10`` and ``ndcg@10`` are the same measurement of two indexes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from orchestrator.spec import ExperimentSpec, Precision

#: Bits a dimension takes in each precision the tables show.
BITS = {"float32": 32, "int8": 8, "binary": 1}
#: The name of each precision in sentence-transformers' quantization helpers: the unsigned
#: packing of bits, the form the library's Hamming search and rescoring read.
_LIBRARY_PRECISION = {"int8": "int8", "binary": "ubinary"}


def bytes_per_vector(dim: int, precision: str) -> int:
    """The bytes one embedding of ``dim`` dimensions takes in ``precision``."""
    return math.ceil(dim * BITS[precision] / 8)


def metric_prefix(dim: int | None, precision: str) -> str:
    """``dim64/int8/``: how a width and a precision are named in a metric (full width and
    float32 have no prefix)."""
    return (f"dim{dim}/" if dim else "") + ("" if precision == "float32" else f"{precision}/")


def quantized_searches(
    query_vectors: np.ndarray,
    corpus_vectors: np.ndarray,
    corpus_ids: list[str],
    spec: ExperimentSpec,
    top_k: int,
) -> Iterator[tuple[str, list[list[dict]]]]:
    """For each width (full, ``eval.matryoshka_dims``) and precision of ``eval.quantization``:
    its metric prefix (``int8/``, ``dim64/binary/``) and each query's ``top_k`` hits
    (``corpus_id``, ``score``), in the order of ``query_vectors``."""
    for dim in [None, *spec.eval.matryoshka_dims]:
        cut_queries, cut_corpus = _cut(query_vectors, dim), _cut(corpus_vectors, dim)
        for precision in spec.eval.quantization:
            hits = _search(cut_queries, cut_corpus, precision, top_k, spec)
            named = [[{**h, "corpus_id": corpus_ids[h["corpus_id"]]} for h in q] for q in hits]
            yield metric_prefix(dim, precision), named


def _cut(vectors: np.ndarray, dim: int | None) -> np.ndarray:
    """The first ``dim`` dimensions, re-normalized: cosine similarity as a dot product."""
    cut = vectors[:, :dim] if dim else vectors
    return cut / np.clip(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12, None)


def _search(
    queries: np.ndarray, corpus: np.ndarray, precision: Precision, top_k: int, spec: ExperimentSpec
) -> list[list[dict]]:
    from sentence_transformers.util.quantization import (
        quantize_embeddings,
        semantic_search_usearch,
    )

    library = _LIBRARY_PRECISION[precision]
    codes = quantize_embeddings(corpus, precision=library, calibration_embeddings=corpus)
    hits, _seconds = semantic_search_usearch(
        queries,
        corpus_embeddings=codes,
        corpus_precision=library,
        top_k=min(top_k, len(corpus)),
        calibration_embeddings=corpus,
        rescore=True,
        rescore_multiplier=spec.eval.rescore_multiplier,
        exact=True,
    )
    return hits
