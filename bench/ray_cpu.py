"""Where the CPU goes while the orchestrator trains: CPU time of every process over a window.

Starts ``orchestrator run`` on the quickstart (a local Ray instance), waits until training is
under way, then samples each process's CPU time at the start and the end of a window and
prints the busiest processes as a share of one core, then the threads of the training worker
(torch's compute threads and Ray's own). On a machine whose cores torch keeps
busy, everything that is not a torch thread of the training worker is taken from the step.

    .venv/bin/python bench/ray_cpu.py [--settle 45] [--window 40] [--top 16]
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

WORKER = "ray::RayTrainWorker"  # the process title Ray Train gives its workers


def cpu_seconds() -> dict[int, tuple[float, str]]:
    """pid → (user + system CPU seconds so far, command line) of every process we may read."""
    found = {}
    for process in psutil.process_iter(["cmdline"]):
        try:
            times = process.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found[process.pid] = (times.user + times.system, " ".join(process.info["cmdline"] or []))
    return found


def thread_seconds(pid: int) -> dict[int, tuple[float, str]]:
    """tid → (CPU seconds so far, thread name) of one process's threads."""
    found = {}
    with contextlib.suppress(psutil.NoSuchProcess):
        for thread in psutil.Process(pid).threads():
            with contextlib.suppress(OSError):
                name = Path(f"/proc/{pid}/task/{thread.id}/comm").read_text().strip()
                found[thread.id] = (thread.user_time + thread.system_time, name)
    return found


def shares(before: dict, after: dict, elapsed: float) -> list[tuple[float, int, str]]:
    """(share of one core, id, label) over the window, busiest first."""
    rows = [((cpu - before.get(key, (0.0,))[0]) / elapsed, key, label)
            for key, (cpu, label) in after.items()]  # fmt: skip
    return sorted(rows, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default="experiments/quickstart.yaml")
    parser.add_argument("--settle", type=float, default=45, help="seconds before the window")
    parser.add_argument("--window", type=float, default=40)
    parser.add_argument("--top", type=int, default=16)
    args = parser.parse_args()
    command = [
        sys.executable, "-m", "orchestrator", "run", args.spec, "train.max_steps=40",
        "data.eval.max_queries=32", f"storage.uri={tempfile.mkdtemp(prefix='bench-runs-')}",
    ]  # fmt: skip
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(args.settle)
        before, started = cpu_seconds(), time.time()
        worker = next(pid for pid, (_, line) in before.items() if line.startswith(WORKER))
        threads_before = thread_seconds(worker)
        time.sleep(args.window)
        after, elapsed = cpu_seconds(), time.time() - started
        threads_after = thread_seconds(worker)
    finally:
        run.send_signal(signal.SIGINT)  # the driver then shuts its local Ray instance down
        run.wait()
    for share, _, line in shares(before, after, elapsed)[: args.top]:
        print(f"{share:7.1%}  {line[:100]}")
    print(f"\nthreads of the training worker (pid {worker}):")
    for share, tid, name in shares(threads_before, threads_after, elapsed):
        if share >= 0.001:
            print(f"{share:7.1%}  {tid} {name}")


if __name__ == "__main__":
    main()
