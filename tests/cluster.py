"""A real Ray head started with ``ray start --head`` on 127.0.0.1, token authentication on.

Separate from the session's ``ray.init`` instance: its own ports, temp dir and token, so the
job API, its authentication and the metrics endpoint are exercised as a laptop sees them.
``ray start --block`` in a session of its own ties the head's processes to one process group:
signalling it stops this cluster only (``ray stop`` would stop every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
PORT_FLAGS = (
    "port",
    "dashboard-port",
    "metrics-export-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "ray-client-server-port",
    "node-manager-port",
    "object-manager-port",
)


@dataclass
class Head:
    address: str  # the dashboard / job API URL
    metrics_url: str
    token: str
    env: dict[str, str]  # what a client process needs: auth mode and token path
    log: Path


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def get(url: str, token: str | None = None) -> int:
    """HTTP status of a GET (with the bearer token when given); 0 while nothing listens."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except urllib.error.URLError:
        return 0


@contextmanager
def ray_head(num_cpus: int = 2, timeout_s: float = 120) -> Iterator[Head]:
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Unix socket paths
    token = secrets.token_hex(32)
    token_file = Path(temp_dir) / "auth_token"
    token_file.write_text(token)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    # The cluster's "image" is this venv: a job's `python` is the venv's, as on a real node.
    path = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file), PATH=path)
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
    log = Path(temp_dir) / "ray-start.log"
    command = [
        RAY,
        "start",
        "--head",
        "--block",
        f"--num-cpus={num_cpus}",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        *(f"--{flag}={port}" for flag, port in ports.items()),
    ]
    # Export metrics every second (default 10 s) so a short job is seen on the endpoint.
    head_env = {**env, "RAY_metrics_report_interval_ms": "1000"}
    with log.open("w") as out:
        process = subprocess.Popen(
            command, env=head_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        deadline = time.monotonic() + timeout_s
        while get(f"{address}/api/version", token) != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Ray head did not start:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        metrics_url = f"http://127.0.0.1:{ports['metrics-export-port']}/metrics"
        yield Head(address, metrics_url, token, env, log)
    finally:
        _stop(process)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the head's process group (raylet, GCS, workers); SIGKILL what is left after 10 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
