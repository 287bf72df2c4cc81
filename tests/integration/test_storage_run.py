"""A run whose storage is a bucket on a real S3-protocol server (moto on 127.0.0.1)."""

from __future__ import annotations

import json

import boto3
import pytest

pytestmark = pytest.mark.integration


def test_run_to_s3_publishes_checkpoints_model_and_manifest(
    ray_cluster, tiny_model, corpora, tmp_path, bucket, s3_endpoint
):
    from sentence_transformers import SentenceTransformer

    from orchestrator import list_runs, pull, run
    from tests.conftest import tiny_spec_dict

    spec = tiny_spec_dict(tiny_model, corpora, tmp_path)
    spec["storage"] = {"uri": f"s3://{bucket}/runs", "endpoint_url": s3_endpoint}
    result = run(spec)

    prefix = f"runs/tiny/{result.run_id}/"
    assert result.model_uri == f"s3://{bucket}/{prefix}model"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = {o["Key"][len(prefix) :] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert {"spec.yaml", "summary.json", "model/manifest.json", "model/README.md"} <= keys
    assert any(k.startswith("checkpoint_") and k.endswith("/state.pt") for k in keys)
    assert result.summary.checkpoint.startswith(f"s3://{bucket}/{prefix}checkpoint_")
    assert not (tmp_path / "runs").exists(), "nothing is written to local storage"

    manifest = json.loads(
        s3.get_object(Bucket=bucket, Key=prefix + "model/manifest.json")["Body"].read()
    )
    assert manifest["spec_hash"] == result.summary.spec_hash
    assert manifest["metrics"]["finetuned"] == result.summary.finetuned
    listed = {f["path"] for f in manifest["files"]}
    assert listed == {k[len("model/") :] for k in keys if k.startswith("model/")} - {
        "manifest.json"
    }

    local = tmp_path / "pulled"
    pull(result.model_uri, str(local), endpoint_url=s3_endpoint)
    model = SentenceTransformer(str(local))
    assert model.encode(["the car is red and shiny"]).shape == (1, 32)

    [row] = list_runs(f"s3://{bucket}/runs", endpoint_url=s3_endpoint)
    assert row["run_id"] == result.run_id and row["status"] == "complete"
    assert row["finetuned"] == result.summary.verdict.finetuned

    # Resuming from a checkpoint in the bucket continues at its step.
    checkpoint = result.summary.checkpoint
    more = dict(spec, train={**spec["train"], "max_steps": 6})
    second = run(more, resume_from=checkpoint)
    assert second.summary.resumed_from_step == 4 and second.summary.steps == 6


def test_a_checkpoint_whose_upload_fails_is_never_registered(
    ray_cluster, tiny_model, corpora, tmp_path, bucket, s3_endpoint
):
    """The first checkpoint's upload meets more 503s than its retries absorb: the report fails,
    nothing is registered, the workers restart, and the run completes from good checkpoints."""
    from orchestrator import run
    from tests.conftest import tiny_spec_dict
    from tests.faults import Fault, FaultyProxy

    spec = tiny_spec_dict(tiny_model, corpora, tmp_path)
    spec["scaling"]["max_failures"] = 1
    with FaultyProxy(s3_endpoint) as proxy:
        spec["storage"] = {"uri": f"s3://{bucket}/runs", "endpoint_url": proxy.url}
        spec["storage"]["retry_attempts"] = 2
        proxy.plan(Fault("PUT", "503", times=3, path_contains="state.pt"))
        result = run(spec)
        assert proxy.faults[0].times == 0

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    prefix = f"runs/tiny/{result.run_id}/"
    keys = [o["Key"][len(prefix) :] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    folders = {k.split("/")[0] for k in keys if k.startswith("checkpoint_") and "/" in k}
    failed = {f for f in folders if f"{f}/manifest.json" not in keys}
    assert len(failed) == 1, "the first checkpoint's upload failed and left no manifest"
    snapshot = s3.get_object(Bucket=bucket, Key=prefix + "checkpoint_manager_snapshot.json")
    assert next(iter(failed)) not in snapshot["Body"].read().decode(), "never registered"
    assert result.summary.steps == 4 and result.summary.restores == 0
    assert f"{result.summary.checkpoint.rsplit('/', 1)[1]}/manifest.json" in keys
