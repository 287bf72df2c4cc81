"""Tokenization into ``<col>__ids`` columns and dynamic padding in the worker."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from orchestrator.data.tokenize import (
    collate,
    load_tokenizer,
    memoized,
    text_columns,
    text_encoder,
    token_encoder,
    tokenize_batch,
)

# Prompts of different token lengths (1 and 2 words), so they can be told apart by length too.
PROMPTS = {"anchor": "red ", "*": "blue and "}
MAX_LENGTH = 16


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(tiny_model)


@pytest.fixture(scope="module")
def texts() -> pa.Table:
    return pa.table(
        {
            "anchor": ["what color is the car", "what color is the big red house"],
            "positive": ["the car is red", "the house is white and shiny"],
            "negative_1": ["the car is green and dull and shiny and dull", "the house is black"],
        }
    )


@pytest.fixture(scope="module")
def tokenized(tiny_model, texts) -> pa.Table:
    return tokenize_batch(texts, tiny_model, MAX_LENGTH, PROMPTS)


def encoded(model_path: str, max_length: int, texts: list[str]) -> list[list[int]]:
    return [ids.tolist() for ids in token_encoder(model_path, max_length)(texts)]


def ids_of(table: pa.Table) -> dict[str, np.ndarray]:
    """The numpy batch the training loop receives: an object array of id arrays per column."""
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}


def test_adds_int32_id_list_columns(tokenized):
    assert tokenized.column_names == ["anchor__ids", "positive__ids", "negative_1__ids"]
    for field in tokenized.schema:
        assert field.type == pa.list_(pa.int32())


@pytest.mark.parametrize(
    ("column", "prompt"),
    [("anchor", "red "), ("positive", "blue and "), ("negative_1", "blue and ")],
)
def test_prompts_are_prefixed(tokenizer, texts, tokenized, column, prompt):
    plain = texts.column(column).to_pylist()
    expected = tokenizer([prompt + t for t in plain])["input_ids"]
    got = tokenized.column(column + "__ids").to_pylist()
    assert got == expected
    prompt_tokens = len(prompt.split())
    assert [len(ids) for ids in got] == [
        len(ids) + prompt_tokens for ids in tokenizer(plain)["input_ids"]
    ]


def test_tiny_model_tokenizer_knows_the_corpus_words(tokenizer):
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("the car is red")["input_ids"])
    assert tokens == ["[CLS]", "the", "car", "is", "red", "[SEP]"]


def test_long_texts_are_truncated_to_max_length(tiny_model, tokenizer):
    table = pa.table({"anchor": ["what " * 40], "positive": ["the car"]})
    ids = tokenize_batch(table, tiny_model, 8, {}).column("anchor__ids").to_pylist()[0]
    assert len(ids) == 8
    assert ids[-1] == tokenizer.sep_token_id


def test_without_prompts_texts_are_tokenized_as_is(tiny_model, tokenizer, texts):
    ids = tokenize_batch(texts, tiny_model, MAX_LENGTH, {}).column("anchor__ids").to_pylist()
    assert ids == tokenizer(texts.column("anchor").to_pylist())["input_ids"]


@pytest.mark.parametrize("max_length", [4, 8, 32])
def test_token_encoder_gives_the_transformers_tokenizers_ids(tiny_model, tokenizer, max_length):
    texts = ["what color is the car", "The  HOUSE is white\tand shiny", "what " * 40, "zebra ü"]
    expected = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    assert encoded(tiny_model, max_length, texts) == expected


def test_tokenizing_does_not_import_transformers(tiny_model):
    """What a fresh Ray Data worker pays to tokenize: no transformers (1.6 s) nor torch import."""
    code = (
        "import sys, pyarrow as pa\n"
        "from orchestrator.data.tokenize import tokenize_batch\n"
        "table = pa.table({'anchor': ['the car'], 'positive': ['the car is red']})\n"
        f"tokenize_batch(table, {tiny_model!r}, 8, {{}})\n"
        "print(sorted({'transformers', 'torch'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_without_tokenizer_json_the_transformers_tokenizer_encodes(tiny_model, tmp_path):
    """A model whose tokenizer is only a vocabulary file still tokenizes, through transformers."""
    folder = shutil.copytree(tiny_model, tmp_path / "slow")
    (folder / "tokenizer.json").unlink()
    shutil.copy(Path(tiny_model).parent / "vocab.txt", folder)  # the tiny model's word list
    texts = ["what color is the car", "what " * 40]
    assert encoded(str(folder), 8, texts) == encoded(tiny_model, 8, texts)


def test_a_tokenizer_config_that_rewrites_the_tokenizer_goes_through_transformers(
    tiny_model, tmp_path
):
    """transformers applies ``truncation_side: left`` on loading; tokenizer.json does not say."""
    folder = shutil.copytree(tiny_model, tmp_path / "left")
    config = folder / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "truncation_side": "left"}))
    texts = ["what color is the car and the house"]
    ids = encoded(str(folder), 5, texts)
    assert ids == load_tokenizer(str(folder))(texts, truncation=True, max_length=5)["input_ids"]
    assert ids != encoded(tiny_model, 5, texts)  # the last words kept, not the first


class CountingEncoder:
    """The tiny model's real tokenizer, recording the texts it is asked to encode."""

    def __init__(self, model_path: str) -> None:
        self.encode = text_encoder(model_path, MAX_LENGTH)
        self.seen: list[str] = []

    def __call__(self, texts: list[str]) -> list[list[int]]:
        self.seen.extend(texts)
        return self.encode(texts)


def test_memoized_encodes_each_distinct_text_once_across_batches(tiny_model):
    inner = CountingEncoder(tiny_model)
    encode = memoized(inner)
    first = encode(["the red car", "what color", "the red car"])
    second = encode(["which house", "the red car", "what color"])
    assert inner.seen == ["the red car", "what color", "which house"]
    texts = ["the red car", "what color", "the red car", "which house", "the red car", "what color"]
    assert [ids.tolist() for ids in first + second] == text_encoder(tiny_model, MAX_LENGTH)(texts)
    assert all(ids.dtype == np.int32 for ids in first + second)


def test_memoized_stays_within_capacity_and_still_answers_every_text(tiny_model):
    inner = CountingEncoder(tiny_model)
    encode = memoized(inner, capacity=3)
    encode(["a car", "a house", "a tree"])
    # "a car" is known but the memo is full: it is emptied, and every text of the batch encoded.
    texts = ["a car", "the sky", "the sea"]
    ids = encode(texts)
    assert [i.tolist() for i in ids] == text_encoder(tiny_model, MAX_LENGTH)(texts)
    assert inner.seen == ["a car", "a house", "a tree", "a car", "the sky", "the sea"]
    encode(["a car"])
    assert len(inner.seen) == 6  # "a car" came from the memo


def test_negative_columns_sort_numerically():
    names = ["negative_10", "positive", "negative_2", "anchor", "negative_1"]
    assert text_columns(names) == ["anchor", "positive", "negative_1", "negative_2", "negative_10"]


def test_collate_pads_queries_to_their_longest_row(tokenized):
    rows = ids_of(tokenized)
    queries = collate(rows, pad_id=0).queries
    lengths = [len(ids) for ids in rows["anchor__ids"]]
    assert queries["input_ids"].shape == (2, max(lengths))
    assert queries["attention_mask"].sum(dim=1).tolist() == lengths
    for row, ids in enumerate(rows["anchor__ids"]):
        assert queries["input_ids"][row, : len(ids)].tolist() == ids.tolist()
        assert (queries["input_ids"][row, len(ids) :] == 0).all()


def test_collate_stacks_positives_then_negatives(tokenized):
    rows = ids_of(tokenized)
    batch = collate(rows, pad_id=0)
    passages, n_docs = batch.passages, batch.n_docs
    expected = [*rows["positive__ids"], *rows["negative_1__ids"]]
    lengths = [len(ids) for ids in expected]
    assert n_docs == 2
    # Passages are padded together, to the longest positive or negative, not to max_length.
    assert passages["input_ids"].shape == (4, max(lengths))
    assert max(lengths) < MAX_LENGTH
    assert passages["attention_mask"].sum(dim=1).tolist() == lengths
    for row, ids in enumerate(expected):
        assert passages["input_ids"][row, : len(ids)].tolist() == ids.tolist()


def test_collate_uses_the_pad_id(tokenized):
    queries = collate(ids_of(tokenized), pad_id=7).queries
    assert (queries["input_ids"][queries["attention_mask"] == 0] == 7).all()


def test_collate_orders_negative_10_after_negative_2():
    def column(value: int, length: int) -> np.ndarray:
        out = np.empty(2, dtype=object)
        out[:] = [np.full(length, value, dtype=np.int32) for _ in range(2)]
        return out

    rows = {
        "negative_10__ids": column(10, 2),
        "anchor__ids": column(1, 3),
        "negative_2__ids": column(2, 4),
        "positive__ids": column(5, 5),
    }
    batch = collate(rows, pad_id=0)
    passages, n_docs = batch.passages, batch.n_docs
    assert n_docs == 3
    firsts = passages["input_ids"][:, 0].tolist()
    assert firsts == [5, 5, 2, 2, 10, 10]
    assert passages["attention_mask"].sum(dim=1).tolist() == [5, 5, 4, 4, 2, 2]


@pytest.mark.parametrize("column", ["score", "label"])
def test_scores_and_labels_pass_through_to_the_batch_labels(tiny_model, column):
    table = pa.table(
        {"anchor": ["the car", "a house"], "positive": ["the red car", "a dog"], column: [1.0, 0.0]}
    )
    tokenized = tokenize_batch(table, tiny_model, MAX_LENGTH, {})
    assert tokenized.column(column).to_pylist() == [1.0, 0.0]
    batch = collate(ids_of(tokenized), pad_id=0)
    assert batch.n_docs == 1 and batch.labels.tolist() == [1.0, 0.0]


def test_pairs_have_no_labels(tokenized):
    assert collate(ids_of(tokenized), pad_id=0).labels is None
