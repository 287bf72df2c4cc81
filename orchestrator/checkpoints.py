"""What a checkpoint folder holds; reading one back (verified, data only); the newest one.

Written by :mod:`orchestrator.train_loop` (rank 0, every ``checkpoint_every`` steps), read by
the workers to resume and by the driver to report where a run stands and to export. Light on
purpose: the driver reads checkpoints without importing torch (which the functions that read
or write ``state.pt`` import when called).
"""

from __future__ import annotations

import json
import logging
import pickle
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ray.train import Checkpoint

from orchestrator.errors import DamagedCheckpointError
from orchestrator.layout import CHECKPOINT_PREFIX
from orchestrator.ray_compat import checkpoint_destination
from orchestrator.step_report import StepReport
from orchestrator.storage import (
    MANIFEST,
    Location,
    arrow_storage,
    folder_problem,
    list_keys,
    publish,
    read_text,
)

log = logging.getLogger("orchestrator")

#: ``torch.save`` of the trainable weights, optimizer, scheduler and each rank's RNG state.
STATE_FILE = "state.pt"
#: Step, mixture positions, stream digests and the metrics reported with the checkpoint.
META_FILE = "meta.json"


@dataclass(frozen=True)
class CheckpointMeta:
    """``meta.json``: where training stood at the checkpoint, and what was reported with it.

    Read from a checkpoint written by an earlier version, a key its file lacks takes the
    default here; :meth:`to_json` writes every key.
    """

    step: int = 0
    #: the learning-rate settings trained with (:func:`orchestrator.optimizer.schedule_of`)
    schedule: dict[str, Any] | None = None
    pairs_seen: int = 0
    negatives_per_query: int = 0
    #: each source's position in the mixture (:meth:`orchestrator.data.mixture.MixedStream
    #: .positions`): where a resume continues reading
    positions: dict[str, dict[str, int]] | None = None
    source_steps: dict[str, int] = field(default_factory=dict)
    restores: int = 0
    #: each rank's running fingerprint of the rows it trained on
    stream_digests: list[str] | None = None
    #: the report sent with the checkpoint, evaluations included
    metrics: StepReport | None = None

    @property
    def reported(self) -> dict[str, Any]:
        """The flat metrics dict reported with the checkpoint ({} if the file has none)."""
        return self.metrics.to_metrics() if self.metrics else {}

    def to_json(self) -> str:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        return json.dumps({**data, "metrics": self.reported}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> CheckpointMeta:
        data = json.loads(text)
        names = {f.name for f in fields(cls)} - {"metrics"}
        metrics = data.get("metrics")
        return cls(
            **{k: v for k, v in data.items() if k in names},
            metrics=StepReport.from_metrics(metrics) if metrics else None,
        )


def checkpoint_at(location: Location) -> Checkpoint:
    """A checkpoint folder (local or in object storage) as Ray Train's ``Checkpoint``."""
    path, filesystem = arrow_storage(location)
    return Checkpoint(path=path, filesystem=filesystem)


def checkpoint_meta(checkpoint: Location) -> CheckpointMeta:
    """``meta.json`` of a checkpoint: step, mixture positions, the metrics reported with it."""
    return CheckpointMeta.from_json(read_text(checkpoint.join(META_FILE)))


def latest_checkpoint(run: Location) -> tuple[Location, CheckpointMeta] | None:
    """The newest complete checkpoint in a run folder and its meta.

    Complete means its manifest is there: written last, after every file was stored and
    verified, so a checkpoint cut off mid-upload is never taken for the latest.
    """
    folders = [
        run.join(k.rsplit("/", 1)[0])
        for k in list_keys(run)
        if k.startswith(CHECKPOINT_PREFIX) and k.endswith(f"/{MANIFEST}")
    ]
    found = [(folder, checkpoint_meta(folder)) for folder in folders]
    return max(found, key=lambda item: item[1].step, default=None)


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
            and info.base_name.startswith(CHECKPOINT_PREFIX)
            and info.base_name < name
        ),
        reverse=True,
    )
    return [
        Checkpoint(path=f"{parent}/{folder}", filesystem=checkpoint.filesystem) for folder in older
    ]


def save_state(directory: str | Path, state: dict[str, Any], meta: CheckpointMeta) -> None:
    """Write a checkpoint's two files into ``directory`` (its manifest comes at upload)."""
    import torch

    torch.save(state, Path(directory, STATE_FILE))
    Path(directory, META_FILE).write_text(meta.to_json())


def upload_verified(storage: Location, checkpoint: Checkpoint, name: str) -> Checkpoint:
    """Upload a checkpoint file by file, verify each, write its manifest last; then register.

    ``ray.train.report``'s ``checkpoint_upload_fn`` in every checkpoint report. Replaces Ray
    Train's default copy, whose pyarrow streams can drop a failed part upload with only an
    "Error ignored" log line, registering a checkpoint without its state. Here a failure
    raises out of ``ray.train.report`` (after boto3's standard retries), so the checkpoint is
    never registered and a restart resumes from the previous one. The target is the path Ray
    Train registers (a relative ``storage.uri`` would resolve against the worker's own working
    directory, not the driver's); ``storage`` only says how to reach it.
    """
    path, filesystem = checkpoint_destination(name)
    target = Location(f"s3://{path}" if storage.is_remote else path, *storage.connection)
    publish(Path(checkpoint.path), target)
    return Checkpoint(path=path, filesystem=filesystem)


def load_state(checkpoint: Checkpoint | None) -> tuple[dict | None, CheckpointMeta]:
    """(state.pt contents, meta.json) of a checkpoint, local or in object storage.

    Its files are checked against its manifest first (a truncated or changed file is found
    here, not as a strange tensor later), and state.pt is read as tensors and plain
    containers only: a checkpoint read from storage runs no code.
    """
    if checkpoint is None:
        return None, CheckpointMeta()
    import torch

    with checkpoint.as_directory() as directory:
        folder = Path(directory)
        if problem := folder_problem(folder):
            raise DamagedCheckpointError(f"checkpoint {checkpoint.path}: {problem}")
        try:
            state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:  # torch's text names what was refused
            refused = next((x for x in str(exc).splitlines() if "Unsupported" in x), str(exc))
            raise DamagedCheckpointError(
                f"checkpoint {checkpoint.path}: {STATE_FILE} holds more than tensors and plain"
                f" containers (weights-only load refused it: {refused.strip()})"
            ) from None
        meta = CheckpointMeta.from_json((folder / META_FILE).read_text())
    return state, meta


def resume_state(checkpoint: Checkpoint | None) -> tuple[dict | None, CheckpointMeta]:
    """The state a (re)started run continues from: ``checkpoint``, or the newest good one.

    A damaged checkpoint (see :func:`load_state`) is passed over for the newest one before it
    in the same run folder that verifies, and if none does, training starts over at step 0
    (no state, an empty meta): either way the run goes on with exact data positions instead
    of failing on the same file at every restart.
    """
    if checkpoint is None:
        return None, CheckpointMeta()
    for candidate in [checkpoint, *older_checkpoints(checkpoint)]:
        try:
            state, meta = load_state(candidate)
        except DamagedCheckpointError as exc:
            log.warning("%s: passing it over", exc)
            continue
        if candidate is not checkpoint:
            log.warning(
                "resuming from the earlier checkpoint %s (step %d)", candidate.path, meta.step
            )
        return state, meta
    log.warning("no checkpoint of this run verifies: training starts over at step 0")
    return None, CheckpointMeta()
