"""Run a spec on a two-node Ray cluster on this machine, and lose the second node mid-run.

    python -m tests.two_nodes SPEC.yaml OUT.json

Ray's own ``ray.cluster_utils.Cluster`` starts a head and a second raylet with one CPU each,
so the run's two one-CPU training workers sit on different nodes. Once Ray Train has
registered a checkpoint, the second node's raylet is killed (not drained) and a fresh node
joins; the run must recover from that checkpoint (``scaling.max_failures``). OUT.json gets
the run's summary and whether both nodes held a training worker when the node went. A
script of its own: a process holds one Ray, and the test session's is a single node.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path

import yaml


def registered_checkpoints(storage: Path) -> list[Path]:
    """The checkpoint folders Ray Train's snapshot lists for the run under ``storage`` (a
    checkpoint on disk is not yet one a restart restores until it is listed there)."""
    snapshots = list(storage.rglob("checkpoint_manager_snapshot.json"))
    with suppress(ValueError):  # not yet written, or caught mid-write
        snapshot = json.loads(snapshots[0].read_text()) if snapshots else {}
        names = [r["checkpoint_dir_name"] for r in snapshot.get("checkpoint_results", [])]
        return sorted(snapshots[0].parent / name for name in names)
    return []


def main(spec_path: str, out_path: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from orchestrator import run
    from orchestrator.ray_compat import cpus_left_per_node
    from orchestrator.summary import summary_dict

    storage = Path(yaml.safe_load(Path(spec_path).read_text())["storage"]["uri"])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    second = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    outcome: dict = {}

    def train() -> None:
        try:
            outcome["summary"] = summary_dict(run(spec_path).summary)
        except BaseException as exc:  # reported in OUT.json, not lost in a thread
            outcome["error"] = repr(exc)

    thread = threading.Thread(target=train)
    thread.start()
    deadline = time.time() + 300
    while not registered_checkpoints(storage):
        if not thread.is_alive() or time.time() > deadline:
            break
        time.sleep(0.1)
    outcome["spread"] = cpus_left_per_node() == [0.0, 0.0]  # a worker on each node
    cluster.remove_node(second, allow_graceful=False)
    cluster.add_node(num_cpus=1)
    thread.join(timeout=600)
    Path(out_path).write_text(json.dumps(outcome, indent=2))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:3])
