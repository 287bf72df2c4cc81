"""A training worker is killed mid-run: the run recovers and trains on exactly the same data."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration


def test_killed_worker_recovers_and_matches_an_undisturbed_run(
    ray_cluster, tiny_model, corpora, tmp_path
):
    from sentence_transformers import SentenceTransformer

    from orchestrator import run
    from tests.conftest import tiny_spec_dict

    spec = tiny_spec_dict(tiny_model, corpora, tmp_path)
    spec["train"].update(max_steps=10, checkpoint_every=3)
    spec["scaling"]["max_failures"] = 1
    spec["data"]["bucket_window"] = 4  # length-bucketed batches replay exactly too
    undisturbed = run(spec)

    chaos = copy.deepcopy(spec)
    chaos["testing"] = {"kill_worker_at_step": 5, "kill_rank": 1}  # last checkpoint: step 3
    disturbed = run(chaos)

    calm, hit = undisturbed.summary, disturbed.summary
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
