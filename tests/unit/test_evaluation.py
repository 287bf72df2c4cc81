"""Held-out evaluation: retrieval (and its Matryoshka cuts) and the named sets — triplet
accuracy, pair classification with ROC AUC, STS correlation — each against a hand computation."""

from __future__ import annotations

import json
from itertools import product

import numpy as np
import pytest

from orchestrator.errors import BadRowsError
from orchestrator.evaluation import evaluate, read_eval_set
from orchestrator.modeling import load_encoder
from orchestrator.spec import load_spec
from tests.conftest import pairs, write_jsonl


def test_matryoshka_dims_add_truncated_metrics(tiny_spec, tiny_model):
    tiny_spec["eval"] = {"batch_size": 16, "matryoshka_dims": [16, 8]}
    spec = load_spec(tiny_spec)
    metrics = evaluate(load_encoder(tiny_model, spec.model), spec)
    for prefix in ("", "dim16/", "dim8/"):
        assert 0.0 <= metrics[f"{prefix}ndcg@10"] <= 1.0
        assert f"{prefix}mrr@10" in metrics and f"{prefix}recall@1" in metrics
    # 8 of 32 dimensions rank differently from all 32.
    assert metrics["dim8/ndcg@10"] != metrics["ndcg@10"]


# --------------------------------------------------------------------------- named sets

ROWS = pairs(7, 12)
QUERY_PROMPT, PASSAGE_PROMPT = "what ", "the "


def cosine(model, first: list[str], second: list[str]) -> np.ndarray:
    a, b = model.encode(first), model.encode(second)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (1-based), ties sharing the mean of their positions."""
    order = np.argsort(values, kind="stable")
    out = np.empty(len(values))
    out[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        out[tied] = out[tied].mean()
    return out


@pytest.fixture
def named_sets(tmp_path, tiny_spec):
    """The tiny spec with a triplet, a labeled-pair and a scored-pair set (and prompts)."""
    write_jsonl(tmp_path / "triplets.jsonl", ROWS)
    labeled = [
        {"s1": r["question"], "s2": r[col], "same": int(col == "answer")}
        for r, col in product(ROWS, ["answer", "wrong"])
    ]
    write_jsonl(tmp_path / "labeled.jsonl", labeled)
    scored = "s1,s2,sim\n" + "".join(
        f"{r['question']},{r['answer']},{i % 5}\n" for i, r in enumerate(ROWS)
    )
    (tmp_path / "scored.csv").write_text(scored)
    tiny_spec["model"].update(query_prompt=QUERY_PROMPT, passage_prompt=PASSAGE_PROMPT)
    tiny_spec["data"]["eval_sets"] = {
        "refutes": {
            "kind": "triplets",
            "path": str(tmp_path / "triplets.jsonl"),
            "columns": {"anchor": "question", "positive": "answer", "negatives": ["wrong"]},
        },
        "labels": {
            "kind": "labeled_pairs",
            "path": str(tmp_path / "labeled.jsonl"),
            "columns": {"anchor": "s1", "positive": "s2", "label": "same"},
        },
        "sts": {
            "kind": "scored_pairs",
            "path": str(tmp_path / "scored.csv"),
            "columns": {"anchor": "s1", "positive": "s2", "score": "sim"},
        },
    }
    return tiny_spec, labeled, scored


@pytest.fixture
def set_metrics(named_sets, tiny_model):
    spec = load_spec(named_sets[0])
    model = load_encoder(tiny_model, spec.model)
    return evaluate(model, spec), model


def test_named_sets_report_their_metrics(set_metrics):
    metrics, _ = set_metrics
    names = {k for k in metrics if "/" in k and not k.startswith("dim")}
    assert names == {
        "refutes/accuracy",
        *(f"labels/{m}" for m in ("roc_auc", "ap", "accuracy", "f1", "precision", "recall", "mcc")),
        "sts/spearman",
        "sts/pearson",
    }
    assert "ndcg@10" in metrics  # the retrieval set is still evaluated


def test_a_named_retrieval_set_reports_what_the_main_set_would(tiny_spec, tiny_model):
    """Another domain's retrieval set: the main set's metrics under its name, per query too."""
    from orchestrator.evaluation import evaluate_per_query

    tiny_spec["data"]["eval_sets"] = {"other": {"kind": "retrieval", **tiny_spec["data"]["eval"]}}
    tiny_spec["eval"] = {"main_metric": "other/mrr@10"}
    spec = load_spec(tiny_spec)
    metrics, per_query = evaluate_per_query(load_encoder(tiny_model, spec.model), spec)
    main = {k: v for k, v in metrics.items() if "/" not in k}
    assert main and {f"other/{k}": v for k, v in main.items()} == {
        k: v for k, v in metrics.items() if k.startswith("other/")
    }
    np.testing.assert_array_equal(per_query["other/ndcg@10"], per_query["ndcg@10"])


@pytest.mark.parametrize(
    ("metric", "problem"),
    [
        ("other/ndcg@10", None),
        ("other/accuracy", "like 'other/ndcg@10'"),
        ("gone/ndcg@10", "no set"),
    ],
)
def test_metrics_of_named_retrieval_sets_are_checked(tiny_spec, metric, problem):
    tiny_spec["data"]["eval_sets"] = {"other": {"kind": "retrieval", **tiny_spec["data"]["eval"]}}
    found = load_spec(tiny_spec).metric_problem("eval.main_metric", metric)
    assert (found is None) if problem is None else (problem in found)


def test_triplet_accuracy_matches_hand_computation(set_metrics):
    metrics, model = set_metrics
    anchors = [QUERY_PROMPT + r["question"] for r in ROWS]
    closer = cosine(model, anchors, [PASSAGE_PROMPT + r["answer"] for r in ROWS]) > cosine(
        model, anchors, [PASSAGE_PROMPT + r["wrong"] for r in ROWS]
    )
    assert metrics["refutes/accuracy"] == pytest.approx(closer.mean())


def test_roc_auc_matches_the_mann_whitney_count(named_sets, set_metrics):
    _, labeled, _ = named_sets
    metrics, model = set_metrics
    sims = cosine(
        model,
        [QUERY_PROMPT + r["s1"] for r in labeled],
        [PASSAGE_PROMPT + r["s2"] for r in labeled],
    )
    labels = np.array([r["same"] for r in labeled])
    positives, negatives = sims[labels == 1], sims[labels == 0]
    # AUC = P(a random similar pair scores above a random dissimilar one), ties count half.
    wins = [(p > n) + 0.5 * (p == n) for p in positives for n in negatives]
    assert metrics["labels/roc_auc"] == pytest.approx(np.mean(wins))
    assert 0.0 <= metrics["labels/ap"] <= 1.0


def test_spearman_matches_hand_computation(set_metrics):
    metrics, model = set_metrics
    scores = np.array([i % 5 for i in range(len(ROWS))], dtype=float)
    sims = cosine(
        model,
        [QUERY_PROMPT + r["question"] for r in ROWS],
        [PASSAGE_PROMPT + r["answer"] for r in ROWS],
    )
    expected = np.corrcoef(ranks(sims), ranks(scores))[0, 1]
    assert metrics["sts/spearman"] == pytest.approx(expected)
    assert metrics["sts/pearson"] == pytest.approx(np.corrcoef(sims, scores)[0, 1], rel=1e-4)


def test_sets_can_replace_the_retrieval_set(named_sets, tiny_model):
    raw, _, _ = named_sets
    del raw["data"]["eval"]
    raw["eval"] = {"main_metric": "labels/roc_auc"}
    spec = load_spec(raw)
    metrics = evaluate(load_encoder(tiny_model, spec.model), spec)
    assert "ndcg@10" not in metrics and "labels/roc_auc" in metrics


def test_bad_rows_of_a_set_are_named_and_skipped_or_fatal(named_sets, tmp_path):
    raw, _, _ = named_sets
    path = tmp_path / "triplets.jsonl"
    path.write_text(path.read_text() + json.dumps({"question": "q", "answer": "a"}) + "\n")
    spec = load_spec(raw)
    rows = read_eval_set("refutes", spec.data.eval_sets["refutes"])
    assert len(rows["anchor"]) == len(ROWS)
    with pytest.raises(BadRowsError, match=rf"{path}:13: missing 'wrong' \(negative_1\)"):
        read_eval_set("refutes", spec.data.eval_sets["refutes"], on_bad_rows="fail")


# --------------------------------------------------------------------------- per query


def test_per_query_values_average_to_the_librarys_figures(tiny_spec, tiny_model):
    from orchestrator.evaluation import evaluate_per_query

    tiny_spec["eval"] = {"batch_size": 16, "k_values": [1, 3, 10]}
    spec = load_spec(tiny_spec)
    metrics, per_query = evaluate_per_query(load_encoder(tiny_model, spec.model), spec)
    assert set(per_query) >= {"ndcg@10", "mrr@10", "recall@1", "map@100", "accuracy@3"}
    for name, values in per_query.items():
        assert len(values) == 24  # one per held-out query
        assert values.mean() == pytest.approx(metrics[name], abs=1e-9), name


def test_the_guard_is_evaluated_on_its_own_and_named(tiny_spec, tiny_model, corpora):
    from orchestrator.evaluation import evaluate_split

    eval_dir = corpora["eval"]
    files = {
        k: str(eval_dir / f)
        for k, f in [
            ("corpus", "corpus.jsonl"),
            ("queries", "queries.jsonl"),
            ("qrels", "qrels.tsv"),
        ]
    }
    guard = {"name": "general", **files, "max_queries": 10, "validation": files}
    tiny_spec["eval"] = {"batch_size": 16, "guard": guard}
    spec = load_spec(tiny_spec)
    result = evaluate_split(load_encoder(tiny_model, spec.model), spec, "test")
    assert "general/ndcg@10" in result.metrics and "ndcg@10" in result.metrics
    assert len(result.per_query["general/ndcg@10"]) == 10
    assert len(result.per_query["ndcg@10"]) == 24


def test_the_merge_weight_is_the_best_one_that_keeps_the_guard():
    from orchestrator.finalize import pick_alpha

    def rows(*figures, se=0.0):
        return [
            {"alpha": a, "ndcg@10": m, "guard_drop": d, "guard_drop_se": se} for a, m, d in figures
        ]

    both = rows((1.0, 0.86, 0.02), (0.5, 0.85, 0.004), (0.3, 0.84, 0.0))
    assert pick_alpha(both, "ndcg@10", 0.005)["alpha"] == 0.5  # 1.0 forgets, 0.5 beats 0.3
    assert pick_alpha(both, "ndcg@10", 0.05)["alpha"] == 1.0
    # one standard error of margin: 0.004 + 0.002 is beyond the tolerance, 0.0 + 0.002 is not
    near = rows((0.5, 0.85, 0.004), (0.3, 0.84, 0.0), se=0.002)
    assert pick_alpha(near, "ndcg@10", 0.005)["alpha"] == 0.3
    none_kept = rows((1.0, 0.86, 0.03), (0.5, 0.85, 0.01))
    assert pick_alpha(none_kept, "ndcg@10", 0.005)["alpha"] == 0.5  # forgets least


def test_merge_weights_are_tried_on_validation_and_the_chosen_one_is_written(
    tiny_spec, tiny_model, corpora, tmp_path
):
    import torch
    from sentence_transformers import SentenceTransformer

    from orchestrator.finalize import choose_alpha, pick_alpha

    files = {
        "corpus": str(corpora["eval"] / "corpus.jsonl"),
        "queries": str(corpora["eval"] / "queries.jsonl"),
        "qrels": str(corpora["eval"] / "qrels.tsv"),
    }
    tiny_spec["data"]["validation"] = files
    tiny_spec["eval"] = {
        "batch_size": 16,
        "guard": {"name": "general", **files, "validation": files},
    }
    tiny_spec["merge"] = {"alphas": [0.25, 1.0]}
    spec = load_spec(tiny_spec)
    tuned = SentenceTransformer(tiny_model, device="cpu")
    torch.manual_seed(1)
    with torch.no_grad():
        for param in tuned.parameters():
            param.add_(torch.randn_like(param) * 0.5)  # a "fine-tune" that changes everything
    folder = tmp_path / "tuned"
    tuned.save(str(folder))

    merge = choose_alpha(spec, tiny_model, folder)
    assert [row["alpha"] for row in merge.alphas] == [0.25, 1.0]
    assert merge.split == "validation" and merge.chosen in (0.25, 1.0)
    for row in merge.alphas:
        expected = merge.base["general/ndcg@10"] - row["general/ndcg@10"]
        assert row["guard_drop"] == pytest.approx(expected)
        assert 0 < row["guard_drop_se"] < 1  # from the per-query values of the guard
    assert merge.chosen == pick_alpha(merge.alphas, "ndcg@10", 0.005)["alpha"]
    # The folder now holds base + chosen * (tuned - base).
    base = SentenceTransformer(tiny_model, device="cpu").state_dict()
    written = SentenceTransformer(str(folder), device="cpu").state_dict()
    name = next(k for k, v in base.items() if v.is_floating_point() and v.ndim == 2)
    want = base[name] + merge.chosen * (tuned.state_dict()[name] - base[name])
    torch.testing.assert_close(written[name], want)
