"""Log lines of Ray and its libraries that look like problems and are not: kept out of a run's
output, each with the reason it is harmless.

A newcomer's first run should show an error only when something is wrong. The lines below
come from code this project does not own (Ray Train's controller, Ray Data, transformers)
and say nothing about the run. ``orchestrator -v ...`` or ``ORCHESTRATOR_VERBOSE=1`` shows
them again; everything else Ray prints is left as it is.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

#: Set (to anything but 0) to see every line of Ray's and its libraries' output.
VERBOSE_ENV = "ORCHESTRATOR_VERBOSE"


@dataclass(frozen=True)
class Noise:
    """A kind of line that is dropped: what it matches and why that is harmless."""

    pattern: re.Pattern[str]
    why: str
    #: a line printed right after it that belongs to it (the source line under a warning)
    then: re.Pattern[str] | None = None


#: Lines of Ray's worker processes (their stdout/stderr, which Ray streams to the driver).
WORKER_NOISE = (
    Noise(
        re.compile(r"core_worker\.cc:\d+: Actor with class name: 'PreemptionWatcher'"),
        "Ray Train's controller starts this actor itself; Ray logs, at error level, that any "
        "restartable actor with arguments in the object store might fail to restart "
        "(ray-project/ray#53727). Nothing a run does or loses.",
    ),
    Noise(
        re.compile(r"FutureWarning: `is_gradient_checkpointing` is deprecated"),
        "transformers deprecates a property that attribute scans of other libraries touch "
        "when a model is loaded; nothing of this project uses it.",
        then=re.compile(r"^\s*warnings\.warn\($"),
    ),
)

#: Python log records of the driver: (logger, start of the message, why it is harmless).
DRIVER_NOISE = (
    (
        "ray.data._internal.progress",
        "Progress bars disabled",
        "the orchestrator turns Ray Data's per-dataset bars off on purpose; its own progress "
        "bar or lines show the run.",
    ),
    (
        "ray._private.authentication.authentication_token_setup",
        "Token authentication is enabled for this Ray cluster",
        "a local Ray instance starts with token authentication, the secure default; there is "
        "nothing to act on (the warning for a cluster *without* it is kept).",
    ),
)


#: Python warnings of the driver: (start of the message, why it is harmless).
DRIVER_WARNINGS = (
    (
        "Consider boosting PBT performance by enabling `reuse_actors`",
        "Tune suggests reusing a trial's actor after an exploit; a trial here only drives its "
        "own Ray Train worker group, which is rebuilt either way, so there is nothing to reuse.",
    ),
)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "0") not in ("", "0")


class WorkerLogFilter:
    """Drops ``noise`` from the workers' lines. Ray hands them over in batches, and a warning's
    source line can come in the batch after its message: what a dropped line still owns is
    kept per source process."""

    def __init__(self, noise: tuple[Noise, ...] = WORKER_NOISE) -> None:
        self.noise = noise
        self._owed: dict[str, re.Pattern[str]] = {}  # source → the next line it may drop

    def __call__(self, lines: Iterable[str], source: str = "") -> list[str]:
        kept: list[str] = []
        for line in lines:
            owed = self._owed.pop(source, None)
            if owed is not None and owed.search(line):
                continue
            match = next((n for n in self.noise if n.pattern.search(line)), None)
            if match is None:
                kept.append(line)
            elif match.then is not None:
                self._owed[source] = match.then
        return kept


class _DropMessages(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


def quiet_ray_noise() -> None:
    """Keep the known-harmless lines out of this driver's output; verbose: show them all
    (also after an earlier call in the same process). Idempotent."""
    from orchestrator.ray_compat import filter_worker_logs

    show_all = verbose()
    filter_worker_logs(None if show_all else WorkerLogFilter())
    for name, start, _ in DRIVER_NOISE:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, _DropMessages)]:
            logger.removeFilter(old)
        if not show_all:
            logger.addFilter(_DropMessages(start))
    for start, _ in DRIVER_WARNINGS:
        pattern = re.escape(start)
        warnings.filters[:] = [
            f for f in warnings.filters if getattr(f[1], "pattern", None) != pattern
        ]
        if not show_all:
            warnings.filterwarnings("ignore", message=pattern)
