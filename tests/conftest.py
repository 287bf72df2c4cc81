"""Shared fixtures: a tiny real BERT encoder and small real corpora, built in code.

No network: the tokenizer is a WordPiece vocabulary written from the test corpus itself.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The S3 server of the tests is moto on 127.0.0.1; it accepts any credentials. Set before any
# Ray instance starts so that its workers inherit them.
for _key, _value in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}.items():
    os.environ.setdefault(_key, _value)

COLORS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple"]
THINGS = [
    "car",
    "house",
    "bird",
    "boat",
    "lamp",
    "chair",
    "kite",
    "door",
    "cup",
    "hat",
    "book",
    "ball",
    "tree",
    "shoe",
    "bike",
    "coat",
]


def pairs(seed: int, n: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        thing, color = rng.choice(THINGS), rng.choice(COLORS)
        other = rng.choice([c for c in COLORS if c != color])
        rows.append(
            {
                "question": f"what color is the {thing}",
                "answer": f"the {thing} is {color} and shiny",
                "wrong": f"the {thing} is {other} and dull",
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray instance (2 CPUs, like the target laptop) for the whole session."""
    import ray

    # The dashboard serves the state API, which Ray Train's placement-group cleaner uses to
    # free the workers of a trial that Tune stops early.
    ray.init(num_cpus=2, include_dashboard=True, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """A real S3-protocol server (moto) on a free loopback port, for the whole session."""
    from tests.faults import local_s3_server

    with local_s3_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """A real MLflow tracking server on a free loopback port, for the whole session."""
    from tests.mlflow_server import mlflow_server

    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture
def bucket(s3_endpoint) -> str:
    """A fresh, empty bucket on the test server; returns its name."""
    import uuid

    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A 2-layer, 32-wide BERT with mean pooling saved as a SentenceTransformer folder."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("tiny-bert")
    words = sorted({w for r in pairs(0, 200) for text in r.values() for w in text.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(root / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    hf_dir = root / "hf"
    BertModel(config).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    transformer = Transformer(str(hf_dir), max_seq_length=32)
    model = SentenceTransformer(modules=[transformer, Pooling(32, pooling_mode="mean")])
    out = root / "st"
    model.save(str(out))
    return str(out)


@pytest.fixture(scope="session")
def corpora(tmp_path_factory) -> dict[str, Path]:
    """Two pair sources (one with a broken row) and a BEIR-style held-out set."""
    root = tmp_path_factory.mktemp("corpora")
    colors = write_jsonl(root / "colors.jsonl", pairs(1, 96))
    lines = (root / "colors.jsonl").read_text().splitlines()
    lines.insert(5, '{"question": "", "answer": "empty anchor"}')
    (root / "colors.jsonl").write_text("\n".join(lines) + "\n")
    more = write_jsonl(root / "more.jsonl", pairs(2, 64))
    held = pairs(3, 24)
    corpus = [{"_id": f"d{i}", "text": r["answer"]} for i, r in enumerate(held)]
    queries = [{"_id": f"q{i}", "text": r["question"]} for i, r in enumerate(held)]
    write_jsonl(root / "eval" / "corpus.jsonl", corpus)
    write_jsonl(root / "eval" / "queries.jsonl", queries)
    (root / "eval" / "qrels.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(len(held)))
    )
    return {"colors": colors, "more": more, "eval": root / "eval", "root": root}


@pytest.fixture
def tiny_spec(tiny_model, corpora, tmp_path) -> dict:
    return tiny_spec_dict(tiny_model, corpora, tmp_path)


def tiny_spec_dict(tiny_model: str, corpora: dict[str, Path], tmp_path: Path) -> dict:
    """A complete spec dict for the tiny model and corpora, storing runs under tmp_path."""
    return {
        "name": "tiny",
        "model": {"base": tiny_model, "max_seq_length": 32},
        "data": {
            "sources": {
                "colors": {
                    "format": "jsonl",
                    "path": str(corpora["colors"]),
                    "weight": 3,
                    "columns": {"anchor": "question", "positive": "answer"},
                },
                "more": {
                    "format": "jsonl",
                    "path": str(corpora["more"]),
                    "weight": 1,
                    "columns": {"anchor": "question", "positive": "answer"},
                },
            },
            "eval": {
                "corpus": str(corpora["eval"] / "corpus.jsonl"),
                "queries": str(corpora["eval"] / "queries.jsonl"),
                "qrels": str(corpora["eval"] / "qrels.tsv"),
            },
        },
        "loss": {"kind": "infonce", "temperature": 0.05},
        "train": {
            "lr": 1e-3,
            "max_steps": 4,
            "batch_size": 8,
            "checkpoint_every": 2,
            "log_every": 1,
        },
        "scaling": {"num_workers": 2, "cpus_per_worker": 0.5, "cpus_per_data_task": 0.25},
        "eval": {"batch_size": 16},
        "storage": {"uri": str(tmp_path / "runs")},
    }
