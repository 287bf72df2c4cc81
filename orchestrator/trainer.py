"""The run's ``TorchTrainer``: the recipe on ``scaling.num_workers`` workers, watched.

The only place that configures Ray Train (with :mod:`orchestrator.train_loop`, which runs in
the workers); ``run`` and every trial of a search build their trainer here.
"""

from __future__ import annotations

from typing import Any

from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from orchestrator.checkpoints import checkpoint_at
from orchestrator.data.compile import CompiledData
from orchestrator.layout import run_location
from orchestrator.monitor import Display, RunMonitor
from orchestrator.spec import ExperimentSpec
from orchestrator.storage import Location, arrow_storage

#: Environment of the training workers. Ray Train runs the training function in a thread of
#: its own, and glibc gives such a thread its own malloc arena, which hands freed memory back
#: to the kernel and faults it in again at every step. With one arena per process the step's
#: activations stay mapped (``bench/malloc_arenas.py``; figures in bench/RESULTS.md).
WORKER_ENV = {"MALLOC_ARENA_MAX": "1"}


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's entry point in every worker.

    The recipe's imports (torch's model stack, transformers, sentence-transformers) happen
    here, in the worker; the driver, which only submits and watches, never pays them.
    """
    from orchestrator.train_loop import train_loop_per_worker

    train_loop_per_worker(config)


def build_trainer(
    spec: ExperimentSpec,
    model_path: str,
    steps: int,
    data: CompiledData,
    start: Location | None,
    callbacks: list | None = None,
    display: Display = "none",
) -> TorchTrainer:
    """The run's ``TorchTrainer``; every report feeds a :class:`RunMonitor` and ``callbacks``.

    The workers read ``data``'s compiled fragments themselves, each rank its own share
    (:mod:`orchestrator.data.feed`): Ray Train is given no datasets. ``start``: a checkpoint
    to resume from. ``display`` is how the monitor shows progress (a search shows Tune's
    table instead).
    """
    monitor = RunMonitor(spec.run_id, spec.name, run_location(spec), display)
    storage_path, filesystem = arrow_storage(Location.of(spec.storage).join(spec.name))
    return TorchTrainer(
        train_worker,
        train_loop_config={
            "spec": spec.model_dump(mode="json"),
            "model_path": model_path,
            "total_steps": steps,
            "compiled": {name: source.location for name, source in data.sources.items()},
            "resume_from": checkpoint_at(start) if start else None,
        },
        scaling_config=ScalingConfig(
            num_workers=spec.scaling.num_workers,
            use_gpu=spec.scaling.use_gpu,
            resources_per_worker={
                "CPU": spec.scaling.cpus_per_worker,
                **({"GPU": spec.scaling.gpus_per_worker} if spec.scaling.use_gpu else {}),
            },
        ),
        run_config=RunConfig(
            name=spec.run_id,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=spec.storage.keep_checkpoints),
            failure_config=FailureConfig(max_failures=spec.scaling.max_failures),
            callbacks=[monitor, *(callbacks or [])],
            worker_runtime_env={"env_vars": WORKER_ENV},
        ),
    )
