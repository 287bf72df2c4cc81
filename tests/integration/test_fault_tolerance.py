"""A training worker or a whole node is lost mid-run: the run recovers and trains on exactly
the same data."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from orchestrator.summary import summary_dict

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def undisturbed(ray_cluster, tiny_model, corpora, tmp_path_factory):
    """The spec both failures are rehearsed on, and its undisturbed run."""
    from orchestrator import run
    from tests.conftest import tiny_spec_dict

    spec = tiny_spec_dict(tiny_model, corpora, tmp_path_factory.mktemp("calm"))
    spec["train"].update(max_steps=10, checkpoint_every=3)
    spec["scaling"]["max_failures"] = 1
    spec["data"]["bucket_window"] = 4  # length-bucketed batches replay exactly too
    return spec, run(spec)


def test_killed_worker_recovers_and_matches_an_undisturbed_run(undisturbed, tmp_path):
    from sentence_transformers import SentenceTransformer

    from orchestrator import run

    spec, undisturbed = undisturbed
    chaos = copy.deepcopy(spec)
    chaos["storage"]["uri"] = str(tmp_path / "runs")
    chaos["testing"] = {"kill_worker_at_step": 5, "kill_rank": 1}  # last checkpoint: step 3
    disturbed = run(chaos)

    calm, hit = summary_dict(undisturbed.summary), summary_dict(disturbed.summary)
    assert (calm["restores"], hit["restores"]) == (0, 1), "the kill happened and was recovered"
    for key in ("steps", "pairs_seen", "source_steps"):
        assert hit[key] == calm[key], key
    # The same token ids, in the same order, on each rank: an order-sensitive fingerprint of
    # what each rank trained on (steps 4-5, redone after the restart, count once: the state
    # they produced before the kill was thrown away with the worker).
    assert hit["stream_digests"] == calm["stream_digests"]
    assert len(set(calm["stream_digests"])) == 2, "the two ranks saw different pairs"
    positions = [
        json.loads((Path(s["checkpoint"]) / "meta.json").read_text())["positions"]
        for s in (calm, hit)
    ]
    assert positions[0] == positions[1]

    texts = ["what color is the kite", "the kite is purple and shiny"]
    a = SentenceTransformer(str(undisturbed.model_dir)).encode(texts)
    b = SentenceTransformer(str(disturbed.model_dir)).encode(texts)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_lost_node_is_recovered_from_with_the_same_data(undisturbed, tmp_path):
    """Two nodes, a training worker on each; the second node's raylet is killed after the
    first checkpoint. The run restarts on the nodes left (and one that joins), resumes from
    its checkpoint and trains on exactly the pairs of the undisturbed run."""
    spec, calm = undisturbed
    lost = copy.deepcopy(spec)
    lost["storage"]["uri"] = str(tmp_path / "runs")
    lost["scaling"]["cpus_per_worker"] = 1  # one worker per one-CPU node
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(lost))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = tmp_path / "out.json"
    done = subprocess.run(
        [sys.executable, "-m", "tests.two_nodes", str(path), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert out.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    outcome = json.loads(out.read_text())
    assert "error" not in outcome, outcome["error"]
    assert outcome["spread"], "the two workers were not on different nodes"
    hit = outcome["summary"]
    assert hit["restores"] == 1, "the lost node was recovered from"
    for key in ("steps", "pairs_seen", "source_steps", "stream_digests"):
        assert hit[key] == getattr(calm.summary, key), key
