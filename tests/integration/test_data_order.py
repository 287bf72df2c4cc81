"""What a run trains on is a pure function of the spec: task timing and drivers do not matter.

The runs that went wrong stored their tokenized blocks in the order their tasks finished and
shuffled in a small buffer, so which pairs the first steps saw depended on start-up timing.
Compiled fragments are named and listed by their place in the files, and each rank's epoch is
a pure function of the manifest, the seed, the epoch and the world size.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration


def _split_source(root: Path, files: int, rows_per_file: int) -> Path:
    """A pair source in several files: a compile task each."""
    from tests.conftest import pairs, write_jsonl

    rows = pairs(5, files * rows_per_file)
    for i in range(files):
        chunk = rows[i * rows_per_file : (i + 1) * rows_per_file]
        write_jsonl(root / "split" / f"part{i}.jsonl", chunk)
    return root / "split"


def _epoch_digests(spec, data, epochs: int, world: int = 1) -> list[str]:
    from orchestrator.data.rank import chain_digest, source_feeds

    folders = {name: source.location for name, source in data.sources.items()}
    digests = []
    for rank in range(world):
        (feed,) = source_feeds(spec, folders, rank, world).values()
        for epoch in range(epochs):
            digest = ""
            for rows in feed.batches(epoch):
                digest = chain_digest(digest, rows)
            digests.append(digest)
    return digests


def test_a_slow_first_task_changes_nothing_and_each_epoch_has_its_order(
    ray_cluster, tiny_model, corpora, tmp_path, monkeypatch
):
    import orchestrator.data.compile as compiling
    import orchestrator.runner as runner
    from orchestrator.ray_init import ensure_ray
    from orchestrator.spec import load_spec
    from tests.conftest import tiny_spec_dict

    raw = tiny_spec_dict(tiny_model, corpora, tmp_path)
    colors = raw["data"]["sources"]["colors"]
    colors["path"] = str(_split_source(tmp_path, files=4, rows_per_file=300))
    del raw["data"]["sources"]["more"]
    ensure_ray()
    specs = {}
    for name in ("calm", "delayed"):  # two storage roots: the second must compile, not reuse
        raw["storage"]["uri"] = str(tmp_path / name)
        specs[name] = load_spec(raw)
    model_path = specs["calm"].model.base

    calm = runner.prepare_data(specs["calm"], model_path)
    calm_digests = _epoch_digests(specs["calm"], calm, 2, world=2)

    def slow_first_chunk(item, **kwargs):
        if item["index"] == 0:  # the first file's chunk finishes last
            time.sleep(3)
        return compiling.compile_chunk(item, **kwargs)

    monkeypatch.setattr(compiling, "compile_chunk", slow_first_chunk)
    delayed = runner.prepare_data(specs["delayed"], model_path)
    assert not delayed.sources["colors"].reused
    checksums = [
        [f["sha256"] for f in data.sources["colors"].manifest["fragments"]]
        for data in (calm, delayed)
    ]
    assert checksums[0] == checksums[1], "the same fragments, in file order"
    assert _epoch_digests(specs["delayed"], delayed, 2, world=2) == calm_digests
    assert len(set(calm_digests)) == 4, "each epoch and each rank has an order of its own"


def _driver(spec_path: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", str(spec_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_killed_driver_rerun_trains_on_what_an_undisturbed_run_did(
    ray_cluster, tiny_model, corpora, tmp_path
):
    """Three drivers: an undisturbed one on a Ray instance of its own; one on the test's
    cluster, SIGKILLed after its second checkpoint, whose state.pt is then cut short; and the
    same spec run again there, which passes over the damaged checkpoint and resumes from the
    one before. The last must end with the undisturbed run's stream digests.
    """
    import ray

    from tests.conftest import tiny_spec_dict
    from tests.two_nodes import registered_checkpoints

    raw = tiny_spec_dict(tiny_model, corpora, tmp_path)
    raw["train"].update(max_steps=12, checkpoint_every=4)
    raw["data"]["bucket_window"] = 3
    specs = {}
    for name in ("calm", "killed"):
        raw["storage"]["uri"] = str(tmp_path / name)
        specs[name] = tmp_path / f"{name}.yaml"
        specs[name].write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}

    calm = _driver(specs["calm"], env)  # starts a local Ray instance of its own
    shared = {**env, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    killed = _driver(specs["killed"], shared)
    deadline = time.time() + 240
    while len(registered_checkpoints(tmp_path / "killed")) < 2:
        assert killed.poll() is None and time.time() < deadline, killed.communicate()[0]
        time.sleep(0.1)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not list((tmp_path / "killed").rglob("summary.json")), "killed before the end"
    # What the rerun restores: the newest checkpoint Ray Train registered (a later one may be
    # on disk unregistered). A disk that lost the end of its state.pt:
    newest = registered_checkpoints(tmp_path / "killed")[-1] / "state.pt"
    newest.write_bytes(newest.read_bytes()[:1000])

    rerun = _driver(specs["killed"], shared)
    outputs = {name: p.communicate(timeout=300)[0] for name, p in (("calm", calm), ("re", rerun))}
    assert calm.returncode == 0, outputs["calm"]
    assert rerun.returncode == 0, outputs["re"]
    summaries = {
        name: json.loads(next((tmp_path / name).rglob("summary.json")).read_text())
        for name in ("calm", "killed")
    }
    assert f"{newest.parent}: state.pt does not match manifest.json" in outputs["re"]
    assert "resuming from the earlier checkpoint" in outputs["re"]
    assert summaries["killed"]["resumed_from_step"] >= 4, "the rerun resumed"
    assert summaries["killed"]["stream_digests"] == summaries["calm"]["stream_digests"]
    assert summaries["killed"]["source_steps"] == summaries["calm"]["source_steps"]
