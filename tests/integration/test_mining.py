"""Hard-negative mining on a real local Ray with the tiny real BERT: files checked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

PROMPTS = {"query_prompt": "query: ", "passage_prompt": "passage: "}
#: The untrained tiny BERT scores every pair near 0.98, so margins are scaled down to match.
RELATIVE, ABSOLUTE = 0.005, 0.005


def _spec(tiny_model, corpora, tmp_path, **source) -> dict:
    from tests.conftest import tiny_spec_dict

    raw = tiny_spec_dict(tiny_model, corpora, tmp_path)
    raw["model"].update(PROMPTS)
    raw["data"]["sources"]["colors"].update(source)
    return raw


def _mine(raw: dict, out: Path, **settings):
    from orchestrator.mining import MiningConfig, mine
    from orchestrator.spec import ExperimentSpec

    spec = ExperimentSpec.model_validate(raw)
    report = mine(spec, "colors", str(out), MiningConfig(**settings))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return spec, report, rows


def _source_pairs(path: Path) -> list[tuple[str, str]]:
    """The usable pairs of a corpus file, read here without the project's reader."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [(r["question"], r["answer"]) for r in records if r["question"] and r["answer"]]


class Encoder:
    """The spec's encoder, used here to recompute cosines independently of the mined file."""

    def __init__(self, spec, model_path: str) -> None:
        from orchestrator.modeling import load_encoder

        self.model = load_encoder(model_path, spec.model)
        self.spec = spec

    def encode(self, texts: list[str], query: bool):
        prompt = self.spec.model.query_prompt if query else self.spec.model.passage_prompt
        return self.model.encode(
            texts, prompt=prompt, normalize_embeddings=True, convert_to_tensor=True
        )

    def scores(self, anchors: list[str], passages: list[str]) -> list[float]:
        a, p = self.encode(anchors, True), self.encode(passages, False)
        return (a * p).sum(dim=1).tolist()


@pytest.fixture(scope="module")
def mined(ray_cluster, tiny_model, corpora, tmp_path_factory):
    root = tmp_path_factory.mktemp("mined")
    raw = _spec(tiny_model, corpora, root)
    return _mine(raw, root / "out" / "colors.jsonl", relative_margin=RELATIVE)


@pytest.fixture(scope="module")
def strict(ray_cluster, tiny_model, corpora, tmp_path_factory):
    """An absolute margin instead of the relative one, and only top-1 consistent pairs."""
    root = tmp_path_factory.mktemp("strict")
    settings = {"relative_margin": None, "absolute_margin": ABSOLUTE, "consistency_top_k": 1}
    return _mine(_spec(tiny_model, corpora, root), root / "strict.jsonl", k=2, **settings)


@pytest.fixture(scope="module")
def encoder(mined, tiny_model):
    return Encoder(mined[0], tiny_model)


def _negatives(row: dict) -> list[str]:
    return [row[key] for key in sorted(row) if key.startswith("negative_") and key[-1].isdigit()]


def test_rows_never_hold_a_known_positive_or_a_duplicate(mined, corpora):
    _, report, rows = mined
    positives: dict[str, set[str]] = {}
    for anchor, positive in _source_pairs(corpora["colors"]):
        positives.setdefault(anchor, set()).add(positive)
    assert rows and len(rows) == report.counts.kept
    for row in rows:
        negatives = _negatives(row)
        assert len(negatives) == 4 and len(set(negatives)) == 4
        assert row["positive"] not in negatives
        assert not positives[row["anchor"]] & set(negatives)  # nor another labelled answer


def test_kept_negatives_respect_the_relative_margin_by_hand(mined, encoder):
    _, report, rows = mined
    for row in rows:
        pos = encoder.scores([row["anchor"]], [row["positive"]])[0]
        negs = encoder.scores([row["anchor"]] * 4, _negatives(row))
        assert all(s <= pos * (1 - RELATIVE) + 1e-6 for s in negs)
        assert row["positive_score"] == pytest.approx(pos, abs=1e-4)
        assert row["negative_scores"] == pytest.approx(negs, abs=1e-4)
        assert row["negative_scores"] == sorted(row["negative_scores"], reverse=True)
    assert report.counts.removed_false_negatives > 0  # the margin did remove candidates


def test_absolute_margin_by_hand(strict, encoder):
    _, report, rows = strict
    assert rows and report.counts.removed_false_negatives > 0
    for row in rows:
        pos = encoder.scores([row["anchor"]], [row["positive"]])[0]
        negs = encoder.scores([row["anchor"]] * 2, _negatives(row))
        assert all(s <= pos - ABSOLUTE + 1e-6 for s in negs)


def test_consistency_keeps_only_pairs_whose_positive_is_the_top_hit(strict, encoder, corpora):
    _, report, rows = strict
    pairs = _source_pairs(corpora["colors"])
    corpus = sorted({p for _, p in pairs})
    hits = (encoder.encode([a for a, _ in pairs], True) @ encoder.encode(corpus, False).T).argmax(1)
    top1 = [(a, p) for (a, p), hit in zip(pairs, hits.tolist(), strict=True) if corpus[hit] == p]
    assert report.counts.dropped_inconsistent == len(pairs) - len(top1) > 0
    kept = sorted((r["anchor"], r["positive"]) for r in rows)
    assert len(kept) + report.counts.dropped_too_few_negatives == len(top1)
    assert set(kept) <= set(top1)


def test_anchors_with_too_few_negatives_are_dropped_and_counted(
    ray_cluster, tiny_model, corpora, tmp_path
):
    raw = _spec(tiny_model, corpora, tmp_path, max_rows=6)
    raw["train"]["batch_size"] = 4  # a spec that could still train on its 6 rows
    _, report, rows = _mine(raw, tmp_path / "few.jsonl", k=8, candidates=10)
    c = report.counts
    assert rows == [] and c.kept == 0 and c.corpus <= 6
    assert c.pairs == c.dropped_too_few_negatives == 6
    meta = json.loads(Path(report.provenance_path).read_text())
    assert meta["counts"]["dropped_too_few_negatives"] == 6


def test_provenance_matches_the_file(mined, tiny_model, corpora):
    spec, report, rows = mined
    meta = json.loads(Path(report.provenance_path).read_text())
    assert report.provenance_path == report.out_path + ".provenance.json"
    assert meta["model"] == str(Path(tiny_model).resolve())
    assert meta["prompts"] == {"query": "query: ", "passage": "passage: "}
    assert meta["source"]["name"] == "colors" and meta["source"]["path"] == str(corpora["colors"])
    assert meta["source"]["bad_rows"] == report.bad_rows == 1
    assert meta["spec"] == {"name": "tiny", "run_id": spec.run_id, "hash": spec.hash()}
    settings = meta["settings"]
    assert (settings["k"], settings["candidates"], settings["relative_margin"]) == (4, 30, RELATIVE)
    assert settings["absolute_margin"] is None and settings["consistency_top_k"] is None
    counts = meta["counts"]
    assert counts["kept"] == len(rows) and counts["pairs"] == 96
    assert counts["corpus"] == len({p for _, p in _source_pairs(corpora["colors"])})
    dropped = counts["dropped_too_few_negatives"] + counts["dropped_inconsistent"]
    assert counts["kept"] + dropped == counts["pairs"]
    assert meta["created_at"].endswith("+00:00")
    assert any(report.source in line for line in report.lines())


def test_mined_file_trains_as_a_source_with_negatives(mined, tiny_model, corpora, tmp_path):
    from orchestrator.data.sources import read_sources
    from orchestrator.spec import ExperimentSpec
    from tests.conftest import tiny_spec_dict

    _, report, rows = mined
    raw = tiny_spec_dict(tiny_model, corpora, tmp_path)
    negatives = [f"negative_{i}" for i in range(1, 5)]
    raw["data"]["sources"] = {
        "mined": {"format": "jsonl", "path": report.out_path, "columns": {"negatives": negatives}}
    }
    raw["loss"] = {"kind": "infonce"}  # takes all four negatives of each row
    spec = ExperimentSpec.model_validate(raw)
    datasets, reports = read_sources(spec.data, spec.scaling.cpus_per_data_task)
    assert (reports[0].rows, reports[0].bad_rows) == (len(rows), 0)
    first = datasets["mined"].take(1)[0]
    assert set(first) == {"anchor", "positive", *negatives}
