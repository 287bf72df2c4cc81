"""What a run trains on is a pure function of the spec: task timing and drivers do not matter.

The runs that went wrong stored their tokenized blocks in the order their tasks finished and
shuffled in a small buffer, so which pairs the first steps saw depended on start-up timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration


def _split_source(root: Path, files: int, rows_per_file: int) -> Path:
    """A pair source in several files: a read and a tokenize task each (over 256 rows, the
    tokenizer's batch, so that no task takes two files)."""
    from tests.conftest import pairs, write_jsonl

    rows = pairs(5, files * rows_per_file)
    for i in range(files):
        chunk = rows[i * rows_per_file : (i + 1) * rows_per_file]
        write_jsonl(root / "split" / f"part{i}.jsonl", chunk)
    return root / "split"


def _epoch_digests(datasets, epochs: int, shuffle: bool = True) -> list[str]:
    from orchestrator.data.order import epoch_order
    from orchestrator.train_loop import chain_digest

    (dataset,) = datasets.values()
    digests = []
    for epoch in range(epochs):
        digest = ""
        ordered = epoch_order(dataset, 42, epoch, shuffle, 0.25)
        for rows in ordered.iter_batches(batch_size=8, batch_format="numpy", drop_last=True):
            digest = chain_digest(digest, rows)
        digests.append(digest)
    return digests


def test_a_slow_first_task_changes_nothing_and_epochs_span_the_source(
    ray_cluster, tiny_model, corpora, tmp_path, monkeypatch
):
    import orchestrator.runner as runner
    from orchestrator.data.order import ROW_ID
    from orchestrator.data.tokenize import tokenize_batch
    from orchestrator.spec import load_spec
    from tests.conftest import tiny_spec_dict

    raw = tiny_spec_dict(tiny_model, corpora, tmp_path)
    colors = raw["data"]["sources"]["colors"]
    colors["path"] = str(_split_source(tmp_path, files=4, rows_per_file=300))
    del raw["data"]["sources"]["more"]
    spec = load_spec(raw)
    model_path = spec.model.base
    runner.ensure_ray()

    calm_data = runner.prepare_data(spec, model_path).datasets
    calm, file_order = _epoch_digests(calm_data, 2), _epoch_digests(calm_data, 1, shuffle=False)

    def slow_first_block(batch, **kwargs):
        if 1 in batch[ROW_ID].to_pylist():  # file 0, line 1: the first block in file order
            time.sleep(3)
        return tokenize_batch(batch, **kwargs)

    monkeypatch.setattr(runner, "tokenize_batch", slow_first_block)
    delayed = runner.prepare_data(spec, model_path)
    assert _epoch_digests(delayed.datasets, 2) == calm
    # The stored blocks are in file order too (what `max_rows` keeps, and `shuffle: false`).
    assert _epoch_digests(delayed.datasets, 1, shuffle=False) == file_order
    assert calm[0] != calm[1], "each epoch has an order of its own"

    # An epoch is the whole source sorted by its keys: its first batch draws from every file.
    import numpy as np

    from orchestrator.data.order import epoch_order, order_keys

    (dataset,) = delayed.datasets.values()
    stored = dataset.select_columns([ROW_ID, "anchor__ids"]).take_all()
    assert len({r[ROW_ID] for r in stored}) == len(stored) == 1200
    assert [r[ROW_ID] >> 32 for r in stored[:3]] == [0, 0, 0], "stored in file order"
    keys = order_keys(np.array([r[ROW_ID] for r in stored], dtype=np.uint64), 42, 0)
    expected = [stored[i] for i in np.argsort(keys)[:8]]
    assert len({r[ROW_ID] >> 32 for r in expected}) >= 3
    first = epoch_order(dataset, 42, 0, True, 0.25).take(8)
    assert [list(r["anchor__ids"]) for r in first] == [list(r["anchor__ids"]) for r in expected]
    unshuffled = epoch_order(dataset, 42, 0, False, 0.25).take(3)
    assert [list(r["anchor__ids"]) for r in unshuffled] == [
        list(r["anchor__ids"]) for r in stored[:3]
    ]


def _driver(spec_path: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", str(spec_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _registered_checkpoints(storage: Path) -> list[Path]:
    """The checkpoint folders Ray Train's snapshot lists for the run under ``storage``."""
    snapshots = list(storage.rglob("checkpoint_manager_snapshot.json"))
    with suppress(ValueError):  # not yet written, or caught mid-write
        snapshot = json.loads(snapshots[0].read_text()) if snapshots else {}
        names = [r["checkpoint_dir_name"] for r in snapshot.get("checkpoint_results", [])]
        return sorted(snapshots[0].parent / name for name in names)
    return []


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
    while len(_registered_checkpoints(tmp_path / "killed")) < 2:
        assert killed.poll() is None and time.time() < deadline, killed.communicate()[0]
        time.sleep(0.1)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not list((tmp_path / "killed").rglob("summary.json")), "killed before the end"
    # What the rerun restores: the newest checkpoint Ray Train registered (a later one may be
    # on disk unregistered). A disk that lost the end of its state.pt:
    newest = _registered_checkpoints(tmp_path / "killed")[-1] / "state.pt"
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
