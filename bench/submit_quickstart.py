"""The quickstart as a Ray job: a local `ray start --head` (token auth on), then
`orchestrator submit --follow`; prints the wall time from submit to the job's end.

    .venv/bin/python bench/submit_quickstart.py [SPEC] [key=value ...]

Compare with `python -m orchestrator run SPEC storage.uri=/tmp/local-runs` (bench/RESULTS.md).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.cluster import ray_head  # noqa: E402


def main(spec: str = "experiments/quickstart.yaml", *overrides: str) -> int:
    overrides = overrides or ("storage.uri=/tmp/submitted-runs",)
    with ray_head() as head:
        started = time.perf_counter()
        command = [sys.executable, "-m", "orchestrator", "submit", spec, *overrides]
        job = subprocess.run(
            [*command, f"--address={head.address}", "--follow"], env=head.env, cwd=REPO
        )
        print(
            f"submit to end of job: {time.perf_counter() - started:.0f} s (exit {job.returncode})"
        )
    return job.returncode


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
