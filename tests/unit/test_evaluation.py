"""Held-out evaluation, including the same metrics on truncated (Matryoshka) embeddings."""

from __future__ import annotations

from orchestrator.evaluation import evaluate
from orchestrator.modeling import load_encoder
from orchestrator.spec import load_spec


def test_matryoshka_dims_add_truncated_metrics(tiny_spec, tiny_model):
    tiny_spec["eval"] = {"batch_size": 16, "matryoshka_dims": [16, 8]}
    spec = load_spec(tiny_spec)
    metrics = evaluate(load_encoder(tiny_model, spec.model), spec)
    for prefix in ("", "dim16/", "dim8/"):
        assert 0.0 <= metrics[f"{prefix}ndcg@10"] <= 1.0
        assert f"{prefix}mrr@10" in metrics and f"{prefix}recall@1" in metrics
    # 8 of 32 dimensions rank differently from all 32.
    assert metrics["dim8/ndcg@10"] != metrics["ndcg@10"]
