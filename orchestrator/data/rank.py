"""What one training rank reads: its feed of every compiled source, each batch on its device,
and the running fingerprint of what it trained on (the stream digest a checkpoint records)."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

from orchestrator.data.compile import read_manifest
from orchestrator.data.feed import FeedSettings, RankFeed, fragments_of
from orchestrator.data.tokenize import IDS_SUFFIX, Batch

if TYPE_CHECKING:
    import torch

    from orchestrator.spec import ExperimentSpec
    from orchestrator.storage import Location


def feed_settings(spec: ExperimentSpec) -> FeedSettings:
    data = spec.data
    return FeedSettings(
        spec.per_worker_batch_size,
        data.shuffle_window,
        data.bucket_window,
        data.shuffle,
        spec.train.seed,
    )


def source_feeds(
    spec: ExperimentSpec, folders: dict[str, Location], rank: int, world: int
) -> dict[str, RankFeed]:
    """This rank's feed of every compiled source (``folders``: name → compiled folder)."""
    feeds = {}
    for name, folder in folders.items():
        manifest = read_manifest(folder)
        if manifest is None:
            raise FileNotFoundError(f"source {name!r}: no compiled manifest in {folder.uri}")
        fragments = fragments_of(manifest, spec.data.sources[name].max_rows)
        feeds[name] = RankFeed(name, folder, fragments, feed_settings(spec), rank, world)
    return feeds


def to_device(batch: Batch, device: torch.device) -> Batch:
    def move(features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(device, non_blocking=True) for k, v in features.items()}

    labels = None if batch.labels is None else batch.labels.to(device, non_blocking=True)
    keys = None if batch.passage_keys is None else batch.passage_keys.to(device)
    return batch._replace(
        queries=move(batch.queries), passages=move(batch.passages), labels=labels, passage_keys=keys
    )


def chain_digest(digest: str, rows: dict[str, np.ndarray]) -> str:
    """Running fingerprint of the token ids (and scores or labels) a rank trained on, in order."""
    h = hashlib.sha256(digest.encode())
    for column in sorted(rows):
        values = rows[column]
        if column.endswith(IDS_SUFFIX):
            h.update(np.fromiter(map(len, values), np.int32, len(values)).tobytes())
            h.update(np.concatenate(values).astype(np.int32, copy=False).tobytes())
        else:
            h.update(np.asarray(values, dtype=np.float64).tobytes())
    return h.hexdigest()
