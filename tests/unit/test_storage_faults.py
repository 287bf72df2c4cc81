"""Transient storage faults (SlowDown, 5xx, connection resets) between us and a real S3 server."""

from __future__ import annotations

import boto3
import pytest

from orchestrator.errors import IncompleteUploadError
from orchestrator.storage import MANIFEST, Location, arrow_filesystem, publish, pull
from tests.faults import Fault, FaultyProxy


@pytest.fixture
def folder(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 32}')
    (model / "model.safetensors").write_bytes(b"\x01\x02" * 300_000)
    return model


def test_publish_retries_through_slowdown_5xx_and_resets(folder, bucket, s3_endpoint, tmp_path):
    with FaultyProxy(s3_endpoint) as proxy:
        proxy.plan(
            Fault("PUT", "503", times=2, path_contains="model.safetensors"),
            Fault("PUT", "reset", times=1, path_contains="config.json"),
            Fault("HEAD", "500", times=1),
            Fault("PUT", "503", times=1, path_contains=MANIFEST),
        )
        publish(folder, Location(f"s3://{bucket}/m", endpoint_url=proxy.url))
        assert [f.times for f in proxy.faults] == [0, 0, 0, 0], "every fault was met"
    pull(Location(f"s3://{bucket}/m", endpoint_url=s3_endpoint), tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == b"\x01\x02" * 300_000


def test_an_upload_that_never_gets_through_publishes_no_manifest(
    folder, bucket, s3_endpoint, tmp_path
):
    with FaultyProxy(s3_endpoint) as proxy:
        proxy.plan(Fault("PUT", "503", times=100, path_contains="model.safetensors"))
        with pytest.raises(IncompleteUploadError, match="SlowDown"):
            publish(folder, Location(f"s3://{bucket}/m", endpoint_url=proxy.url, attempts=2))
    keys = [
        o["Key"]
        for o in boto3.client("s3", endpoint_url=s3_endpoint)
        .list_objects_v2(Bucket=bucket)
        .get("Contents", [])
    ]
    assert f"m/{MANIFEST}" not in keys
    with pytest.raises(IncompleteUploadError):
        pull(Location(f"s3://{bucket}/m", endpoint_url=s3_endpoint), tmp_path / "out")


def test_checkpoint_filesystem_retries_through_faults(bucket, s3_endpoint):
    """The pyarrow filesystem Ray Train writes checkpoints with retries the same faults."""
    with FaultyProxy(s3_endpoint) as proxy:
        proxy.plan(Fault("PUT", "503", times=2), Fault("PUT", "reset", times=1))
        filesystem = arrow_filesystem(proxy.url)
        with filesystem.open_output_stream(f"{bucket}/ckpt/state.pt") as f:
            f.write(b"state" * 1000)
        assert [f.times for f in proxy.faults] == [0, 0]
    body = boto3.client("s3", endpoint_url=s3_endpoint).get_object(
        Bucket=bucket, Key="ckpt/state.pt"
    )["Body"]
    assert body.read() == b"state" * 1000
