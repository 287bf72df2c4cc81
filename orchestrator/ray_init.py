"""The driver's Ray: the cluster of ``$RAY_ADDRESS`` (a job's) or a local one, set up alike."""

from __future__ import annotations

import logging
import os

import ray
import ray.data

from orchestrator.log_noise import quiet_ray_noise


def ensure_ray() -> None:
    """Connect to the Ray of ``$RAY_ADDRESS`` (a job's cluster) or start a local one.

    A local instance serves its dashboard on 127.0.0.1 only: the job API runs code for
    whoever reaches it. Ray's known-harmless noise is kept out of the output
    (:mod:`orchestrator.log_noise`).
    """
    quiet_ray_noise()  # before ray.init, which logs some of it
    if not ray.is_initialized():
        ray.init(log_to_driver=True, configure_logging=False, dashboard_host="127.0.0.1")
    # Ray Train and Tune move workers and trials into scratch folders by default; keep the
    # driver's working directory, which the spec's relative paths (and a job's shipped inputs)
    # are relative to. Tune propagates it to the trials.
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    _configure_ray_data()
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # one line per dataset: too chatty


def _configure_ray_data() -> None:
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    # Blocks in input order, not in the order their tasks finish: what is stored, and so what
    # `max_rows` keeps and what a run trains on, must not depend on task timing.
    context.execution_options.preserve_order = True


def task_resources(spec) -> dict[str, float]:
    """``.options()`` of a task that needs what one training worker has (export, evaluation)."""
    return {"num_cpus": spec.scaling.cpus_per_worker, "num_gpus": spec.scaling.gpus_per_worker}
