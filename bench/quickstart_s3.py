"""The quickstart against a local S3-protocol server: checkpoints, model and manifest in a
bucket, then `pull` and load the model with plain sentence-transformers.

    .venv/bin/python -m bench.quickstart_s3 [key.path=value ...]

Starts moto's S3 server on 127.0.0.1 (credentials are dummies it accepts), so it needs no
cloud account; point `storage.uri`/`storage.endpoint_url` at MinIO or S3 to do the same there.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import boto3

for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
    os.environ.setdefault(key, value)
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

import orchestrator  # noqa: E402
from orchestrator.export import comparison_table  # noqa: E402
from tests.faults import local_s3_server  # noqa: E402


def main() -> None:
    with local_s3_server() as endpoint:
        run_into(endpoint)


def run_into(endpoint: str) -> None:
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="runs")
    overrides = ["storage.uri=s3://runs/demo", f"storage.endpoint_url={endpoint}", *sys.argv[1:]]
    started = time.time()
    result = orchestrator.run("experiments/quickstart.yaml", overrides)
    keys = [
        o["Key"]
        for page in boto3.client("s3", endpoint_url=endpoint)
        .get_paginator("list_objects_v2")
        .paginate(Bucket="runs")
        for o in page.get("Contents", [])
    ]
    print(f"\n{len(keys)} objects in s3://runs/demo, e.g.:")
    for key in sorted(keys)[:3] + [k for k in keys if k.endswith("manifest.json")]:
        print("  ", key)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = orchestrator.pull(result.model_uri, tmp, endpoint_url=endpoint)
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(tmp)
        shape = model.encode(["where is the eiffel tower?"]).shape
    print(f"pulled {len(manifest['files'])} files, checksums verified; encode -> {shape}")
    print(json.dumps(orchestrator.list_runs("s3://runs/demo", endpoint_url=endpoint), indent=1))
    print(comparison_table(result.summary))
    print(f"total {time.time() - started:.0f}s; timings {result.summary.timings_s}")


if __name__ == "__main__":
    main()
