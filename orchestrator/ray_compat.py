"""Every use of Ray's private or internal API in this project, in one place.

Written against Ray 2.60.0. Each function says what it reaches into; the next Ray upgrade
checks this file against the new version's source and nothing else. Everything else in the
package (and its benchmarks and tests) goes through Ray's public API, or through here.
Ray's own modules are imported inside each function: this module is light to import.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

#: The Ray version this module was written and checked against.
WRITTEN_FOR_RAY = "2.60.0"


def quiet_train_report_lines() -> None:
    """Drop Ray Train's INFO line per report: each report's whole metrics dict, every rank.

    The run monitor shows each report in a line or a progress bar instead. Ray logs those
    lines under a logger named by its source file (``ray.train.v2._internal.execution
    .context``), so ``LoggingConfig`` does not reach them.
    """
    with suppress(ImportError):
        from ray.train.v2._internal.execution import context

        logging.getLogger(context.__file__).setLevel(logging.WARNING)


def checkpoint_destination(name: str) -> tuple[str, FileSystem]:
    """The path (and its filesystem) where Ray Train registers this run's checkpoint ``name``.

    ``TrainContext.get_storage()`` is a DeveloperAPI that returns Ray Train's internal
    ``StorageContext`` (``ray.train.v2._internal.execution.storage``), "may change without
    notice between minor versions"; ``build_checkpoint_path_from_name`` and
    ``storage_filesystem`` are that class's.
    """
    import ray.train

    storage = ray.train.get_context().get_storage()
    return storage.build_checkpoint_path_from_name(name), storage.storage_filesystem


def cpus_left_per_node() -> list[float]:
    """The CPUs not in use on each node of the connected cluster (``ray._private.state``)."""
    from ray._private.state import available_resources_per_node

    return [resources.get("CPU", 0.0) for resources in available_resources_per_node().values()]


def object_store_reader() -> Callable[[], tuple[int, int]]:
    """A function that asks the raylet for (bytes in the object store, bytes spilled so far).

    ``ray._private.internal_api``: the memory-info reply behind ``ray memory``.
    """
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    state = get_state_from_address()

    def read() -> tuple[int, int]:
        stats = get_memory_info_reply(state).store_stats
        return stats.object_store_bytes_used, stats.spilled_bytes_total

    return read


def filter_worker_logs(kept: Callable[[list[str], str], list[str]] | None) -> None:
    """Pass every batch of worker log lines through ``kept(lines, source)`` (source: the
    process, as ``ip:pid``) before the driver prints it; None: print them all again.

    Ray streams its workers' stdout and stderr to the driver (``log_to_driver``) through
    ``ray._private.worker.print_worker_logs``, which has no public hook; the wrapper keeps
    everything else of it (prefixes, colours, ``tqdm_ray`` bars). Wrapping twice replaces the
    filter instead of stacking it.
    """
    import functools

    from ray._private import worker

    original = getattr(worker.print_worker_logs, "__wrapped__", worker.print_worker_logs)
    if kept is None:
        worker.print_worker_logs = original
        return

    @functools.wraps(original)
    def print_kept(data, print_file, ignore_prefix: bool = False):
        lines = kept(list(data.get("lines", [])), f"{data.get('ip')}:{data.get('pid')}")
        if lines:
            original({**data, "lines": lines}, print_file, ignore_prefix)

    worker.print_worker_logs = print_kept
