"""What a checkpoint folder holds, and the newest checkpoint of a run.

Written by :mod:`orchestrator.train_loop` (rank 0, every ``checkpoint_every`` steps), read by
the driver to resume, to report where a run stands and to export. Light on purpose: the
driver reads checkpoints without importing torch's model stack.
"""

from __future__ import annotations

import json
from typing import Any

from ray.train import Checkpoint

from orchestrator.storage import MANIFEST, Location, arrow_storage, list_keys, read_text

#: ``torch.save`` of the trainable weights, optimizer, scheduler and each rank's RNG state.
STATE_FILE = "state.pt"
#: Step, mixture positions, stream digests and the metrics reported with the checkpoint.
META_FILE = "meta.json"


def checkpoint_at(location: Location) -> Checkpoint:
    """A checkpoint folder (local or in object storage) as Ray Train's ``Checkpoint``."""
    path, filesystem = arrow_storage(location)
    return Checkpoint(path=path, filesystem=filesystem)


def checkpoint_meta(checkpoint: Location) -> dict[str, Any]:
    """``meta.json`` of a checkpoint: step, mixture positions, the metrics reported with it."""
    return json.loads(read_text(checkpoint.join(META_FILE)))


def latest_checkpoint(run: Location) -> tuple[Location, dict[str, Any]] | None:
    """The newest complete checkpoint in a run folder and its meta.

    Complete means its manifest is there: written last, after every file was stored and
    verified, so a checkpoint cut off mid-upload is never taken for the latest.
    """
    folders = [
        run.join(k.rsplit("/", 1)[0])
        for k in list_keys(run)
        if k.startswith("checkpoint_") and k.endswith(f"/{MANIFEST}")
    ]
    found = [(folder, checkpoint_meta(folder)) for folder in folders]
    return max(found, key=lambda item: item[1]["step"], default=None)


def older_checkpoints(checkpoint: Checkpoint) -> list[Checkpoint]:
    """The checkpoints of the same run folder written before ``checkpoint``, newest first.

    Where a resume falls back to when ``checkpoint`` is damaged. Ray Train names checkpoint
    folders by their time of writing, so names sort in the order they were written.
    """
    from pyarrow.fs import FileSelector, FileType

    parent, name = checkpoint.path.rstrip("/").rsplit("/", 1)
    older = sorted(
        (
            info.base_name
            for info in checkpoint.filesystem.get_file_info(FileSelector(parent))
            if info.type == FileType.Directory
            and info.base_name.startswith("checkpoint_")
            and info.base_name < name
        ),
        reverse=True,
    )
    return [
        Checkpoint(path=f"{parent}/{folder}", filesystem=checkpoint.filesystem) for folder in older
    ]
