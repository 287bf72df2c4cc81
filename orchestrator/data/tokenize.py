"""Tokenization in Ray Data (off the training loop) and dynamic padding in the worker.

Ray Data tasks turn text columns into ``<column>__ids`` token-id lists, unpadded, so the
training loop only pads each group to its own longest row (no padding to ``max_seq_length``).
Prompts (``query: ``/``passage: ``) are prefixed here, exactly as the evaluator prefixes them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pyarrow as pa

from orchestrator.assets import transformer_folder
from orchestrator.spec import ANCHOR, LABEL, POSITIVE, SCORE

if TYPE_CHECKING:
    import torch

IDS_SUFFIX = "__ids"


def text_columns(names: list[str]) -> list[str]:
    """Canonical text columns in training order: anchor, positive, negative_1..n."""
    negatives = sorted(
        (c for c in names if c.startswith("negative_")), key=lambda c: int(c.rsplit("_", 1)[1])
    )
    return [ANCHOR, POSITIVE, *negatives]


@lru_cache(maxsize=4)
def load_tokenizer(model_path: str):
    """The model's tokenizer through transformers (for vocabulary lookups and token counts)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(transformer_folder(model_path), local_files_only=True)


#: tokenizer_config.json settings with which transformers rewrites the serialized tokenizer
#: (special tokens added, pre-tokenizer, truncation side) when it loads it.
REWRITING_SETTINGS = ("add_bos_token", "add_eos_token", "add_prefix_space", "truncation_side")


#: Texts whose ids a tokenizing process keeps (about 1 KiB each at 256 tokens).
MEMO_TEXTS = 20_000


@lru_cache(maxsize=4)
def token_encoder(model_path: str, max_length: int) -> Callable[[list[str]], list[np.ndarray]]:
    """texts → int32 token ids with the model's special tokens, truncated to ``max_length``;
    each distinct text is encoded once per process (:func:`memoized`)."""
    return memoized(text_encoder(model_path, max_length))


def text_encoder(model_path: str, max_length: int) -> Callable[[list[str]], list[list[int]]]:
    """The model's tokenizer as a function of a list of texts, without any memo.

    With a ``tokenizer.json`` (every fast tokenizer has one) this is the Rust tokenizer that
    transformers' fast tokenizer wraps, loaded by the ``tokenizers`` library alone: the same
    ids (tested against ``AutoTokenizer``), without importing transformers, which every fresh
    Ray Data worker would pay for (most of the start-up's tokenizing time on a small corpus;
    bench/RESULTS.md). A model
    whose tokenizer_config.json changes that tokenizer on loading goes through transformers.
    """
    folder = Path(transformer_folder(model_path))
    path, config = folder / "tokenizer.json", folder / "tokenizer_config.json"
    settings = json.loads(config.read_text()) if config.is_file() else {}
    if not path.is_file() or any(key in settings for key in REWRITING_SETTINGS):
        full = load_tokenizer(model_path)
        return lambda texts: full(texts, truncation=True, max_length=max_length)["input_ids"]
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    return lambda texts: [encoding.ids for encoding in tokenizer.encode_batch(texts)]


def memoized(
    encode: Callable[[list[str]], list[list[int]]], capacity: int = MEMO_TEXTS
) -> Callable[[list[str]], list[np.ndarray]]:
    """``encode`` run once per distinct text, across the batches a process tokenizes.

    Pair corpora repeat their documents: SQuAD asks about five questions per paragraph, a
    mined corpus reuses the same hard negatives, a labeled set pairs one claim with several
    passages: the quickstart's passages are a fifth as many distinct paragraphs
    (``bench/tokenizing.py``; figures in bench/RESULTS.md).
    The memo is emptied when full, so it holds about ``capacity`` texts at most.
    """
    memo: dict[str, np.ndarray] = {}

    def encode_distinct(texts: list[str]) -> list[np.ndarray]:
        distinct = list(dict.fromkeys(texts))
        missing = [text for text in distinct if text not in memo]
        if len(memo) + len(missing) > capacity:
            memo.clear()
            missing = distinct
        if missing:
            ids = (np.asarray(row, np.int32) for row in encode(missing))
            memo.update(zip(missing, ids, strict=True))
        return [memo[text] for text in texts]

    return encode_distinct


def tokenize_batch(
    batch: pa.Table, model_path: str, max_length: int, prompts: dict[str, str]
) -> pa.Table:
    """Add ``<col>__ids`` (list<int32>) for every text column; ``prompts`` maps column or ``*``."""
    encode = token_encoder(model_path, max_length)
    out = {}
    for column in text_columns(batch.column_names):
        prompt = prompts.get(column, prompts.get("*", ""))
        ids = encode([prompt + text for text in batch.column(column).to_pylist()])
        out[column + IDS_SUFFIX] = pa.array(ids, type=pa.list_(pa.int32()))
    for column in (SCORE, LABEL):  # scored / labeled pairs keep their number
        if column in batch.column_names:
            out[column] = batch.column(column)
    return pa.table(out)


def pad(sequences: list[np.ndarray], pad_id: int):
    """Right-pad to the longest sequence: ``input_ids`` and ``attention_mask`` tensors."""
    import torch

    longest = max(len(s) for s in sequences)
    ids = np.full((len(sequences), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), longest), dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}


class Batch(NamedTuple):
    """One rank's step input: padded queries, padded passages, their groups and the labels."""

    queries: dict[str, torch.Tensor]
    #: Positives (or second texts) followed by each negative column, stacked.
    passages: dict[str, torch.Tensor]
    #: Passage groups: 1 + negative columns. The loss splits passages into that many chunks.
    n_docs: int
    #: Scores (scored pairs) or 0/1 labels (labeled pairs); None for pairs and triplets.
    labels: torch.Tensor | None
    #: A 64-bit fingerprint of each passage's token ids, in ``passages`` order: equal texts,
    #: equal keys (for masking in-batch false negatives). None where no loss needs them.
    passage_keys: torch.Tensor | None = None


def text_keys(sequences: list[np.ndarray]) -> np.ndarray:
    """64-bit fingerprints of token-id sequences (blake2b of their bytes)."""
    digests = (
        hashlib.blake2b(np.asarray(s, dtype=np.int32).tobytes(), digest_size=8).digest()
        for s in sequences
    )
    return np.array([int.from_bytes(d, "little", signed=True) for d in digests], dtype=np.int64)


def collate(rows: dict[str, np.ndarray], pad_id: int) -> Batch:
    """A batch of token ids (and scores or labels) → a padded :class:`Batch`."""
    import torch

    texts = text_columns([c.removesuffix(IDS_SUFFIX) for c in rows if c.endswith(IDS_SUFFIX)])
    docs = [column + IDS_SUFFIX for column in texts[1:]]
    passages = [seq for column in docs for seq in rows[column]]
    numbers = next((rows[c] for c in (SCORE, LABEL) if c in rows), None)
    labels = None if numbers is None else torch.as_tensor(np.asarray(numbers, dtype=np.float32))
    queries = pad(list(rows[ANCHOR + IDS_SUFFIX]), pad_id)
    keys = torch.from_numpy(text_keys(passages))
    return Batch(queries, pad(passages, pad_id), len(docs), labels, keys)
