"""Where the CPU goes while the orchestrator trains: CPU time of every process over a window.

Starts ``orchestrator run`` on the quickstart (a local Ray instance), waits until training is
under way, then samples each process's CPU time at the start and the end of a window and
prints the busiest processes as a share of one core. On a machine whose cores torch keeps
busy, everything that is not the training worker is taken from the step.

    .venv/bin/python bench/ray_cpu.py [--settle 45] [--window 40] [--top 16]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time

import psutil


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
        time.sleep(args.window)
        after, elapsed = cpu_seconds(), time.time() - started
    finally:
        run.send_signal(signal.SIGINT)  # the driver then shuts its local Ray instance down
        run.wait()
    shares = sorted(
        ((cpu - before.get(pid, (0.0,))[0]) / elapsed, line) for pid, (cpu, line) in after.items()
    )
    for share, line in reversed(shares[-args.top :]):
        print(f"{share:7.1%}  {line[:100]}")


if __name__ == "__main__":
    main()
