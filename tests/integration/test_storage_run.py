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
    assert result.summary["checkpoint"].startswith(f"s3://{bucket}/{prefix}checkpoint_")
    assert not (tmp_path / "runs").exists(), "nothing is written to local storage"

    manifest = json.loads(
        s3.get_object(Bucket=bucket, Key=prefix + "model/manifest.json")["Body"].read()
    )
    assert manifest["spec_hash"] == result.summary["spec_hash"]
    assert manifest["metrics"]["finetuned"] == result.summary["finetuned"]
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
    assert row["finetuned"] == result.summary["verdict"]["finetuned"]

    # Resuming from a checkpoint in the bucket continues at its step.
    checkpoint = result.summary["checkpoint"]
    more = dict(spec, train={**spec["train"], "max_steps": 6})
    second = run(more, resume_from=checkpoint)
    assert second.summary["resumed_from_step"] == 4 and second.summary["steps"] == 6
