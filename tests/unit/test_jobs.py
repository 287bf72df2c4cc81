"""What ``submit`` ships: the spec with rewritten paths, its local inputs, no secrets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from orchestrator import jobs
from orchestrator.preflight import preflight
from orchestrator.spec import ExperimentSpec, SpecError, load_spec
from tests.conftest import tiny_spec_dict


@pytest.fixture
def stage(tmp_path_factory):
    """``jobs.stage`` as for a spec file at the root of the tests' temporary folders, which
    hold every fixture input (so none is outside the spec's folder)."""

    def staged(spec, folder, command, **options):
        options.setdefault("spec_folder", tmp_path_factory.getbasetemp())
        return jobs.stage(spec, folder, command, **options)

    return staged


@pytest.fixture
def spec(tiny_model, corpora, tmp_path) -> ExperimentSpec:
    raw = tiny_spec_dict(tiny_model, corpora, tmp_path)
    raw["storage"]["uri"] = "relative-runs"
    raw["data"]["sources"]["more"]["path"] = str(corpora["root"] / "*.jsonl")  # a glob
    return ExperimentSpec.model_validate(raw)


def test_the_job_folder_holds_the_spec_and_every_local_input(
    stage, spec, corpora, tmp_path, monkeypatch
):
    folder = tmp_path / "job"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    submission = stage(spec, folder, "run")
    staged = yaml.safe_load((folder / "spec.yaml").read_text())
    sources = staged["data"]["sources"]
    assert sources["colors"]["path"] == "inputs/sources/colors/colors.jsonl"
    assert sources["more"]["path"] == "inputs/sources/more"  # the glob's files, in a folder
    assert sorted(p.name for p in (folder / "inputs/sources/more").iterdir()) == [
        "0000-colors.jsonl",
        "0001-more.jsonl",
    ]
    assert staged["data"]["eval"]["qrels"] == "inputs/eval/qrels/qrels.tsv"
    assert staged["model"]["base"] == "inputs/model"
    assert (folder / "inputs/model/modules.json").is_file()
    assert staged["storage"]["uri"] == str(tmp_path / "relative-runs")  # made absolute
    shipped = folder / "inputs/sources/colors/colors.jsonl"
    assert os.path.samefile(shipped, corpora["colors"])  # hard-linked, not copied
    assert submission.entrypoint == "python -m orchestrator run spec.yaml"
    assert submission.runtime_env["working_dir"] == str(folder)
    assert Path(submission.runtime_env["py_modules"][0], "jobs.py").is_file()
    # On the cluster the job runs in its copy of the folder: the spec is complete there.
    monkeypatch.chdir(folder)
    preflight(load_spec("spec.yaml"))


def test_remote_paths_and_known_models_are_left_to_the_cluster(stage, spec, tmp_path):
    raw = spec.model_dump(mode="json")
    raw["data"]["sources"]["colors"]["path"] = "s3://corpora/colors.jsonl"
    raw["model"]["base"] = "all-MiniLM-L6-v2"
    raw["storage"]["uri"] = "s3://runs"
    submission = stage(ExperimentSpec.model_validate(raw), tmp_path, "tune")
    assert submission.spec.data.sources["colors"].path == "s3://corpora/colors.jsonl"
    assert submission.spec.model.base == "all-MiniLM-L6-v2"
    assert submission.spec.storage.uri == "s3://runs"
    assert submission.entrypoint == "python -m orchestrator tune spec.yaml"


def test_credentials_never_travel_in_the_runtime_env(stage, spec, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    submission = stage(spec, tmp_path, "run", env={"EXPERIMENT_NOTE": "baseline"})
    env_vars = submission.runtime_env["env_vars"]
    assert env_vars["HF_HUB_OFFLINE"] == "1" and env_vars["EXPERIMENT_NOTE"] == "baseline"
    assert "s3cr3t" not in repr(submission.runtime_env)
    for name in ("AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "DB_PASSWORD", "API_KEY", "AWS_SESSION"):
        with pytest.raises(SpecError, match=f"--env {name}: looks like a secret"):
            stage(spec, tmp_path / name, "run", env={name: "x"})


def test_inputs_too_large_for_a_job_are_refused_before_anything_is_copied(
    stage, spec, tmp_path, monkeypatch
):
    monkeypatch.setattr(jobs, "MAX_SHIPPED_BYTES", 1024)
    (tmp_path / "job").mkdir()
    with pytest.raises(SpecError, match="more than a job can carry"):
        stage(spec, tmp_path / "job", "run")
    assert not any((tmp_path / "job").iterdir())


def test_a_link_out_of_a_shipped_folder_is_refused(stage, spec, tiny_model, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (tmp_path / "secret.txt").write_text("not for the cluster")
    (model / "notes.txt").symlink_to(tmp_path / "secret.txt")
    raw = spec.model_dump(mode="json")
    raw["model"]["base"] = str(model)
    (tmp_path / "job").mkdir()
    with pytest.raises(SpecError, match="a link out of"):
        stage(ExperimentSpec.model_validate(raw), tmp_path / "job", "run")


def test_a_file_named_like_a_glob_is_that_file(stage, spec, corpora, tmp_path):
    import shutil

    literal = tmp_path / "pairs[1].jsonl"
    shutil.copyfile(corpora["colors"], literal)
    (tmp_path / "pairs1.jsonl").write_text("")  # what the glob pairs[1].jsonl would match
    raw = spec.model_dump(mode="json")
    raw["data"]["sources"]["colors"]["path"] = str(literal)
    (tmp_path / "job").mkdir()
    staged = stage(ExperimentSpec.model_validate(raw), tmp_path / "job", "run")
    shipped = tmp_path / "job" / staged.spec.data.sources["colors"].path
    assert shipped.name == "pairs[1].jsonl" and shipped.read_bytes() == literal.read_bytes()


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("http://127.0.0.1:8265", True),
        ("http://localhost:8265", True),
        ("127.0.0.1:8265", True),
        ("http://10.0.0.5:8265", False),
        ("https://ray.example.com", False),
    ],
)
def test_loopback_addresses(address, loopback):
    assert jobs.is_loopback(address) is loopback


def test_default_address_reads_ray_address_only_when_it_is_a_dashboard_url(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.5:8265")
    assert jobs.default_address() == "http://10.0.0.5:8265"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # a GCS address: not the job API
    assert jobs.default_address() == jobs.DEFAULT_ADDRESS


def test_named_held_out_sets_are_shipped(stage, spec, corpora, tmp_path):
    raw = spec.model_dump(mode="json")
    columns = {"anchor": "question", "positive": "answer", "negatives": ["wrong"]}
    path = str(corpora["colors"])
    raw["data"]["eval_sets"] = {"refutes": {"kind": "triplets", "path": path, "columns": columns}}
    folder = tmp_path / "job"
    folder.mkdir()
    submission = stage(ExperimentSpec.model_validate(raw), folder, "run")
    shipped = submission.spec.data.eval_sets["refutes"].path
    assert shipped == "inputs/eval_sets/refutes/path/colors.jsonl"
    assert (folder / shipped).is_file()


@pytest.mark.parametrize(
    ("address", "mode", "flag", "refused"),
    [
        ("http://10.0.0.5:8265", "token", False, True),
        ("http://10.0.0.5:8265", "token", True, False),
        ("https://ray.example.com", "token", False, False),
        ("http://127.0.0.1:8265", "token", False, False),
        ("http://10.0.0.5:8265", "", False, False),  # no token to send
    ],
)
def test_the_ray_token_goes_over_http_only_to_loopback(monkeypatch, address, mode, flag, refused):
    monkeypatch.setenv("RAY_AUTH_MODE", mode)
    if refused:
        with pytest.raises(SpecError, match="would send the cluster's token in clear text"):
            jobs.check_token_transport(address, flag)
    else:
        jobs.check_token_transport(address, flag)


def test_inputs_outside_the_working_directory_and_spec_folder_stay_home(
    spec, corpora, tmp_path, monkeypatch
):
    """A shared spec naming ``~/.ssh/id_rsa`` as a source must not carry it to a cluster."""
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    raw = spec.model_dump(mode="json")
    raw["model"]["base"] = "all-MiniLM-L6-v2"  # left to the cluster
    outside = ExperimentSpec.model_validate(raw)
    (tmp_path / "job").mkdir()
    with pytest.raises(SpecError) as refused:
        jobs.stage(outside, tmp_path / "job", "run")
    message = str(refused.value)
    assert f"data.sources.colors.path: {corpora['colors']} is outside {project}" in message
    assert "--allow-outside-inputs" in message
    assert not list((tmp_path / "job").iterdir()), "nothing copied"

    # The spec's own folder counts, and so does the flag.
    assert jobs.stage(outside, tmp_path / "job", "run", spec_folder=corpora["root"]).spec
    (tmp_path / "job2").mkdir()
    assert jobs.stage(outside, tmp_path / "job2", "run", allow_outside=True).shipped_bytes > 0


def test_a_link_inside_the_project_to_a_file_outside_is_refused(
    spec, corpora, tmp_path, monkeypatch
):
    project = tmp_path / "project"
    project.mkdir()
    (project / "pairs.jsonl").symlink_to(corpora["colors"])
    monkeypatch.chdir(project)
    raw = spec.model_dump(mode="json")
    raw["data"]["sources"]["colors"]["path"] = "pairs.jsonl"
    (tmp_path / "job").mkdir()
    with pytest.raises(
        SpecError, match=f"data.sources.colors.path: {corpora['colors']} is outside"
    ):
        jobs.stage(ExperimentSpec.model_validate(raw), tmp_path / "job", "run")
