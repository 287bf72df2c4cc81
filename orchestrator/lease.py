"""One driver per run folder: a lease file with its holder, so ``--fresh`` never deletes a live run.

Two drivers on one spec would write the same checkpoints and summaries, and the second's
``--fresh`` would delete the first's files while it trains. The driver holds
``<run>/lease.json`` (host, pid, start, heartbeat) for the run's life. A lease is stale when
its holder is gone: on the same host, when its pid no longer runs; elsewhere, when its
heartbeat (renewed every :data:`HEARTBEAT_S`) is older than :data:`STALE_AFTER_S`. A killed
driver's lease is therefore taken over by the next run, which is how resuming works.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.errors import RunBusyError
from orchestrator.layout import LEASE_FILE
from orchestrator.storage import Location, read_text, remove_file, write_text

log = logging.getLogger("orchestrator")
HEARTBEAT_S = 30.0
STALE_AFTER_S = 120.0


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: float
    heartbeat: float

    @classmethod
    def me(cls) -> Holder:
        now = time.time()
        return cls(socket.gethostname(), os.getpid(), now, now)

    def alive(self) -> bool:
        if self.host == socket.gethostname():
            return _pid_runs(self.pid)
        return time.time() - self.heartbeat < STALE_AFTER_S

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host} (since {since})"


def _pid_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


def _read_holder(lease: Location) -> Holder | None:
    try:
        raw: dict[str, Any] = json.loads(read_text(lease))
        return Holder(
            str(raw["host"]), int(raw["pid"]), float(raw["started"]), float(raw["heartbeat"])
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):  # torn or foreign: nobody we can wait for
        log.warning("%s is unreadable; taking it over", lease.uri)
        return None


class RunLease:
    """``with RunLease(location):`` holds the run folder, or raises :class:`RunBusyError`."""

    def __init__(self, location: Location, what: str = "run") -> None:
        self.file = location.join(LEASE_FILE)
        self.what = what
        self.holder = Holder.me()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> RunLease:
        current = _read_holder(self.file)
        if current is not None and (current.host, current.pid) != (
            self.holder.host,
            self.holder.pid,
        ):
            if current.alive():
                raise RunBusyError(
                    f"{self.file.uri.removesuffix('/' + LEASE_FILE)} is in use by another "
                    f"{self.what}: {current.describe()}. Wait for it to end or stop it; a "
                    f"stopped one's lease is taken over."
                )
            log.warning("taking over the stale lease of %s", current.describe())
        self._write(self.holder)
        self._beat = threading.Thread(target=self._heartbeat, name="run-lease", daemon=True)
        self._beat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        current = _read_holder(self.file)
        if current is not None and (current.host, current.pid) == (
            self.holder.host,
            self.holder.pid,
        ):
            remove_file(self.file)

    def _write(self, holder: Holder) -> None:
        write_text(self.file, json.dumps(asdict(holder)))

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write(Holder(**{**asdict(self.holder), "heartbeat": time.time()}))
            except OSError as exc:  # storage hiccup: the next beat tries again
                log.warning("could not renew %s: %s", self.file.uri, exc)
