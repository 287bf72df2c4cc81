"""The mining filters on hand-made scores: no model, no Ray."""

from __future__ import annotations

import pytest
import torch

from orchestrator import mining
from orchestrator.mining import (
    Candidates,
    MiningConfig,
    MiningCounts,
    MiningReport,
    Pairs,
    embedding,
    known_positive_keys,
    retrieve,
    select_negatives,
    unique_index,
)


def _select(pairs: Pairs, scores: list[list[float]], indices: list[list[int]], **settings):
    corpus_size = 1 + max(max(row) for row in indices)
    candidates = Candidates(
        torch.tensor(scores),
        torch.tensor(indices),
        known_positive_keys(pairs, corpus_size),
        corpus_size,
    )
    return select_negatives(pairs, candidates, MiningConfig(**settings))


def _pairs(anchor: list[int], positive: list[int], score: list[float]) -> Pairs:
    return Pairs(torch.tensor(anchor), torch.tensor(positive), torch.tensor(score))


def test_identical_texts_share_one_index():
    texts, index = unique_index(["b", "a", "b", "c", "a"])
    assert texts == ["b", "a", "c"] and index.tolist() == [0, 1, 0, 2, 1]


def test_known_positives_of_the_anchor_and_margin_failures_are_skipped():
    # Anchor 0 has two labelled answers (corpus 0 and 1): neither is a negative of either row.
    pairs = _pairs([0, 0], [0, 1], [0.9, 0.8])
    scores = [[0.95, 0.9, 0.88, 0.7, 0.6, 0.5]]
    sel = _select(pairs, scores, [[1, 0, 2, 3, 4, 5]], k=2, candidates=6, relative_margin=0.1)
    # Row 0: threshold 0.81 drops corpus 2 (0.88); row 1: threshold 0.72 drops 2.
    assert sel.kept.tolist() == [True, True]
    assert sel.negatives.tolist() == [[3, 4], [3, 4]]
    assert sel.negative_scores.flatten().tolist() == pytest.approx([0.7, 0.6] * 2)
    assert sel.counts.removed_false_negatives == 2  # known positives are not counted as such


def test_relative_margin_does_not_loosen_for_a_negative_positive_score():
    pairs = _pairs([0], [0], [-0.5])
    # pos * (1 - m) would allow -0.45; pos - |pos| * m allows only up to -0.55.
    sel = _select(pairs, [[-0.5, -0.5, -0.52, -0.6]], [[0, 1, 2, 3]], k=1, candidates=4)
    assert sel.negatives.tolist() == [[3]]


def test_absolute_margin():
    pairs = _pairs([0], [0], [0.8])
    settings = {"k": 1, "candidates": 3, "relative_margin": None, "absolute_margin": 0.1}
    sel = _select(pairs, [[0.8, 0.75, 0.7]], [[0, 1, 2]], **settings)
    assert sel.negatives.tolist() == [[2]] and sel.counts.removed_false_negatives == 1


def test_too_few_survivors_drop_the_pair_without_padding():
    pairs = _pairs([0, 1], [0, 1], [0.9, 0.9])
    scores = [[0.9, 0.5, 0.4], [0.89, 0.9, 0.3]]
    sel = _select(pairs, scores, [[0, 1, 2], [0, 1, 2]], k=2, candidates=3)
    assert sel.kept.tolist() == [True, False]
    assert sel.negatives.tolist() == [[1, 2]]
    assert sel.counts == MiningCounts(
        kept=1, dropped_too_few_negatives=1, removed_false_negatives=1
    )


def test_consistency_keeps_a_pair_only_if_its_positive_ranks_high_enough():
    pairs = _pairs([0, 1], [0, 1], [0.9, 0.8])
    scores = [[0.9, 0.5, 0.4], [0.85, 0.8, 0.3]]
    settings = {"k": 1, "candidates": 3, "relative_margin": None, "consistency_top_k": 1}
    sel = _select(pairs, scores, [[0, 1, 2], [2, 1, 0]], **settings)
    assert sel.kept.tolist() == [True, False]
    assert sel.counts.dropped_inconsistent == 1 and sel.counts.dropped_too_few_negatives == 0


def test_blocked_retrieval_equals_one_exact_search(monkeypatch):
    torch.manual_seed(0)
    anchors = torch.nn.functional.normalize(torch.randn(7, 8), dim=1)
    corpus = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    monkeypatch.setattr(embedding, "SIMILARITY_BLOCK", 10)  # two anchors per block
    scores, indices = retrieve(anchors, corpus, top=9)  # capped at the corpus size
    expected_scores, expected_indices = torch.topk(anchors @ corpus.T, k=5, dim=1)
    assert torch.equal(indices, expected_indices) and torch.allclose(scores, expected_scores)


@pytest.mark.parametrize(
    "settings",
    [{"k": 0}, {"k": 5, "candidates": 4}, {"consistency_top_k": 31}, {"relative_margin": -0.1}],
)
def test_config_rejects_settings_that_cannot_mine(settings):
    with pytest.raises(ValueError):
        MiningConfig(**settings)


def test_report_lines_name_every_count():
    counts = MiningCounts(10, 4, 6, 7, 2, 1, 5)
    report = MiningReport("colors", "out.jsonl", "out.jsonl.provenance.json", counts, 1)
    text = "\n".join(report.lines())
    assert "7/10 pairs kept" in text and "2 with too few" in text and "1 whose positive" in text
    assert "removed 5 candidate(s)" in text and "out.jsonl.provenance.json" in text


def test_labeled_pairs_are_not_mined():
    """Label-0 rows are not positives: mining them would teach the negatives as positives."""
    from orchestrator.spec import parse_spec

    spec = parse_spec(
        {
            "name": "t",
            "model": {"base": "m"},
            "data": {
                "sources": {"l": {"format": "jsonl", "path": "l.jsonl", "columns": {"label": "y"}}},
                "eval": {"corpus": "c", "queries": "q", "qrels": "r"},
            },
            "loss": {"kind": "contrastive"},
        }
    )
    with pytest.raises(ValueError, match=r"data.sources.l: mining needs \(anchor, positive\)"):
        mining.read_pairs(spec, "l")
