"""Run summaries and training reports as the code writes them, for tests of their readers."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from orchestrator.summary import RunSummary


def verdict_dict(
    baseline: float = 0.80, finetuned: float = 0.85, metric: str = "ndcg@10", **extra
) -> dict[str, Any]:
    delta = finetuned - baseline
    outcome = "improved" if delta > 0 else "worse" if delta < 0 else "within noise"
    judged = {
        "metric": metric,
        "baseline": baseline,
        "finetuned": finetuned,
        "delta": delta,
        "interval": None,
        "level": 0.95,
        "outcome": outcome,
        "improved": outcome == "improved",
    }
    return {**judged, **extra}


def summary_dict(**fields: Any) -> dict[str, Any]:
    """A complete ``summary.json`` object; ``fields`` replace its keys."""
    summary = {
        "run_id": "run-1a2b3c",
        "name": "faq-tune",
        "spec_hash": "f" * 64,
        "base_model": "tiny-bert",
        "steps": 10,
        "resumed_from_step": 0,
        "restores": 0,
        "stream_digests": ["abc"],
        "pairs_seen": 320,
        "source_steps": {"faq": 10},
        "negatives_per_query": 31,
        "trainable_params": 1000,
        "total_params": 5000,
        "final_loss": 1.0,
        "sources": {"faq": {"rows": 1200, "bad_rows": 3, "examples": ["line 7: no anchor"]}},
        "checkpoint": "/runs/faq-tune/run-1a2b3c/checkpoint_1",
        "baseline": {"ndcg@10": 0.80},
        "finetuned": {"ndcg@10": 0.85},
        "verdict": verdict_dict(),
        "model_uri": "/runs/faq-tune/run-1a2b3c/model",
        "rejected": False,
        "timings_s": {"data": 1.5, "train": 42.25, "total": 60.0},
    }
    return {**summary, **fields}


def run_summary(**fields: Any) -> RunSummary:
    return TypeAdapter(RunSummary).validate_python(summary_dict(**fields))
