"""Publishing, pulling and listing runs, locally and on a real S3-protocol server (moto)."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from orchestrator.__main__ import main
from orchestrator.catalog import list_runs, show_run
from orchestrator.errors import IncompleteUploadError
from orchestrator.spec import SpecError, load_spec
from orchestrator.storage import MANIFEST, Location, arrow_storage, publish, pull, write_text
from tests.summaries import summary_dict, verdict_dict


@pytest.fixture
def folder(tmp_path) -> Path:
    model = tmp_path / "model"
    (model / "1_Pooling").mkdir(parents=True)
    (model / "config.json").write_text('{"hidden_size": 32}')
    (model / "model.safetensors").write_bytes(bytes(range(256)) * 4096)
    (model / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    return model


def remote(bucket: str, endpoint: str, key: str) -> Location:
    return Location(f"s3://{bucket}/{key}", endpoint_url=endpoint)


def same_tree(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return files == sorted(
        p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != MANIFEST
    ) and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_publish_to_s3_writes_every_file_then_a_manifest(folder, bucket, s3_endpoint, tmp_path):
    target = remote(bucket, s3_endpoint, "runs/x/abc/model")
    manifest = publish(folder, target, spec_hash="h", metrics={"finetuned": {"ndcg@10": 0.5}})

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {
        "runs/x/abc/model/config.json",
        "runs/x/abc/model/model.safetensors",
        "runs/x/abc/model/1_Pooling/config.json",
        "runs/x/abc/model/manifest.json",
    }
    stored = json.loads(
        s3.get_object(Bucket=bucket, Key="runs/x/abc/model/manifest.json")["Body"].read()
    )
    assert stored == manifest and stored["spec_hash"] == "h"
    assert {f["path"]: f["size"] for f in stored["files"]}["model.safetensors"] == 256 * 4096

    pulled = tmp_path / "pulled"
    pull(target, pulled)
    assert same_tree(folder, pulled)


def test_pull_refuses_a_folder_without_manifest(folder, bucket, s3_endpoint, tmp_path):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.upload_file(str(folder / "config.json"), bucket, "half/config.json")
    with pytest.raises(IncompleteUploadError, match=r"no manifest\.json"):
        pull(remote(bucket, s3_endpoint, "half"), tmp_path / "out")


def test_pull_detects_an_object_changed_after_publishing(folder, bucket, s3_endpoint, tmp_path):
    target = remote(bucket, s3_endpoint, "m")
    publish(folder, target)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.put_object(Bucket=bucket, Key="m/config.json", Body=b'{"hidden_size": 64}')
    with pytest.raises(IncompleteUploadError, match=r"config\.json: checksum mismatch"):
        pull(target, tmp_path / "out")


def test_local_publish_and_pull_verify_the_same_way(folder, tmp_path):
    target = Location(str(tmp_path / "published"))
    publish(folder, target)
    assert (tmp_path / "published" / MANIFEST).is_file()
    pull(target, tmp_path / "copy")
    assert same_tree(folder, tmp_path / "copy")
    (tmp_path / "published" / "config.json").write_text("{}")
    with pytest.raises(IncompleteUploadError):
        pull(target, tmp_path / "copy2")


@pytest.mark.parametrize(
    ("torn", "problem"),
    [('{"files": [', "is torn or not JSON"), ("[]", "has no list of files"), ("{}", "no list")],
)
def test_pull_names_a_torn_manifest(folder, tmp_path, torn, problem):
    target = Location(str(tmp_path / "published"))
    publish(folder, target)
    (tmp_path / "published" / MANIFEST).write_text(torn)
    with pytest.raises(IncompleteUploadError, match=problem):
        pull(target, tmp_path / "pulled")
    assert not (tmp_path / "pulled").exists()


@pytest.mark.parametrize(
    "path", ["/etc/cron.d/x", "../outside", "a/../../outside", "C:/x", "a\\..\\b", "", None]
)
def test_pull_refuses_a_manifest_entry_outside_the_folder(folder, tmp_path, path):
    target = Location(str(tmp_path / "published"))
    publish(folder, target)
    manifest = json.loads((tmp_path / "published" / MANIFEST).read_text())
    manifest["files"].append({"path": path, "size": 1, "sha256": "0" * 64})
    (tmp_path / "published" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(IncompleteUploadError, match="refusing the entry"):
        pull(target, tmp_path / "pulled")
    assert not (tmp_path / "pulled").exists() and not (tmp_path / "outside").exists()


def test_a_failed_pull_leaves_nothing_and_a_second_pull_replaces_the_first(folder, tmp_path):
    target = Location(str(tmp_path / "published"))
    publish(folder, target)
    pulled = tmp_path / "pulled"
    pull(target, pulled)
    (pulled / "stale.txt").write_text("from an earlier version")
    pull(target, pulled)  # an earlier pull (it has a manifest): replaced whole
    assert same_tree(folder, pulled) and not (pulled / "stale.txt").exists()
    (tmp_path / "published" / "config.json").write_text("{}")  # changed after publishing
    with pytest.raises(IncompleteUploadError, match="checksum mismatch"):
        pull(target, tmp_path / "second")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "published", "pulled"]


def test_pull_refuses_a_folder_holding_other_files(folder, tmp_path):
    target = Location(str(tmp_path / "published"))
    publish(folder, target)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds other files"):
        pull(target, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_cli_pull_exits_2_for_an_incomplete_upload(bucket, s3_endpoint, tmp_path, capsys):
    boto3.client("s3", endpoint_url=s3_endpoint).put_object(Bucket=bucket, Key="p/a", Body=b"x")
    uri = f"s3://{bucket}/p"
    assert main(["pull", uri, str(tmp_path / "o"), "--endpoint-url", s3_endpoint]) == 2
    assert "incomplete" in capsys.readouterr().err


def _fake_run(root: Location, name: str, run_id: str, files: dict[str, str]) -> None:
    for key, text in files.items():
        write_text(root.join(name, run_id, key), text)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_runs_list_tells_complete_incomplete_and_checkpointed(where, bucket, s3_endpoint, tmp_path):
    root = remote(bucket, s3_endpoint, "runs") if where == "s3" else Location(str(tmp_path))
    summary = summary_dict(spec_hash="f" * 64, steps=40, verdict=verdict_dict(0.8, 0.85))
    _fake_run(root, "qs", "aaa", {"summary.json": json.dumps(summary), "model/manifest.json": "{}"})
    _fake_run(root, "qs", "bbb", {"model/config.json": "{}"})
    _fake_run(root, "qs", "ccc", {"checkpoint_1/meta.json": '{"step": 10}'})
    search = {
        **{"tune_id": "tune-ddd", "name": "qs", "metric": "ndcg@10", "mode": "max"},
        **{"baseline": {}, "trials": [], "best": None, "timings_s": {}},
        **{"best_run_uri": None, "best_model_uri": None, "verdict": summary["verdict"]},
    }
    _fake_run(root, "qs", "tune-ddd", {"summary.json": json.dumps(search), "results.md": "|"})
    _fake_run(
        root, "_compiled", "0123abcd", {"fragments/000000-0000.parquet": "", "manifest.json": "{}"}
    )

    rows = {r["run_id"]: r for r in list_runs(root)}  # compiled sources are not runs
    assert {k: r["status"] for k, r in rows.items()} == {
        "aaa": "complete",
        "bbb": "incomplete upload",
        "ccc": "checkpointed",
        "tune-ddd": "search",
    }
    assert rows["tune-ddd"]["finetuned"] == 0.85
    assert rows["aaa"]["finetuned"] == 0.85 and rows["aaa"]["steps"] == 40
    assert show_run(root.join("qs", "aaa"))["summary"]["spec_hash"] == "f" * 64


def test_arrow_storage_points_ray_train_at_the_bucket(s3_endpoint):
    path, filesystem = arrow_storage(Location("s3://b/runs/x", endpoint_url=s3_endpoint))
    assert path == "b/runs/x"
    assert type(filesystem).__name__ == "S3FileSystem"
    assert arrow_storage(Location("/tmp/runs")) == ("/tmp/runs", None)


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ({"uri": "s3://AKIA123:secret@bucket/runs"}, "credentials come from the environment"),
        ({"uri": "s3://bucket/runs?access_key=x"}, "credentials come from the environment"),
        ({"uri": "s3://bucket/runs?versionId=3"}, "without credentials or options"),
        ({"uri": "gs://bucket/runs"}, "gs:// is not supported"),
        ({"uri": "s3://b", "endpoint_url": "http://user:pw@127.0.0.1:9000"}, "never from a spec"),
    ],
)
def test_storage_spec_rejects_credentials_and_unknown_schemes(tiny_spec, storage, message):
    with pytest.raises(SpecError) as error:
        load_spec({**tiny_spec, "storage": storage})
    assert any(p.startswith("storage.") and message in p for p in error.value.problems)


def test_cli_runs_list_prints_a_table(tmp_path, capsys):
    root = Location(str(tmp_path))
    summary = summary_dict(spec_hash="ab" * 32, steps=7, verdict=verdict_dict(0.5, 0.5))
    _fake_run(root, "qs", "r1", {"summary.json": json.dumps(summary), "model/manifest.json": "{}"})
    assert main(["runs", "list", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "| qs | r1 | abababababababab | complete | 7 | ndcg@10 | 0.5000 | 0.5000 |" in table


def test_a_torn_summary_is_listed_as_such_and_the_other_runs_still_are(tmp_path, capsys):
    root = Location(str(tmp_path))
    good = summary_dict(spec_hash="cd" * 32, steps=3)
    _fake_run(root, "qs", "r1", {"summary.json": '{"steps": 7, "verd', "model/manifest.json": "{}"})
    _fake_run(root, "qs", "r2", {"summary.json": json.dumps(good), "model/manifest.json": "{}"})
    assert main(["runs", "list", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "| qs | r1 |  | complete (summary.json unreadable) |" in table
    assert "| qs | r2 | cdcdcdcdcdcdcdcd | complete | 3 |" in table


def test_a_local_write_is_atomic_and_leaves_no_scratch(tmp_path, monkeypatch):
    target = Location(str(tmp_path / "run" / "summary.json"))
    write_text(target, '{"steps": 1}')
    assert target.path.read_text() == '{"steps": 1}'

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr("orchestrator.storage.os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_text(target, '{"steps": 2}')
    assert target.path.read_text() == '{"steps": 1}'  # the old file, whole
    assert [p.name for p in target.path.parent.iterdir()] == ["summary.json"]
