"""Dataset preparation from local SQuAD / VitaminC files: splits without leakage, BEIR layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.data.prepare import (
    MIN_GROUPS,
    interleave,
    prepare,
    prepare_squad,
    prepare_vitaminc,
)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_qrels(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def squad_json(path: Path, articles: int, paragraphs: int, questions: int = 2) -> Path:
    """A SQuAD-format file; texts name their article and paragraph ("a3 p1")."""
    data = [
        {
            "title": f"article {a}",
            "paragraphs": [
                {
                    "context": f" a{a} p{p}: the text of paragraph {p} of article {a}. ",
                    "qas": [
                        {"id": f"a{a}p{p}q{q}", "question": f" a{a} p{p}: question {q}? "}
                        for q in range(questions)
                    ],
                }
                for p in range(paragraphs)
            ],
        }
        for a in range(articles)
    ]
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return path


def article_of(text: str) -> str:
    return text.split()[0]


def paragraph_of(text: str) -> str:
    return " ".join(text.split()[:2])


@pytest.fixture
def squad(tmp_path) -> Path:
    out = tmp_path / "squad"
    counts = prepare_squad(squad_json(tmp_path / "squad.json", articles=30, paragraphs=2), out)
    held_out = counts["eval_queries"] + counts["validation_queries"]
    assert counts["train_rows"] + held_out == 30 * 2 * 2
    return out


def test_squad_writes_train_and_a_beir_eval_set(squad):
    train = read_jsonl(squad / "train.jsonl")
    assert train and set(train[0]) == {"anchor", "positive", "negative"}
    corpus = read_jsonl(squad / "eval" / "corpus.jsonl")
    queries = read_jsonl(squad / "eval" / "queries.jsonl")
    assert corpus and queries
    assert set(corpus[0]) == set(queries[0]) == {"_id", "text"}


def test_squad_negatives_are_other_training_paragraphs_of_the_same_article(squad):
    train = read_jsonl(squad / "train.jsonl")
    paragraphs = {row["positive"] for row in train}
    for row in train:
        assert row["negative"] != row["positive"]
        assert row["negative"] in paragraphs  # never a held-out paragraph
        assert article_of(row["negative"]) == article_of(row["positive"])


def test_a_single_paragraph_article_borrows_a_negative(tmp_path):
    out = tmp_path / "single"
    prepare_squad(squad_json(tmp_path / "single.json", articles=30, paragraphs=1), out)
    for row in read_jsonl(out / "train.jsonl"):
        assert row["negative"] != row["positive"]
        assert article_of(row["negative"]) != article_of(row["positive"])


def test_squad_texts_are_stripped(squad):
    row = read_jsonl(squad / "train.jsonl")[0]
    assert row["anchor"] == row["anchor"].strip() and row["positive"] == row["positive"].strip()


def test_qrels_have_a_header(squad):
    assert read_qrels(squad / "eval" / "qrels.tsv")[0] == ["query-id", "corpus-id", "score"]


def test_every_eval_query_has_a_qrel_into_the_corpus(squad):
    corpus = {d["_id"]: d["text"] for d in read_jsonl(squad / "eval" / "corpus.jsonl")}
    queries = {q["_id"]: q["text"] for q in read_jsonl(squad / "eval" / "queries.jsonl")}
    qrels = {q: (d, score) for q, d, score in read_qrels(squad / "eval" / "qrels.tsv")[1:]}
    assert set(qrels) == set(queries)
    for query_id, (doc_id, score) in qrels.items():
        assert score == "1"
        # The relevant paragraph is the one the question was asked about.
        assert paragraph_of(corpus[doc_id]) == paragraph_of(queries[query_id])


def test_no_eval_paragraph_is_trained_on(squad):
    corpus = {d["text"] for d in read_jsonl(squad / "eval" / "corpus.jsonl")}
    train = read_jsonl(squad / "train.jsonl")
    assert not corpus & {row["positive"] for row in train}
    eval_queries = {q["text"] for q in read_jsonl(squad / "eval" / "queries.jsonl")}
    assert not eval_queries & {row["anchor"] for row in train}


def test_many_articles_are_held_out_whole(squad):
    train = {article_of(row["positive"]) for row in read_jsonl(squad / "train.jsonl")}
    held = {article_of(d["text"]) for d in read_jsonl(squad / "eval" / "corpus.jsonl")}
    assert held and not train & held
    assert len(held) == round(0.15 * 30)


def test_validation_articles_are_neither_test_nor_trained_on(squad):
    train = {article_of(row["positive"]) for row in read_jsonl(squad / "train.jsonl")}
    test = {article_of(d["text"]) for d in read_jsonl(squad / "eval" / "corpus.jsonl")}
    validation = {article_of(d["text"]) for d in read_jsonl(squad / "validation" / "corpus.jsonl")}
    assert len(validation) == round(0.10 * 30)
    assert not validation & train and not validation & test
    queries = {q["_id"] for q in read_jsonl(squad / "validation" / "queries.jsonl")}
    assert {q for q, _, _ in read_qrels(squad / "validation" / "qrels.tsv")[1:]} == queries


def test_few_articles_are_held_out_by_paragraph(tmp_path):
    articles, paragraphs = 4, 5
    assert articles < MIN_GROUPS
    out = tmp_path / "small"
    prepare_squad(squad_json(tmp_path / "small.json", articles, paragraphs), out)
    train = {paragraph_of(row["positive"]) for row in read_jsonl(out / "train.jsonl")}
    held = {paragraph_of(d["text"]) for d in read_jsonl(out / "eval" / "corpus.jsonl")}
    assert len(held) == round(0.15 * articles * paragraphs)
    assert not train & held
    # Split inside articles: some article has paragraphs on both sides.
    assert {p.split()[0] for p in train} & {p.split()[0] for p in held}


def test_questions_about_one_paragraph_are_far_apart(squad):
    train = read_jsonl(squad / "train.jsonl")
    positions: dict[str, list[int]] = {}
    for index, row in enumerate(train):
        positions.setdefault(row["positive"], []).append(index)
    paragraphs = len(positions)
    assert all(len(p) == 2 for p in positions.values())
    # Round-robin: the second question of a paragraph comes one full round later.
    assert min(b - a for a, b in positions.values()) == paragraphs


def test_interleave_takes_one_row_per_group_per_round():
    groups = {"x": [1, 2, 3], "y": [4], "z": [5, 6]}
    out = interleave({k: [{"v": v} for v in vs] for k, vs in groups.items()})
    values = [row["v"] for row in out]
    assert sorted(values) == [1, 2, 3, 4, 5, 6]
    assert sorted(values[:3]) == [1, 4, 5]  # first round: the head of every group
    assert sorted(values[3:5]) == [2, 6]
    assert values[5] == 3
    assert out == interleave({k: [{"v": v} for v in vs] for k, vs in groups.items()})


# --------------------------------------------------------------------------- VitaminC


def vitaminc_json(path: Path, pages: int, claims: int) -> Path:
    """BIG-bench VitaminC examples: "Page: evidence\\nClaim: claim" with True/False/Neither."""
    examples = []
    for page in range(pages):
        for claim in range(claims):
            name, text = f"Page{page}", f"page{page} claim {claim}"
            for label in ("True", "False", "Neither"):
                scores = {key: int(key == label) for key in ("True", "False", "Neither")}
                evidence = f"page{page} evidence {label.lower()} for claim {claim}"
                examples.append(
                    {"input": f"{name}: {evidence}\nClaim: {text}", "target_scores": scores}
                )
    # A claim with only supporting evidence yields no triplet.
    examples.append(
        {
            "input": "Page0: lonely evidence\nClaim: page0 lonely claim",
            "target_scores": {"True": 1, "False": 0, "Neither": 0},
        }
    )
    path.write_text(json.dumps({"examples": examples}))
    return path


@pytest.fixture
def vitaminc(tmp_path) -> Path:
    out = tmp_path / "vitaminc"
    counts = prepare_vitaminc(vitaminc_json(tmp_path / "task.json", pages=20, claims=3), out)
    assert counts["train_rows"] + counts["eval_queries"] == 20 * 3
    return out


def test_vitaminc_rows_are_claim_support_refute_triplets(vitaminc):
    rows = read_jsonl(vitaminc / "train.jsonl") + read_jsonl(vitaminc / "eval" / "triplets.jsonl")
    for row in rows:
        assert set(row) == {"anchor", "positive", "negative"}
        page, _, claim = row["anchor"].split()
        assert row["positive"] == f"{page} evidence true for claim {claim}"
        assert row["negative"] == f"{page} evidence false for claim {claim}"


def test_vitaminc_held_out_pages_never_appear_in_train(vitaminc):
    train = {row["anchor"].split()[0] for row in read_jsonl(vitaminc / "train.jsonl")}
    held = {row["anchor"].split()[0] for row in read_jsonl(vitaminc / "eval" / "triplets.jsonl")}
    assert held and train and not train & held
    assert len(held) == round(0.15 * 20)


@pytest.mark.parametrize(
    ("triplets", "pairs"),
    [("train.jsonl", "train_labeled.jsonl"), ("eval/triplets.jsonl", "eval/pairs.jsonl")],
)
def test_vitaminc_labeled_pairs_are_the_triplets_split_by_label(vitaminc, triplets, pairs):
    expected = [
        (row["anchor"], row[column], int(column == "positive"))
        for row in read_jsonl(vitaminc / triplets)
        for column in ("positive", "negative")
    ]
    got = [(r["anchor"], r["evidence"], r["label"]) for r in read_jsonl(vitaminc / pairs)]
    assert got == expected and expected


def test_vitaminc_retrieval_set_holds_support_and_refute(vitaminc):
    corpus = {d["_id"]: d["text"] for d in read_jsonl(vitaminc / "eval" / "corpus.jsonl")}
    queries = {q["_id"]: q["text"] for q in read_jsonl(vitaminc / "eval" / "queries.jsonl")}
    qrels = read_qrels(vitaminc / "eval" / "qrels.tsv")
    assert qrels[0] == ["query-id", "corpus-id", "score"]
    assert len(corpus) == 2 * len(queries)
    for query_id, doc_id, _ in qrels[1:]:
        page, _, claim = queries[query_id].split()
        assert corpus[doc_id] == f"{page} evidence true for claim {claim}"


def test_prepare_rejects_unknown_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(tmp_path))  # never touch the real data home
    with pytest.raises(ValueError, match=r"unknown dataset\(s\) \['nope'\]; known: squad"):
        prepare(["squad", "nope"])
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- Natural Questions


def nq_task_json(path: Path, passages: int) -> Path:
    """BIG-bench knowledge-conflict examples: the answer swapped for another entity."""
    examples = []
    for p in range(passages):
        answer, substitute = f"Answer{p}", f"Other{p}"
        words = " ".join(f"word{w}" for w in range(25))
        context = f"Passage {p} says {substitute} did it , `` quoted '' . {words}"
        for q in range(2):  # two questions about each passage
            examples.append(
                {
                    "input": f"\nQuestion: who did thing {p} {q}\nContext: {context}",
                    "target": substitute,
                    "target_scores": {substitute: 1, answer: 0},
                }
            )
    repeated = f"Twice Other{passages} and Other{passages} again {words}"
    examples.append(
        {
            "input": f"\nQuestion: ambiguous\nContext: {repeated}",
            "target": f"Other{passages}",
            "target_scores": {f"Other{passages}": 1, "Gold": 0},
        }
    )
    path.write_text(json.dumps({"examples": examples}))
    return path


def test_nq_restores_answers_and_splits_by_passage(tmp_path, monkeypatch):
    import orchestrator.data.prepare as prepare_module

    monkeypatch.setattr(prepare_module, "NQ_TEST", 40)
    monkeypatch.setattr(prepare_module, "NQ_VALIDATION", 20)
    out = tmp_path / "nq"
    counts = prepare_module.prepare_nq(nq_task_json(tmp_path / "task.json", passages=200), out)
    assert (counts["eval_queries"], counts["validation_queries"]) == (40, 20)
    splits = {}
    for split in ("eval", "validation"):
        corpus = {d["_id"]: d["text"] for d in read_jsonl(out / split / "corpus.jsonl")}
        queries = {q["_id"]: q["text"] for q in read_jsonl(out / split / "queries.jsonl")}
        qrels = {q: d for q, d, _ in read_qrels(out / split / "qrels.tsv")[1:]}
        assert set(qrels) == set(queries)
        for query_id, doc_id in qrels.items():
            number = queries[query_id].split()[3]
            assert corpus[doc_id].startswith(f'Passage {number} says Answer{number} did it, "')
        assert not any("Other" in text for text in corpus.values())
        assert len(corpus) == len(set(qrels.values())) + len(queries)  # + distractors
        splits[split] = (set(corpus), set(qrels.values()))
    assert not splits["eval"][0] & splits["validation"][0], "no passage in both sets"
    assert not (out / "train.jsonl").exists(), "the guard is never trained on"
