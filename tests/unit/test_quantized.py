"""Quantized embeddings (``eval.quantization``): named per width and precision, sized, and
binary search with rescoring checked against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.evaluation import evaluate_per_query, load_retrieval_set
from orchestrator.modeling import load_encoder
from orchestrator.quantized import bytes_per_vector
from orchestrator.spec import SpecError, load_spec


@pytest.fixture(scope="module")
def quantized(tiny_model, corpora, tmp_path_factory):
    from tests.conftest import tiny_spec_dict

    spec = tiny_spec_dict(tiny_model, corpora, tmp_path_factory.mktemp("runs"))
    spec["eval"] = {"batch_size": 16, "matryoshka_dims": [16], "quantization": ["int8", "binary"]}
    spec = load_spec(spec)
    model = load_encoder(tiny_model, spec.model)
    return spec, model, *evaluate_per_query(model, spec)


def test_each_width_and_precision_has_every_retrieval_metric(quantized):
    _, _, metrics, per_query = quantized
    for prefix in ("int8/", "binary/", "dim16/int8/", "dim16/binary/"):
        for metric in ("ndcg@10", "mrr@10", "recall@1", "map@100"):
            assert 0.0 <= metrics[prefix + metric] <= 1.0
            assert len(per_query[prefix + metric]) == 24  # one per held-out query
            assert per_query[prefix + metric].mean() == pytest.approx(metrics[prefix + metric])


def test_int8_codes_retrieve_almost_what_float_does(quantized):
    _, _, metrics, _ = quantized
    assert metrics["int8/ndcg@10"] == pytest.approx(metrics["ndcg@10"], abs=0.05)


def test_binary_search_rescores_candidates_with_the_float_query(quantized):
    """24 passages, 4 x 100 candidates: every passage is rescored, so the ranking is the float
    query's dot product with each passage's bits (0/1), as the library rescores."""
    spec, model, metrics, _ = quantized
    queries, corpus, relevant = load_retrieval_set(spec.data.eval)
    q = model.encode_query(list(queries.values()), prompt=spec.model.query_prompt or None)
    c = model.encode_document(list(corpus.values()), prompt=spec.model.passage_prompt or None)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    bits = (c > 0).astype(float)
    ids = list(corpus)
    reciprocal = []
    for row, qid in zip(q @ bits.T, queries, strict=True):
        order = sorted(range(len(ids)), key=lambda i: (-row[i], ids[i]))
        rank = next(r for r, i in enumerate(order) if ids[i] in relevant[qid])
        reciprocal.append(1 / (rank + 1) if rank < 10 else 0.0)
    assert metrics["binary/mrr@10"] == pytest.approx(np.mean(reciprocal), abs=1e-6)


def test_bytes_per_vector():
    assert bytes_per_vector(384, "float32") == 1536
    assert bytes_per_vector(384, "int8") == 384
    assert bytes_per_vector(384, "binary") == 48
    assert bytes_per_vector(100, "binary") == 13  # bits padded to whole bytes


def test_a_quantized_metric_needs_its_precision(tiny_spec):
    tiny_spec["eval"] = {"main_metric": "binary/ndcg@10"}
    with pytest.raises(SpecError, match=r"needs binary in eval\.quantization"):
        load_spec(tiny_spec)
    tiny_spec["eval"]["quantization"] = ["binary", "binary"]
    with pytest.raises(SpecError, match="listed more than once: binary"):
        load_spec(tiny_spec)
    tiny_spec["eval"]["quantization"] = ["binary"]
    assert load_spec(tiny_spec).eval.main_metric == "binary/ndcg@10"


def test_no_set_or_guard_may_take_a_precisions_name(tiny_spec, corpora):
    held_out = {
        "corpus": str(corpora["eval"] / "corpus.jsonl"),
        "queries": str(corpora["eval"] / "queries.jsonl"),
        "qrels": str(corpora["eval"] / "qrels.tsv"),
    }
    named = {
        **tiny_spec,
        "data": {**tiny_spec["data"], "eval_sets": {"int8": {"kind": "retrieval", **held_out}}},
    }
    with pytest.raises(SpecError, match="not be dim<N>, int8 or binary"):
        load_spec(named)
    guarded = {**tiny_spec, "eval": {"guard": {"name": "binary", **held_out}}}
    with pytest.raises(SpecError, match="'binary' is taken"):
        load_spec(guarded)
