"""From a laptop to a cluster: a real ``ray start --head`` with token auth, real jobs.

The same tiny spec goes in through Ray's own ``ray job submit`` and through
``orchestrator submit --follow``; while the latter trains, the head's Prometheus endpoint
must serve every metric the Grafana dashboard charts.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from subprocess import PIPE

import pytest
import yaml

from tests.cluster import RAY, Head, get, ray_head
from tests.conftest import tiny_spec_dict
from tests.ray_metrics import GPU_ONLY_METRICS, dashboard_metric_names, scrape

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def head() -> Head:
    with ray_head() as started:
        yield started


def write_job_spec(tiny_model: str, corpora: dict, folder: Path) -> Path:
    """The tiny spec as a file, one worker, a step per report; runs stored under ``folder``.

    Laid out as a project: the spec beside the model and corpora it names (``submit`` ships
    only files from the spec's folder and the working directory).
    """
    model = shutil.copytree(tiny_model, folder / "model")
    data = shutil.copytree(corpora["root"], folder / "corpora")
    corpora = {
        name: data / Path(path).relative_to(corpora["root"]) for name, path in corpora.items()
    }
    spec = tiny_spec_dict(str(model), corpora, folder)
    spec["scaling"] = {"num_workers": 1, "cpus_per_worker": 1, "cpus_per_data_task": 0.25}
    spec["train"].update(max_steps=6, checkpoint_every=3, eval_every=3)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def job_spec(tiny_model, corpora, tmp_path) -> Path:
    return write_job_spec(tiny_model, corpora, tmp_path)


def _only_run(storage: Path) -> Path:
    (run,) = [p.parent for p in storage.glob("tiny/*/summary.json")]
    return run


def _check_outputs(run: Path) -> None:
    from sentence_transformers import SentenceTransformer

    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == [1, 2, 3, 4, 5, 6]
    assert all(r["tokens_per_s"] > 0 for r in history)
    assert "eval/ndcg@10" in history[2] and "eval/ndcg@10" in history[5]
    report = (run / "report.html").read_text()
    assert "data:image/png;base64," in report and summary["run_id"] in report
    model = SentenceTransformer(str(run / "model"), device="cpu")
    assert model.encode(["what color is the car"]).shape == (1, 32)


def test_the_job_api_refuses_requests_without_the_token(head):
    assert get(f"{head.address}/api/jobs/") == 401
    assert get(f"{head.address}/api/jobs/", "not-the-token") == 403
    assert get(f"{head.address}/api/jobs/", head.token) == 200


def test_ray_job_submit_and_orchestrator_submit_run_a_spec_side_by_side(
    head, tiny_model, corpora, tmp_path
):
    """Both ways in at once (the test suite's time); the metrics endpoint is read meanwhile."""
    with_ray = write_job_spec(tiny_model, corpora, tmp_path / "ray-cli")
    with_ours = write_job_spec(tiny_model, corpora, tmp_path / "orchestrator-cli")
    ray_cli = [RAY, "job", "submit", f"--address={head.address}", f"--working-dir={REPO}"]
    ray_cli += ["--", "python", "-m", "orchestrator", "run", str(with_ray)]
    ours = [sys.executable, "-m", "orchestrator", "submit", str(with_ours)]
    ours += [f"--address={head.address}", "--follow", "--env", "EXPERIMENT_NOTE=ci"]
    seen: set[str] = set()
    done = threading.Event()

    def watch_metrics() -> None:
        while not done.is_set():
            with contextlib.suppress(OSError):  # the endpoint may be between exports
                seen.update(scrape(head.metrics_url))
            time.sleep(0.5)

    watcher = threading.Thread(target=watch_metrics, daemon=True)
    watcher.start()
    jobs = [
        subprocess.Popen(command, env=head.env, stdout=PIPE, stderr=PIPE, text=True)
        for command in (ray_cli, ours)
    ]
    (ray_out, ray_err), (our_out, our_err) = (job.communicate(timeout=600) for job in jobs)
    done.set()
    watcher.join()

    assert jobs[0].returncode == 0, ray_out[-3000:] + ray_err[-3000:]
    assert "succeeded" in ray_out.lower()
    _check_outputs(_only_run(tmp_path / "ray-cli" / "runs"))

    assert jobs[1].returncode == 0, our_out[-3000:] + our_err[-3000:]
    assert "steps 6 x batch 8 = 48 pairs" in our_out
    assert f"dashboard: {head.address}/#/jobs/tiny-run-" in our_out
    assert our_out.rstrip().endswith("SUCCEEDED")
    _check_outputs(_only_run(tmp_path / "orchestrator-cli" / "runs"))

    charted = dashboard_metric_names(REPO / "dashboards" / "orchestrator.json")
    missing = charted - seen - GPU_ONLY_METRICS
    assert not missing, f"charted but never exported: {sorted(missing)}"


def test_submit_refuses_secrets_and_bad_specs_before_anything_starts(head, job_spec):
    cli = [sys.executable, "-m", "orchestrator", "submit", str(job_spec)]
    cli.append(f"--address={head.address}")
    secret = subprocess.run(
        [*cli, "--env", "AWS_SECRET_ACCESS_KEY=x"], env=head.env, capture_output=True, text=True
    )
    assert secret.returncode == 2 and "AWS_SECRET_ACCESS_KEY: looks like a secret" in secret.stderr
    bad = subprocess.run([*cli, "train.lr=-1"], env=head.env, capture_output=True, text=True)
    assert bad.returncode == 2 and "train.lr" in bad.stderr
    assert "submitted job" not in secret.stdout + bad.stdout


def test_the_example_notebook_submits_waits_and_reads_the_result(
    head, job_spec, tmp_path, monkeypatch
):
    import nbclient
    import nbformat

    for name, value in {
        **head.env,
        "NOTEBOOK_SPEC": str(job_spec),
        "RAY_ADDRESS": head.address,
    }.items():
        monkeypatch.setenv(name, value)  # the kernel inherits them
    notebook = nbformat.read(REPO / "docs" / "submit.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=400, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    )
    client.execute()

    outputs = {
        i: "".join(
            o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in c.outputs
        )
        for i, c in enumerate(notebook.cells)
        if c.cell_type == "code"
    }
    text = "\n".join(outputs.values())
    assert "steps 6 x batch 8 = 48 pairs" in text
    assert "JobHandle('tiny' run, job tiny-run-" in text
    assert "SUCCEEDED" in text and "| ndcg@10 |" in text and "(1, 32)" in text
    _check_outputs(_only_run(tmp_path / "runs"))
